"""Budgets on a fake clock: no real sleeping, counts of what was let through."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.throttle import AdaptiveConcurrency, AdaptiveRate


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_rate_paces_evenly_at_the_ceiling() -> None:
    clock = FakeClock()
    rate = AdaptiveRate(10.0, clock=clock, sleep=clock.sleep)

    async def go() -> None:
        for _ in range(50):
            await rate.wait()
            rate.on_success()

    asyncio.run(go())
    assert clock.now - 100.0 == pytest.approx(4.9, abs=0.01)  # 50 requests at 10/s


def test_rate_cuts_on_429_once_per_interval_and_grows_back() -> None:
    clock = FakeClock()
    rate = AdaptiveRate(None, clock=clock, sleep=clock.sleep)
    for _ in range(40):  # 20 successes/s observed, unpaced
        clock.now += 0.05
        rate.on_success()
    rate.on_throttle()
    first = rate.rate
    assert first is not None and first == pytest.approx(0.85 * 20, rel=0.1)
    rate.on_throttle()  # same burst of 429s: no second cut
    assert rate.rate == first and rate.cuts == 1
    clock.now += 10
    rate.on_success()
    assert rate.rate == pytest.approx(first * 1.02)  # growth capped at 1 s per success
    for _ in range(200):
        clock.now += 0.1
        rate.on_success()
    assert rate.rate > first * 1.4


def test_retry_after_pauses_everyone() -> None:
    clock = FakeClock()
    rate = AdaptiveRate(None, clock=clock, sleep=clock.sleep)
    rate.on_throttle(retry_after=5.0)

    async def go() -> None:
        await rate.wait()

    asyncio.run(go())
    assert clock.now == pytest.approx(105.0)


def test_concurrency_halves_and_recovers() -> None:
    c = AdaptiveConcurrency(8)
    c.on_throttle(rtt=0.0)
    assert c.limit == 4
    for _ in range(40):
        c.on_success()
    assert c.limit == 8
    for _ in range(10):
        c._last_cut = 0.0
        c.on_throttle(rtt=0.0)
    assert c.limit == 1
