"""The three entry points of a run: ``plan`` → ``run_shard`` (per shard) → ``commit``.

``run`` chains them in one process (the CLI); Airflow calls each from its own task.
Shard specs and shard reports are small JSON-able dicts: they travel through XCom.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from pipeline import deletions, storage
from pipeline.budget import make_budget
from pipeline.checkpoint import Checkpoint
from pipeline.chunking import ChunkSettings
from pipeline.compact import finish_pending
from pipeline.config import JobConfig
from pipeline.deletions import summary_path as deletions_summary_path
from pipeline.errors import ConfigError, PipelineError
from pipeline.genai import make_backend
from pipeline.genai.base import Backend
from pipeline.lease import run_lease, shard_lease
from pipeline.models import PIPELINE_VERSION
from pipeline.preflight import preflight
from pipeline.report import RunReport, ShardReport
from pipeline.shard import run_shard_stages
from pipeline.sinks import OutputStore
from pipeline.sources import SourceOptions, SourceUnit, find_duplicates, list_units
from pipeline.sources.duplicates import duplicates_path
from pipeline.throttle import Budget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSpec:
    """Which source units one shard reads. ``shard_id`` is derived from the units, so the
    same source split the same way gives the same ids (and so the same checkpoints)."""

    shard_id: str
    units: list[SourceUnit]
    est_docs: int = 0
    est_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "shard_id": self.shard_id,
            "units": [asdict(u) for u in self.units],
            "est_docs": self.est_docs,
            "est_bytes": self.est_bytes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardSpec:
        return cls(
            shard_id=data["shard_id"],
            units=[SourceUnit(**u) for u in data["units"]],
            est_docs=data.get("est_docs", 0),
            est_bytes=data.get("est_bytes", 0),
        )


def source_options(config: JobConfig) -> SourceOptions:
    return SourceOptions(
        id_column=config.id_column,
        text_column=config.text_column,
        passthrough=config.passthrough,
        json_text_field=config.json_text_field,
        batch_size=config.batch_docs,
        glob=config.glob,
        follow_links=config.follow_links,
        modified_since=config.modified_window[0],
        modified_until=config.modified_window[1],
    )


def chunk_settings(config: JobConfig, backend: Backend) -> ChunkSettings:
    wanted = config.chunk_tokens or config.default_chunk_tokens
    max_tokens = min(wanted, backend.max_input_tokens)
    return ChunkSettings(max_tokens=max_tokens, overlap=config.chunk_overlap)


def _unit_docs(unit: SourceUnit) -> int:
    if unit.kind == "parquet" and unit.row_end is not None:
        return unit.row_end - unit.row_start
    return 1


def _unit_key(unit: SourceUnit) -> dict[str, Any]:
    # fields added later are left out while unset, so shard ids stay what they were
    data = asdict(unit)
    for name in ("error_class", "error"):
        if data.get(name) is None:
            data.pop(name, None)
    # which version of a file was listed is not part of a shard's identity: a shard id
    # names the same files however they change, so its checkpoints and leftovers stay its
    for name in ("mtime", "etag", "md5"):
        data.pop(name, None)
    return data


def plan(config: JobConfig) -> list[ShardSpec]:
    """List the source and split it into ``config.shards`` shards of similar size.

    With more than one shard, the id column of every Parquet unit is scanned for ids that
    occur more than once: the later copies are written to the run's state (see
    :class:`pipeline.sources.Duplicates`) for the shards to dead-letter.

    Raises ``SourceError`` / ``ConfigError`` before any model call when the source or
    the settings are unusable."""
    specs, units = _split(config)
    _plan_duplicates(config, units, source_options(config), len(specs))
    return specs


def _split(config: JobConfig) -> tuple[list[ShardSpec], list[SourceUnit]]:
    """The shard specs and the units they hold: the plan without touching the output."""
    storage.configure(config)
    options = source_options(config)
    units = list_units(config.source, options)
    n = max(1, min(config.shards, len(units)))
    groups: list[list[SourceUnit]] = [[] for _ in range(n)]
    weights = [0] * n
    # largest first onto the lightest shard; then each shard's units back in source order
    order = sorted(range(len(units)), key=lambda i: -max(units[i].size, 1))
    for i in order:
        k = weights.index(min(weights))
        groups[k].append(units[i])
        weights[k] += max(units[i].size, 1)
    position = {id(u): i for i, u in enumerate(units)}
    specs = []
    for group in groups:
        if not group:
            continue
        group.sort(key=lambda u: position[id(u)])
        key = orjson.dumps([_unit_key(u) for u in group], option=orjson.OPT_SORT_KEYS)
        specs.append(
            ShardSpec(
                shard_id=hashlib.blake2b(key, digest_size=6).hexdigest(),
                units=group,
                est_docs=sum(_unit_docs(u) for u in group),
                est_bytes=sum(u.size for u in group),
            )
        )
    return specs, units


def _plan_duplicates(
    config: JobConfig, units: list[SourceUnit], options: SourceOptions, shards: int
) -> None:
    """Find ids repeated across shards and record them for the run (one shard catches
    its own repeats while reading, so a single-shard run needs no scan)."""
    store = OutputStore(config.output)
    found = None
    if shards > 1:
        started = time.monotonic()
        found = find_duplicates(units, options)
        log.info(
            "plan: scanned the ids of %d units in %.2fs, %d later copies",
            len(units),
            time.monotonic() - started,
            len(found or ()),
        )
    if found is not None:
        found.save(store, config.run_id)
    elif store.exists(duplicates_path(config.run_id)):
        # a plan made again for the same run id must not keep a stale list
        store.delete(duplicates_path(config.run_id))


def run_shard(
    spec: ShardSpec | dict[str, Any],
    config: JobConfig,
    *,
    budget: Budget | None = None,
    backend: Backend | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Process one shard to completion; safe to call again after any interruption.

    ``budget`` is the rate budget its calls draw on, built by the caller
    (``pipeline.budget.make_budget(config)`` when None). It is closed when the shard ends:
    its connections, if any, belong to this call's event loop."""
    if isinstance(spec, dict):
        spec = ShardSpec.from_json(spec)
    storage.configure(config)
    budget = budget or make_budget(config)

    async def go() -> dict[str, Any]:
        try:
            return await _run_shard(spec, config, backend, budget, on_progress)
        finally:
            await budget.aclose()

    return asyncio.run(go())


