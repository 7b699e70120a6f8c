"""Building a shard's rate budget, and the store that shares one across processes.

:func:`make_budget` is what runs a shard calls (``runner.run``, ``tasks.run_shard_task``):
it returns a :class:`pipeline.throttle.RateBudget` over

- a :class:`RedisStore` when a Redis URL is configured (``redis_url`` of the job: the
  ``--redis-url`` flag, a job file, a DAG run's conf; the Airflow connection's
  ``redis_url`` field; else the environment variable ``OCI_GENAI_REDIS_URL``): every
  process of every worker then draws on one budget of requests and tokens per minute,
  and shares one adaptive rate, so a 429 seen by one slows all. If Redis becomes
  unreachable mid-run, the budget goes on with the per-process share below, logging it
  once: the run neither fails nor exceeds the budget;
- else a local store: each of the K shards running at once (``concurrent_shards``; the
  Airflow pool's slots) takes 1/K of the configured ``max_rpm`` / ``max_tpm``.

The request and token buckets are pyrate-limiter's GCRA, in memory or in Redis (its
``RedisStateStore``: the library's own script); the adaptive state is a Redis hash, the
success and 429 times two sorted sets, and a cut is taken by one process at a time with
``SET NX PX``. Every key lives under one prefix and expires on its own.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from pyrate_limiter import Rate, RedisStateStore, StateStore
from pyrate_limiter.abstracts.algorithm import Decision, StateAlgorithm

from pipeline.config import JobConfig, redact_url
from pipeline.throttle import (
    Clock,
    LocalStore,
    PaceState,
    PaceStore,
    Pacing,
    RateBudget,
    Sleep,
    StoreUnavailable,
    measure_rate,
)

log = logging.getLogger(__name__)

REDIS_URL_ENV = "OCI_GENAI_REDIS_URL"
KEY_PREFIX = "oci-genai-batch:budget"
#: seconds a Redis command may take before the store counts as unreachable
REDIS_TIMEOUT_S = 2.0
#: how long the adaptive state and the answer times are kept after their last use
_KEEP_MS = 15 * 60 * 1000
#: answer times older than this are trimmed (measure_rate looks back far less)
_HISTORY_S = 120.0
#: a process re-reads the shared adaptive state at most this often
_STATE_TTL_S = 0.1
#: a remote service's limit is unknown: start at a few requests/s and grow per success
REMOTE_PACING = Pacing(start_rps=4.0)


def redis_url(config: JobConfig) -> str | None:
    """The Redis URL of the shared budget: the job's, else the environment's."""
    return config.redis_url or os.environ.get(REDIS_URL_ENV) or None


def budget_key(config: JobConfig) -> str:
    """The shared budget's name: one per service endpoint (the on-demand limits are the
    tenancy's, whatever the job)."""
    where = config.genai_endpoint or config.region or "default"
    return f"{KEY_PREFIX}:{config.backend}:{where}"


def make_budget(
    config: JobConfig,
    *,
    clock: Clock | None = None,
    sleep: Sleep = asyncio.sleep,
    pacing: Pacing | None = None,
) -> RateBudget:
    """The rate budget of one shard process for ``config`` (see the module doc). Local
    backends never throttle, so they are not paced unless a ceiling is set."""
    pacing = pacing or (REMOTE_PACING if config.backend == "oci" else Pacing())
    url = redis_url(config)
    store: PaceStore
    if url:
        store = RedisStore(url, budget_key(config))
        # the shared state holds times of every process: they must read one clock
        clock = clock or time.time
    else:
        store = LocalStore()
        clock = clock or time.monotonic
    return RateBudget(
        max_rpm=config.max_rpm,
        max_tpm=config.max_tpm,
        max_in_flight=config.max_in_flight,
        share=config.concurrent_shards or 1,
        store=store,
        pacing=pacing,
        clock=clock,
        sleep=sleep,
    )


# ---------------------------------------------------------------------------- Redis


def _unavailable(exc: BaseException) -> bool:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError)


class _GuardedBucket(StateStore):
    """pyrate-limiter's Redis GCRA store whose connection errors become
    ``StoreUnavailable``."""

    is_async = True

    def __init__(self, inner: RedisStateStore, where: str) -> None:
        self.inner = inner
        self.where = where

    def check(self, algorithm: StateAlgorithm, rates: list[Rate], now: int, weight: int) -> Any:
        async def checked() -> Decision:
            try:
                return await self.inner.check(algorithm, rates, now, weight)
            except Exception as exc:
                if _unavailable(exc):
                    raise StoreUnavailable(f"{self.where}: {type(exc).__name__}") from exc
                raise

        return checked()

    def read(self, algorithm: StateAlgorithm, rates: list[Rate]) -> Any:
        return self.inner.read(algorithm, rates)

    def reset(self) -> Any:
        return self.inner.reset()


