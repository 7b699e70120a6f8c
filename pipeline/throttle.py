"""The rate budget of model calls: the one object the call layer asks before each request.

The call layer (``pipeline.execute.Caller``) talks to a :class:`Budget` through a small
protocol: ``slot(tokens)`` around each request, ``on_success(rtt)``,
``on_throttle(retry_after, rtt)``, ``snapshot()``. Whoever runs a shard builds it
(:func:`pipeline.budget.make_budget`) with one clock/sleep pair, which the Caller's retries
use too, so a test can run the whole call path on fake time.

:class:`RateBudget` is the implementation. For each request it waits, in this order:

1. for a place in flight (:class:`AdaptiveConcurrency`, local to the process);
2. while a server's ``Retry-After`` runs (held for every request that draws on the budget);
3. for its turn at the request pace: a GCRA bucket (pyrate-limiter) spacing requests evenly
   at the lower of the configured ceiling and the adaptive rate (:class:`Pacing`). This is
   the one place requests per minute are limited;
4. for its tokens: a GCRA bucket of tokens per minute holding ``TOKEN_BURST_S`` seconds'
   worth (a request larger than that is charged in pieces, so the minute's total holds).

Where the buckets and the adaptive state live is a :class:`PaceStore`: :class:`LocalStore`
keeps them in this process; ``pipeline.shared_budget.RedisStore`` keeps them in Redis, so
every process of every worker draws from one budget and a 429 seen by one slows all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from inspect import isawaitable
from typing import Protocol, TypeVar, runtime_checkable

from pyrate_limiter import GCRA, InMemoryStateStore, Rate, StateStore

log = logging.getLogger(__name__)

#: seconds of the tokens-per-minute budget one burst may spend
TOKEN_BURST_S = 6.0
#: the fastest pace the request bucket keeps (10 units of 1 microsecond a request)
MAX_PACED_RPS = 100_000.0
#: the longest a server's Retry-After holds requests back
MAX_RETRY_AFTER_S = 120.0
#: a request is this many units of the request bucket, which tolerates REQUEST_SLACK
#: more: a request may go up to a tenth of its interval early, so that one woken a little
#: late (a busy event loop) does not push every later one back; never more than one
#: request and a tenth beyond the rate over any time
REQUEST_UNITS = 10
REQUEST_SLACK = 1

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


# ---------------------------------------------------------------------------- protocol


@dataclass(frozen=True)
class BudgetSnapshot:
    """What a budget does now, for reports and tests."""

    #: requests/s the pace allows now (None: unpaced)
    rate: float | None
    #: the configured ceilings this process draws on (its share of them without Redis)
    max_rpm: float | None
    max_tpm: float | None
    #: the service's rate as last measured on a 429, requests/s (None: no 429 yet)
    limit_estimate: float | None
    cuts: int
    in_flight: int
    concurrency: int
    #: seconds a Retry-After still holds requests back
    paused_for: float
    #: where the budget lives: "local" or "redis"; "local" after a fallback too
    store: str
    #: the number of processes the configured ceilings are divided among (K)
    share: int
    #: Redis was configured but is unreachable: running on the per-process share
    fell_back: bool = False


@runtime_checkable
class Budget(Protocol):
    """What the call layer needs of a rate budget."""

    clock: Clock
    sleep: Sleep
    max_in_flight: int

    def slot(self, tokens: int = 0) -> AbstractAsyncContextManager[None]:
        """Wait until a request of ``tokens`` tokens may be sent; held while it is out."""
        ...

    async def on_success(self, rtt: float) -> None:
        """A request was answered (``rtt`` seconds after it was sent)."""
        ...

    async def on_throttle(self, retry_after: float | None, rtt: float) -> None:
        """A request got a 429 (with the server's Retry-After, if any)."""
        ...

    def snapshot(self) -> BudgetSnapshot: ...

    async def aclose(self) -> None: ...


# ---------------------------------------------------------------------------- concurrency


class AdaptiveConcurrency:
    """An asyncio semaphore whose size follows additive-increase, multiplicative-decrease:
    halved on a 429 (at most once per round trip), grown by one per window of successes,
    up to ``maximum``."""

    def __init__(
        self,
        maximum: int,
        *,
        initial: int | None = None,
        minimum: int = 1,
        clock: Clock = time.monotonic,
    ) -> None:
        if maximum < 1:
            raise ValueError("maximum must be at least 1")
        self.maximum = maximum
        self.minimum = max(1, min(minimum, maximum))
        self.limit = float(initial if initial is not None else maximum)
        self.in_flight = 0
        self.clock = clock
        self._cond = asyncio.Condition()
        self._last_cut = -math.inf
        self.cuts = 0

    async def acquire(self) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_flight < int(self.limit))
            self.in_flight += 1

    async def release(self) -> None:
        async with self._cond:
            self.in_flight -= 1
            self._cond.notify_all()

    def on_success(self) -> None:
        if self.limit < self.maximum:
            self.limit = min(float(self.maximum), self.limit + 1.0 / max(self.limit, 1.0))

    def on_throttle(self, rtt: float) -> None:
        now = self.clock()
        # one cut per round trip: the requests already in flight saw the same overload
        if now - self._last_cut >= max(rtt, 0.05):
            self.limit = max(float(self.minimum), self.limit / 2.0)
            self._last_cut = now
            self.cuts += 1


