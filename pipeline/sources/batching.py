"""Collects documents and failures into bounded :class:`SourceBatch` objects."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pipeline.models import Document, Failure, SourceBatch


class Batcher:
    """Accumulates items and hands out a batch when ``size`` documents (or ``size``
    failures, so a file of bad rows cannot pile them up either) are pending.

    Failures travel in the batch that is open when they occur, so the order of documents
    and failures across batches follows the input.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._documents: list[Document] = []
        self._failures: list[Failure] = []

    def add(self, item: Document | Failure) -> SourceBatch | None:
        """Add one item; returns a full batch when one is ready."""
        if isinstance(item, Document):
            self._documents.append(item)
        else:
            self._failures.append(item)
        if len(self._documents) >= self.size or len(self._failures) >= self.size:
            return self.flush()
        return None

    def flush(self) -> SourceBatch | None:
        """The pending items as a batch, or ``None`` when nothing is pending."""
        if not self._documents and not self._failures:
            return None
        batch = SourceBatch(documents=self._documents, failures=self._failures)
        self._documents, self._failures = [], []
        return batch


def rebatch(batches: Iterable[SourceBatch], size: int) -> Iterator[SourceBatch]:
    """Merge small batches (one document per file, say) into batches of ``size``
    documents; never yields more than ``size`` documents in one batch."""
    batcher = Batcher(size)
    items: list[Document | Failure]
    for batch in batches:
        items = [*batch.documents, *batch.failures]
        for item in items:
            full = batcher.add(item)
            if full is not None:
                yield full
    last = batcher.flush()
    if last is not None:
        yield last
