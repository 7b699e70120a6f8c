"""Model fingerprints: everything that changes an output row, hashed into an id.

A re-run skips a document only when its ``(doc_id, content_hash)`` is committed under the
same fingerprint, so every setting that changes a vector or a summary must be in here.
"""

from __future__ import annotations

from typing import Any

from pipeline.chunking import SECTIONS_VERSION, ChunkSettings
from pipeline.config import JobConfig
from pipeline.genai.base import Backend, SummarySettings
from pipeline.mapreduce import MAPREDUCE_VERSION


def summary_settings(config: JobConfig) -> SummarySettings:
    """The summary settings a job asks for."""
    return SummarySettings(
        length=config.summary_length,
        format=config.summary_format,
        extractiveness=config.summary_extractiveness,
    )


def fingerprints(
    config: JobConfig, backend: Backend, chunking: ChunkSettings
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(embed fingerprint, summary fingerprint or None when summaries are off)``.

    The summary fingerprint holds the backend and model id, the length, format and
    extractiveness, the input budget beyond which a document is summarized map-reduce
    (with the map-reduce version, as it changes those summaries), and whatever the
    backend's ``summary_fingerprint(settings)`` adds (for oci: the action, chat format,
    prompt version, temperature, answer token cap and serving mode). The embed fingerprint
    holds the backend's, the chunker settings and the version of the sectioned scheme
    (see :func:`plain_embed_fingerprint`)."""
    embed = {
        **backend.fingerprint(),
        "chunking": {
            **chunking.fingerprint(backend.token_counter),
            "sections": SECTIONS_VERSION,
        },
    }
    summary: dict[str, Any] | None = None
    if config.summaries:
        settings = summary_settings(config)
        summary = {
            "backend": backend.name,
            "model_id": backend.summary_model_id,
            "length": settings.length,
            "format": settings.format,
            "extractiveness": settings.extractiveness,
            "input_tokens": getattr(backend, "summary_input_tokens", None),
            "mapreduce": MAPREDUCE_VERSION,
        }
        extra = getattr(backend, "summary_fingerprint", None)
        if extra is not None:
            summary.update(extra(settings))
    return embed, summary


def plain_embed_fingerprint(embed: dict[str, Any]) -> dict[str, Any]:
    """The embed fingerprint as it was before the chunker cut at sections.

    Documents without sections (plain text, Parquet rows, JSON) are chunked exactly as
    before, ids included, so their rows committed under this fingerprint still stand: a
    nightly run after the upgrade does not re-embed them. Documents with sections
    (Markdown, HTML, DOCX, PDF) are re-embedded once under the new fingerprint."""
    chunking = {k: v for k, v in embed["chunking"].items() if k != "sections"}
    return {**embed, "chunking": chunking}
