"""One shard's work, as a chain of small stages joined by bounded channels:

    read → skip committed → chunk → admit (window, parts) → pack requests → call
         → (summarize) → assemble parts → commit

Each stage is one module with one input and one output type (see ``work``). Requests are
packed across documents and parts, so only the shard's last request may be partial. The
read-ahead is bounded by a window of chunk credits sized to keep ``max_in_flight``
requests busy (see :func:`window_sizes`), not by the corpus. Parts commit in any order,
each once all its documents are settled; only a part's commit record marks them done.

:func:`run_shard_stages` is the one entry point; :func:`make_caller` is the one place a
shard's ``Caller`` (retries, over the rate budget its runner built) is made.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from pipeline.checkpoint import Checkpoint, fingerprint_id
from pipeline.chunking import ChunkSettings
from pipeline.config import JobConfig
from pipeline.deletions import Seen, write_seen
from pipeline.execute import Caller
from pipeline.fingerprint import fingerprints, plain_embed_fingerprint, summary_settings
from pipeline.genai.base import Backend
from pipeline.models import SourceBatch
from pipeline.report import ShardReport
from pipeline.shard.assemble import PartLimits, Parts, admit_stage
from pipeline.shard.call import call_stage
from pipeline.shard.chunk import chunk
from pipeline.shard.commit import CommitTarget, commit_stage
from pipeline.shard.pack import FLUSH, Dedup, Packer, pack_stage
from pipeline.shard.read import read_stage
from pipeline.shard.skip import skip
from pipeline.shard.summarize import summarize_stage
from pipeline.shard.work import Admitted, DocWork, Flush, PartWork, Request, Window
from pipeline.sinks import OutputStore
from pipeline.sources import Duplicates, SourceOptions, SourceUnit
from pipeline.throttle import Budget

_BYTES_PER_ROW = 200  # ids, offsets, statistics: a row's overhead beside its vector


def make_caller(config: JobConfig, backend: Backend, budget: Budget) -> Caller:
    """The shard's model caller: its retry policy over ``budget`` (rate ceilings,
    adaptive pacing and concurrency; ``pipeline.budget.make_budget``). Made here and
    nowhere else."""
    return Caller(backend, budget, max_attempts=config.max_attempts)


def window_sizes(config: JobConfig, backend: Backend) -> tuple[int, int]:
    """(chunk credits, summary credits) of the read-ahead window: two rounds of full
    requests for every slot in flight, so the next round is packed while one is out."""
    chunks = 2 * config.max_in_flight * backend.max_batch_inputs
    summaries = max(2 * config.batch_docs, 4 * config.max_in_flight)
    return chunks, summaries


#: source batches that can be read but not yet under window credit: one in each of the
#: read, skip and chunk stages, one in each channel between them, one being admitted
BATCHES_BEFORE_WINDOW = 7


def read_ahead_bound(config: JobConfig, backend: Backend) -> int:
    """Most single-chunk documents read and not yet answered, at any instant."""
    return window_sizes(config, backend)[0] + BATCHES_BEFORE_WINDOW * config.batch_docs


async def _pump(
    fn: Callable[[Any], Any], inbox: asyncio.Queue[Any], out: asyncio.Queue[Any]
) -> None:
    while True:
        item = await inbox.get()
        if item is None:
            await out.put(None)
            return
        await out.put(fn(item))


def _first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def run_shard_stages(
    shard_id: str,
    units: list[SourceUnit],
    config: JobConfig,
    backend: Backend,
    store: OutputStore,
    options: SourceOptions,
    chunking: ChunkSettings,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    budget: Budget | None = None,
    caller: Caller | None = None,
    part_seconds: float = 30.0,
) -> ShardReport:
    """Process one shard to completion: safe to call again after any interruption
    (committed parts are kept, the rest is redone). Raises what must stop the shard
    (``AuthError``, ``SourceError``, storage errors) as itself. Calls go through
    ``caller``, else a Caller over ``budget`` (one of them is needed)."""
    started = time.monotonic()
    report = ShardReport(shard_id=shard_id, run_id=config.run_id)
    checkpoint = Checkpoint(store)
    first_seq, removed = checkpoint.recover(shard_id)
    report.counts["uncommitted_files_removed"] = len(removed)
    embed_fp, summary_fp = fingerprints(config, backend, chunking)
    embed_fp_id = fingerprint_id(embed_fp)
    summary_fp_id = fingerprint_id(summary_fp) if summary_fp else None
    plain_fp_id = fingerprint_id(plain_embed_fingerprint(embed_fp))
    index = checkpoint.load_index(embed_fp_id, summary_fp_id, plain_fp_id)
    if caller is None:
        if budget is None:
            raise ValueError("run_shard_stages needs a budget or a caller")
        caller = make_caller(config, backend, budget)
    settings = summary_settings(config)
    duplicates = Duplicates.load(store, config.run_id)  # None unless the plan found any
    target = CommitTarget(
        shard_id=shard_id,
        config=config,
        store=store,
        checkpoint=checkpoint,
        embed_fp=embed_fp,
        embed_fp_id=embed_fp_id,
        summary_fp=summary_fp,
        summary_fp_id=summary_fp_id,
        dim=backend.dim,
        embed_model_id=backend.embed_model_id,
        input_type=getattr(backend, "input_type", None),
    )
    chunk_credits, summary_credits = window_sizes(config, backend)
    window, summary_window = Window(chunk_credits), Window(summary_credits)

    def progress(docs: int) -> None:
        if on_progress and docs:
            on_progress(docs, report.counts.get("chunks_embedded", 0))

    seen = Seen()  # every id read, for deletions (pipeline.deletions)

    def skipped(batch: SourceBatch) -> Admitted:
        seen.add(batch)
        admitted = skip(
            batch, index, summaries=summary_fp_id is not None, retry_failed=config.retry_failed
        )
        report.add("documents_read", admitted.read)
        report.add("documents_skipped", admitted.skipped)
        progress(admitted.skipped)
        return admitted

    def committed(part: PartWork) -> None:
        parts.committed()
        progress(len(part.docs))

    batches: asyncio.Queue[SourceBatch | None] = asyncio.Queue(1)
    admitted: asyncio.Queue[Admitted | None] = asyncio.Queue(1)
    chunked: asyncio.Queue[Admitted | None] = asyncio.Queue(1)
    to_pack: asyncio.Queue[list[DocWork] | Flush | None] = asyncio.Queue()  # under credit
    to_summarize: asyncio.Queue[list[DocWork] | None] = asyncio.Queue()  # under credit
    requests: asyncio.Queue[Request | None] = asyncio.Queue(1)
    to_commit: asyncio.Queue[PartWork | None] = asyncio.Queue()  # bounded by commit_room

    parts = Parts(
        first_seq,
        PartLimits(config.part_rows, config.part_bytes, part_seconds),
        to_commit,
        report,
        row_bytes=_BYTES_PER_ROW + 4 * backend.dim,
    )
    packer = Packer(
        Dedup(),
        window,
        requests,
        max_inputs=backend.max_batch_inputs,
        max_tokens=backend.max_batch_tokens,
    )

    def idle() -> None:
        if window.stalled or summary_window.stalled:
            to_pack.put_nowait(FLUSH)

    async def settle_then_commit(call: asyncio.Task[None], summ: asyncio.Task[None]) -> None:
        await call
        await summ
        if parts.unsettled:
            raise AssertionError(f"shard {shard_id}: parts {sorted(parts.unsettled)} unsettled")
        await to_commit.put(None)

    async def tick() -> None:
        while True:
            await asyncio.sleep(1.0)
            parts.tick()

    try:
        async with asyncio.TaskGroup() as group:
            ticker = group.create_task(tick())
            group.create_task(read_stage(units, options, batches, duplicates=duplicates))
            group.create_task(_pump(skipped, batches, admitted))
            group.create_task(
                _pump(lambda b: chunk(b, backend.token_counter, chunking), admitted, chunked)
            )
            group.create_task(
                admit_stage(
                    chunked,
                    parts,
                    window,
                    to_pack,
                    to_summarize,
                    summary_window,
                    keep_text=config.keep_chunk_text,
                )
            )
            group.create_task(pack_stage(packer, to_pack))
            call = group.create_task(
                call_stage(caller, packer, requests, config.max_in_flight, idle)
            )
            summ = group.create_task(
                summarize_stage(
                    caller,
                    settings,
                    to_summarize,
                    max_in_flight=config.max_in_flight,
                    most_batched=config.batch_docs,
                )
            )
            group.create_task(settle_then_commit(call, summ))
            await group.create_task(commit_stage(target, to_commit, report, committed))
            ticker.cancel()
    except BaseExceptionGroup as eg:
        raise _first_error(eg) from None
    finally:
        index.close()  # its lookup file
    await asyncio.to_thread(write_seen, store, config.run_id, shard_id, seen)
    report.add("chunks_sent", packer.sent)
    report.add("chunks_deduplicated", packer.chunks - packer.sent)
    report.calls.merge(caller.stats)
    report.seconds = time.monotonic() - started
    report.adaptive_cuts = caller.budget.snapshot().cuts
    return report


__all__ = ["make_caller", "read_ahead_bound", "run_shard_stages", "window_sizes"]
