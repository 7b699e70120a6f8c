"""Leases: one run writes an output at a time, and one writer writes a shard at a time.

Two leases live beside the data:

- ``_state/lease.json`` — the **run lease**, held by a *run* (its ``run_id``), not by a
  process. A second run is refused with ``LockedError`` naming the holder. The shards of
  the holding run (Airflow mapped tasks, maybe on other machines) ``join`` it and write side
  by side; every process that holds or joins it is a *member* and renews its heartbeat.
- ``_state/leases/<shard>.json`` — the **shard lease**, exclusive: a cleared task's retry
  is refused while the zombie it replaces still writes the same shard.

A record names the holder (host, PID, run id, since) and, per member, a heartbeat. A lease
is *stale* when no member is alive: a member is dead when its heartbeat is older than the
TTL, or — on the same host — when its PID is gone (checked against the process start time,
so a reused PID does not look alive). A stale lease is taken over with a compare-and-swap,
so of two contenders exactly one wins. Heartbeats use wall-clock UTC because members may
run on other hosts: clocks must agree to well within the TTL.

Storage needs only four conditional operations (``CAS`` in ``pipeline.lease_cas``).
Locally they are a ``fcntl.flock`` around read-modify-write of the JSON file, replaced
atomically (``LocalCAS``). On object storage each is one request (``ObjectCAS`` over
``pipeline.conditional``):

============================  =============================================================
``read(key)``                 GET; the version is the object's ETag
``create(key, data)``         PUT with ``If-None-Match: *`` (412 → someone else created it)
``replace(key, data, ver)``   PUT with ``If-Match: <etag>`` (412 → it changed since read)
``delete(key, ver)``          DELETE with ``If-Match: <etag>``
============================  =============================================================

OCI Object Storage always has them (the ``oci`` SDK client under ``ocifs``), S3 when
``boto3`` is installed. A store without them gets ``BestEffortCAS`` (check, then write):
there the lease detects a live holder but cannot settle a photo finish.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import ConfigError, LockedError, StorageError
from pipeline.lease_cas import CAS, BestEffortCAS, LocalCAS, ObjectCAS, cas_for
from pipeline.sinks import OutputStore

log = logging.getLogger(__name__)

RUN_LEASE = "_state/lease.json"
SHARD_LEASES = "_state/leases"
TTL_ENV = "OCI_GENAI_BATCH_LEASE_TTL"
DEFAULT_TTL = 60.0
DEFAULT_INTERVAL = 10.0


# ---------------------------------------------------------------------- liveness


def _stat(pid: int) -> list[bytes] | None:
    """Fields of ``/proc/PID/stat`` from the state on (Linux); None where there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return stat.rsplit(b")", 1)[-1].split()


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid``, to tell a reused PID from the holder."""
    fields = _stat(pid)
    return fields[19].decode() if fields else None


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether ``pid`` (started at ``start``, when known) still runs on this host. A killed
    process its parent has not reaped yet (state Z) is dead too."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    fields = _stat(pid)
    if fields is None:
        return True  # no /proc: the signal test is all there is
    return fields[0] != b"Z" and (start is None or fields[19].decode() == start)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def default_ttl() -> float:
    raw = os.environ.get(TTL_ENV)
    if not raw:
        return DEFAULT_TTL
    try:
        ttl = float(raw)
    except ValueError:
        ttl = 0.0
    if not ttl > 0:
        raise ConfigError(f"{TTL_ENV}={raw!r}: must be a number of seconds > 0")
    return ttl


# ---------------------------------------------------------------------- the lease


@dataclass
class Lease:
    """One lease object. ``shared`` leases admit every member of the same ``run_id``."""

    cas: CAS
    key: str
    run_id: str
    what: str  # for messages: "output /x" or "shard abc of output /x"
    shared: bool = False
    ttl: float = field(default_factory=default_ttl)
    interval: float | None = None  # heartbeat period; default ttl / 6, at most 10 s
    clock: Any = time.time
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    token: str = field(default_factory=lambda: secrets.token_hex(8))

    def __post_init__(self) -> None:
        if self.interval is None:
            self.interval = min(DEFAULT_INTERVAL, self.ttl / 6)
        self._lost: str | None = None
        self._renewed = 0.0
        self._held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- records

    def _member(self, now: float) -> dict[str, Any]:
        return {
            "host": self.host,
            "pid": self.pid,
            "pid_start": _process_start(self.pid) if self.pid == os.getpid() else None,
            "heartbeat": now,
        }

    def _fresh(self, now: float) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "host": self.host,
            "pid": self.pid,
            "since": _iso(now),
            "heartbeat": _iso(now),
            "token": self.token,
            "ttl_s": self.ttl,
            "members": {self.token: self._member(now)},
        }

    def _member_alive(self, m: dict[str, Any], now: float, ttl: float) -> bool:
        if now - float(m["heartbeat"]) > ttl:
            return False
        if m.get("host") == self.host and not m.get("detached"):
            return pid_alive(int(m["pid"]), m.get("pid_start"))
        return True

    def alive(self, data: dict[str, Any]) -> bool:
        now = self.clock()
        ttl = float(data.get("ttl_s", self.ttl))
        return any(self._member_alive(m, now, ttl) for m in data.get("members", {}).values())

    def describe(self, data: dict[str, Any]) -> str:
        beats = [float(m["heartbeat"]) for m in data.get("members", {}).values()]
        age = f"{self.clock() - max(beats):.0f} s ago" if beats else "never"
        return (
            f"run {data.get('run_id')} (host {data.get('host')}, PID {data.get('pid')},"
            f" since {data.get('since')}, last heartbeat {age})"
        )

    # -------------------------------------------------------------- acquire

    def acquire(self, *, join: bool = False, wait: float = 0.0) -> Lease:
        """Take the lease (``join``: or join a live one of the same run); else LockedError.

        With ``wait`` > 0, a live holder is waited for up to that many seconds first."""
        deadline = time.monotonic() + wait
        while True:
            try:
                self._try_acquire(join)
                break
            except OSError as exc:
                raise StorageError(
                    f"{self.what}: cannot write its lease {self.key}: {exc}"
                ) from exc
            except LockedError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(0.5, max(0.01, deadline - time.monotonic())))
        self._held = True
        self._renewed = time.monotonic()
        self._start_heartbeat()
        return self

    def join(self, *, wait: float = 0.0) -> Lease:
        return self.acquire(join=True, wait=wait)

    def _try_acquire(self, join: bool) -> None:
        while True:
            now = self.clock()
            data, version = self.cas.read(self.key)
            if data is None or version is None:
                if self.cas.create(self.key, self._fresh(now)) is not None:
                    return
                continue  # someone created it between our read and create: look again
            if self.alive(data):
                if not (join and self.shared and data.get("run_id") == self.run_id):
                    raise LockedError(
                        f"{self.what} is held by {self.describe(data)}; it is free when that"
                        f" run ends, or {data.get('ttl_s', self.ttl):.0f} s after its last"
                        f" heartbeat (lease {self.key})"
                    )
                new = dict(data)
                new["members"] = {**data.get("members", {}), self.token: self._member(now)}
                new["heartbeat"] = _iso(now)
            else:
                log.warning("%s: taking over a stale lease of %s", self.what, self.describe(data))
                new = self._fresh(now)
            if self.cas.replace(self.key, new, version) is not None:
                return

    # -------------------------------------------------------------- renew / release

    def renew(self) -> bool:
        """One heartbeat. False (and the lease marked lost) if someone else took it."""
        while True:
            now = self.clock()
            data, version = self.cas.read(self.key)
            mine = (data or {}).get("members", {}).get(self.token)
            if data is None or version is None or mine is None:
                self._lost = f"{self.what}: lease lost (taken over or removed)"
                if data is not None:
                    self._lost += f"; now held by {self.describe(data)}"
                return False
            new = dict(data)
            new["members"] = {**data["members"], self.token: {**mine, "heartbeat": now}}
            new["heartbeat"] = _iso(now)
            if self.cas.replace(self.key, new, version) is not None:
                self._renewed = time.monotonic()
                return True

    def check(self) -> None:
        """Raise LockedError unless this lease is still ours. It renews (one read, one
        conditional write) rather than trust the heartbeat thread's last word."""
        if self._held and self._lost is None:
            self.renew()
        if self._lost:
            raise LockedError(self._lost)
        if not self._held:
            raise LockedError(f"{self.what}: lease not held")

    def release(self, *, detach: bool = False) -> None:
        """Leave the lease; the last member deletes it. ``detach`` instead leaves this
        member's entry to keep the lease alive until its TTL (a plan task that exits
        before its shard tasks start)."""
        self._stop_heartbeat()
        if not self._held:
            return
        self._held = False
        while True:
            data, version = self.cas.read(self.key)
            members = dict((data or {}).get("members", {}))
            if data is None or version is None or self.token not in members:
                return  # lost already: nothing of ours to remove
            if detach:
                members[self.token] = {**members[self.token], "detached": True}
            else:
                del members[self.token]
            if not members:
                if self.cas.delete(self.key, version):
                    return
            elif self.cas.replace(self.key, {**data, "members": members}, version) is not None:
                return

    # -------------------------------------------------------------- heartbeat

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, name=f"lease-heartbeat-{self.key}", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            try:
                if not self.renew():
                    log.error("%s", self._lost)
                    return
            except OSError as exc:  # a transient storage error: try again next beat
                log.warning("%s: heartbeat failed: %s", self.what, exc)

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---------------------------------------------------------------------- public API


