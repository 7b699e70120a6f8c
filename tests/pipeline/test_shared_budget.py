"""The rate budget shared through Redis: real Redis (127.0.0.1:6379, keys under a unique
prefix per test, removed afterwards), real processes, real time."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from pipeline.budget import KEY_PREFIX, REDIS_URL_ENV, RedisStore, budget_key, make_budget
from pipeline.config import JobConfig
from pipeline.errors import ConfigError
from pipeline.throttle import RateBudget

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = os.path.join(os.path.dirname(sys.executable), "oci-genai-batch")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


def _drop(prefix: str) -> None:
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0, socket_timeout=10)
    for name in client.scan_iter(match=f"{prefix}*"):
        client.delete(name)
    client.close()


@pytest.fixture
def key() -> Iterator[str]:
    name = f"{KEY_PREFIX}:test-{uuid.uuid4().hex[:12]}"
    yield name
    _drop(name)


class Proxy:
    """A loopback TCP proxy to Redis that can be cut: ``close()`` drops every connection
    and refuses new ones, as a Redis that went away."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        with self._lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


def _most_in_any(times: list[float], window: float) -> int:
    """The most slot times within any ``window`` seconds."""
    j = 0
    best = 0
    for i, t in enumerate(times):
        while times[j] < t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_two_processes_draw_on_one_budget(key: str) -> None:
    """Two processes, each with 4 requests in flight, taking slots flat out for 6 s under
    one budget of 300 requests/min: together they stay within it (each alone would take
    all of it), and both get a fair part."""
    start_at = time.time() + 4.0  # both are started and connected by then
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.budget_worker",
                REDIS_URL,
                key,
                "300",
                "6",
                str(start_at),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    a, b = (o["times"] for o in outs)
    together = sorted(a + b)
    assert len(together) <= 6 * 5 + 1  # 5/s for 6 s; the first goes at once
    assert len(together) >= 6 * 5 * 0.8  # and the budget is used, not lost
    assert min(len(a), len(b)) >= 8  # both draw on it
    assert _most_in_any(together, 1.0) <= 5 + 1
    gaps = [y - x for x, y in itertools.pairwise(together)]
    assert sorted(gaps)[len(gaps) // 10] >= 0.15  # evenly spaced (0.2 s), not in bursts
    for o in outs:
        assert o["snapshot"]["store"] == "redis" and not o["snapshot"]["fell_back"]


def test_a_429_seen_by_one_process_slows_the_others(key: str) -> None:
    async def go() -> tuple[float, float | None, float | None]:
        one = RateBudget(store=RedisStore(REDIS_URL, key), clock=time.time)
        other = RateBudget(store=RedisStore(REDIS_URL, key), clock=time.time)
        try:
            for _ in range(10):
                await one.on_success(rtt=0.01)
                await asyncio.sleep(0.1)
            await one.on_throttle(1.5, rtt=0.01)  # a 429 with Retry-After: 1.5
            started = time.time()
            async with other.slot():
                waited = time.time() - started
            return waited, one.snapshot().limit_estimate, other.snapshot().limit_estimate
        finally:
            await one.aclose()
            await other.aclose()

    waited, mine, theirs = asyncio.run(go())
    assert waited >= 1.3  # the other process waited out the Retry-After too
    assert mine is not None and theirs == mine  # and paces at the rate the cut set


def test_redis_lost_mid_run_falls_back_to_the_share_once(key: str, caplog) -> None:
    proxy = Proxy((REDIS_HOST, REDIS_PORT))
    url = f"redis://127.0.0.1:{proxy.port}/0"

    async def slots(budget: RateBudget, n: int) -> float:
        started = time.monotonic()
        for _ in range(n):
            async with budget.slot(tokens=10):
                pass
            await budget.on_success(rtt=0.01)
        return time.monotonic() - started

    async def go() -> tuple[float, float, object, object]:
        budget = RateBudget(
            max_rpm=600, max_tpm=60_000, share=2, store=RedisStore(url, key), clock=time.time
        )
        try:
            before = await slots(budget, 6)  # the whole budget: 10/s
            shared = budget.snapshot()
            proxy.close()
            await budget.on_throttle(None, rtt=0.01)  # Redis gone: no failure
            after = await slots(budget, 6)  # this process's share: 5/s
            return before, after, shared, budget.snapshot()
        finally:
            await budget.aclose()

    with caplog.at_level(logging.WARNING, logger="pipeline.throttle"):
        before, after, shared, fallen = asyncio.run(go())
    assert shared.store == "redis" and shared.max_rpm == 600  # type: ignore[attr-defined]
    assert fallen.store == "local" and fallen.fell_back  # type: ignore[attr-defined]
    assert fallen.max_rpm == 300 and fallen.max_tpm == 30_000  # type: ignore[attr-defined]
    assert before < 0.9  # 5 gaps of 0.1 s
    assert after >= 5 * 0.2 - 0.05  # 5 gaps of 0.2 s: never above the share
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1
    assert f"127.0.0.1:{proxy.port}" in warnings[0].getMessage()


def test_an_unreachable_redis_from_the_start_never_fails_the_run_nor_shows_its_password(
    caplog,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed below: nothing listens there
    url = f"redis://user:s3cret-pw@127.0.0.1:{port}/0"

    async def go() -> object:
        budget = RateBudget(max_rpm=1200, share=3, store=RedisStore(url, "x"), clock=time.time)
        async with budget.slot():
            pass
        await budget.on_success(rtt=0.01)
        await budget.aclose()
        return budget.snapshot()

    with caplog.at_level(logging.WARNING, logger="pipeline.throttle"):
        snap = asyncio.run(go())
    assert snap.fell_back and snap.max_rpm == 400  # type: ignore[attr-defined]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "unreachable" in text and "s3cret-pw" not in text and "user:***@" in text


def test_the_redis_url_comes_from_the_job_else_the_environment(monkeypatch, key: str) -> None:
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    plain = JobConfig(source="s", output="o")
    assert make_budget(plain).store.name == "local"
    assert make_budget(plain.replace(redis_url=REDIS_URL)).store.name == "redis"
    monkeypatch.setenv(REDIS_URL_ENV, REDIS_URL)
    assert make_budget(plain).store.name == "redis"
    with pytest.raises(ConfigError, match=r"redis_url: 'http://u:\*\*\*@h/' is not a Redis URL"):
        JobConfig(source="s", output="o", redis_url="http://u:pw@h/")
    masked = JobConfig(source="s", output="o", redis_url="redis://u:pw@h:1/2").public_dict()
    assert masked["redis_url"] == "redis://u:***@h:1/2"


def test_the_cli_draws_on_the_shared_budget(tmp_path) -> None:
    """``--redis-url``: the run's requests went through the budget in Redis (its keys are
    there, named for the endpoint), and the run succeeded."""
    src = str(tmp_path / "docs.parquet")
    pq.write_table(
        pa.table(
            {"doc_id": [f"d{i}" for i in range(50)], "text": [f"text {i}" for i in range(50)]}
        ),
        src,
    )
    endpoint = f"http://budget-test-{uuid.uuid4().hex[:8]}.invalid"
    config = JobConfig(source=src, output="o", backend="hash", genai_endpoint=endpoint)
    name = budget_key(config)
    try:
        done = subprocess.run(
            [
                CLI,
                "run",
                "--source",
                src,
                "--output",
                str(tmp_path / "out"),
                "--backend",
                "hash",
                "--genai-endpoint",
                endpoint,
                "--no-summaries",
                "--max-rpm",
                "600",
                "--max-tpm",
                "1000000",
                "--redis-url",
                REDIS_URL,
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
        names = {n.decode() for n in client.scan_iter(match=f"{name}:*")}
        answered = client.zcard(f"{name}:ok")
        client.close()
        # the token bucket (it outlives the run by seconds) and every answer's time
        assert {f"{name}:tokens", f"{name}:ok"} <= names
        report = json.loads((tmp_path / "out" / "report.json").read_text())
        assert answered == report["calls"]["calls"] > 0
        assert report["config"]["redis_url"] == REDIS_URL
    finally:
        _drop(name)
