"""Commit: a settled part in, its Parquet files and commit record out.

Rows are built here, from the documents the part holds: a document whose embedding had a
retryable failure contributes its failure rows but no embedding rows (a re-run redoes
it). Encoding and file I/O run in a worker thread; the commit record is the commit point
(see ``pipeline.checkpoint``), and only it marks the part's documents done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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


def _rows(t: CommitTarget, part: PartWork) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    config, now = t.config, datetime.now(UTC)
    embeddings: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    for w in part.docs:
        extra = _passthrough(config, w.doc)
        if w.embed and not w.transient:
            for c, hit in zip(w.chunks, w.hits, strict=True):
                if hit is None:
                    continue  # a permanent failure: its failure row says why
                row = {
                    "doc_id": c.doc_id,
                    "chunk_id": c.chunk_id,
                    "chunk_index": c.chunk_index,
                    "char_start": c.char_start,
                    "char_end": c.char_end,
                    "token_count": c.token_count,
                    "char_count": len(c.text),
                    "text": c.text if config.keep_chunk_text else None,
                    "embedding": hit[0],
                    "model_id": t.embed_model_id,
                    "model_version": hit[2],
                    "input_type": t.input_type,
                    "truncated": hit[1],
                    "content_hash": c.content_hash,
                    "run_id": config.run_id,
                    "embedded_at": now,
                }
                if extra:
                    row.update(extra)
                embeddings.append(row)
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
    return embeddings, summaries


def write_part(t: CommitTarget, part: PartWork) -> tuple[int, int, list[Failure], int]:
    """Stage the part's tables and commit them (blocking). Returns (embedding rows,
    summary rows, failures, characters embedded)."""
    embeddings, summaries = _rows(t, part)
    failures = list(part.failures) + [f for w in part.docs for f in w.failures]
    config, name = t.config, part_name(t.shard_id, part.seq)
    file_meta = {
        "oci_genai_batch.pipeline_version": PIPELINE_VERSION,
        "oci_genai_batch.run_id": config.run_id,
    }
    files: dict[str, str] = {}
    if embeddings:
        meta = {
            **file_meta,
            "oci_genai_batch.embed_fingerprint": t.embed_fp_id,
            "oci_genai_batch.embed_fingerprint_json": to_json_text(t.embed_fp),
            "oci_genai_batch.dimension": str(t.dim),
        }
        table = embeddings_table(embeddings, t.dim)
        table = add_passthrough(table, embeddings, config.passthrough)
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
                "embeddings": len(embeddings),
                "summaries": len(summaries),
                "failures": len(failures),
            },
        )
    )
    return len(embeddings), len(summaries), failures, sum(r["char_count"] for r in embeddings)


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
