"""Commit: a settled part in, its Parquet files and commit record out.

Rows are built here, from the documents the part holds: a document whose embedding had a
retryable failure contributes its failure rows but no embedding rows (a re-run redoes
it). Encoding and file I/O run in a worker thread; the commit record is the commit point
(see ``pipeline.checkpoint``), and only it marks the part's documents done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.checkpoint import OK, Checkpoint, CommitRecord, part_name
from pipeline.config import JobConfig
from pipeline.models import PIPELINE_VERSION, SUMMARIES_SCHEMA, Document, Failure
from pipeline.report import ShardReport
from pipeline.shard.work import PartWork
from pipeline.sinks import OutputStore
from pipeline.tables import add_passthrough, embeddings_table, failures_table, to_json_text


@dataclass(frozen=True)
class CommitTarget:
    """Where and under which identity a shard's parts are committed."""

    shard_id: str
    config: JobConfig
    store: OutputStore
    checkpoint: Checkpoint
    embed_fp: dict[str, Any]
    embed_fp_id: str
    summary_fp: dict[str, Any] | None
    summary_fp_id: str | None
    dim: int
    embed_model_id: str
    input_type: str | None


def _passthrough(config: JobConfig, doc: Document) -> dict[str, Any] | None:
    if not config.passthrough:
        return None
    return {name: doc.extra.get(name) for name in config.passthrough}


@dataclass
class _Embeddings:
    """A part's embedding rows, column by column (no dict per row): ``columns`` per field
    of the schema but the embedding and those the same for every row (``constants``);
    ``vectors`` one array per row; ``extras`` the passthrough values per row (empty when
    nothing passes through)."""

    columns: dict[str, list[Any]]
    constants: dict[str, Any]
    vectors: list[np.ndarray] = field(default_factory=list)
    extras: list[dict[str, Any]] = field(default_factory=list)


_ROW_FIELDS = (
    "doc_id",
    "chunk_id",
    "chunk_index",
    "char_start",
    "char_end",
    "token_count",
    "char_count",
    "model_version",
    "truncated",
    "content_hash",
    "section",
    "page",
)


def _rows(t: CommitTarget, part: PartWork) -> tuple[_Embeddings, list[dict[str, Any]]]:
    config, now = t.config, datetime.now(UTC)
    keep_text = config.keep_chunk_text
    constants: dict[str, Any] = {
        "model_id": t.embed_model_id,
        "input_type": t.input_type,
        "run_id": config.run_id,
        "embedded_at": now,
    }
    columns: dict[str, list[Any]] = {name: [] for name in _ROW_FIELDS}
    if keep_text:
        columns["text"] = []
    else:
        constants["text"] = None
    emb = _Embeddings(columns, constants)
    doc_ids, chunk_ids, indexes = columns["doc_id"], columns["chunk_id"], columns["chunk_index"]
    starts, ends, tokens = columns["char_start"], columns["char_end"], columns["token_count"]
    counts, versions = columns["char_count"], columns["model_version"]
    truncated, hashes = columns["truncated"], columns["content_hash"]
    sections, pages = columns["section"], columns["page"]
    summaries: list[dict[str, Any]] = []
    for w in part.docs:
        extra = _passthrough(config, w.doc)
        if w.embed and not w.transient:
            for c, hit in zip(w.chunks, w.hits, strict=True):
                if hit is None:
                    continue  # a permanent failure: its failure row says why
                doc_ids.append(c.doc_id)
                chunk_ids.append(c.chunk_id)
                indexes.append(c.chunk_index)
                starts.append(c.char_start)
                ends.append(c.char_end)
                tokens.append(c.token_count)
                counts.append(len(c.text))
                if keep_text:
                    columns["text"].append(c.text)
                emb.vectors.append(hit[0])
                versions.append(hit[2])
                truncated.append(hit[1])
                hashes.append(c.content_hash)
                sections.append(c.section)
                pages.append(c.page)
                if extra is not None:
                    emb.extras.append(extra)
        s = w.summary
        if s is not None:
            summaries.append(
                {
                    "doc_id": w.doc.doc_id,
                    "summary": s.summary,
                    "model_id": s.model_id,
                    "model_version": s.model_version,
                    "prompt_fingerprint": t.summary_fp_id,
                    "input_tokens": s.input_tokens,
                    "output_tokens": s.output_tokens,
                    "summary_calls": s.calls,
                    "content_hash": w.content_hash,
                    "run_id": config.run_id,
                    "created_at": now,
                    **(extra or {}),
                }
            )
    return emb, summaries


