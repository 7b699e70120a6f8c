"""What the Airflow tasks call: ``plan_job`` → ``run_shard_task`` (one per shard) →
``commit_job``. Plain Python (no Airflow import): the DAG files only wrap these.

Run state lives in the output, not in XCom. ``plan_job`` mints the run id once and writes
the full shard specs to ``OUTPUT/_state/runs/<run_id>/plan.json``; each shard writes its
report to ``OUTPUT/_state/reports/<run_id>/<shard>.json`` (``runner.run_shard``); the
commit reads those files. What each function returns (and so what crosses XCom) is small:
the job's settings, shard ids (or the specs themselves when they are tiny), counts and
URIs; never latency samples, vectors or text.

Errors: the core's own errors are raised as they are; :func:`is_permanent` says which of
them another try cannot fix (the DAG maps those to a failure without retries). A shard that
ends with documents still pending (transient failures that outlived the pipeline's retries)
raises :class:`ShardIncompleteError`, a transient error: the task's retry resumes the
shard from its checkpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from pipeline import runner, storage
from pipeline.config import JobConfig
from pipeline.errors import (
    AuthError,
    ConfigError,
    GenAIError,
    LockedError,
    PipelineError,
    SourceError,
)
from pipeline.lease import RunLease
from pipeline.progress import ProgressFile, tee
from pipeline.sinks import OutputStore

log = logging.getLogger(__name__)

# Specs inline in XCom when all of them together encode to at most this many bytes;
# otherwise the shard tasks get shard ids and read their spec from the plan file.
INLINE_SPECS_BYTES = 1024
PROGRESS_EVERY_S = 30.0

# The counts of a shard report worth showing in the UI (the rest stays in the report file)
_SHARD_COUNTS = (
    "documents_read",
    "documents_completed",
    "documents_skipped",
    "documents_pending",
    "failures",
    "chunks_embedded",
    "chunks_sent",
    "summaries",
)
_RUN_COUNTS = (*_SHARD_COUNTS, "characters_embedded")


class ShardIncompleteError(PipelineError):
    """A shard finished with documents pending (transient failures outlived the
    pipeline's own retries). Transient: a retry resumes from the shard's checkpoint."""

    def __init__(self, shard_id: str, pending: int) -> None:
        super().__init__(
            f"shard {shard_id}: {pending} document(s) still pending after transient"
            " failures; a retry resumes from the checkpoint"
        )
        self.shard_id = shard_id
        self.pending = pending


def is_permanent(exc: BaseException) -> bool:
    """Whether another try of the same task cannot succeed: bad settings, a source that
    cannot be read, refused credentials, an output held by another live run, or a model
    error the service classifies as permanent. Everything else is transient."""
    if isinstance(exc, ConfigError | SourceError | AuthError | LockedError):
        return True
    return isinstance(exc, GenAIError) and not exc.retryable


def plan_path(run_id: str) -> str:
    return f"_state/runs/{run_id}/plan.json"


def reports_dir(run_id: str) -> str:
    return f"_state/reports/{run_id}"


def _config(config_json: Mapping[str, Any] | str, overrides: Mapping[str, Any] | None) -> JobConfig:
    config = JobConfig.from_json(config_json)
    changes = {k: v for k, v in (overrides or {}).items() if v is not None}
    config = config.replace(**changes) if changes else config
    storage.configure(config)  # oci:// sources and outputs sign with the job's settings
    return config


def plan_job(
    conf: Mapping[str, Any],
    *,
    overrides: Mapping[str, Any] | None = None,
    inline_bytes: int = INLINE_SPECS_BYTES,
) -> dict[str, Any]:
    """Validate ``conf`` (JobConfig keys; a bad value raises ConfigError with JobConfig's
    message), mint the run id, list the source and write the plan into the output.

    ``overrides`` (e.g. OCI settings from an Airflow connection) fill keys ``conf`` leaves
    unset. Returns ``{"run_id", "config", "output", "plan", "shards", "counts"}`` where
    ``shards`` holds the specs when they are tiny, else their ids (read from ``plan``).
    A dry run returns ``{"dry_run": True, "preview": {...}, "shards": []}`` instead and
    writes nothing."""
    merged = {k: v for k, v in (overrides or {}).items() if v is not None}
    merged.update({k: v for k, v in conf.items() if v is not None})
    merged.pop("run_id", None)  # minted here, once for the whole DAG run
    config = JobConfig.from_mapping(merged, origin="conf")
    base = {"run_id": config.run_id, "config": config.to_json(), "output": config.output}
    if config.dry_run:
        preview = runner.dry_run(config)
        return {**base, "dry_run": True, "preview": preview, "shards": [], "counts": preview}
    # planned, under the cost ceiling, output writable: before any shard is paid for
    specs = [s.to_json() for s in runner.prepare(config)]
    store = OutputStore(config.output)
    path = plan_path(config.run_id)
    store.write_json(path, {"run_id": config.run_id, "shards": specs})
    inline = len(orjson.dumps(specs)) <= inline_bytes
    counts = {
        "shards": len(specs),
        "est_docs": sum(s["est_docs"] for s in specs),
        "est_bytes": sum(s["est_bytes"] for s in specs),
    }
    log.info(
        "run %s: %d shard(s), ~%d documents, plan at %s",
        config.run_id,
        counts["shards"],
        counts["est_docs"],
        store.display(path),
    )
    return {
        **base,
        "dry_run": False,
        "plan": path,
        "shards": specs if inline else [s["shard_id"] for s in specs],
        "counts": counts,
    }


def load_spec(config: JobConfig, shard_ref: Mapping[str, Any] | str) -> dict[str, Any]:
    """The full spec of ``shard_ref``: the spec itself, or a shard id looked up in the
    run's plan file."""
    if isinstance(shard_ref, Mapping):
        return dict(shard_ref)
    plan = OutputStore(config.output).read_json(plan_path(config.run_id))
    for spec in plan["shards"]:
        if spec["shard_id"] == shard_ref:
            return dict(spec)
    raise ConfigError(f"shard {shard_ref}: not in the plan of run {config.run_id}")


class ProgressLog:
    """``on_progress(docs, chunks)`` for ``runner.run_shard`` plus a timer that logs
    "documents, chunks/s, ETA" every ``every`` seconds (also when nothing moved, so a
    stalled shard still shows a line). ``docs`` is per call (a batch), ``chunks`` the
    shard's running total, as ``ShardWorker`` reports them."""

    def __init__(
        self,
        shard_id: str,
        est_docs: int,
        *,
        every: float = PROGRESS_EVERY_S,
        emit: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shard_id = shard_id
        self.est_docs = est_docs
        self.every = every
        self.emit = emit or log.info
        self.clock = clock
        self.docs = 0
        self.chunks = 0
        self._start = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, docs: int, chunks: int) -> None:
        with self._lock:
            self.docs += docs
            self.chunks = max(self.chunks, chunks)

    def line(self) -> str:
        with self._lock:
            docs, chunks = self.docs, self.chunks
        elapsed = max(self.clock() - self._start, 1e-9)
        rate = chunks / elapsed
        docs_rate = docs / elapsed
        left = max(self.est_docs - docs, 0)
        eta = f"{left / docs_rate:.0f} s" if docs_rate > 0 else "unknown"
        return (
            f"shard {self.shard_id}: {docs}/{self.est_docs} documents, {chunks} chunks,"
            f" {rate:.1f} chunks/s, ETA {eta}"
        )

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.emit(self.line())

    def __enter__(self) -> ProgressLog:
        self._thread = threading.Thread(target=self._loop, name="shard-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.emit(self.line())


def run_shard_task(
    config_json: Mapping[str, Any] | str,
    shard_ref: Mapping[str, Any] | str,
    *,
    overrides: Mapping[str, Any] | None = None,
    progress_every: float = PROGRESS_EVERY_S,
    emit: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run one shard (resumable: committed documents are skipped) and return its counts.

    Raises ShardIncompleteError when documents are left pending, so the task fails and
    its retry resumes; the shard's report is in the output either way."""
    config = _config(config_json, overrides)
    spec = load_spec(config, shard_ref)
    with (
        ProgressLog(
            spec["shard_id"], spec.get("est_docs", 0), every=progress_every, emit=emit
        ) as progress,
        # the runs page reads this file while the shard works
        ProgressFile(
            config.output, config.run_id, spec["shard_id"], est_docs=spec.get("est_docs", 0)
        ) as progress_file,
    ):
        report = runner.run_shard(spec, config, on_progress=tee(progress, progress_file))
    counts = report.get("counts", {})
    calls = report.get("calls", {})
    out = {
        "shard_id": spec["shard_id"],
        **{k: int(counts.get(k, 0)) for k in _SHARD_COUNTS},
        "calls": int(calls.get("calls", 0)),
        "retries": int(calls.get("retries", 0)),
        "throttled": int(calls.get("throttled", 0)),
        "seconds": report.get("seconds", 0.0),
    }
    if out["documents_pending"] > 0:
        raise ShardIncompleteError(spec["shard_id"], out["documents_pending"])
    return out


def commit_job(
    config_json: Mapping[str, Any] | str,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge the run's shard reports (read from ``OUTPUT/_state/reports/<run_id>/``, not
    from XCom) into ``OUTPUT/report.json``; return counts and where things are."""
    config = _config(config_json, overrides)
    store = OutputStore(config.output)
    folder = reports_dir(config.run_id)
    names = [n for n in store.list_files(folder) if n.endswith(".json")]
    reports = [store.read_json(f"{folder}/{name}") for name in names]
    report = runner.commit(config, reports)
    counts = report.get("counts", {})
    calls = report.get("calls", {})
    return {
        "run_id": config.run_id,
        "output": config.output,
        "report": store.display("report.json"),
        "shards": len(reports),
        **{k: int(counts.get(k, 0)) for k in _RUN_COUNTS},
        "calls": int(calls.get("calls", 0)),
        "retries": int(calls.get("retries", 0)),
        "throttled": int(calls.get("throttled", 0)),
        "estimated_cost": report.get("estimated_cost"),
    }


def deletions_job(
    config_json: Mapping[str, Any] | str,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Record the documents that left the source since the last complete run, from the
    ids the run's shards read (see :mod:`pipeline.deletions`). Joins the run's lease, so
    no compaction runs meanwhile. Returns ``{"status", "deleted", ...}``."""
    config = _config(config_json, overrides)
    if config.dry_run:
        return {"status": "skipped", "reason": "dry run", "deleted": 0}
    store = OutputStore(config.output)
    plan = store.read_json(plan_path(config.run_id))
    shard_ids = [spec["shard_id"] for spec in plan["shards"]]
    with RunLease(store, config.run_id).join():
        return runner.record_deletions(config, shard_ids)


def compact_job(
    config_json: Mapping[str, Any] | str,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Compact the output to its current rows (``pipeline.compact``), holding its run
    lease; returns the compaction's report."""
    from pipeline.compact import compact

    config = _config(config_json, overrides)
    return compact(config.output).to_json()


__all__ = [
    "ProgressLog",
    "ShardIncompleteError",
    "commit_job",
    "compact_job",
    "deletions_job",
    "is_permanent",
    "load_spec",
    "plan_job",
    "run_shard_task",
]
