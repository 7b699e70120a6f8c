"""Assemble parts: chunked documents are admitted into the read-ahead window and into
the open part; a part is handed to the commit stage once it is closed and every one of
its documents is settled (all chunks answered, the summary done or failed).

A part closes at ``part_rows`` chunk rows or ``part_bytes`` estimated output bytes, after
``part_seconds`` open (so long runs checkpoint regularly), or at the end of the shard.
A document's rows are always in one part: a part boundary falls between documents.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.report import ShardReport
from pipeline.shard.work import FLUSH, Admitted, DocWork, Flush, PartWork, Window

_ROW_OVERHEAD = 200  # bytes of ids, offsets and statistics beside each row's payload
_SUMMARY_BYTES = 1000


@dataclass(frozen=True)
class PartLimits:
    rows: int
    bytes: int
    seconds: float = 30.0


class Parts:
    """The open part, and the closed parts not yet handed to the commit stage."""

    def __init__(
        self,
        first_seq: int,
        limits: PartLimits,
        commit: asyncio.Queue[PartWork | None],
        report: ShardReport,
        *,
        row_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seq = first_seq
        self.limits = limits
        self.commit = commit
        self.report = report
        self.row_bytes = row_bytes
        self.clock = clock
        self.open: PartWork | None = None
        self.unsettled: set[int] = set()  # seqs of parts not yet handed on
        self.waiting_commit = 0
        self._committed = asyncio.Event()

    def _part(self) -> PartWork:
        if self.open is None:
            self.open = PartWork(self.seq, opened_at=self.clock())
            self.unsettled.add(self.seq)
            self.seq += 1
        return self.open

    def add_failures(self, batch: Admitted) -> None:
        part = self._part()
        part.failures.extend(batch.failures)

    def add(self, work: DocWork, keep_text: bool) -> None:
        rows = len(work.chunks)
        size = rows * self.row_bytes
        if keep_text:
            size += sum(len(c.text) for c in work.chunks)
        size += _SUMMARY_BYTES if work.summarize else 0
        part = self.open
        if (
            part is not None
            and part.docs
            and (part.rows + rows > self.limits.rows or part.bytes + size > self.limits.bytes)
        ):
            self.close()
        part = self._part()
        part.docs.append(work)
        part.rows += rows
        part.bytes += size
        part.pending += 1
        work.part = part

    def close(self) -> None:
        """Close the open part; it commits once its documents settle."""
        part, self.open = self.open, None
        if part is not None:
            part.closed = True
            self._maybe_emit(part)

    def tick(self) -> None:
        """Close the open part once it has been open ``limits.seconds``."""
        part = self.open
        if part is not None and self.clock() - part.opened_at >= self.limits.seconds:
            self.close()

    def doc_settled(self, work: DocWork) -> None:
        part = work.part
        assert part is not None
        part.pending -= 1
        self._maybe_emit(part)

    def _maybe_emit(self, part: PartWork) -> None:
        if part.closed and part.pending == 0 and not part.emitted:
            part.emitted = True
            self.unsettled.discard(part.seq)
            if part.docs or part.failures:
                self.waiting_commit += 1
                self.commit.put_nowait(part)

    def committed(self) -> None:
        self.waiting_commit -= 1
        self._committed.set()

    async def commit_room(self, most: int) -> None:
        """Wait while ``most`` parts or more wait for the commit stage (bounds memory)."""
        while self.waiting_commit >= most:
            self._committed.clear()
            await self._committed.wait()


async def admit_stage(
    inbox: asyncio.Queue[Admitted | None],
    parts: Parts,
    window: Window,
    to_pack: asyncio.Queue[list[DocWork] | Flush | None],
    to_summarize: asyncio.Queue[list[DocWork] | None],
    summary_window: Window,
    *,
    keep_text: bool,
) -> None:
    """Chunked batches in; each document takes window credit (one per chunk, and one of
    the summary window), joins the open part, and goes on to pack and summarize.

    ``to_pack`` must be unbounded: a stalled window posts a flush marker without waiting
    (what it holds is bounded by the window's credit)."""
    report = parts.report

    def embedded(work: DocWork) -> None:
        if work.transient:
            # all or nothing for a document with a retryable failure: a re-run redoes
            # the whole document, so none of its rows may be committed now
            report.add("documents_pending", 1)

    def summarized(work: DocWork) -> None:
        summary_window.release(1)

    async def hand_on(docs: list[DocWork]) -> None:
        if docs:
            await to_pack.put(docs)
            summaries = [w for w in docs if w.summarize]
            if summaries:
                await to_summarize.put(summaries)

    while True:
        batch = await inbox.get()
        if batch is None:
            parts.close()
            await to_pack.put(None)
            await to_summarize.put(None)
            return
        await parts.commit_room(2)
        parts.add_failures(batch)
        admitted: list[DocWork] = []
        for work in batch.docs:
            n = len(work.chunks) if work.embed else 0
            if not window.fits(n) or (work.summarize and not summary_window.fits(1)):
                # what waits for credit must be downstream first, or nothing frees it
                await hand_on(admitted)
                admitted = []
            await window.acquire(n, lambda: to_pack.put_nowait(FLUSH))
            if work.summarize:
                await summary_window.acquire(1, lambda: to_pack.put_nowait(FLUSH))
            report.add("chunks", n)
            work.embed_pending = n
            work.summary_pending = work.summarize
            work.credit = window
            work.on_embedded = embedded
            work.on_summarized = summarized
            work.on_done = parts.doc_settled
            parts.add(work, keep_text)
            if n == 0:
                work.embedding_settled()  # nothing to send: no chunks, or a chunk failure
            admitted.append(work)
        await hand_on(admitted)


__all__ = ["PartLimits", "Parts", "admit_stage"]
