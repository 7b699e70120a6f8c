"""Read: a shard's source units in, source batches (Arrow-read documents) out.

Reading and parsing block, so each batch is read in a worker thread; the bounded channel
downstream is the read-ahead before the window takes over.
"""

from __future__ import annotations

import asyncio

from pipeline.models import SourceBatch
from pipeline.sources import Duplicates, SourceOptions, SourceUnit, read_units


async def read_stage(
    units: list[SourceUnit],
    options: SourceOptions,
    out: asyncio.Queue[SourceBatch | None],
    *,
    duplicates: Duplicates | None = None,
) -> None:
    """Every batch of ``units`` (one validator across them, and the run's plan-time
    ``duplicates`` across shards turned into DuplicateId failures), then None."""
    batches = read_units(units, options, duplicates=duplicates)
    while True:
        batch = await asyncio.to_thread(next, batches, None)
        if batch is None:
            break
        await out.put(batch)
    await out.put(None)


__all__ = ["read_stage"]
