"""Leases: refusal names the holder, dead holders are taken over, one run's shards share,
and of any number of contenders exactly one wins (threads on an in-memory CAS whose reads
are forced to interleave, and real processes on the local flock CAS)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest

from pipeline.checkpoint import OK, Checkpoint, CommitRecord, part_name
from pipeline.errors import LockedError
from pipeline.lease import (
    RUN_LEASE,
    SHARD_LEASES,
    Lease,
    LocalCAS,
    RunLease,
    ShardLease,
    run_lease,
    shard_lease,
)
from pipeline.sinks import OutputStore
from tests.conftest import ROOT


class MemoryCAS:
    """The CAS interface in memory. ``barrier`` makes the first read of each contender
    wait for all of them, so every one decides on the same version before anyone writes."""

    def __init__(self, barrier: threading.Barrier | None = None) -> None:
        self.objects: dict[str, tuple[dict[str, Any], str]] = {}
        self.lock = threading.Lock()
        self.counter = 0
        self.barrier = barrier
        self.seen: set[int] = set()

    def _next(self) -> str:
        self.counter += 1
        return str(self.counter)

    def read(self, key: str) -> tuple[dict[str, Any] | None, str | None]:
        with self.lock:
            obj = self.objects.get(key)
            first = threading.get_ident() not in self.seen
            self.seen.add(threading.get_ident())
        if first and self.barrier is not None:
            self.barrier.wait(timeout=10)
        return (None, None) if obj is None else (dict(obj[0]), obj[1])

    def create(self, key: str, data: dict[str, Any]) -> str | None:
        with self.lock:
            if key in self.objects:
                return None
            self.objects[key] = (data, self._next())
            return self.objects[key][1]

    def replace(self, key: str, data: dict[str, Any], version: str) -> str | None:
        with self.lock:
            if key not in self.objects or self.objects[key][1] != version:
                return None
            self.objects[key] = (data, self._next())
            return self.objects[key][1]

    def delete(self, key: str, version: str) -> bool:
        with self.lock:
            if key not in self.objects or self.objects[key][1] != version:
                return False
            del self.objects[key]
            return True


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# a holder whose heartbeat thread never fires during a test: its heartbeats are explicit
QUIET = {"interval": 3600.0}


def _holder_script(out: str, run_id: str) -> str:
    return (
        "import sys, time\n"
        "from pipeline.lease import RunLease\n"
        "from pipeline.sinks import OutputStore\n"
        f"RunLease(OutputStore({out!r}), {run_id!r}).acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n"
    )


def test_refusal_names_host_pid_run_and_since(tmp_path) -> None:
    out = str(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", _holder_script(out, "nightly-1")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError) as caught:
            RunLease(OutputStore(out), "backfill-7").acquire()
        message = str(caught.value)
        assert f"output {out} is held by run nightly-1" in message
        assert f"host {socket.gethostname()}" in message
        assert f"PID {holder.pid}" in message
        since = re.search(r"since (\S+),", message)
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        assert since is not None and since.group(1).startswith(today)
        # the same run id is refused too: ``acquire`` starts a run, only ``join`` shares
        with pytest.raises(LockedError, match="nightly-1"):
            RunLease(OutputStore(out), "nightly-1").acquire()
    finally:
        holder.kill()
        holder.wait()


def test_a_sigkilled_holder_on_this_host_is_taken_over_at_once(tmp_path) -> None:
    out = str(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", _holder_script(out, "killed")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    store = OutputStore(out)
    # its heartbeat is seconds old, far inside the 60 s TTL: only the dead PID frees it
    lease = RunLease(store, "next").acquire()
    try:
        data, _ = LocalCAS(out).read(RUN_LEASE)
        assert data is not None and data["run_id"] == "next" and data["pid"] == os.getpid()
    finally:
        lease.release()
    assert not os.path.exists(os.path.join(out, RUN_LEASE))


def test_a_holder_on_another_host_is_stale_only_after_the_ttl(tmp_path) -> None:
    clock = Clock()
    store = OutputStore(str(tmp_path))
    # another host: its PID means nothing here, only its heartbeat counts
    old = RunLease(store, "old", host="elsewhere", pid=1, ttl=30, clock=clock, **QUIET)
    old.acquire()
    clock.now += 29
    with pytest.raises(LockedError, match="host elsewhere, PID 1"):
        RunLease(store, "new", ttl=30, clock=clock).acquire()
    old.renew()  # a heartbeat restarts the count
    clock.now += 29
    with pytest.raises(LockedError, match="last heartbeat 29 s ago"):
        RunLease(store, "new", ttl=30, clock=clock).acquire()
    clock.now += 2
    new = RunLease(store, "new", ttl=30, clock=clock).acquire()
    # the old holder learns it lost the lease at its next heartbeat or check
    with pytest.raises(LockedError, match=r"lease lost.*now held by run new"):
        old.check()
    new.release()
    old.release()  # nothing of its own left to remove
    assert not os.path.exists(os.path.join(str(tmp_path), RUN_LEASE))


def test_shards_of_the_same_run_join_and_another_run_cannot(tmp_path) -> None:
    store = OutputStore(str(tmp_path))
    owner = RunLease(store, "r1").acquire()
    # mapped tasks of r1, one of them on another machine
    shard_a = RunLease(store, "r1").join()
    shard_b = RunLease(store, "r1", host="worker-2", pid=4242).join()
    with pytest.raises(LockedError, match="held by run r1"):
        RunLease(store, "r2").join()
    data, _ = LocalCAS(str(tmp_path)).read(RUN_LEASE)
    assert data is not None and len(data["members"]) == 3
    # the owner leaving does not free the output while its shards still work
    owner.release()
    shard_a.release()
    with pytest.raises(LockedError, match="held by run r1"):
        RunLease(store, "r2").acquire()
    shard_b.release()  # the last member removes the lease
    RunLease(store, "r2").acquire().release()


def test_the_cli_path_run_lease_then_shard_leases_in_one_process(tmp_path) -> None:
    """``run`` holds the run lease; ``_run_shard`` takes each shard's inside it."""
    store = OutputStore(str(tmp_path))
    with run_lease(store, "r1"):
        for shard in ("s1", "s2"):
            with shard_lease(store, "r1", shard):
                data, _ = LocalCAS(str(tmp_path)).read(RUN_LEASE)
                assert data is not None and len(data["members"]) == 2
                assert os.path.exists(os.path.join(str(tmp_path), SHARD_LEASES, f"{shard}.json"))
            assert not os.path.exists(os.path.join(str(tmp_path), SHARD_LEASES, f"{shard}.json"))
        with pytest.raises(LockedError, match="held by run r1"), shard_lease(store, "r2", "s1"):
            pass
    assert not os.path.exists(os.path.join(str(tmp_path), RUN_LEASE))


