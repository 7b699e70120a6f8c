"""A shard's live progress, written into the output: ``_state/progress/<run_id>/<shard>.json``.

``ProgressFile`` is an ``on_progress(docs, chunks)`` callback for ``runner.run_shard``: it
keeps time samples and rewrites the file atomically at most every ``every_s`` seconds, and
once more at ``close``. A reader (``pipeline.runview``, the Airflow runs page) needs nothing
but the output to show how far each shard is and how fast it went.

The file, one JSON object::

    {"run_id", "shard_id", "state": "running" | "done" | "failed", "attempt",
     "started_at", "updated_at",              # seconds since the epoch (wall clock)
     "docs", "chunks", "est_docs",            # est_docs: from the shard spec, or null
     "samples": [[t, docs, chunks], ...]}     # t: seconds since the epoch, at most ~max_samples

Progress is advisory: a failed write is logged and never fails the shard.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pipeline.sinks import OutputStore

log = logging.getLogger(__name__)

DEFAULT_MAX_SAMPLES = 300


def progress_dir(run_id: str) -> str:
    return f"_state/progress/{run_id}"


def progress_path(run_id: str, shard_id: str) -> str:
    return f"{progress_dir(run_id)}/{shard_id}.json"


def thin(samples: list[list[float]], cap: int) -> list[list[float]]:
    """At most ``cap`` samples: every other one dropped until it fits, first and last
    always kept (so the span of the run and its latest point stay exact)."""
    cap = max(cap, 2)
    while len(samples) > cap:
        last = samples[-1]
        samples = [*samples[:-1:2], last]
    return samples


class ProgressFile:
    """``on_progress(docs, chunks)`` that keeps a shard's progress file in the output.

    ``docs`` is per call (a batch just finished), ``chunks`` the shard's running total: the
    way ``ShardWorker`` reports them. ``est_docs`` is the shard spec's estimate (0 or None:
    unknown). Use it as a context manager, or call ``close`` (state ``done``) /
    ``close("failed")``; both write the file one last time."""

    def __init__(
        self,
        store: OutputStore | str,
        run_id: str,
        shard_id: str,
        *,
        est_docs: int | None = None,
        every_s: float = 10.0,
        max_samples: int = DEFAULT_MAX_SAMPLES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store if isinstance(store, OutputStore) else OutputStore(store)
        self.run_id = run_id
        self.shard_id = shard_id
        self.path = progress_path(run_id, shard_id)
        self.est_docs = est_docs or None
        self.every_s = every_s
        self.max_samples = max_samples
        self.clock = clock
        self.docs = 0
        self.chunks = 0
        self.state = "running"
        self.attempt = self._previous_attempt() + 1
        self.started_at = clock()
        self.samples: list[list[float]] = [[round(self.started_at, 3), 0, 0]]
        self._last_write = float("-inf")
        # the worker calls from its event loop; close may come from another thread
        self._lock = threading.Lock()
        self._write()

    def _previous_attempt(self) -> int:
        try:
            return int(self.store.read_json(self.path).get("attempt", 0))
        except Exception:  # no file yet (first attempt), or unreadable: start at 1
            return 0

    def __call__(self, docs: int, chunks: int) -> None:
        with self._lock:
            self.docs += docs
            self.chunks = max(self.chunks, chunks)
            now = self.clock()
            self.samples.append([round(now, 3), self.docs, self.chunks])
            # thin only past twice the cap: each call stays O(1) amortized
            if len(self.samples) > 2 * self.max_samples:
                self.samples = thin(self.samples, self.max_samples)
            due = now - self._last_write >= self.every_s
        if due:
            self._write()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "run_id": self.run_id,
                "shard_id": self.shard_id,
                "state": self.state,
                "attempt": self.attempt,
                "started_at": round(self.started_at, 3),
                "updated_at": round(self.clock(), 3),
                "docs": self.docs,
                "chunks": self.chunks,
                "est_docs": self.est_docs,
                "samples": thin(list(self.samples), self.max_samples),
            }

    def _write(self) -> None:
        data = self.snapshot()
        self._last_write = data["updated_at"]
        try:
            self.store.write_json(self.path, data)
        except Exception as exc:  # advisory: never fail a shard over its progress file
            log.warning("progress file %s not written: %s", self.store.display(self.path), exc)

    def close(self, state: str = "done") -> None:
        with self._lock:
            self.state = state
            now = self.clock()
            if self.samples[-1][0] != round(now, 3):
                self.samples.append([round(now, 3), self.docs, self.chunks])
        self._write()

    def __enter__(self) -> ProgressFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self.close("done" if exc_type is None else "failed")


def tee(*callbacks: Callable[[int, int], None]) -> Callable[[int, int], None]:
    """One ``on_progress`` that calls each of ``callbacks`` in turn (e.g. a log line and a
    progress file)."""

    def call(docs: int, chunks: int) -> None:
        for callback in callbacks:
            callback(docs, chunks)

    return call


__all__ = ["ProgressFile", "progress_dir", "progress_path", "tee", "thin"]
