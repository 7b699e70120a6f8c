"""Budgets for model calls: requests per minute, tokens per minute, requests in flight.

- ``aiolimiter.AsyncLimiter`` enforces the configured per-minute ceilings.
- ``AdaptiveConcurrency`` (hand-written: no kept library does AIMD for asyncio) bounds
  requests in flight: it halves the window on a 429 — at most once per round trip — and
  grows it by one per window of successes, up to ``max_in_flight``. On-demand OCI limits are
  dynamic and unpublished, so this is what finds the real ceiling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
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


class Budget:
    """All ceilings of one process, shared by every request it sends."""

    def __init__(
        self,
        *,
        max_rpm: int | None = None,
        max_tpm: int | None = None,
        max_in_flight: int = 8,
        max_request_tokens: int = 1,
    ) -> None:
        self.requests = (
            AsyncLimiter(max_rpm * _WINDOW_SECONDS / 60.0, _WINDOW_SECONDS) if max_rpm else None
        )
        self.tokens: AsyncLimiter | None = None
        self._token_capacity = 0.0
        if max_tpm:
            # capacity must fit the largest single request, or acquire() could never succeed
            self._token_capacity = max(max_tpm * _WINDOW_SECONDS / 60.0, float(max_request_tokens))
            period = self._token_capacity * 60.0 / max_tpm
            self.tokens = AsyncLimiter(self._token_capacity, period)
        self.concurrency = AdaptiveConcurrency(max_in_flight)

    @asynccontextmanager
    async def slot(self, tokens: int = 0) -> AsyncIterator[None]:
        """Wait for a request slot: concurrency first, then the per-minute budgets."""
        await self.concurrency.acquire()
        try:
            if self.requests is not None:
                await self.requests.acquire()
            if self.tokens is not None and tokens > 0:
                await self.tokens.acquire(min(float(tokens), self._token_capacity))
            yield
        finally:
            await self.concurrency.release()
