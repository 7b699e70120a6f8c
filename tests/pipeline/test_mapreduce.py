"""pipeline.mapreduce: cutting a long text into pieces that fit, map-reduce over them,
usage summed, progress forced, failures stop the rest. The summarizer here is a scripted
stand-in for the model (a true edge); the emulator-backed tests are in
test_long_summaries.py."""

from __future__ import annotations

import asyncio
import re

import pytest

from pipeline.errors import BadRequestError, ServerError
from pipeline.genai.base import SummaryResult
from pipeline.mapreduce import (
    MAX_LEVELS,
    split_text,
    summarize_document,
    upper_bound_tokens,
)

PARAGRAPH = (
    "The ferry carried grain across the river for decades. Farmers came from the valley"
    " every autumn. The mills on the far bank ground it into flour for the cities."
)


def _text(paragraphs: int) -> str:
    return "\n\n".join(f"Part {i}. {PARAGRAPH}" for i in range(paragraphs))


def _first_sentence(text: str) -> str:
    return re.split(r"(?<=\.)\s+", text.strip())[0]


class Model:
    """Records every text it is given; answers the first sentence (or ``echo``es)."""

    def __init__(self, *, echo: bool = False, fail_on: str | None = None) -> None:
        self.inputs: list[str] = []
        self.echo = echo
        self.fail_on = fail_on
        self.in_flight = 0
        self.peak = 0

    async def __call__(self, text: str) -> SummaryResult:
        self.inputs.append(text)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            if self.fail_on is not None and self.fail_on in text:
                raise BadRequestError("the model refuses this piece", status=400)
            summary = text if self.echo else _first_sentence(text)
            return SummaryResult(
                summary, "m", "v1", input_tokens=len(text), output_tokens=len(summary)
            )
        finally:
            self.in_flight -= 1


def test_upper_bound_tokens_counts_utf8_bytes() -> None:
    assert upper_bound_tokens("abc") == 3
    assert upper_bound_tokens("é€😀") == 2 + 3 + 4
    assert upper_bound_tokens("\ud800") == 3  # a lone surrogate does not raise


def test_split_text_fits_keeps_text_and_cuts_at_paragraphs() -> None:
    text = _text(200)
    pieces = split_text(text, 2000, upper_bound_tokens)
    assert all(upper_bound_tokens(p) <= 2000 for p in pieces)
    assert "".join(pieces) == text  # nothing lost, nothing repeated
    assert len(pieces) >= upper_bound_tokens(text) // 2000 + 1
    # every cut but the last falls after a blank line
    assert all(p.endswith("\n\n") for p in pieces[:-1])
    assert split_text(text, 2000, upper_bound_tokens) == pieces  # deterministic


def test_split_text_handles_dense_stretches_and_unbroken_text() -> None:
    # English then CJK (3 bytes a character): the average density under-estimates the
    # CJK half, which the count check must cut shorter
    text = "word " * 4000 + "漢字" * 6000
    pieces = split_text(text, 1000, upper_bound_tokens)
    assert all(upper_bound_tokens(p) <= 1000 for p in pieces)
    assert "".join(pieces) == text
    # no white space at all: hard cuts, still within the budget
    solid = "x" * 10_001
    pieces = split_text(solid, 1000, upper_bound_tokens)
    assert [len(p) for p in pieces][:-1] == [len(pieces[0])] * (len(pieces) - 1)
    assert all(len(p) <= 1000 for p in pieces) and "".join(pieces) == solid


def test_within_budget_is_one_call() -> None:
    model = Model()
    result = asyncio.run(
        summarize_document(_text(3), model, count_tokens=upper_bound_tokens, input_budget=10_000)
    )
    assert model.inputs == [_text(3)]
    assert result.calls == 1 and result.summary == "Part 0."
    # no budget: one call whatever the length
    model = Model()
    asyncio.run(
        summarize_document(_text(500), model, count_tokens=upper_bound_tokens, input_budget=None)
    )
    assert len(model.inputs) == 1


