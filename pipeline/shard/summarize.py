"""Summarize: documents due for a summary in, each settled with a summary or a failure.

Backends with a batched summarizer (``summarize_many``: the local and hash backends)
get every waiting document within the input budget in one pass; otherwise each document
goes through ``summarize_document`` (map-reduce past the model's input budget), every
call under the ``Caller``'s budget and retries.
"""

from __future__ import annotations

import asyncio

from pipeline.errors import AuthError, GenAIError
from pipeline.execute import Caller
from pipeline.genai.base import SummaryResult, SummarySettings
from pipeline.mapreduce import summarize_document, upper_bound_tokens
from pipeline.models import Failure
from pipeline.shard.work import DocWork


def summary_failure(work: DocWork, err: GenAIError, attempts: int) -> Failure:
    d = work.doc
    return Failure.of_error(
        err,
        doc_id=d.doc_id,
        stage="summarize",
        message=f"summary of {d.doc_id}: {err}",
        attempts=attempts,
    )


async def summarize_stage(
    caller: Caller,
    settings: SummarySettings,
    inbox: asyncio.Queue[list[DocWork] | None],
    *,
    max_in_flight: int,
    most_batched: int,
) -> None:
    backend = caller.backend
    many = getattr(backend, "summarize_many", None)
    budget: int | None = getattr(backend, "summary_input_tokens", None)
    # every backend's summary_input_tokens is in UTF-8 bytes, an upper bound of any
    # tokenizer's count that costs nothing on megabytes (see mapreduce.upper_bound_tokens)
    count_tokens = upper_bound_tokens
    slots = asyncio.Semaphore(max_in_flight)

    def within(work: DocWork) -> bool:
        # a long document must go map-reduce; a short one may join a batched pass
        return budget is None or count_tokens(work.doc.text) <= budget

    async def one(work: DocWork) -> None:
        async def call(text: str) -> SummaryResult:
            return await caller.summarize_one(text, settings)

        try:
            result = await summarize_document(
                work.doc.text, call, count_tokens=count_tokens, input_budget=budget
            )
        except AuthError:
            raise  # every call would fail the same way: stop the shard with this error
        except GenAIError as exc:
            work.summary_settled(None, summary_failure(work, exc, exc.attempts))
        else:
            work.summary_settled(result, None)
        finally:
            slots.release()

    async def batched(docs: list[DocWork]) -> None:
        try:
            texts = [w.doc.text for w in docs]
            tokens = [max(1, len(t) // 4) for t in texts]  # rough, for the tokens budget
            results, failures = await caller.summarize(texts, tokens, settings)
        finally:
            slots.release()
        failed = {f.index: f for f in failures}
        for i, (work, result) in enumerate(zip(docs, results, strict=True)):
            f = failed.get(i)
            if result is not None:
                work.summary_settled(result, None)
            else:
                err = f.error if f else GenAIError("no summary for this document")
                work.summary_settled(None, summary_failure(work, err, f.attempts if f else 0))

    async with asyncio.TaskGroup() as group:
        ended = False
        while not ended:
            docs = await inbox.get()
            if docs is None:
                break
            # take whatever else is already waiting: one batched pass is far cheaper
            while many is not None and len(docs) < most_batched and not inbox.empty():
                more = inbox.get_nowait()
                if more is None:
                    ended = True
                    break
                docs = docs + more
            short = [w for w in docs if within(w)] if many is not None else []
            if short:
                await slots.acquire()
                group.create_task(batched(short))
            for work in docs:
                if many is None or not within(work):
                    await slots.acquire()
                    group.create_task(one(work))


__all__ = ["summarize_stage", "summary_failure"]
