"""The call layer with a scripted backend (a true edge): retries, Retry-After, 400 split,
alignment checks. No real sleeping: the Caller takes an injectable sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from pipeline.errors import BadRequestError, ServerError, ThrottledError
from pipeline.execute import Caller
from pipeline.genai.base import EmbedResult, SummaryResult, SummarySettings
from pipeline.genai.hashembed import RegexTokenCounter, hash_vectors
from pipeline.throttle import RateBudget


class Scripted:
    """A backend whose answers follow a script: ``script(call_no, texts)`` may raise."""

    name = "scripted"
    embed_model_id = "scripted/embed"
    summary_model_id = "scripted/sum"
    dim = 8
    max_batch_inputs = 96
    max_batch_tokens: int | None = None
    max_input_tokens = 256
    token_counter = RegexTokenCounter()

    def __init__(self, script: Callable[[int, list[str]], None] | None = None) -> None:
        self.script = script
        self.calls: list[list[str]] = []

    def fingerprint(self) -> dict[str, object]:
        return {"backend": self.name}

    async def embed(self, texts: list[str]) -> EmbedResult:
        self.calls.append(list(texts))
        if self.script:
            self.script(len(self.calls), texts)
        return EmbedResult(hash_vectors(texts, self.dim), [False] * len(texts), self.embed_model_id)

    async def summarize(self, text: str, settings: SummarySettings) -> SummaryResult:
        self.calls.append([text])
        if self.script:
            self.script(len(self.calls), [text])
        return SummaryResult(text[:10], self.summary_model_id)

    async def aclose(self) -> None:
        return None


def _caller(backend: Scripted, slept: list[float], attempts: int = 4) -> Caller:
    """A Caller on fake time: one clock/sleep pair for the budget and the retries, the
    clock moved only by sleeping."""
    now = [0.0]

    async def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    budget = RateBudget(max_in_flight=4, clock=lambda: now[0], sleep=sleep)
    return Caller(backend, budget, max_attempts=attempts)


def _texts(n: int) -> list[str]:
    return [f"text number {i}" for i in range(n)]


def test_one_request_is_aligned_with_its_inputs() -> None:
    backend = Scripted()
    texts = _texts(96)
    out, failures = asyncio.run(_caller(backend, []).embed_request(texts, [3] * 96))
    assert failures == []
    assert [len(c) for c in backend.calls] == [96]
    expected = hash_vectors(texts, 8)
    got = np.stack([r[0] for r in out if r is not None])
    assert np.array_equal(got, expected)


def test_retry_on_429_honours_retry_after_then_succeeds() -> None:
    def script(n: int, texts: list[str]) -> None:
        if n <= 2:
            raise ThrottledError("slow down", status=429, retry_after=7.0, request_id="R1")

    backend = Scripted(script)
    slept: list[float] = []
    caller = _caller(backend, slept)
    out, failures = asyncio.run(caller.embed_request(_texts(5), [1] * 5))
    assert failures == [] and all(r is not None for r in out)
    assert len(backend.calls) == 3
    # each retry waited out Retry-After (the back-off, and the shared pause gate)
    assert len(slept) >= 2 and sum(slept) >= 14.0 and max(slept) >= 7.0
    assert caller.stats.throttled == 2 and caller.stats.retries == 2


def test_retries_exhausted_give_transient_failures() -> None:
    def script(n: int, texts: list[str]) -> None:
        raise ServerError("down", status=503, code="ServiceUnavailable", request_id="R9")

    backend = Scripted(script)
    out, failures = asyncio.run(_caller(backend, [], attempts=3).embed_request(_texts(4), [1] * 4))
    assert out == [None] * 4
    assert len(backend.calls) == 3
    assert {f.index for f in failures} == {0, 1, 2, 3}
    assert all(f.error.retryable and f.error.request_id == "R9" for f in failures)
    assert all(f.attempts == 3 for f in failures)


def test_400_splits_down_to_the_bad_input() -> None:
    def script(n: int, texts: list[str]) -> None:
        if any("POISON" in t for t in texts):
            raise BadRequestError(
                "input 0 too long", status=400, code="InvalidParameter", request_id=f"R{n}"
            )

    texts = _texts(40)
    texts[17] = "POISON here"
    backend = Scripted(script)
    out, failures = asyncio.run(_caller(backend, []).embed_request(texts, [1] * 40))
    assert [f.index for f in failures] == [17]
    assert failures[0].error.code == "InvalidParameter" and not failures[0].error.retryable
    assert all(r is not None for i, r in enumerate(out) if i != 17)
    # a binary split: about 2*log2(40) calls, not 40
    assert len(backend.calls) <= 14


def test_wrong_count_is_retried_then_failed() -> None:
    class Short(Scripted):
        async def embed(self, texts: list[str]) -> EmbedResult:
            self.calls.append(list(texts))
            return EmbedResult(hash_vectors(texts[:-1], 8), [False] * len(texts), "x")

    backend = Short()
    out, failures = asyncio.run(_caller(backend, [], attempts=2).embed_request(_texts(3), [1] * 3))
    assert out == [None] * 3 and len(failures) == 3
    assert "3 inputs" in str(failures[0].error)
    assert len(backend.calls) == 2


def test_summaries_fail_one_document_only() -> None:
    def script(n: int, texts: list[str]) -> None:
        if texts[0].startswith("bad"):
            raise BadRequestError("content rejected", status=400, code="InvalidParameter")

    backend = Scripted(script)
    out, failures = asyncio.run(
        _caller(backend, []).summarize(
            ["good one", "bad one", "good two"], [1, 1, 1], SummarySettings()
        )
    )
    assert [f.index for f in failures] == [1]
    assert out[0] is not None and out[1] is None and out[2] is not None


@pytest.mark.parametrize("limit", [1, 3])
def test_in_flight_ceiling(limit: int) -> None:
    peak = 0
    now = 0

    class Slow(Scripted):
        async def embed(self, texts: list[str]) -> EmbedResult:
            nonlocal peak, now
            now += 1
            peak = max(peak, now)
            await asyncio.sleep(0.01)
            now -= 1
            return await super().embed(texts)

    backend = Slow()
    caller = Caller(backend, RateBudget(max_in_flight=limit))

    async def requests() -> None:  # ten requests of two inputs at once, as the call stage
        texts = _texts(20)
        await asyncio.gather(
            *(caller.embed_request(texts[i : i + 2], [1, 1]) for i in range(0, 20, 2))
        )

    asyncio.run(requests())
    assert peak == limit


# ------------------------------------------------------------------ through a whole shard


def _run(tmp_path, backend: Scripted, **kw: object) -> dict:
    from pipeline.config import JobConfig
    from pipeline.runner import commit, plan, run_shard

    config = JobConfig(
        source=str(tmp_path / "docs.parquet"),
        output=str(tmp_path / "out"),
        backend="hash",
        max_attempts=2,
        batch_docs=4,
        **kw,
    )  # type: ignore[arg-type]
    reports = [run_shard(s, config, backend=backend) for s in plan(config)]
    return commit(config, reports)


def _rows(tmp_path, name: str) -> list[dict]:
    import pyarrow.dataset as ds

    return ds.dataset(str(tmp_path / "out" / name), format="parquet").to_table().to_pylist()


def test_transient_failure_commits_nothing_of_that_document_and_rerun_redoes_it(
    tmp_path,
) -> None:
    from tests.conftest import write_corpus

    docs = [{"doc_id": f"d{i}", "text": f"Document {i} says something."} for i in range(10)]
    docs[6]["text"] = "Document 6 is FLAKY today."
    write_corpus(str(tmp_path / "docs.parquet"), docs)
    flaky = {"on": True}

    def script(n: int, texts: list[str]) -> None:
        if flaky["on"] and any("FLAKY" in t for t in texts):
            raise ServerError("busy", status=503, code="ServiceUnavailable", request_id="RX")

    backend = Scripted(script)
    backend.max_batch_inputs = 4  # requests of 4 inputs, packed across source batches
    first = _run(tmp_path, backend, summaries=False)
    # d6 shares its request with d4..d7: the whole request failed
    hit = {"d4", "d5", "d6", "d7"}
    assert first["counts"]["documents_pending"] == 4
    assert {r["doc_id"] for r in _rows(tmp_path, "embeddings")} == {
        f"d{i}" for i in range(10)
    } - hit
    fails = _rows(tmp_path, "failures")
    assert {(f["doc_id"], f["permanent"], f["opc_request_id"]) for f in fails} == {
        (d, False, "RX") for d in hit
    }
    flaky["on"] = False
    backend.calls.clear()
    second = _run(tmp_path, backend, summaries=False)
    # only the unfinished documents cost a call
    assert sorted(t for call in backend.calls for t in call) == sorted(
        d["text"] for d in docs if d["doc_id"] in hit
    )
    assert second["counts"]["documents_skipped"] == 6
    emb = [r["doc_id"] for r in _rows(tmp_path, "embeddings")]
    assert sorted(emb) == sorted(f"d{i}" for i in range(10))  # each exactly once


def test_permanent_failure_is_kept_and_only_retried_on_request(tmp_path) -> None:
    from tests.conftest import write_corpus

    docs = [{"doc_id": f"d{i}", "text": f"Document {i} says something."} for i in range(6)]
    docs[2]["text"] = "Document 2 is POISON."
    write_corpus(str(tmp_path / "docs.parquet"), docs)

    def script(n: int, texts: list[str]) -> None:
        if any("POISON" in t for t in texts):
            raise BadRequestError(
                "bad input", status=400, code="InvalidParameter", request_id=f"Q{n}"
            )

    backend = Scripted(script)
    _run(tmp_path, backend, summaries=False)
    fails = _rows(tmp_path, "failures")
    assert [(f["doc_id"], f["permanent"], f["oci_code"]) for f in fails] == [
        ("d2", True, "InvalidParameter")
    ]
    assert fails[0]["opc_request_id"].startswith("Q")
    backend.calls.clear()
    again = _run(tmp_path, backend, summaries=False)
    assert backend.calls == [] and again["counts"]["documents_skipped"] == 6
    retried = _run(tmp_path, backend, summaries=False, retry_failed=True)
    assert backend.calls == [["Document 2 is POISON."]]
    assert retried["counts"]["documents_skipped"] == 5


def test_retries_are_logged_with_the_request_id(caplog) -> None:
    def script(n: int, texts: list[str]) -> None:
        if n == 1:
            raise ServerError("busy", status=503, code="ServiceUnavailable", request_id="OGB-x-1")

    caplog.set_level("DEBUG")
    asyncio.run(_caller(Scripted(script), []).embed_request(_texts(2), [1, 1]))
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    # one line per retried request, at DEBUG only: quiet by default, shown with -v
    assert [r.levelname for r in retries] == ["DEBUG"]
    lines = [r.getMessage() for r in retries]
    assert "OGB-x-1" in lines[0] and "503" in lines[0] and "attempt 1 of 4" in lines[0]


def test_failures_record_the_tries_really_made() -> None:
    from pipeline.errors import ServiceError

    def script(n: int, texts: list[str]) -> None:
        # a permanent error the breaker lets through (a 404 would stop the run: breaker.py)
        raise ServiceError("conflict", status=409, code="Conflict")

    caller = _caller(Scripted(script), [], attempts=5)
    out, failures = asyncio.run(caller.embed_request(_texts(2), [1, 1]))
    assert out == [None, None]
    assert [f.attempts for f in failures] == [1, 1]  # permanent: tried once, not five times


def test_a_shard_waits_out_retry_after_on_fake_time(tmp_path) -> None:
    """A whole shard through run_shard, its budget on fake time: the service answers the
    first three requests 429 with Retry-After: 30 s. Every wait (the budget's hold, the
    retries' back-off) is on the one clock/sleep pair, so the shard ends at once in real
    time, 90 s or more later on its own clock, with every document done."""
    import time

    from pipeline.config import JobConfig
    from pipeline.runner import commit, plan, run_shard
    from tests.conftest import write_corpus

    docs = [{"doc_id": f"d{i}", "text": f"Document {i} says something."} for i in range(30)]
    write_corpus(str(tmp_path / "docs.parquet"), docs)

    def script(n: int, texts: list[str]) -> None:
        if n <= 3:
            raise ThrottledError("slow down", status=429, retry_after=30.0, request_id=f"T{n}")

    now = [0.0]

    async def sleep(s: float) -> None:
        now[0] += s
        await asyncio.sleep(0)

    budget = RateBudget(max_in_flight=4, clock=lambda: now[0], sleep=sleep)
    config = JobConfig(
        source=str(tmp_path / "docs.parquet"),
        output=str(tmp_path / "out"),
        backend="hash",
        summaries=False,
    )
    started = time.monotonic()
    (spec,) = plan(config)
    report = commit(config, [run_shard(spec, config, backend=Scripted(script), budget=budget)])
    assert time.monotonic() - started < 20  # no real 90 s wait
    assert now[0] >= 90.0
    assert report["counts"]["documents_completed"] == 30
    assert report["calls"]["throttled"] == 3 and report["calls"]["retries"] == 3
