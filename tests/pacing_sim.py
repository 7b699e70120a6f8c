"""The call layer against a rate-limited service, on virtual time.

A token bucket with the emulator's capacities (its aiolimiter leaky bucket seen from the
other side: ``rpm`` per minute, ``burst_s`` seconds' worth, the check on arrival, a 429
answered at once), an accepted request answered after a gamma-distributed latency, and
the real ``Caller``
and ``RateBudget`` sending ``requests`` requests with up to ``in_flight`` at once, as the
call stage does. Everything waits on the event loop's virtual clock, so a 150-second job
takes a fraction of a second and the same seed gives the same run.
"""

from __future__ import annotations

import asyncio
import random
import selectors
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.budget import REMOTE_PACING
from pipeline.errors import ThrottledError
from pipeline.execute import Caller
from pipeline.genai.base import EmbedResult
from pipeline.genai.hashembed import RegexTokenCounter
from pipeline.throttle import Pacing, RateBudget


class _VirtualSelector(selectors.DefaultSelector):
    """Waiting for a timer advances the loop's virtual clock instead of sleeping."""

    def __init__(self, loop_ref: list[Any]) -> None:
        super().__init__()
        self._loop_ref = loop_ref

    def select(self, timeout: float | None = None) -> list[Any]:
        # a microsecond passes on every turn, as on a real clock: a limiter that re-checks
        # "now" after a rounding error must see time move
        self._loop_ref[0].now += (timeout or 0.0) + 1e-6
        return super().select(0)


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        ref: list[Any] = []
        super().__init__(_VirtualSelector(ref))
        ref.append(self)
        self.now = 1000.0

    def time(self) -> float:
        return self.now


class Service:
    """A token bucket refilled at ``rpm``/60 per second, holding ``burst_s`` seconds."""

    def __init__(
        self, loop: VirtualLoop, rpm: float, burst_s: float, latency_s: float, seed: int
    ) -> None:
        self.loop = loop
        self.rate = rpm / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.at = loop.time()
        self.latency_s = latency_s
        self.rng = random.Random(seed)
        self.accepted: list[float] = []
        self.throttled = 0
        self.throttled_at: list[float] = []

    def admit(self) -> bool:
        now = self.loop.time()
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now
        if self.level < 1.0:
            self.throttled += 1
            self.throttled_at.append(now)
            return False
        self.level -= 1.0
        self.accepted.append(now)
        return True

    def latency(self) -> float:
        if self.latency_s <= 0:
            return 0.0
        return self.rng.gammavariate(4.0, self.latency_s / 4.0)


class _Backend:
    name = "sim"
    embed_model_id = "sim/embed"
    summary_model_id = "sim/sum"
    dim = 4
    max_batch_inputs = 96
    max_batch_tokens: int | None = None
    max_input_tokens = 256
    token_counter = RegexTokenCounter()

    def __init__(self, service: Service) -> None:
        self.service = service

    def fingerprint(self) -> dict[str, object]:
        return {"backend": self.name}

    async def embed(self, texts: list[str]) -> EmbedResult:
        # the check on arrival; a 429 is answered at once (as the emulator and a gateway
        # do), an accepted request after the latency
        if not self.service.admit():
            await asyncio.sleep(0.002)
            raise ThrottledError("Too many requests", status=429, code="TooManyRequests")
        await asyncio.sleep(self.service.latency())
        return EmbedResult(np.zeros((len(texts), self.dim), np.float32), [False] * len(texts), "1")

    async def aclose(self) -> None:
        return None


@dataclass
class SimResult:
    requests: int
    accepted: int
    throttled: int
    seconds: float
    rpm: float
    failed: int
    throttled_at: list[float]

    @property
    def share(self) -> float:
        """Accepted requests per minute over the service's limit, from the first
        request to the last answer."""
        return self.accepted / max(self.seconds, 1e-9) * 60.0 / self.rpm

    @property
    def throttled_share(self) -> float:
        return self.throttled / max(self.accepted + self.throttled, 1)


def simulate(
    *,
    rpm: float = 120,
    requests: int = 100,
    latency_s: float = 0.2,
    burst_s: float = 2.0,
    in_flight: int = 16,
    max_rpm: float | None = None,
    pacing: Pacing | None = None,
    max_attempts: int = 6,
    seed: int = 0,
) -> SimResult:
    loop = VirtualLoop()
    random.seed(seed)  # the retry jitter
    try:
        service = Service(loop, rpm, burst_s, latency_s, seed)

        async def go() -> tuple[float, float, int]:
            budget = RateBudget(
                max_rpm=max_rpm,
                max_in_flight=in_flight,
                pacing=pacing or REMOTE_PACING,
                clock=loop.time,
                sleep=asyncio.sleep,
            )
            caller = Caller(_Backend(service), budget, max_attempts=max_attempts)
            slots = asyncio.Semaphore(in_flight)
            failed = 0
            start = loop.time()

            async def one(i: int) -> None:
                nonlocal failed
                try:
                    _, failures = await caller.embed_request([f"t{i}"], [1])
                    failed += len(failures)
                finally:
                    slots.release()

            async with asyncio.TaskGroup() as group:
                for i in range(requests):
                    await slots.acquire()
                    group.create_task(one(i))
            return start, loop.time(), failed

        start, end, failed = loop.run_until_complete(go())
        service.throttled_at = [t + 0 * start for t in service.throttled_at]
    finally:
        loop.close()
    return SimResult(
        requests=requests,
        accepted=len(service.accepted),
        throttled=service.throttled,
        seconds=end - start,
        rpm=rpm,
        failed=failed,
        throttled_at=[round(t - start, 2) for t in service.throttled_at],
    )


if __name__ == "__main__":
    import sys

    for n in (100, 300):
        for seed in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
            r = simulate(requests=n, seed=seed)
            print(
                f"{n} requests seed {seed}: {r.seconds:.1f} s, share {r.share:.3f},"
                f" throttled {100 * r.throttled_share:.1f} % ({r.throttled}), failed {r.failed}"
            )
            print("   429 at", r.throttled_at)
