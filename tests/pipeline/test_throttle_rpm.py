"""Low request-per-minute ceilings on a virtual clock: every ``max_rpm`` of at least 1
paces requests at exactly that rate (below 10 rpm the limiter once refused to start)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from pipeline.throttle import RateBudget
from tests.pacing_sim import VirtualLoop


def _slot_times(max_rpm: int, requests: int) -> list[float]:
    async def go() -> list[float]:
        loop = asyncio.get_running_loop()
        budget = RateBudget(max_rpm=max_rpm, max_in_flight=4, clock=loop.time)
        start = loop.time()
        times = []
        for _ in range(requests):
            async with budget.slot():
                times.append(loop.time() - start)
        return times

    loop = VirtualLoop()
    try:
        return loop.run_until_complete(go())
    finally:
        loop.close()


@pytest.mark.parametrize("max_rpm", [1, 2, 5, 9, 10, 60])
def test_every_rpm_of_at_least_one_paces_at_that_rate(max_rpm: int) -> None:
    times = _slot_times(max_rpm, 6)
    assert times[0] == pytest.approx(0.0, abs=1e-6)  # the first request goes at once
    gaps = [b - a for a, b in itertools.pairwise(times)]
    interval = 60.0 / max_rpm
    # after the first, one request per 60/max_rpm seconds; the second may go a tenth of
    # an interval early (the slack that keeps a late waker's slot), never more
    assert gaps[0] >= 0.9 * interval - 1e-6
    assert min(gaps[1:]) >= interval - 2e-3  # to the bucket's millisecond
    assert times[-1] == pytest.approx(4.9 * interval, rel=0.02)


def test_one_rpm_waits_a_minute_on_a_real_loop_too() -> None:
    async def go() -> bool:
        budget = RateBudget(max_rpm=1)
        async with budget.slot():
            pass
        second = asyncio.ensure_future(_enter(budget))
        await asyncio.sleep(0.3)
        waiting = not second.done()
        second.cancel()
        return waiting

    async def _enter(budget: RateBudget) -> None:
        async with budget.slot():
            pass

    assert asyncio.run(go())
