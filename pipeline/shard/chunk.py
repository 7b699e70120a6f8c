"""Chunk: documents due for embedding in, their token-aware chunks out.

A chunker error fails that document alone (a permanent ``chunk`` failure).
"""

from __future__ import annotations

from pipeline.checkpoint import FAILED
from pipeline.chunking import ChunkSettings, chunk_document
from pipeline.genai.base import TokenCounter
from pipeline.models import Failure
from pipeline.shard.work import Admitted


def chunk(batch: Admitted, counter: TokenCounter, settings: ChunkSettings) -> Admitted:
    for work in batch.docs:
        if not work.embed:
            continue
        d = work.doc
        try:
            work.chunks = list(chunk_document(d, counter, settings))
        except Exception as exc:  # a chunker bug must not take the batch down
            work.failures.append(
                Failure(d.doc_id, "chunk", type(exc).__name__, f"{d.doc_id}: {exc}")
            )
            work.embed_state = FAILED
            continue
        work.hits = [None] * len(work.chunks)
    return batch


__all__ = ["chunk"]
