"""Budgets for model calls: requests per minute, tokens per minute, requests in flight.

- ``aiolimiter.AsyncLimiter`` enforces the configured per-minute ceilings.
- ``AdaptiveConcurrency`` bounds requests in flight: it halves the window on a 429 — at
  most once per round trip — and grows it by one per window of successes, up to
  ``max_in_flight``.
- ``AdaptiveRate`` paces requests per second the same way (multiplicative decrease on a
  429, slow growth on success) and holds every request back while a server's
  ``Retry-After`` runs. On-demand OCI limits are dynamic and unpublished, so these two are
  what find the real ceiling. Both are hand-written: no kept library adapts a limit to
  429s for asyncio.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiolimiter import AsyncLimiter

# Ceilings are spread over short windows so a job does not burst a whole minute's
# budget in its first second.
_WINDOW_SECONDS = 6.0


class AdaptiveConcurrency:
    """An asyncio semaphore whose size follows additive-increase, multiplicative-decrease."""

    def __init__(self, maximum: int, *, initial: int | None = None, minimum: int = 1) -> None:
        if maximum < 1:
            raise ValueError("maximum must be at least 1")
        self.maximum = maximum
        self.minimum = max(1, min(minimum, maximum))
        self.limit = float(initial if initial is not None else maximum)
        self.in_flight = 0
        self._cond = asyncio.Condition()
        self._last_cut = 0.0
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
        now = time.monotonic()
        # one cut per round trip: the requests already in flight saw the same overload
        if now - self._last_cut >= max(rtt, 0.05):
            self.limit = max(float(self.minimum), self.limit / 2.0)
            self._last_cut = now
            self.cuts += 1


class AdaptiveRate:
    """Requests-per-second pacing, AIMD on 429s.

    Unpaced until the first 429 (unless a ceiling is given, which is also the start).
    On a 429 — at most once per ``cut_interval`` — the rate becomes ``decrease`` times the
    lower of the current rate and the recent success rate; each success then grows it by
    ``growth`` per second elapsed, up to the ceiling. The sawtooth stays just under the
    server's limit, so few requests are throttled and few slots are wasted.
    """

    def __init__(
        self,
        ceiling_rps: float | None = None,
        *,
        decrease: float = 0.85,
        growth: float = 0.02,
        min_rps: float = 0.1,
        cut_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.ceiling = ceiling_rps
        self.rate: float | None = ceiling_rps
        self.decrease = decrease
        self.growth = growth
        self.min_rps = min_rps
        self.cut_interval = cut_interval
        self.clock = clock
        self.sleep = sleep
        self._next = 0.0
        self._paused_until = 0.0
        self._last_cut = -1e9
        self._last_growth = clock()
        self._successes: deque[float] = deque(maxlen=512)
        self.cuts = 0

    async def wait(self) -> None:
        now = self.clock()
        if self._paused_until > now:
            await self.sleep(self._paused_until - now)
            now = self.clock()
        if self.rate is None:
            return
        slot = max(now, self._next)
        self._next = slot + 1.0 / self.rate
        if slot > now:
            await self.sleep(slot - now)

    def _recent_rate(self, now: float) -> float | None:
        window = [t for t in self._successes if now - t <= 5.0]
        if len(window) < 2:
            return None
        return len(window) / max(now - window[0], 1e-3)

    def on_success(self) -> None:
        now = self.clock()
        self._successes.append(now)
        if self.rate is not None:
            dt = min(now - self._last_growth, 1.0)
            self.rate *= 1.0 + self.growth * dt
            if self.ceiling is not None:
                self.rate = min(self.rate, self.ceiling)
        self._last_growth = now

    def on_throttle(self, retry_after: float | None = None) -> None:
        now = self.clock()
        if retry_after:
            self._paused_until = max(self._paused_until, now + min(retry_after, 120.0))
        if now - self._last_cut < self.cut_interval:
            return
        recent = self._recent_rate(now)
        candidates = [r for r in (self.rate, recent) if r is not None]
        base = min(candidates) if candidates else 1.0
        self.rate = max(self.min_rps, base * self.decrease)
        self._last_cut = now
        self._last_growth = now
        self.cuts += 1


class Budget:
    """All ceilings of one process, shared by every request it sends."""

    def __init__(
        self,
        *,
        max_rpm: int | None = None,
        max_tpm: int | None = None,
        max_in_flight: int = 8,
        max_request_tokens: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.requests: AsyncLimiter | None = None
        if max_rpm:
            # the bucket must hold at least one whole request, or no acquire() can succeed:
            # below 10 rpm the window grows (1 rpm: one request per 60 s window)
            window = max(_WINDOW_SECONDS, 60.0 / max_rpm)
            self.requests = AsyncLimiter(max_rpm * window / 60.0, window)
        self.tokens: AsyncLimiter | None = None
        self._token_capacity = 0.0
        if max_tpm:
            # capacity must fit the largest single request, or acquire() could never succeed
            self._token_capacity = max(max_tpm * _WINDOW_SECONDS / 60.0, float(max_request_tokens))
            period = self._token_capacity * 60.0 / max_tpm
            self.tokens = AsyncLimiter(self._token_capacity, period)
        self.concurrency = AdaptiveConcurrency(max_in_flight)
        ceiling = max_rpm / 60.0 if max_rpm else None
        # the AIMD floor must not lift the pace above a low configured ceiling
        floor = min(0.1, ceiling) if ceiling else 0.1
        self.rate = AdaptiveRate(ceiling, min_rps=floor, clock=clock, sleep=sleep)

    @asynccontextmanager
    async def slot(self, tokens: int = 0) -> AsyncIterator[None]:
        """Wait for a request slot: concurrency first, then the per-minute budgets."""
        await self.concurrency.acquire()
        try:
            if self.requests is not None:
                await self.requests.acquire()
            if self.tokens is not None and tokens > 0:
                await self.tokens.acquire(min(float(tokens), self._token_capacity))
            await self.rate.wait()
            yield
        finally:
            await self.concurrency.release()