def write_part(t: CommitTarget, part: PartWork) -> tuple[int, int, list[Failure], int]:
    """Stage the part's tables and commit them (blocking). Returns (embedding rows,
    summary rows, failures, characters embedded)."""
    embeddings, summaries = _rows(t, part)
    rows = len(embeddings.vectors)
    failures = list(part.failures) + [f for w in part.docs for f in w.failures]
    config, name = t.config, part_name(t.shard_id, part.seq)
    file_meta = {
        "oci_genai_batch.pipeline_version": PIPELINE_VERSION,
        "oci_genai_batch.run_id": config.run_id,
    }
    files: dict[str, str] = {}
    if rows:
        meta = {
            **file_meta,
            "oci_genai_batch.embed_fingerprint": t.embed_fp_id,
            "oci_genai_batch.embed_fingerprint_json": to_json_text(t.embed_fp),
            "oci_genai_batch.dimension": str(t.dim),
        }
        table = embeddings_table(
            embeddings.columns, embeddings.constants, embeddings.vectors, t.dim
        )
        table = add_passthrough(table, embeddings.extras, config.passthrough)
        t.store.stage_parquet(f"embeddings/{name}", table, meta)
        files["embeddings"] = f"embeddings/{name}"
    if summaries:
        table = pa.Table.from_pylist(summaries, schema=SUMMARIES_SCHEMA)
        table = add_passthrough(table, summaries, config.passthrough)
        smeta = {
            **file_meta,
            "oci_genai_batch.summary_fingerprint_json": to_json_text(t.summary_fp),
        }
        t.store.stage_parquet(f"summaries/{name}", table, smeta)
        files["summaries"] = f"summaries/{name}"
    if failures:
        table = failures_table(failures, config.run_id)
        t.store.stage_parquet(f"failures/{name}", table, file_meta)
        files["failures"] = f"failures/{name}"
    docs = [
        [w.doc.doc_id, w.content_hash, w.embed_state, w.summary_state]
        for w in part.docs
        if w.embed_state is not None or w.summary_state is not None
    ]
    t.checkpoint.commit(
        CommitRecord(
            shard=t.shard_id,
            seq=part.seq,
            run_id=config.run_id,
            committed_at=datetime.now(UTC).isoformat(),
            embed_fp=t.embed_fp_id,
            summary_fp=t.summary_fp_id,
            files=files,
            docs=docs,
            counts={
                "embeddings": rows,
                "summaries": len(summaries),
                "failures": len(failures),
            },
        )
    )
    return rows, len(summaries), failures, sum(embeddings.columns["char_count"])


async def commit_stage(
    target: CommitTarget,
    inbox: asyncio.Queue[PartWork | None],
    report: ShardReport,
    on_committed: Callable[[PartWork], None],
) -> None:
    """Settled parts in, one at a time, until None."""
    while True:
        part = await inbox.get()
        if part is None:
            return
        rows, summaries, failures, chars = await asyncio.to_thread(write_part, target, part)
        report.add("parts_committed", 1)
        report.add("chunks_embedded", rows)
        report.add("summaries", summaries)
        report.add("characters_embedded", chars)
        report.add("failures", len(failures))
        for f in failures:
            report.add_failure(f.stage, f.error_class)
        report.add(
            "documents_completed",
            sum(1 for w in part.docs if w.embed_state == OK or w.summary_state == OK),
        )
        on_committed(part)


__all__ = ["CommitTarget", "commit_stage", "write_part"]
