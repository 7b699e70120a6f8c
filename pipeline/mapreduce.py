"""Summaries of documents of any length.

``summarize_document`` is the one entry point the shard's summarize stage calls for a
document. A document within the model's input budget is one call; a longer one is
summarized map-reduce: it is cut into pieces that fit (at paragraph, line, sentence or
word boundaries), the pieces are summarized concurrently, and the joined piece summaries
are summarized again, level after level, until they fit one call. Every call goes through
``one``, which the caller wires to its budget and retries.

The result is deterministic for a deterministic ``one``: the cuts depend only on the
text, the budget and the counter. Every level is forced to shrink (a piece summary is cut
to at most half its piece), and after :data:`MAX_LEVELS` levels what is left is cut to the
budget, so a model that echoes its input cannot make it loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable

from pipeline.genai.base import SummaryResult

__all__ = [
    "MAPREDUCE_VERSION",
    "MAX_LEVELS",
    "SummarizeOne",
    "split_text",
    "summarize_document",
    "upper_bound_tokens",
]

SummarizeOne = Callable[[str], Awaitable[SummaryResult]]

#: changes when the cuts or the joining change (it is part of the summary fingerprint)
MAPREDUCE_VERSION = "1"
#: most map levels before the rest is cut to the budget (a real model shrinks a piece of
#: 100k tokens to a few hundred, so two levels cover any document that fits on a disk)
MAX_LEVELS = 6
#: a budget below this leaves too little room for any text (a setting error)
MIN_BUDGET = 64
JOIN = "\n\n"
# pieces are aimed a little under the budget, so the count check rarely has to re-cut
_FILL = 0.95


def upper_bound_tokens(text: str) -> int:
    """The UTF-8 byte length of ``text``: never fewer than the tokens of any tokenizer the
    backends use (every BPE, WordPiece or word token covers at least one byte), cheap on
    megabytes. The unit of every backend's ``summary_input_tokens``."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _cut(text: str, lo: int, hi: int) -> int:
    """A cut position in ``(lo, hi]``, as late as possible in its second half: after a
    blank line, else a line break, else a sentence end, else a space; ``hi`` if none."""
    mid = lo + max(1, (hi - lo) // 2)
    for mark in ("\n\n", "\n", ". ", "? ", "! ", " "):
        k = text.rfind(mark, mid, hi)
        if k != -1:
            return k + len(mark)
    return hi


def split_text(text: str, budget: int, count_tokens: Callable[[str], int]) -> list[str]:
    """``text`` cut into consecutive pieces of at most ``budget`` tokens each (by
    ``count_tokens``), at natural boundaries; pieces of only white space are dropped.
    Joined, the pieces give back ``text`` less those. Deterministic."""
    if budget < 1:
        raise ValueError(f"budget must be at least 1, got {budget}")
    n = len(text)
    total = max(1, count_tokens(text))
    # characters per piece from the text's average density; a denser stretch (say CJK
    # in an English text) is found by the count check below and cut shorter
    target = max(1, int(budget * _FILL * n / total))
    pieces: list[str] = []
    start = 0
    while start < n:
        end = n if start + target >= n else _cut(text, start, start + target)
        piece = text[start:end]
        while end - start > 1 and count_tokens(piece) > budget:
            end = _cut(text, start, start + max(1, (end - start) * 3 // 4))
            piece = text[start:end]
        if piece.strip():
            pieces.append(piece)
        start = end
    return pieces


def _shorten(summary: str, limit: int) -> str:
    """``summary`` cut at a word boundary to at most ``limit`` characters (at least 1)."""
    limit = max(1, limit)
    if len(summary) <= limit:
        return summary
    head = summary[:limit]
    space = head.rfind(" ")
    return head[:space] if space > limit // 2 else head


def _sum(values: Iterable[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


async def _map(pieces: list[str], one: SummarizeOne) -> list[SummaryResult]:
    """``one`` over ``pieces`` concurrently (the caller's budget paces them), in order.
    On the first failure the other calls are cancelled, so a doomed document stops
    spending, and that failure is raised."""
    tasks = [asyncio.ensure_future(one(p)) for p in pieces]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def summarize_document(
    text: str,
    one: SummarizeOne,
    *,
    count_tokens: Callable[[str], int],
    input_budget: int | None,
) -> SummaryResult:
    """Summarize ``text`` through ``one``; ``input_budget`` tokens (by ``count_tokens``;
    None: no limit) is the most one call may read. Within the budget this is exactly one
    call; beyond it, map-reduce (see the module doc). The result is the last call's, with
    ``input_tokens``/``output_tokens`` summed over every call and ``calls`` their number.
    Raises whatever ``one`` raises (a GenAIError), and ValueError for a budget below
    :data:`MIN_BUDGET`."""
    if input_budget is None or count_tokens(text) <= input_budget:
        return await one(text)
    if input_budget < MIN_BUDGET:
        raise ValueError(f"input_budget must be at least {MIN_BUDGET} tokens, got {input_budget}")
    done: list[SummaryResult] = []
    current = text
    for _ in range(MAX_LEVELS):
        pieces = split_text(current, input_budget, count_tokens)
        level = await _map(pieces, one)
        done.extend(level)
        # each piece summary at most half its piece: every level shrinks the text
        current = JOIN.join(
            _shorten(r.summary.strip(), len(p) // 2) for p, r in zip(pieces, level, strict=True)
        )
        if count_tokens(current) <= input_budget:
            break
    else:
        head = split_text(current, input_budget, count_tokens)
        current = head[0] if head else current.strip()
    final = await one(current)
    done.append(final)
    return dataclasses.replace(
        final,
        input_tokens=_sum(r.input_tokens for r in done),
        output_tokens=_sum(r.output_tokens for r in done),
        calls=sum(r.calls for r in done),
    )