def test_over_budget_is_map_reduce_with_usage_summed() -> None:
    text = _text(300)  # ~52 KB
    model = Model()
    result = asyncio.run(
        summarize_document(text, model, count_tokens=upper_bound_tokens, input_budget=4000)
    )
    pieces = split_text(text, 4000, upper_bound_tokens)
    # every piece once, then the joined piece summaries once
    assert model.inputs[: len(pieces)] == pieces
    assert len(model.inputs) == len(pieces) + 1 == result.calls
    assert all(upper_bound_tokens(t) <= 4000 for t in model.inputs)
    reduce_input = model.inputs[-1]
    assert reduce_input == "\n\n".join(_first_sentence(p) for p in pieces)
    assert result.summary == "Part 0."
    assert result.input_tokens == sum(len(t) for t in model.inputs)
    assert result.output_tokens == sum(len(_first_sentence(t)) for t in model.inputs)
    # the pieces were summarized concurrently
    assert model.peak > 1
    # and again: the same calls in the same order, the same result
    again = Model()
    assert (
        asyncio.run(
            summarize_document(text, again, count_tokens=upper_bound_tokens, input_budget=4000)
        )
        == result
    )
    assert again.inputs == model.inputs


def test_summaries_too_long_for_one_call_recurse() -> None:
    # 2,000 pieces of ~200 bytes whose one-sentence summaries (~40 bytes each) are still
    # 80 KB together: a second level of pieces, then one call
    text = _text(2000)
    model = Model()
    result = asyncio.run(
        summarize_document(text, model, count_tokens=upper_bound_tokens, input_budget=256)
    )
    first = split_text(text, 256, upper_bound_tokens)
    assert len(model.inputs) > len(first) + 1
    assert result.calls == len(model.inputs)
    assert all(upper_bound_tokens(t) <= 256 for t in model.inputs)


def test_an_echoing_model_still_terminates_within_the_budget() -> None:
    """A model that answers its input back never shrinks it: every level is forced to
    halve, and after MAX_LEVELS the rest is cut to the budget."""
    text = _text(400)
    model = Model(echo=True)
    result = asyncio.run(
        summarize_document(text, model, count_tokens=upper_bound_tokens, input_budget=2000)
    )
    assert all(upper_bound_tokens(t) <= 2000 for t in model.inputs)
    assert result.calls == len(model.inputs)
    assert upper_bound_tokens(model.inputs[-1]) <= 2000
    n_pieces = len(split_text(text, 2000, upper_bound_tokens))
    # each level at most half the one before: ~n + n/2 + n/4 ... pieces in all, where
    # echoing without the forced halving would take n pieces on each of MAX_LEVELS levels
    assert n_pieces + 1 < len(model.inputs) <= 2 * n_pieces + MAX_LEVELS + 1


def test_a_failing_piece_fails_the_document_and_cancels_the_rest() -> None:
    text = _text(300)
    model = Model(fail_on="Part 0.")
    with pytest.raises(BadRequestError):
        asyncio.run(
            summarize_document(text, model, count_tokens=upper_bound_tokens, input_budget=4000)
        )
    # the pieces started together; no reduce call was made after the failure
    assert len(model.inputs) == len(split_text(text, 4000, upper_bound_tokens))


def test_a_retryable_error_propagates_for_the_caller_to_retry() -> None:
    async def broken(text: str) -> SummaryResult:
        raise ServerError("503 from the service", status=503)

    with pytest.raises(ServerError):
        asyncio.run(
            summarize_document(
                _text(300), broken, count_tokens=upper_bound_tokens, input_budget=4000
            )
        )


def test_tiny_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 64"):
        asyncio.run(
            summarize_document(_text(10), Model(), count_tokens=upper_bound_tokens, input_budget=10)
        )
