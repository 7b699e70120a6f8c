"""Model fingerprints: everything that changes an output row, hashed into an id.

A re-run skips a document only when its ``(doc_id, content_hash)`` is committed under the
same fingerprint, so every setting that changes a vector or a summary must be in here.
"""

from __future__ import annotations

from typing import Any

from pipeline.chunking import ChunkSettings
from pipeline.config import JobConfig
from pipeline.genai.base import Backend


def fingerprints(
    config: JobConfig, backend: Backend, chunking: ChunkSettings
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(embed fingerprint, summary fingerprint or None when summaries are off)``."""
    embed = {
        **backend.fingerprint(),
        "chunking": chunking.fingerprint(backend.token_counter),
    }
    summary = None
    if config.summaries:
        summary = {
            "backend": backend.name,
            "model_id": backend.summary_model_id,
            "length": config.summary_length,
            "format": config.summary_format,
            "extractiveness": config.summary_extractiveness,
        }
    return embed, summary
