"""One process drawing flat out on a rate budget shared through Redis, for the tests.

    python -m tests.budget_worker URL KEY MAX_RPM SECONDS [START_AT]

Waits until wall-clock ``START_AT`` (so that several workers start together), then takes
request slots as fast as the budget allows for ``SECONDS``, with 4 in flight, and prints
a JSON object: the wall-clock times of its slots and the budget's last snapshot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time

from pipeline.budget import RedisStore
from pipeline.throttle import RateBudget


async def main(url: str, key: str, max_rpm: float, seconds: float, start_at: float) -> None:
    budget = RateBudget(
        max_rpm=max_rpm, max_in_flight=4, store=RedisStore(url, key), clock=time.time
    )
    await asyncio.sleep(max(0.0, start_at - time.time()))
    end = time.time() + seconds
    times: list[float] = []

    async def flat_out() -> None:
        while time.time() < end:
            async with budget.slot():
                now = time.time()
                if now < end:
                    times.append(now)
            await budget.on_success(rtt=0.0)

    await asyncio.gather(*(flat_out() for _ in range(4)))
    snapshot = dataclasses.asdict(budget.snapshot())
    await budget.aclose()
    print(json.dumps({"times": sorted(times), "snapshot": snapshot}))


if __name__ == "__main__":
    url, key, rpm, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    start_at = float(sys.argv[5]) if len(sys.argv) > 5 else time.time()
    asyncio.run(main(url, key, rpm, seconds, start_at))