class RedisStore:
    """A budget's buckets and adaptive state in Redis, under ``key``, shared by every
    process that uses the same URL and key."""

    name = "redis"

    def __init__(self, url: str, key: str, *, client: Any = None) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.key = key
        self.where = redact_url(url)
        self.client = client or aioredis.Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            # one quick retry on a dropped connection, then the budget falls back
            retry=Retry(NoBackoff(), 1),
        )
        self._buckets: dict[str, _GuardedBucket] = {}
        self._state = PaceState()
        self._state_at = -1e18
        self._ids = itertools.count()
        self._tag = f"{os.getpid()}.{id(self):x}"
        self._trimmed_at = 0.0

    # -------------------------------------------------------------- keys

    def _k(self, part: str) -> str:
        return f"{self.key}:{part}"

    async def _do(self, op: Callable[[], Any]) -> Any:
        try:
            return await op()
        except StoreUnavailable:
            raise
        except Exception as exc:
            if _unavailable(exc):
                raise StoreUnavailable(f"{self.where}: {type(exc).__name__}: {exc}") from exc
            raise

    # -------------------------------------------------------------- PaceStore

    def bucket(self, kind: str) -> StateStore:
        store = self._buckets.get(kind)
        if store is None:
            inner = RedisStateStore(self.client, self._k(kind))
            store = self._buckets[kind] = _GuardedBucket(inner, self.where)
        return store

    async def load(self) -> PaceState:
        now = time.monotonic()
        if now - self._state_at < _STATE_TTL_S:
            return self._state
        fields = await self._do(lambda: self.client.hgetall(self._k("pace")))
        self._state = PaceState.from_fields(_decoded(fields))
        self._state_at = now
        return self._state

    def _member(self, t: float) -> str:
        return f"{t:.6f}:{self._tag}:{next(self._ids)}"

    async def success(
        self, now: float, rtt: float, grow: Callable[[PaceState], PaceState | None]
    ) -> PaceState:
        sent = now - rtt
        state = await self.load()
        grown = grow(state)
        trim = now - self._trimmed_at > 5.0

        async def write() -> None:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zadd(self._k("ok"), {self._member(sent): sent})
                pipe.pexpire(self._k("ok"), _KEEP_MS)
                if trim:
                    pipe.zremrangebyscore(self._k("ok"), "-inf", now - _HISTORY_S)
                if grown is not None:
                    # slow start: only the rate moves; a cut by another process wins
                    pipe.hset(self._k("pace"), "rate", grown.rate)
                    pipe.pexpire(self._k("pace"), _KEEP_MS)
                await pipe.execute()

        await self._do(write)
        if trim:
            self._trimmed_at = now
        if grown is not None:
            self._state = grown
        return self._state

    async def throttle(
        self,
        now: float,
        retry_after: float | None,
        rtt: float,
        pacing: Pacing,
        ceiling: float | None,
    ) -> PaceState:
        sent = now - rtt

        async def record() -> PaceState:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zadd(self._k("throttled"), {self._member(sent): sent})
                pipe.pexpire(self._k("throttled"), _KEEP_MS)
                pipe.zremrangebyscore(self._k("throttled"), "-inf", now - _HISTORY_S)
                pipe.hgetall(self._k("pace"))
                replies = await pipe.execute()
            state = PaceState.from_fields(_decoded(replies[-1]))
            paused = pacing.paused(state, now, retry_after)
            if paused.paused_until != state.paused_until:
                await self.client.hset(self._k("pace"), "paused_until", paused.paused_until)
            state = paused
            if not pacing.may_cut(state, now, rtt):
                return state
            # one process cuts per interval: the others' 429s saw the same overload
            hold_ms = max(1, int(max(pacing.cut_interval, rtt) * 1000))
            if not await self.client.set(self._k("cut"), self._tag, nx=True, px=hold_ms):
                return state
            since = sent - max(pacing.window_s, 4 * pacing.max_gap, 30.0)
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(self._k("ok"), since, "+inf", withscores=True)
                pipe.zrangebyscore(self._k("throttled"), since, "+inf", withscores=True)
                ok, throttled = await pipe.execute()
            # this 429 is in the set already: measure against the ones before it
            earlier = sorted(t for _, t in throttled if t < sent)
            measured = measure_rate(sorted(t for _, t in ok), earlier, sent, pacing)
            state = pacing.cut_state(state, now, ceiling, measured)
            fields: dict[Any, Any] = state.to_fields()
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.hset(self._k("pace"), mapping=fields)
                pipe.pexpire(self._k("pace"), _KEEP_MS)
                await pipe.execute()
            return state

        state = await self._do(record)
        self._state, self._state_at = state, time.monotonic()
        return state

    async def aclose(self) -> None:
        try:
            await self.client.aclose()
        except Exception as exc:  # closing a dead connection: nothing left to release
            log.debug("closing the Redis client: %s", exc)


def _decoded(fields: Mapping[Any, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in fields.items():
        name = k.decode() if isinstance(k, bytes) else str(k)
        try:
            out[name] = float(v.decode() if isinstance(v, bytes) else v)
        except ValueError:
            continue
    return out


__all__ = [
    "KEY_PREFIX",
    "REDIS_URL_ENV",
    "RedisStore",
    "budget_key",
    "make_budget",
    "redact_url",
    "redis_url",
]
