"""The rate budget on virtual time: every wait is on the event loop's clock, so minutes
of pacing take milliseconds, and the counts of what was let through are exact."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pipeline.budget import REMOTE_PACING, make_budget
from pipeline.config import JobConfig
from pipeline.throttle import (
    AdaptiveConcurrency,
    Budget,
    LocalStore,
    PaceState,
    Pacing,
    RateBudget,
    measure_rate,
)
from tests.pacing_sim import VirtualLoop, simulate


def _on_virtual_time(make: Callable[[VirtualLoop], Awaitable[Any]]) -> Any:
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(make(loop))
    finally:
        loop.close()


async def _slot_times(budget: RateBudget, n: int, tokens: int = 0) -> list[float]:
    start = budget.clock()
    times = []
    for _ in range(n):
        async with budget.slot(tokens):
            times.append(budget.clock() - start)
    return times


def test_the_budget_is_the_protocol_the_caller_uses() -> None:
    assert isinstance(RateBudget(), Budget)


def test_a_ceiling_paces_evenly_and_is_the_only_request_limit() -> None:
    async def go(loop: VirtualLoop) -> list[float]:
        budget = RateBudget(max_rpm=600, clock=loop.time)
        return await _slot_times(budget, 50)

    times = _on_virtual_time(go)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == pytest.approx(0.0, abs=1e-3)
    # 600/min: one every 0.1 s, never faster (the second may take the bucket's slack)
    assert gaps[0] >= 0.09 - 1e-6 and min(gaps[1:]) >= 0.1 - 1e-6
    assert times[-1] == pytest.approx(4.89, abs=0.01)


def test_a_waker_a_little_late_keeps_the_pace() -> None:
    """Every wait oversleeps 5 ms (a busy event loop): the slack of a tenth of an
    interval absorbs it, so 100 requests at 10/s still take 9.9 s, not 10.4."""

    async def go(loop: VirtualLoop) -> list[float]:
        async def late(s: float) -> None:
            await asyncio.sleep(s + 0.005)

        budget = RateBudget(max_rpm=600, clock=loop.time, sleep=late)
        return await _slot_times(budget, 100)

    assert _on_virtual_time(go)[-1] == pytest.approx(9.9, abs=0.03)


def test_each_of_k_shards_takes_one_kth_of_the_ceilings_without_a_shared_store() -> None:
    async def go(loop: VirtualLoop) -> tuple[list[float], Any]:
        budget = RateBudget(max_rpm=600, max_tpm=60_000, share=4, clock=loop.time)
        return await _slot_times(budget, 11), budget.snapshot()

    times, snap = _on_virtual_time(go)
    assert times[-1] == pytest.approx(9.9 * 0.4, abs=0.01)  # 150/min: one every 0.4 s
    assert snap.max_rpm == pytest.approx(150) and snap.max_tpm == pytest.approx(15_000)
    assert snap.share == 4 and snap.store == "local"


def test_k_shards_together_stay_within_the_budget() -> None:
    """Four processes' budgets (separate stores, as without Redis) sending flat out for
    a minute of virtual time: together no more than the configured ceiling."""

    async def go(loop: VirtualLoop) -> int:
        budgets = [RateBudget(max_rpm=120, share=4, clock=loop.time) for _ in range(4)]
        sent = 0

        async def flat_out(budget: RateBudget) -> None:
            nonlocal sent
            while loop.time() < 1000.0 + 60.0:
                async with budget.slot():
                    if loop.time() < 1000.0 + 60.0:
                        sent += 1

        await asyncio.gather(*(flat_out(b) for b in budgets))
        return sent

    assert _on_virtual_time(go) <= 120 + 4  # each may send its first at once


def test_tokens_per_minute_hold_even_for_requests_larger_than_a_burst() -> None:
    async def go(loop: VirtualLoop) -> list[float]:
        budget = RateBudget(max_tpm=6000, clock=loop.time)  # bursts of 600 tokens
        return await _slot_times(budget, 4, tokens=1500)  # each 2.5 bursts

    times = _on_virtual_time(go)
    # 6,000 tokens in all: the first burst is free, the rest come at 100 tokens/s
    assert times[-1] == pytest.approx((6000 - 600) / 100, abs=0.05)
    assert all(b - a >= 15 - 1e-3 for a, b in itertools.pairwise(times))


def test_retry_after_holds_every_request_back() -> None:
    async def go(loop: VirtualLoop) -> float:
        budget = RateBudget(clock=loop.time)
        await budget.on_throttle(30.0, rtt=0.2)
        start = loop.time()
        async with budget.slot():
            return loop.time() - start

    assert _on_virtual_time(go) == pytest.approx(30.0, abs=0.01)


def test_a_429_cuts_the_rate_to_the_measured_one_once_per_interval() -> None:
    async def go(loop: VirtualLoop) -> tuple[PaceState, PaceState, int]:
        budget = RateBudget(clock=loop.time)
        for _ in range(40):  # 10 answers/s, unpaced
            await asyncio.sleep(0.1)
            await budget.on_success(rtt=0.0)
        await budget.on_throttle(None, rtt=0.0)
        first = dataclass_copy(budget._state)
        await budget.on_throttle(None, rtt=0.0)  # the same overload: no second cut
        return first, budget._state, budget.snapshot().cuts

    first, second, cuts = _on_virtual_time(go)
    assert cuts == 1 and second.cut_at == first.cut_at
    assert first.limit == pytest.approx(10.0, rel=0.05)  # the successes of the last 5 s
    assert not first.exact  # an upper bound: it may hold the service's burst


def dataclass_copy(state: PaceState) -> PaceState:
    return PaceState.from_fields(state.to_fields())


def test_measure_rate_between_two_429s_is_exact() -> None:
    pacing = Pacing()
    successes = [10.0 + 0.5 * i for i in range(13)]  # 2/s from t=10 to t=16
    # 429s at 10.9 and 13.1, this one at 16.05: no gap over max_gap (3 s) between them,
    # so the service's bucket stayed empty: it let through what it refilled since 10.9
    rate, exact = measure_rate(successes, [10.9, 13.1], 16.05, pacing)  # type: ignore[misc]
    assert exact and rate == pytest.approx((11 + 1) / 5.15)
    # a gap longer than max_gap breaks the run: only 13.1 counts
    rate, exact = measure_rate(successes, [5.0, 13.1], 16.05, pacing)  # type: ignore[misc]
    assert exact and rate == pytest.approx((6 + 1) / 2.95)
    # no earlier 429 far enough back: the window's rate, an upper bound
    rate, exact = measure_rate(successes, [15.5], 16.05, pacing)  # type: ignore[misc]
    assert not exact and rate == pytest.approx(10 / (16.05 - 11.5))
    assert measure_rate([16.0], [], 16.1, pacing) is None


def test_after_a_cut_the_rate_climbs_back_holds_then_probes() -> None:
    pacing = Pacing()
    state = PaceState(limit=2.0, cut_at=100.0, cuts=3, exact=1.0)
    assert pacing.rate(state, 100.0, None) == pytest.approx(2.0 * pacing.cut)
    assert pacing.rate(state, 100.0 + pacing.ramp_s, None) == pytest.approx(2.0 * pacing.plateau)
    hold = pacing.hold_requests / 2.0
    assert pacing.rate(state, 100.0 + hold, None) == pytest.approx(2.0 * pacing.plateau)
    assert pacing.rate(state, 100.0 + hold + 10, None) == pytest.approx(
        2.0 * (pacing.plateau + 10 * pacing.probe)
    )
    # never above a configured ceiling
    assert pacing.rate(state, 100.0 + hold + 100, 1.5) == 1.5


def test_slow_start_grows_per_success_until_the_first_429() -> None:
    async def go(loop: VirtualLoop) -> tuple[float | None, float | None, float | None]:
        budget = RateBudget(pacing=Pacing(start_rps=4.0), clock=loop.time)
        start = budget.snapshot().rate
        for _ in range(10):
            await budget.on_success(rtt=0.2)
        grown = budget.snapshot().rate
        await budget.on_throttle(None, rtt=0.2)
        for _ in range(10):
            await budget.on_success(rtt=0.2)
        return start, grown, budget.snapshot().rate

    start, grown, after = _on_virtual_time(go)
    assert start == 4.0
    assert grown == pytest.approx(4.0 * 1.25**10)
    assert after is not None and after < grown  # cut, and no slow start any more


def test_a_429_seen_by_one_budget_paces_every_budget_of_the_same_store() -> None:
    """Two processes' budgets on one store (what Redis gives across workers): one's 429
    holds the other back too."""

    async def go(loop: VirtualLoop) -> tuple[float, float]:
        store = LocalStore()
        a = RateBudget(store=store, clock=loop.time)
        b = RateBudget(store=store, clock=loop.time)
        await a.on_throttle(10.0, rtt=0.1)
        start = loop.time()
        async with b.slot():
            waited = loop.time() - start
        return waited, b.snapshot().paused_for

    waited, paused = _on_virtual_time(go)
    assert waited == pytest.approx(10.0, abs=0.01) and paused == 0.0


def test_concurrency_halves_and_recovers() -> None:
    c = AdaptiveConcurrency(8, clock=lambda: 0.0)
    c.on_throttle(rtt=0.0)
    assert c.limit == 4
    for _ in range(40):
        c.on_success()
    assert c.limit == 8
    for _ in range(10):
        c._last_cut = -math.inf
        c.on_throttle(rtt=0.0)
    assert c.limit == 1


def test_make_budget_paces_a_remote_service_and_not_a_local_model() -> None:
    remote = make_budget(JobConfig(source="s", output="o", backend="oci", max_rpm=60))
    local = make_budget(JobConfig(source="s", output="o", backend="hash"))
    assert remote.pacing == REMOTE_PACING and remote.snapshot().rate == 1.0
    assert local.snapshot().rate is None  # unpaced: a local model never throttles
    shared = make_budget(JobConfig(source="s", output="o", concurrent_shards=4, max_rpm=60))
    assert shared.snapshot().max_rpm == pytest.approx(15)


# ------------------------------------------------------------ the Caller on virtual time


@pytest.mark.parametrize(("requests", "min_share"), [(100, 0.90), (300, 0.95)])
def test_adaptive_pacing_converges_on_a_short_job_and_a_long_one(
    requests: int, min_share: float
) -> None:
    """No limit configured; the service allows 120 requests/min (a 2 s bucket, a 429
    answered at once) and answers in ~200 ms: the 50 s and the 150 s jobs of
    bench/bench_pacing.py, through the Caller and the real budget, on virtual time. The
    issue's aim: at least 0.90 of the limit with at most 5 % of requests throttled."""
    for seed in range(3):
        r = simulate(rpm=120, requests=requests, seed=seed)
        assert r.failed == 0
        assert r.share >= min_share, (seed, r)
        assert r.throttled_share <= 0.05, (seed, r)


def test_without_pacing_the_same_job_is_throttled_far_more() -> None:
    """The same short job unpaced until its first 429 (what the pipeline did before a
    remote service was slow-started): the test above can fail."""
    r = simulate(rpm=120, requests=100, seed=0, pacing=Pacing(start_rps=None))
    assert r.throttled_share > 0.08
