"""Skip committed: a source batch in, the documents still due out.

The checkpoint index says, per document, whether its embedding and its summary are
committed for this text and model; a document due for neither is skipped. The batch's ids
are looked up at once (``Index.prefetch``): the index is on disk, not in memory.
"""

from __future__ import annotations

from pipeline.checkpoint import Index
from pipeline.models import SourceBatch
from pipeline.shard.work import Admitted, DocWork


def skip(batch: SourceBatch, index: Index, *, summaries: bool, retry_failed: bool) -> Admitted:
    docs: list[DocWork] = []
    skipped = 0
    index.prefetch(d.doc_id for d in batch.documents)
    for d in batch.documents:
        chash = d.content_hash
        embed = index.needs_embedding(d.doc_id, chash, retry_failed, bool(d.sections))
        summarize = summaries and index.needs_summary(d.doc_id, chash, retry_failed)
        if embed or summarize:
            docs.append(DocWork(d, chash, embed, summarize))
        else:
            skipped += 1
    return Admitted(docs, list(batch.failures), read=len(batch.documents), skipped=skipped)


__all__ = ["skip"]
