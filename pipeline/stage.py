"""One shard's work: read → skip what is done → chunk → embed and summarize → commit parts.

Parts are processed a few at a time (``parts_in_flight``) so reading, chunking and
writing overlap the model calls, while memory stays bounded by that count times the
source batch size.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.checkpoint import FAILED, OK, Checkpoint, CommitRecord, fingerprint_id, part_name
from pipeline.chunking import ChunkSettings, chunk_document
from pipeline.config import JobConfig
from pipeline.errors import GenAIError
from pipeline.execute import Caller, TextFailure
from pipeline.fingerprint import fingerprints
from pipeline.genai.base import Backend, SummarySettings
from pipeline.models import (
    PIPELINE_VERSION,
    SUMMARIES_SCHEMA,
    Chunk,
    Document,
    Failure,
    SourceBatch,
)
from pipeline.report import ShardReport
from pipeline.sinks import OutputStore
from pipeline.sources import SourceOptions, SourceUnit, read_unit
from pipeline.tables import add_passthrough, embeddings_table, failures_table, to_json_text
from pipeline.throttle import Budget

log = logging.getLogger(__name__)

_CACHE_ENTRIES = 4096  # identical chunk texts across parts of a shard are embedded once


@dataclass
class PartResult:
    embeddings: list[dict[str, Any]] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    docs: list[list[str | None]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


class ShardWorker:
    def __init__(
        self,
        shard_id: str,
        units: list[SourceUnit],
        config: JobConfig,
        backend: Backend,
        store: OutputStore,
        options: SourceOptions,
        chunking: ChunkSettings,
        *,
        on_progress: Callable[[int, int], None] | None = None,
        parts_in_flight: int = 2,
    ) -> None:
        self.shard_id = shard_id
        self.units = units
        self.config = config
        self.backend = backend
        self.store = store
        self.options = options
        self.chunking = chunking
        self.on_progress = on_progress
        self.parts_in_flight = parts_in_flight
        self.checkpoint = Checkpoint(store)
        self.report = ShardReport(shard_id=shard_id, run_id=config.run_id)
        self.embed_fp, self.summary_fp = fingerprints(config, backend, chunking)
        self.embed_fp_id = fingerprint_id(self.embed_fp)
        self.summary_fp_id = fingerprint_id(self.summary_fp) if self.summary_fp else None
        self.settings = SummarySettings(
            length=config.summary_length,
            format=config.summary_format,
            extractiveness=config.summary_extractiveness,
        )
        self._cache: OrderedDict[str, tuple[np.ndarray, bool]] = OrderedDict()
        self._file_meta = {
            "oci_genai_batch.pipeline_version": PIPELINE_VERSION,
            "oci_genai_batch.run_id": config.run_id,
        }

    # ------------------------------------------------------------------ driver

    def _batches(self) -> Iterator[SourceBatch]:
        for unit in self.units:
            yield from read_unit(unit, self.options)

    async def run(self) -> ShardReport:
        started = time.monotonic()
        next_seq, removed = self.checkpoint.recover(self.shard_id)
        self.report.counts["uncommitted_files_removed"] = len(removed)
        index = self.checkpoint.load_index(self.embed_fp_id, self.summary_fp_id)
        budget = Budget(
            max_rpm=self.config.max_rpm,
            max_tpm=self.config.max_tpm,
            max_in_flight=self.config.max_in_flight,
            max_request_tokens=self.chunking.max_tokens * self.backend.max_batch_inputs,
        )
        caller = Caller(self.backend, budget, max_attempts=self.config.max_attempts)
        pending: set[asyncio.Task[None]] = set()
        seq = next_seq
        batches = self._batches()
        while True:
            # reading and parsing is blocking work: keep it off the event loop
            batch = await asyncio.to_thread(next, batches, None)
            if batch is None:
                break
            todo_embed = [
                d
                for d in batch.documents
                if index.needs_embedding(d.doc_id, d.content_hash, self.config.retry_failed)
            ]
            todo_summary = [
                d
                for d in batch.documents
                if self.summary_fp_id
                and index.needs_summary(d.doc_id, d.content_hash, self.config.retry_failed)
            ]
            skipped = len(
                {d.doc_id for d in batch.documents}
                - {d.doc_id for d in todo_embed}
                - {d.doc_id for d in todo_summary}
            )
            self.report.add("documents_read", len(batch.documents))
            self.report.add("documents_skipped", skipped)
            if not todo_embed and not todo_summary and not batch.failures:
                self._progress(len(batch.documents))
                continue
            while len(pending) >= self.parts_in_flight:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            pending.add(
                asyncio.create_task(self._part(seq, batch, todo_embed, todo_summary, caller))
            )
            seq += 1
        if pending:
            await asyncio.gather(*pending)
        self.report.calls.merge(caller.stats)
        self.report.seconds = time.monotonic() - started
        self.report.adaptive_cuts = budget.concurrency.cuts
        return self.report

    def _progress(self, n: int) -> None:
        if self.on_progress:
            self.on_progress(n, self.report.counts.get("chunks_embedded", 0))

    # ------------------------------------------------------------------ one part

    async def _part(
        self,
        seq: int,
        batch: SourceBatch,
        todo_embed: list[Document],
        todo_summary: list[Document],
        caller: Caller,
    ) -> None:
        result = PartResult(failures=list(batch.failures))
        states: dict[str, list[str | None]] = {}
        for d in batch.documents:
            states[d.doc_id] = [d.doc_id, d.content_hash, None, None]
        await asyncio.gather(
            self._embed(todo_embed, caller, result, states),
            self._summarize(todo_summary, caller, result, states),
        )
        result.docs = [s for s in states.values() if s[2] is not None or s[3] is not None]
        # Parquet encoding and file I/O are blocking: keep them off the event loop
        await asyncio.to_thread(self._commit, seq, result)
        self.report.add("parts_committed", 1)
        self.report.add("failures", len(result.failures))
        for f in result.failures:
            self.report.add_failure(f.stage, f.error_class)
        self.report.add(
            "documents_completed", sum(1 for d in result.docs if d[2] == OK or d[3] == OK)
        )
        self.report.add("characters_embedded", sum(r["char_count"] for r in result.embeddings))
        self._progress(len(batch.documents))

    async def _embed(
        self,
        docs: list[Document],
        caller: Caller,
        result: PartResult,
        states: dict[str, list[str | None]],
    ) -> None:
        if not docs:
            return
        chunks: list[Chunk] = []
        by_doc: dict[str, list[Chunk]] = {}
        extras = {d.doc_id: self._passthrough(d) for d in docs}
        for d in docs:
            try:
                doc_chunks = list(chunk_document(d, self.backend.token_counter, self.chunking))
            except Exception as exc:  # a chunker bug must not take the batch down
                result.failures.append(
                    Failure(d.doc_id, "chunk", type(exc).__name__, f"{d.doc_id}: {exc}")
                )
                states[d.doc_id][2] = FAILED
                continue
            by_doc[d.doc_id] = doc_chunks
            chunks.extend(doc_chunks)
        # identical texts are sent once: within this part, and across recent parts
        unique: dict[str, int] = {}
        # vectors this part will use, pinned here so the shared cache may evict freely
        known: dict[str, tuple[np.ndarray, bool]] = {}
        texts: list[str] = []
        tokens: list[int] = []
        for c in chunks:
            if c.text in unique or c.text in known:
                continue
            cached = self._cache.get(c.text)
            if cached is not None:
                known[c.text] = cached
                continue
            unique[c.text] = len(texts)
            texts.append(c.text)
            tokens.append(c.token_count)
        self.report.add("chunks", len(chunks))
        self.report.add("chunks_deduplicated", len(chunks) - len(texts))
        results, failures = await caller.embed(texts, tokens)
        failed_at: dict[int, TextFailure] = {f.index: f for f in failures}
        for i, text in enumerate(texts):
            r = results[i]
            if r is not None:
                known[text] = (r[0], r[1])
                self._remember(text, known[text])
        now = datetime.now(UTC)
        model_version = next((r[2].model_version for r in results if r is not None), None)
        for doc_id, doc_chunks in by_doc.items():
            rows: list[dict[str, Any]] = []
            doc_failures: list[Failure] = []
            transient = False
            for c in doc_chunks:
                hit = known.get(c.text)
                if hit is None:
                    tf = failed_at.get(unique.get(c.text, -1))
                    err = tf.error if tf else GenAIError("no result for this chunk")
                    transient = transient or err.retryable
                    doc_failures.append(self._failure(c, err, tf.attempts if tf else 0))
                    continue
                rows.append(self._embedding_row(c, hit, model_version, now))
                rows[-1].update(extras[doc_id])
            result.failures.extend(doc_failures)
            if transient:
                # all or nothing for a document with a retryable failure: a re-run redoes
                # the whole document, so none of its rows may be committed now
                self.report.add("documents_pending", 1)
                continue
            result.embeddings.extend(rows)
            states[doc_id][2] = FAILED if doc_failures else OK
        self.report.add("chunks_embedded", len(result.embeddings))
        self.report.add("chunks_sent", len(texts))

    def _passthrough(self, doc: Document) -> dict[str, Any]:
        return {name: doc.extra.get(name) for name in self.config.passthrough}

    def _remember(self, text: str, value: tuple[np.ndarray, bool]) -> None:
        self._cache[text] = value
        self._cache.move_to_end(text)
        while len(self._cache) > _CACHE_ENTRIES:
            self._cache.popitem(last=False)

    def _embedding_row(
        self, c: Chunk, hit: tuple[np.ndarray, bool], version: str | None, now: datetime
    ) -> dict[str, Any]:
        return {
            "doc_id": c.doc_id,
            "chunk_id": c.chunk_id,
            "chunk_index": c.chunk_index,
            "char_start": c.char_start,
            "char_end": c.char_end,
            "token_count": c.token_count,
            "char_count": len(c.text),
            "text": c.text if self.config.keep_chunk_text else None,
            "embedding": hit[0],
            "model_id": self.backend.embed_model_id,
            "model_version": version,
            "input_type": getattr(self.backend, "input_type", None),
            "truncated": bool(hit[1]),
            "content_hash": c.content_hash,
            "run_id": self.config.run_id,
            "embedded_at": now,
        }

    def _failure(self, c: Chunk, err: GenAIError, attempts: int) -> Failure:
        return Failure(
            doc_id=c.doc_id,
            stage="embed",
            error_class=type(err).__name__,
            message=f"chunk {c.chunk_index} of {c.doc_id}: {err}",
            permanent=not err.retryable,
            chunk_id=c.chunk_id,
            chunk_index=c.chunk_index,
            http_status=err.status,
            oci_code=err.code,
            opc_request_id=err.request_id,
            attempts=attempts,
        )

    async def _summarize(
        self,
        docs: list[Document],
        caller: Caller,
        result: PartResult,
        states: dict[str, list[str | None]],
    ) -> None:
        if not docs:
            return
        texts = [d.text for d in docs]
        # a rough token figure for the tokens-per-minute budget: ~4 characters a token
        tokens = [max(1, len(t) // 4) for t in texts]
        summaries, failures = await caller.summarize(texts, tokens, self.settings)
        now = datetime.now(UTC)
        for f in failures:
            d = docs[f.index]
            result.failures.append(
                Failure(
                    doc_id=d.doc_id,
                    stage="summarize",
                    error_class=type(f.error).__name__,
                    message=f"summary of {d.doc_id}: {f.error}",
                    permanent=not f.error.retryable,
                    http_status=f.error.status,
                    oci_code=f.error.code,
                    opc_request_id=f.error.request_id,
                    attempts=f.attempts,
                )
            )
            if not f.error.retryable:
                states[d.doc_id][3] = FAILED
        for d, s in zip(docs, summaries, strict=True):
            if s is None:
                continue
            states[d.doc_id][3] = OK
            result.summaries.append(
                {
                    "doc_id": d.doc_id,
                    "summary": s.summary,
                    "model_id": s.model_id,
                    "model_version": s.model_version,
                    "prompt_fingerprint": self.summary_fp_id,
                    "input_tokens": s.input_tokens,
                    "output_tokens": s.output_tokens,
                    "content_hash": d.content_hash,
                    "run_id": self.config.run_id,
                    "created_at": now,
                    **self._passthrough(d),
                }
            )
        self.report.add("summaries", len(result.summaries))

    # ------------------------------------------------------------------ commit

    def _commit(self, seq: int, result: PartResult) -> None:
        name = part_name(self.shard_id, seq)
        files: dict[str, str] = {}
        meta = {
            **self._file_meta,
            "oci_genai_batch.embed_fingerprint": fingerprint_id(self.embed_fp),
            "oci_genai_batch.embed_fingerprint_json": to_json_text(self.embed_fp),
            "oci_genai_batch.dimension": str(self.backend.dim),
        }
        if result.embeddings:
            table = embeddings_table(result.embeddings, self.backend.dim)
            table = add_passthrough(table, result.embeddings, self.config.passthrough)
            self.store.stage_parquet(f"embeddings/{name}", table, meta)
            files["embeddings"] = f"embeddings/{name}"
        if result.summaries:
            table = pa.Table.from_pylist(result.summaries, schema=SUMMARIES_SCHEMA)
            table = add_passthrough(table, result.summaries, self.config.passthrough)
            smeta = {
                **self._file_meta,
                "oci_genai_batch.summary_fingerprint_json": to_json_text(self.summary_fp),
            }
            self.store.stage_parquet(f"summaries/{name}", table, smeta)
            files["summaries"] = f"summaries/{name}"
        if result.failures:
            table = failures_table(result.failures, self.config.run_id)
            self.store.stage_parquet(f"failures/{name}", table, self._file_meta)
            files["failures"] = f"failures/{name}"
        counts = {
            "embeddings": len(result.embeddings),
            "summaries": len(result.summaries),
            "failures": len(result.failures),
        }
        self.checkpoint.commit(
            CommitRecord(
                shard=self.shard_id,
                seq=seq,
                run_id=self.config.run_id,
                committed_at=datetime.now(UTC).isoformat(),
                embed_fp=self.embed_fp_id,
                summary_fp=self.summary_fp_id,
                files=files,
                docs=result.docs,
                counts=counts,
            )
        )
