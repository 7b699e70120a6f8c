"""Pack requests: one stream of chunks in, full embed requests out.

Requests are filled to the backend's ``max_batch_inputs`` and ``max_batch_tokens`` across
documents, source batches and parts. A partial request leaves only at the end of the
stream, or when the read-ahead window is stalled with no request outstanding (nothing
else could ever free it). Identical texts are sent once: a text already answered comes
from a bounded cache, a text already waiting in a request gets one more waiter.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from pipeline.errors import GenAIError
from pipeline.models import Chunk, Failure
from pipeline.shard.work import FLUSH, DocWork, Flush, Hit, Request, Window

# Answered chunk texts remembered per shard: identical texts are embedded once
# (while they stay in this LRU; one 1536-d vector is 6 KB).
_CACHE_ENTRIES = 4096


class Dedup:
    """Texts answered (LRU cache) and texts waiting in a request, shared by the pack and
    call stages."""

    def __init__(self) -> None:
        self.cache: OrderedDict[str, Hit] = OrderedDict()
        self.waiting: dict[str, list[tuple[DocWork, int]]] = {}

    def cached(self, text: str) -> Hit | None:
        hit = self.cache.get(text)
        if hit is not None:
            self.cache.move_to_end(text)
        return hit

    def answered(self, text: str, hit: Hit) -> None:
        for doc, i in self.waiting.pop(text, ()):
            doc.chunk_settled(i, hit, None)
        self.cache[text] = hit
        self.cache.move_to_end(text)
        while len(self.cache) > _CACHE_ENTRIES:
            self.cache.popitem(last=False)

    def failed(self, text: str, error: GenAIError, attempts: int) -> None:
        for doc, i in self.waiting.pop(text, ()):
            doc.chunk_settled(i, None, chunk_failure(doc.chunks[i], error, attempts))


def chunk_failure(c: Chunk, err: GenAIError, attempts: int) -> Failure:
    return Failure.of_error(
        err,
        doc_id=c.doc_id,
        stage="embed",
        message=f"chunk {c.chunk_index} of {c.doc_id}: {err}",
        attempts=attempts,
        chunk_id=c.chunk_id,
        chunk_index=c.chunk_index,
    )


class Packer:
    """The pack stage's state: the request being filled."""

    def __init__(
        self,
        dedup: Dedup,
        window: Window,
        out: asyncio.Queue[Request | None],
        *,
        max_inputs: int,
        max_tokens: int | None,
    ) -> None:
        self.dedup = dedup
        self.window = window
        self.out = out
        self.max_inputs = max_inputs
        self.max_tokens = max_tokens
        self.current = Request()
        self.outstanding = 0  # requests handed on and not yet answered
        self.chunks = 0
        self.sent = 0

    async def add(self, doc: DocWork, index: int) -> None:
        c = doc.chunks[index]
        self.chunks += 1
        hit = self.dedup.cached(c.text)
        if hit is not None:
            doc.chunk_settled(index, hit, None)
            return
        waiting = self.dedup.waiting.get(c.text)
        if waiting is not None:
            waiting.append((doc, index))
            return
        req = self.current
        over = (
            self.max_tokens is not None
            and req.texts
            and req.total_tokens + c.token_count > self.max_tokens
        )
        if len(req.texts) >= self.max_inputs or over:
            await self.flush()
            req = self.current
        waiters = [(doc, index)]
        self.dedup.waiting[c.text] = waiters
        req.texts.append(c.text)
        req.tokens.append(c.token_count)
        req.waiters.append(waiters)
        req.total_tokens += c.token_count
        self.sent += 1
        if len(req.texts) >= self.max_inputs:
            await self.flush()

    async def flush(self) -> None:
        if not self.current.texts:
            return
        req, self.current = self.current, Request()
        self.outstanding += 1
        await self.out.put(req)

    def answered(self) -> None:
        """The call stage settled one request."""
        self.outstanding -= 1


async def pack_stage(
    packer: Packer,
    inbox: asyncio.Queue[list[DocWork] | Flush | None],
) -> None:
    """Admitted (chunked) documents and flush markers in; requests out; None ends both."""
    while True:
        item = await inbox.get()
        if item is None:
            await packer.flush()
            await packer.out.put(None)
            return
        if isinstance(item, Flush):
            # stalled and nothing in flight: only this partial request can free the window
            if packer.window.stalled and packer.outstanding == 0:
                await packer.flush()
            continue
        for doc in item:
            for i in range(len(doc.chunks) if doc.embed else 0):
                await packer.add(doc, i)


__all__ = ["FLUSH", "Dedup", "Packer", "chunk_failure", "pack_stage"]