def test_two_writers_of_one_shard_the_second_is_refused_or_waits(tmp_path) -> None:
    store = OutputStore(str(tmp_path))
    with shard_lease(store, "r1", "s1"):
        # a cleared task's retry beside its still-running zombie: same run, same shard
        retry = shard_lease(OutputStore(str(tmp_path)), "r1", "s1")
        with pytest.raises(LockedError, match=r"shard s1 of output .* held by run r1"), retry:
            pass
        with shard_lease(store, "r1", "s2"):  # another shard of the run: side by side
            pass
    started = time.monotonic()
    holder = ShardLease(store, "r1", "s1").acquire()
    threading.Timer(0.3, holder.release).start()
    with shard_lease(store, "r1", "s1", wait=5.0):
        waited = time.monotonic() - started
    assert 0.25 < waited < 5.0


def test_a_writer_that_lost_its_shard_lease_cannot_commit(tmp_path) -> None:
    clock = Clock()
    store = OutputStore(str(tmp_path))
    rel = f"embeddings/{part_name('s1', 0)}"
    with shard_lease(store, "r1", "s1", ttl=30, clock=clock, **QUIET):
        store.stage_parquet(rel, pa.table({"x": [1]}), {})
        # paused past its TTL; the retry takes the shard over
        clock.now += 31
        ShardLease(OutputStore(str(tmp_path)), "r1", "s1", ttl=30, clock=clock).acquire()
        record = CommitRecord("s1", 0, "r1", "2026-01-01T00:00:00", "fp", None, {"embeddings": rel})
        record.docs = [["d", "h", OK, None]]
        with pytest.raises(LockedError, match="lease lost"):
            Checkpoint(store).commit(record)
    assert Checkpoint(store).records() == []
    assert not os.path.exists(os.path.join(str(tmp_path), rel))