# ---------------------------------------------------------------------------- pacing


@dataclass
class PaceState:
    """The adaptive rate's state: a few numbers, so that a shared store can hold it."""

    #: slow start: the rate now (0: not started)
    rate: float = 0.0
    #: the service's rate as measured at the last cut, requests/s (0: no 429 yet)
    limit: float = 0.0
    #: when the last cut was (-inf: never)
    cut_at: float = -math.inf
    cuts: int = 0
    #: 1 once the service's rate was measured between two 429s (exact); 0 while ``limit``
    #: is only an upper bound (the first 429s of a run)
    exact: float = 0.0
    #: requests wait until then (a server's Retry-After)
    paused_until: float = -math.inf

    def to_fields(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_fields(cls, fields: dict[str, float]) -> PaceState:
        state = cls()
        for f in dataclasses.fields(cls):
            if f.name in fields:
                value = float(fields[f.name])
                setattr(state, f.name, int(value) if f.name == "cuts" else value)
        return state


@dataclass(frozen=True)
class Pacing:
    """How the adaptive rate moves: a pure function of a :class:`PaceState` and the time.

    - Before the first 429: the configured ceiling when there is one (it is also the
      start). Without one, a slow start from ``start_rps``, grown by ``slow_start_growth``
      per success (doubling every few answers, so a service without a limit is reached
      within a second or two); unpaced when ``start_rps`` is None (the default: a local
      model never throttles; ``pipeline.budget`` sets a slow start for a remote service).
    - On a 429 (at most once per ``cut_interval`` or round trip) the service's rate is
      measured (:func:`measure_rate`): exactly, between 429s that come with no gap over
      ``max_gap`` and span ``min_span``; else, for the first 429s of a job, as an upper
      bound (the successes of the last ``window_s``, which may hold the service's burst).
      Its ``limit`` becomes the lower of that and the rate in force.
    - After a cut: from ``cut`` of the limit (``first_cut``, and over ``first_ramp_s``,
      while the limit is only an upper bound) back up to ``plateau`` of it within
      ``ramp_s``, held there for ``hold_requests`` requests' time, then grown by
      ``probe`` of it per second, to find out whether the service allows more (on-demand
      limits change).

    The state's own numbers, not the process's history, decide the rate, so several
    processes sharing one state (Redis) pace as one.
    """

    start_rps: float | None = None
    slow_start_growth: float = 0.25
    cut: float = 0.9
    first_cut: float = 0.5
    plateau: float = 0.95
    ramp_s: float = 3.0
    first_ramp_s: float = 8.0
    hold_requests: float = 100.0
    probe: float = 0.01
    cut_interval: float = 1.0
    window_s: float = 5.0
    min_span: float = 1.5
    max_gap: float = 3.0
    min_rps: float = 0.01

    def rate(self, state: PaceState, now: float, ceiling: float | None) -> float | None:
        """Requests per second allowed at ``now`` (None: unpaced)."""
        if state.limit <= 0:
            if ceiling is not None:
                return ceiling
            if self.start_rps is None:
                return None
            return state.rate or self.start_rps
        limit = state.limit
        t = max(0.0, now - state.cut_at)
        hold = max(self.ramp_s, self.hold_requests / limit)
        top = limit * self.plateau
        if not state.exact:
            # an upper bound only: from well below it back up, until two 429s measure
            # the service's rate
            low = min(top, limit * self.first_cut)
            ramp = self.first_ramp_s
        else:
            low = min(top, limit * self.cut)
            ramp = self.ramp_s
        if t < ramp:
            r = low + (top - low) * t / ramp
        else:
            r = top + limit * self.probe * max(0.0, t - max(ramp, hold))
        r = max(self.min_rps, r)
        return min(r, ceiling) if ceiling is not None else r

    def grown(self, state: PaceState, ceiling: float | None) -> PaceState | None:
        """The state after a success, or None when a success changes nothing."""
        if state.limit > 0 or ceiling is not None or self.start_rps is None:
            return None
        rate = (state.rate or self.start_rps) * (1.0 + self.slow_start_growth)
        if rate > MAX_PACED_RPS:  # far past any service's limit: grown enough
            return None
        return dataclasses.replace(state, rate=rate)

    def may_cut(self, state: PaceState, now: float, rtt: float) -> bool:
        return now - state.cut_at >= max(self.cut_interval, rtt)

    def cut_state(
        self,
        state: PaceState,
        now: float,
        ceiling: float | None,
        measured: tuple[float, bool] | None,
    ) -> PaceState:
        """The state after a 429 at ``now`` that is allowed to cut (see :meth:`may_cut`);
        ``measured`` is the service's rate (:func:`measure_rate`; None when too few
        answers tell it)."""
        current = self.rate(state, now, ceiling)
        rate, exact = measured if measured is not None else (None, False)
        candidates = [r for r in (current, rate) if r is not None and r > 0]
        base = min(candidates) if candidates else 1.0
        return dataclasses.replace(
            state,
            limit=max(self.min_rps, base),
            cut_at=now,
            cuts=state.cuts + 1,
            # once measured, a later cut starts from the lower of that and the rate in force
            exact=1.0 if exact or state.exact else 0.0,
        )

    @staticmethod
    def paused(state: PaceState, now: float, retry_after: float | None) -> PaceState:
        if not retry_after:
            return state
        until = now + min(retry_after, MAX_RETRY_AFTER_S)
        return dataclasses.replace(state, paused_until=max(state.paused_until, until))


def measure_rate(
    successes: Sequence[float], throttles: Sequence[float], sent: float, pacing: Pacing
) -> tuple[float, bool] | None:
    """The service's rate, in requests/s, as seen at a 429 sent at ``sent``, from the send
    times of recent successes and earlier 429s (oldest first).

    A 429 means the service's bucket was empty when that request arrived. While 429s
    keep coming (no gap over ``pacing.max_gap`` between them, so the bucket never had
    time to fill up), the service lets through exactly what it refills: the successes
    sent since the first 429 of that run, over the time since, are its rate (to within
    one request, so the upper end is taken; measured when that is at least
    ``pacing.min_span`` ago). Otherwise (the
    first 429s of a run) the successes of the last ``pacing.window_s``: an upper bound,
    as it may hold the service's burst. Returns (rate, exact), or None with too few
    answers to tell."""
    start = sent
    for t in reversed(throttles):
        if t > start or start - t > pacing.max_gap:
            if t <= start:
                break
            continue
        start = t
    if sent - start >= pacing.min_span:
        n = sum(1 for t in successes if start < t <= sent)
        if n >= 3:
            # within one request: the upper end, so that a short run errs towards the
            # next 429, whose longer run measures better, not towards a lasting shortfall
            return (n + 1) / (sent - start), True
    inside = [t for t in successes if sent - pacing.window_s < t <= sent]
    if len(inside) < 3:
        return None
    return len(inside) / max(sent - inside[0], 1e-3), False


# ---------------------------------------------------------------------------- stores


class PaceStore(Protocol):
    """Where a budget's buckets and adaptive state live."""

    name: str

    def bucket(self, kind: str) -> StateStore:
        """The GCRA state of ``kind`` ("requests" or "tokens")."""
        ...

    async def load(self) -> PaceState: ...

    async def success(
        self, now: float, rtt: float, grow: Callable[[PaceState], PaceState | None]
    ) -> PaceState:
        """Record a success answered at ``now``, sent ``rtt`` before; ``grow`` gives the
        new state (or None). Returns the state as this store now knows it."""
        ...

    async def throttle(
        self,
        now: float,
        retry_after: float | None,
        rtt: float,
        pacing: Pacing,
        ceiling: float | None,
    ) -> PaceState:
        """Record a 429 at ``now``: pause, and cut when allowed. Returns the new state."""
        ...

    async def aclose(self) -> None: ...


class LocalStore:
    """The buckets and adaptive state of one process."""

    name = "local"

    def __init__(self, state: PaceState | None = None) -> None:
        self.state = state or PaceState()
        self._buckets: dict[str, InMemoryStateStore] = {}
        # send times of recent successes and 429s, for measure_rate
        self._successes: deque[float] = deque(maxlen=8192)
        self._throttles: deque[float] = deque(maxlen=256)

    def bucket(self, kind: str) -> StateStore:
        store = self._buckets.get(kind)
        if store is None:
            store = self._buckets[kind] = InMemoryStateStore()
        return store

    async def load(self) -> PaceState:
        return self.state

    async def success(
        self, now: float, rtt: float, grow: Callable[[PaceState], PaceState | None]
    ) -> PaceState:
        self._successes.append(now - rtt)
        grown = grow(self.state)
        if grown is not None:
            self.state = grown
        return self.state

    async def throttle(
        self,
        now: float,
        retry_after: float | None,
        rtt: float,
        pacing: Pacing,
        ceiling: float | None,
    ) -> PaceState:
        state = pacing.paused(self.state, now, retry_after)
        sent = now - rtt
        if pacing.may_cut(state, now, rtt):
            measured = measure_rate(self._successes, self._throttles, sent, pacing)
            state = pacing.cut_state(state, now, ceiling, measured)
        self._throttles.append(sent)
        self.state = state
        return state

    async def aclose(self) -> None:
        return None


def _request_rate(rate: float) -> list[Rate]:
    """The request bucket's rate: ``rate`` requests/s, in units (see REQUEST_UNITS).
    10,000 units per 1e6/rate ms: 1,000 requests, one every 1e6/rate microseconds (GCRA
    counts whole microseconds), the interval rounded up so never faster than ``rate``."""
    return [
        Rate(
            1000 * REQUEST_UNITS,
            max(1, math.ceil(1e6 / rate)),
            burst=REQUEST_UNITS + REQUEST_SLACK,
        )
    ]


class StoreUnavailable(Exception):
    """A shared store cannot be reached; the budget falls back to its local share."""


# ---------------------------------------------------------------------------- the budget


class RateBudget:
    """The :class:`Budget` of one process: see the module doc.

    ``max_rpm`` / ``max_tpm`` are the configured ceilings of the whole job; ``share`` (K)
    is how many processes run at once without a shared store: each then takes 1/K of
    them. With a shared ``store`` every process draws on the whole ceilings together;
    if that store becomes unreachable the budget falls back, for the rest of the run, to
    a local store and the 1/K share, logging it once.
    """

    def __init__(
        self,
        *,
        max_rpm: float | None = None,
        max_tpm: float | None = None,
        max_in_flight: int = 8,
        share: int = 1,
        store: PaceStore | None = None,
        pacing: Pacing | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if share < 1:
            raise ValueError("share must be at least 1")
        self.max_rpm = max_rpm
        self.max_tpm = max_tpm
        self.share = share
        self.max_in_flight = max_in_flight
        self.clock = clock
        self.sleep = sleep
        self.pacing = pacing or Pacing()
        self.store: PaceStore = store or LocalStore()
        self.fell_back = False
        self.concurrency = AdaptiveConcurrency(max_in_flight, clock=clock)
        self._gcra = GCRA()
        # one waiter per bucket asks the store at a time, the others queue here in order
        self._turns = {"requests": asyncio.Lock(), "tokens": asyncio.Lock()}
        self._state = PaceState()

    # -------------------------------------------------------------- ceilings

    def _divisor(self) -> int:
        return 1 if self.store.name != "local" or self.share == 1 else self.share

    def ceiling_rps(self) -> float | None:
        if not self.max_rpm:
            return None
        return self.max_rpm / 60.0 / self._divisor()

    def ceiling_tpm(self) -> float | None:
        if not self.max_tpm:
            return None
        return self.max_tpm / self._divisor()

    # -------------------------------------------------------------- the protocol

    @asynccontextmanager
    async def slot(self, tokens: int = 0) -> AsyncIterator[None]:
        await self.concurrency.acquire()
        try:
            await self._paced(tokens)
            yield
        finally:
            await self.concurrency.release()

    async def on_success(self, rtt: float) -> None:
        self.concurrency.on_success()
        ceiling = self.ceiling_rps()

        def grow(state: PaceState) -> PaceState | None:
            return self.pacing.grown(state, ceiling)

        self._state = await self._guarded(lambda store: store.success(self.clock(), rtt, grow))

    async def on_throttle(self, retry_after: float | None, rtt: float) -> None:
        self.concurrency.on_throttle(rtt)

        async def cut(store: PaceStore) -> None:
            self._state = await store.throttle(
                self.clock(), retry_after, rtt, self.pacing, self.ceiling_rps()
            )

        await self._guarded(cut)

    def snapshot(self) -> BudgetSnapshot:
        now = self.clock()
        state = self._state
        tpm = self.ceiling_tpm()
        rps = self.ceiling_rps()
        return BudgetSnapshot(
            rate=self.pacing.rate(state, now, rps),
            max_rpm=rps * 60.0 if rps is not None else None,
            max_tpm=tpm,
            limit_estimate=state.limit or None,
            cuts=state.cuts,
            in_flight=self.concurrency.in_flight,
            concurrency=int(self.concurrency.limit),
            paused_for=max(0.0, state.paused_until - now),
            store=self.store.name,
            share=self.share,
            fell_back=self.fell_back,
        )

    async def aclose(self) -> None:
        await self.store.aclose()

    # -------------------------------------------------------------- waiting

    async def _paced(self, tokens: int) -> None:
        async with self._turns["requests"]:  # the others queue here, in order
            while True:
                state = await self._guarded_load()
                now = self.clock()
                if state.paused_until > now:  # a Retry-After holds every request
                    await self.sleep(state.paused_until - now)
                    continue
                rate = self.pacing.rate(state, now, self.ceiling_rps())
                if rate is None:
                    break
                wait = await self._check("requests", _request_rate(rate), REQUEST_UNITS)
                if wait <= 0:
                    break
                await self.sleep(wait)
        tpm = self.ceiling_tpm()
        if tpm and tokens > 0:
            burst = max(1, round(tpm * TOKEN_BURST_S / 60.0))
            rates = [Rate(max(1, round(tpm)), 60_000, burst=burst)]
            async with self._turns["tokens"]:
                left = tokens
                while left > 0:  # larger than a burst: charged in pieces
                    piece = min(left, burst)
                    wait = await self._check("tokens", rates, piece)
                    if wait <= 0:
                        left -= piece
                    else:
                        await self.sleep(wait)

    async def _check(self, kind: str, rates: list[Rate], weight: int) -> float:
        """Seconds until ``weight`` fits in the ``kind`` bucket; 0: taken now."""

        async def check(store: PaceStore) -> float:
            decision = store.bucket(kind).check(self._gcra, rates, int(self.clock() * 1000), weight)
            if isawaitable(decision):
                decision = await decision
            if decision.allowed:
                return 0.0
            ms = decision.retry_after_ms
            return max(0.001, (ms if ms is not None else 50) / 1000.0)

        return await self._guarded(check)

    async def _guarded_load(self) -> PaceState:
        async def load(store: PaceStore) -> None:
            self._state = await store.load()

        await self._guarded(load)
        return self._state

    async def _guarded(self, op: Callable[[PaceStore], Awaitable[T]]) -> T:
        """Run ``op`` on the store; on a shared store's failure, fall back (once) to a
        local store and the per-process share, and run it there."""
        try:
            return await op(self.store)
        except StoreUnavailable as exc:
            self._fall_back(exc)
            return await op(self.store)

    def _fall_back(self, exc: BaseException) -> None:
        if self.fell_back:
            return
        self.fell_back = True
        old = self.store
        self.store = LocalStore(dataclasses.replace(self._state))
        log.warning(
            "the shared rate budget (%s) is unreachable (%s): going on with this process's"
            " share, 1/%d of the configured limits",
            old.name,
            exc,
            self.share,
        )
        closing = asyncio.ensure_future(old.aclose())
        closing.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)


__all__ = [
    "MAX_RETRY_AFTER_S",
    "TOKEN_BURST_S",
    "AdaptiveConcurrency",
    "Budget",
    "BudgetSnapshot",
    "LocalStore",
    "PaceState",
    "PaceStore",
    "Pacing",
    "RateBudget",
    "StoreUnavailable",
    "measure_rate",
]