def RunLease(store: OutputStore, run_id: str, **kw: Any) -> Lease:
    """The output's run lease: ``.acquire()`` to start a run, ``.join()`` from its shards."""
    return Lease(cas_for(store), RUN_LEASE, run_id, f"output {store.uri}", shared=True, **kw)


def ShardLease(store: OutputStore, run_id: str, shard_id: str, **kw: Any) -> Lease:
    """One shard's exclusive lease: a second writer of the shard is refused."""
    key = f"{SHARD_LEASES}/{shard_id}.json"
    return Lease(cas_for(store), key, run_id, f"shard {shard_id} of output {store.uri}", **kw)


_active: dict[tuple[str, str], Lease] = {}
_active_lock = threading.Lock()


def active_shard_lease(store: OutputStore, shard_id: str) -> Lease | None:
    """The shard lease this process holds for ``shard_id`` of ``store``, if any."""
    with _active_lock:
        return _active.get((store.root, shard_id))


def check_shard_writer(store: OutputStore, shard_id: str) -> None:
    """Raise LockedError unless this process may write ``shard_id``: it holds the shard's
    lease (still ours), or no live writer holds it. ``Checkpoint.recover`` calls this
    before deleting anything, so it never removes a live writer's staged files."""
    mine = active_shard_lease(store, shard_id)
    if mine is not None:
        mine.check()
        return
    probe = ShardLease(store, "", shard_id)
    data, _ = probe.cas.read(probe.key)
    if data is not None and probe.alive(data):
        raise LockedError(
            f"{probe.what} is being written by {probe.describe(data)}; not touching its files"
        )