def _contend(make: Any, n: int) -> tuple[list[Lease], list[str]]:
    won: list[Lease] = []
    refused: list[str] = []

    def attempt(i: int) -> None:
        try:
            won.append(make(i).acquire())
        except LockedError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, refused


def test_cas_race_on_a_free_lease_exactly_one_wins() -> None:
    n = 12
    cas = MemoryCAS(threading.Barrier(n))
    won, refused = _contend(lambda i: Lease(cas, RUN_LEASE, f"run-{i}", "output x", **QUIET), n)
    assert len(won) == 1 and len(refused) == n - 1
    assert all(f"held by run {won[0].run_id}" in m for m in refused)
    cas.barrier = None
    won[0].release()
    assert cas.objects == {}


def test_cas_race_on_a_stale_lease_exactly_one_takes_it_over() -> None:
    n = 12
    clock = Clock()
    cas = MemoryCAS()
    dead = Lease(
        cas, RUN_LEASE, "dead", "output x", host="gone", pid=1, ttl=5, clock=clock, **QUIET
    )
    dead.acquire()
    clock.now += 6
    cas.barrier = threading.Barrier(n)
    cas.seen.clear()
    won, refused = _contend(
        lambda i: Lease(cas, RUN_LEASE, f"run-{i}", "output x", ttl=5, clock=clock, **QUIET), n
    )
    assert len(won) == 1 and len(refused) == n - 1
    data = cas.objects[RUN_LEASE][0]
    assert data["run_id"] == won[0].run_id and list(data["members"]) == [won[0].token]
    cas.barrier = None
    won[0].release()
    dead.release()


def test_cas_race_between_processes_on_the_local_lease_exactly_one_wins(tmp_path) -> None:
    n = 6
    out, signals = str(tmp_path / "out"), tmp_path / "signals"
    signals.mkdir()
    # each contender says it is ready, then all start at one signal; the winner holds
    # the lease until every other one has tried
    script = (
        "import os, sys, time\n"
        "from pipeline.errors import LockedError\n"
        "from pipeline.lease import RunLease\n"
        "from pipeline.sinks import OutputStore\n"
        "run_id, signals = sys.argv[1], sys.argv[2]\n"
        "open(os.path.join(signals, 'ready-' + run_id), 'w').close()\n"
        "while not os.path.exists(os.path.join(signals, 'go')):\n"
        "    time.sleep(0.001)\n"
        "try:\n"
        f"    RunLease(OutputStore({out!r}), run_id).acquire()\n"
        "    print('won', flush=True)\n"
        "    while not os.path.exists(os.path.join(signals, 'release')):\n"
        "        time.sleep(0.01)\n"
        "except LockedError as exc:\n"
        "    print('refused', exc, flush=True)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, f"run-{i}", str(signals)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    try:
        deadline = time.monotonic() + 60
        while len(list(signals.glob("ready-*"))) < n:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (signals / "go").touch()
        while sum(p.poll() is not None for p in procs) < n - 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        (signals / "release").touch()
    outs = [p.communicate(timeout=60)[0] for p in procs]
    winners = [i for i, o in enumerate(outs) if o.startswith("won")]
    assert len(winners) == 1, outs
    assert all(f"held by run run-{winners[0]}" in o for o in outs if o.startswith("refused"))
    assert sum(o.startswith("refused") for o in outs) == n - 1


def test_recovery_never_deletes_a_live_writers_staged_files(tmp_path) -> None:
    out = str(tmp_path)
    live = OutputStore(out)
    rel = f"embeddings/{part_name('s1', 0)}"
    with shard_lease(live, "r1", "s1"):
        live.stage_parquet(rel, pa.table({"x": [1]}), {})
        # a second process that skipped the shard lease
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "from pipeline.checkpoint import Checkpoint\n"
                "from pipeline.sinks import OutputStore\n"
                f"Checkpoint(OutputStore({out!r})).recover('s1')\n",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert other.returncode == 1
        assert re.search(
            r"LockedError: shard s1 of output .* is being written by run r1", other.stderr
        )
        assert os.path.exists(os.path.join(out, live.temp_name(rel)))
        assert Checkpoint(live).recover("s1") == (0, [live.temp_name(rel)])  # its own: fine
        live.stage_parquet(rel, pa.table({"x": [1]}), {})
    # the writer is gone (its lease released): what it staged is a dead writer's now
    assert Checkpoint(OutputStore(out)).recover("s1") == (0, [live.temp_name(rel)])