async def _run_shard(
    spec: ShardSpec,
    config: JobConfig,
    backend: Backend | None,
    budget: Budget,
    on_progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    own_backend = backend is None
    backend = backend or make_backend(config)
    store = OutputStore(config.output)
    try:
        # one live writer per shard; on the CLI path this joins the run lease run() holds,
        # in Airflow it joins (or takes) the run's lease itself
        with shard_lease(store, config.run_id, spec.shard_id):
            report = await run_shard_stages(
                spec.shard_id,
                spec.units,
                config,
                backend,
                store,
                source_options(config),
                chunk_settings(config, backend),
                on_progress=on_progress,
                budget=budget,
            )
    finally:
        if own_backend:
            await backend.aclose()
    data = report.to_json()
    store.write_json(f"_state/reports/{config.run_id}/{spec.shard_id}.json", data)
    return data


def commit(config: JobConfig, shard_reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge shard reports into ``OUTPUT/report.json``, fold the run's commit records into
    the compacted index (``Checkpoint.compact_index``), and return the report.

    The index is a summary of the commit records, which stay the truth: a compaction that
    fails is logged and left to the next run's commit (shards meanwhile read the records
    it did not fold)."""
    storage.configure(config)
    report = RunReport.merge(
        [ShardReport.from_json(r) for r in shard_reports],
        run_id=config.run_id,
        config=config.public_dict(),
        pipeline_version=PIPELINE_VERSION,
        price_per_million_chars=config.embed_price,
        currency=config.currency,
    )
    data = report.to_json()
    store = OutputStore(config.output)
    if store.exists(deletions_summary_path(config.run_id)):
        data["deletions"] = store.read_json(deletions_summary_path(config.run_id))
    store.write_json("report.json", data)
    started = time.monotonic()
    try:
        done = Checkpoint(store).compact_index()
    except (OSError, ValueError, KeyError) as exc:
        log.warning(
            "the index was not compacted (%s: %s); the next run retries", type(exc).__name__, exc
        )
    else:
        if done is not None:
            log.debug(
                "index generation %d: %d commit records, %d entries folded in %.1fs",
                done.generation,
                done.records,
                done.rows,
                time.monotonic() - started,
            )
    return data


def record_deletions(config: JobConfig, shard_ids: list[str]) -> dict[str, Any]:
    """Record the documents that left the source since the last complete run (see
    :mod:`pipeline.deletions`); the caller holds (or has joined) the run lease."""
    storage.configure(config)
    return deletions.record_deletions(OutputStore(config.output), config, shard_ids)


def dry_run(config: JobConfig) -> dict[str, Any]:
    """What a run would send (documents, chunks, characters, embed and chat requests),
    cost and take at the configured limits, without a model call
    (:func:`pipeline.preview.preview`, as JSON)."""
    from pipeline.preview import preview

    return preview(config).to_json()


def check_cost_ceiling(config: JobConfig) -> None:
    """With ``max_cost`` set, refuse to start when what the run would send costs more.

    The estimate counts every valid document (not only unfinished ones), so it is an upper
    bound of what the run can spend on the priced models."""
    if config.max_cost is None:
        return
    from pipeline.preview import format_money, preview

    p = preview(config)
    if p.estimated_cost is not None and p.estimated_cost > config.max_cost:
        raise ConfigError(
            f"max_cost: the source holds {p.characters} characters ({p.embed_characters}"
            f" in {p.embed_requests} embed requests, {p.summary_characters} in"
            f" {p.summary_requests} summary requests), an estimated"
            f" {format_money(p.estimated_cost, p.currency)}; over the ceiling"
            f" {format_money(config.max_cost, p.currency)}"
        )


def prepare(config: JobConfig) -> list[ShardSpec]:
    """Everything that must hold before any paid call, for the CLI and the Airflow plan
    task alike: the source plans (``plan``), its cost is under the ceiling
    (``check_cost_ceiling``), the output is writable (``preflight``). Returns the specs.

    Nothing touches the output before the source and the ceiling passed, and nothing but
    the preflight probe before that probe passed: the plan's own writes (the run's
    duplicate ids) come last, so a missing bucket is named by the probe."""
    specs, units = _split(config)
    check_cost_ceiling(config)
    preflight(config)
    _plan_duplicates(config, units, source_options(config), len(specs))
    return specs


@dataclass
class RunResult:
    report: dict[str, Any]
    shards: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def run(
    config: JobConfig,
    *,
    on_plan: Callable[[list[ShardSpec]], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> RunResult:
    """plan → preflight → every shard in turn → commit, in this process.

    Holds the output's run lease from after planning (before any model call) to the end:
    a second run on the same output is refused with LockedError naming this one."""
    started = time.monotonic()
    specs = prepare(config)
    store = OutputStore(config.output)
    with run_lease(store, config.run_id):
        finish_pending(store)  # a compaction killed mid-way: finish it before writing
        if on_plan:
            on_plan(specs)
        reports = asyncio.run(_run_shards(specs, config, on_progress))
        record_deletions(config, [s.shard_id for s in specs])
        report = commit(config, reports)
    return RunResult(report, reports, time.monotonic() - started)


async def _run_shards(
    specs: list[ShardSpec],
    config: JobConfig,
    on_progress: Callable[[int, int], None] | None,
) -> list[dict[str, Any]]:
    """Every shard in turn on one event loop, sharing one backend (one connection pool)
    and one rate budget (the shards run one at a time: the whole budget is theirs)."""
    backend = make_backend(config)
    budget = make_budget(config)
    try:
        return [await _run_shard(spec, config, backend, budget, on_progress) for spec in specs]
    finally:
        await budget.aclose()
        await backend.aclose()


__all__ = [
    "PipelineError",
    "RunResult",
    "ShardSpec",
    "commit",
    "dry_run",
    "plan",
    "prepare",
    "record_deletions",
    "run",
    "run_shard",
]
