"""The interface every model backend implements (local models, the OCI service, hash).

The runner only sees this: it never knows whether vectors come from onnxruntime on this
machine or from OCI over HTTPS.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

import numpy as np


class AsyncClosing:
    """``async with`` for anything with ``aclose()``: the block's end closes it."""

    async def aclose(self) -> None:
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@dataclass(frozen=True, slots=True)
class SummarySettings:
    """What the summary should look like; maps to OCI's summarize parameters and to the
    chat prompt. ``length``: SHORT | MEDIUM | LONG | AUTO; ``format``: PARAGRAPH | BULLETS |
    AUTO; ``extractiveness``: LOW | MEDIUM | HIGH | AUTO."""

    length: str = "SHORT"
    format: str = "PARAGRAPH"
    extractiveness: str = "AUTO"
    additional_command: str | None = None


@dataclass(frozen=True, slots=True)
class EmbedResult:
    """Vectors aligned 1:1 with the inputs: ``vectors[i]`` belongs to ``inputs[i]``."""

    vectors: np.ndarray  # shape (n, dim), float32
    truncated: list[bool]
    model_id: str
    model_version: str | None = None
    input_tokens: int = 0
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class SummaryResult:
    """One document's summary. ``input_tokens``/``output_tokens`` are the service's usage
    figures summed over the ``calls`` model calls it took (more than one when the document
    was summarized map-reduce, see :mod:`pipeline.mapreduce`); None when not reported."""

    summary: str
    model_id: str
    model_version: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    request_id: str | None = None
    calls: int = 1


@runtime_checkable
class TokenCounter(Protocol):
    """Counts tokens the way the target model does, or over-counts; never under-counts."""

    name: str
    #: tokens the model adds to every input (e.g. [CLS] and [SEP])
    special_tokens: int

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans ``(start, end)`` of each token of ``text``, in order."""
        ...

    # Optional: ``count(text) -> int``, the tokens the model sees for ``text`` with its
    # special tokens, equal to ``len(spans(text)) + special_tokens`` but cheaper (no spans
    # built). Callers use :func:`count_tokens`, which falls back to the spans.
    # Optional: ``extent(text) -> (start, end) | None``, the start of the first span and
    # the end of the last (None: no spans), without building them (the chunker's
    # one-chunk case).


def count_tokens(counter: TokenCounter, text: str) -> int:
    """``text``'s tokens by ``counter``, special tokens included: its ``count`` method when
    it has one, else ``len(spans(text)) + special_tokens``."""
    count = getattr(counter, "count", None)
    if count is not None:
        return int(count(text))
    return len(counter.spans(text)) + counter.special_tokens


class Backend(Protocol):
    """A model backend. Methods are async; a backend is an async context manager.

    Optional members, read with ``getattr``: ``summary_input_tokens`` (int or None), the
    most tokens of document text one summary call may read, counted with
    :func:`pipeline.mapreduce.upper_bound_tokens` (longer documents are summarized
    map-reduce; None: no limit); ``summary_fingerprint(settings)``, the backend's settings
    that change a summary; ``summarize_many(texts, settings)``, a batched summarize.
    """

    name: str
    embed_model_id: str
    summary_model_id: str
    dim: int
    #: most inputs per embed call, and most tokens in one call (None: no call-level cap)
    max_batch_inputs: int
    max_batch_tokens: int | None
    #: most tokens of one input the embedding model reads
    max_input_tokens: int
    token_counter: TokenCounter

    def fingerprint(self) -> dict[str, object]:
        """Everything about the embedding model that changes the vectors."""
        ...

    async def embed(self, texts: list[str]) -> EmbedResult: ...

    async def summarize(self, text: str, settings: SummarySettings) -> SummaryResult: ...

    async def aclose(self) -> None: ...