@contextlib.contextmanager
def shard_lease(
    store: OutputStore, run_id: str, shard_id: str, *, wait: float = 0.0, **kw: Any
) -> Iterator[Lease]:
    """Join the run's lease and take the shard's own, renewing both until the block ends.

    While it is held, ``Checkpoint.commit`` of this shard checks the lease is still ours
    before its commit point, so a writer that lost its lease (paused past the TTL, then
    taken over) raises LockedError instead of committing beside the new writer."""
    run = RunLease(store, run_id, **kw).join(wait=wait)
    try:
        lease = ShardLease(store, run_id, shard_id, **kw).acquire(wait=wait)
        with _active_lock:
            _active[(store.root, shard_id)] = lease
        try:
            yield lease
        finally:
            with _active_lock:
                _active.pop((store.root, shard_id), None)
            lease.release()
    finally:
        run.release()


@contextlib.contextmanager
def run_lease(store: OutputStore, run_id: str, **kw: Any) -> Iterator[Lease]:
    """Acquire the run lease for a whole run in this process (the CLI path)."""
    lease = RunLease(store, run_id, **kw).acquire()
    try:
        yield lease
    finally:
        lease.release()


__all__ = [
    "CAS",
    "BestEffortCAS",
    "Lease",
    "LocalCAS",
    "ObjectCAS",
    "RunLease",
    "ShardLease",
    "check_shard_writer",
    "run_lease",
    "shard_lease",
]
