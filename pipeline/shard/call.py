"""Call: packed requests in, answers settled onto the chunks waiting for them.

Up to ``max_in_flight`` requests are sent at once; the shared ``Budget`` inside the
``Caller`` decides when each really goes (rate ceilings, adaptive concurrency), and the
``Caller`` retries, splits a 400 down to the offending input and checks alignment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from pipeline.errors import GenAIError
from pipeline.execute import Caller, TextFailure
from pipeline.shard.pack import Dedup, Packer
from pipeline.shard.work import Request


async def send(caller: Caller, dedup: Dedup, req: Request) -> None:
    """One request; every text's waiters get its vector or its failure."""
    results, failures = await caller.embed_request(req.texts, req.tokens)
    failed: dict[int, TextFailure] = {f.index: f for f in failures}
    for i, text in enumerate(req.texts):
        r = results[i]
        if r is not None:
            dedup.answered(text, (r[0], bool(r[1]), r[2].model_version))
            continue
        tf = failed.get(i)
        err = tf.error if tf else GenAIError("no result for this chunk")
        dedup.failed(text, err, tf.attempts if tf else 0)


async def call_stage(
    caller: Caller,
    packer: Packer,
    inbox: asyncio.Queue[Request | None],
    max_in_flight: int,
    on_idle: Callable[[], None],
) -> None:
    """Requests in until None. ``on_idle`` runs whenever the last outstanding request is
    answered (the packer may then have to flush a partial one)."""
    slots = asyncio.Semaphore(max_in_flight)

    async def one(req: Request) -> None:
        try:
            await send(caller, packer.dedup, req)
        finally:
            slots.release()
            packer.answered()
            if packer.outstanding == 0:
                on_idle()

    # a failing request that must stop the shard (AuthError) cancels the rest
    async with asyncio.TaskGroup() as group:
        while True:
            req = await inbox.get()
            if req is None:
                break
            await slots.acquire()
            group.create_task(one(req))


__all__ = ["call_stage", "send"]
