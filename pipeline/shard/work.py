"""The values that travel between the shard's stages, and the read-ahead window.

A :class:`DocWork` is one document on its way through the shard: the stages after
``chunk`` fill in its chunk results and its summary; when both are settled, the part
that holds it (a :class:`PartWork`) is one document closer to its commit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.checkpoint import FAILED, OK
from pipeline.genai.base import SummaryResult
from pipeline.models import Chunk, Document, Failure

#: a chunk's answer: (vector, truncated, model_version)
Hit = tuple[np.ndarray, bool, str | None]


@dataclass(eq=False)
class DocWork:
    """One document in flight. ``embed`` / ``summarize``: what the index says is due."""

    doc: Document
    content_hash: str
    embed: bool
    summarize: bool
    chunks: list[Chunk] = field(default_factory=list)
    hits: list[Hit | None] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    transient: bool = False  # a chunk failed on a retryable error: no rows this run
    embed_state: str | None = None
    summary_state: str | None = None
    summary: SummaryResult | None = None
    embed_pending: int = 0
    summary_pending: bool = False
    part: PartWork | None = None
    credit: Window | None = None  # given back one per chunk as its answer settles
    # set by the assemble stage: called once when the embedding, then the whole doc, settle
    on_embedded: Callable[[DocWork], None] | None = None
    on_summarized: Callable[[DocWork], None] | None = None
    on_done: Callable[[DocWork], None] | None = None

    @property
    def done(self) -> bool:
        return self.embed_pending == 0 and not self.summary_pending

    def chunk_settled(self, index: int, hit: Hit | None, failure: Failure | None) -> None:
        """Record chunk ``index``'s answer (a hit, or a failure with its permanence)."""
        if hit is not None:
            self.hits[index] = hit
        elif failure is not None:
            self.failures.append(failure)
            self.transient = self.transient or not failure.permanent
        self.embed_pending -= 1
        if self.credit is not None:
            self.credit.release(1)
        if self.embed_pending == 0:
            self.embedding_settled()

    def embedding_settled(self) -> None:
        if self.embed and self.embed_state is None and not self.transient:
            failed = bool(self.failures) and any(f.stage == "embed" for f in self.failures)
            self.embed_state = FAILED if failed else OK
        if self.on_embedded:
            self.on_embedded(self)
        if self.done and self.on_done:
            self.on_done(self)

    def summary_settled(self, result: SummaryResult | None, failure: Failure | None) -> None:
        self.summary = result
        if result is not None:
            self.summary_state = OK
        elif failure is not None:
            self.failures.append(failure)
            if failure.permanent:
                self.summary_state = FAILED
        self.summary_pending = False
        if self.on_summarized:
            self.on_summarized(self)
        if self.done and self.on_done:
            self.on_done(self)


@dataclass(eq=False)
class PartWork:
    """One part being assembled: the documents (and rejected rows) it will commit."""

    seq: int
    docs: list[DocWork] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)  # rejected by the source
    rows: int = 0
    bytes: int = 0
    opened_at: float = field(default_factory=time.monotonic)
    closed: bool = False
    pending: int = 0  # documents not yet settled
    emitted: bool = False


@dataclass(eq=False)
class Admitted:
    """One source batch after the skip stage (and, filled in, after the chunk stage)."""

    docs: list[DocWork]
    failures: list[Failure]
    read: int
    skipped: int


@dataclass(eq=False)
class Request:
    """One embed request: unique texts, and for each the chunks waiting on it."""

    texts: list[str] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    waiters: list[list[tuple[DocWork, int]]] = field(default_factory=list)
    total_tokens: int = 0


class Flush:
    """A marker down the packer's channel: the window may be stalled, flush if nothing
    else can free it."""


FLUSH = Flush()


class Window:
    """Credits for read-ahead: chunks admitted but not yet answered (each is given back
    as its answer settles).

    ``acquire`` waits while ``used + n`` would pass ``capacity``; see :meth:`fits` for
    documents too large for the window.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self.stalled = False
        self._freed = asyncio.Event()

    def fits(self, n: int) -> bool:
        if self.used == 0 or self.used + n <= self.capacity:
            return True
        # a large document goes in while the window is not full, so it never waits for the
        # whole window to drain (that would force partial requests and idle the pipe);
        # the window then holds at most ``capacity`` + the largest document
        return n > self.capacity // 2 and self.used < self.capacity

    async def acquire(self, n: int, on_stall: Callable[[], None]) -> None:
        while not self.fits(n):
            self._freed.clear()
            if not self.stalled:
                self.stalled = True
                on_stall()
            await self._freed.wait()
        self.stalled = False
        self.used += n
        self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        self.used -= n
        self._freed.set()


__all__ = ["FLUSH", "Admitted", "DocWork", "Flush", "Hit", "PartWork", "Request", "Window"]
