"""The breaker with scripted outcomes (thresholds, resets, messages) and through the call
layer with a scripted backend (how many calls a misconfiguration costs). A fake clock;
no real sleeping."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import pytest

from pipeline.breaker import Breaker, DimensionMismatchError, UnconfirmedRequestError
from pipeline.errors import (
    AuthError,
    BadRequestError,
    ConfigError,
    GenAIError,
    OutageError,
    ServerError,
    ServiceError,
    TransportError,
)
from pipeline.execute import Caller
from pipeline.genai.base import EmbedResult, SummaryResult, SummarySettings
from pipeline.genai.hashembed import RegexTokenCounter, hash_vectors
from pipeline.throttle import RateBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: Clock | None = None, **kw: object) -> Breaker:
    return Breaker(
        dim=1536,
        embed_model="cohere.embed-v4.0",
        summary_model="cohere.command-a-03-2025",
        endpoint="https://inference.example/20231130",
        clock=clock or Clock(),
        **kw,  # type: ignore[arg-type]
    )


def _wrong(got: int = 1024) -> DimensionMismatchError:
    return DimensionMismatchError("bad size", got=got, expected=1536)


def _unavailable() -> ServerError:
    return ServerError("down", status=503, code="ServiceUnavailable", request_id="R503")


def _rejected() -> BadRequestError:
    return BadRequestError(
        "embedText: HTTP 400: outputDimensions is not supported by this model",
        status=400,
        code="InvalidParameter",
    )


# ------------------------------------------------------------------ wrong dimension


def test_consistent_wrong_dimension_trips_with_the_setting_to_change() -> None:
    b = _breaker()
    b.failed("embed", _wrong())
    b.failed("embed", _wrong())
    with pytest.raises(ConfigError) as info:
        b.failed("embed", _wrong())
    assert str(info.value).startswith("the endpoint returns 1024-d vectors; the job expects 1536")
    assert str(info.value).endswith("set --output-dimensions 1024")
    # every later request stops with the same error, before it is sent
    with pytest.raises(ConfigError):
        b.check()


def test_a_stray_wrong_dimension_is_not_fatal() -> None:
    b = _breaker()
    b.failed("embed", _wrong(1535))
    b.succeeded("embed")
    for _ in range(10):  # once the right size was seen, wrong sizes are strays
        b.failed("embed", _wrong(1535))
    assert b.gave_up("embed", _wrong(1535)).retryable
    assert b.tripped is None


def test_wrong_dimensions_must_agree_to_trip() -> None:
    b = _breaker()
    for got in (1024, 1535, 1024, 1535, 1024):
        b.failed("embed", _wrong(got))
    assert b.tripped is None
    b.failed("embed", _wrong(1535))
    b.failed("embed", _wrong(1535))
    with pytest.raises(ConfigError, match="1535-d"):
        b.failed("embed", _wrong(1535))


def test_a_size_no_setting_can_give_names_the_model() -> None:
    b = _breaker(wrong_dim_answers=1)
    with pytest.raises(ConfigError, match="set --embed-model to the model this endpoint"):
        b.failed("embed", _wrong(384))


# ------------------------------------------------------------------ 404 and auth


@pytest.mark.parametrize(
    ("op", "model", "flag"),
    [
        ("embed", "cohere.embed-v4.0", "--embed-model"),
        ("summary", "cohere.command-a-03-2025", "--summary-model"),
    ],
)
def test_404_trips_at_once_naming_the_model(op: str, model: str, flag: str) -> None:
    b = _breaker()
    err = ServiceError("no such model", status=404, code="NotAuthorizedOrNotFound")
    with pytest.raises(ConfigError) as info:
        b.failed(op, err)
    assert str(info.value).startswith(
        f"{op} model {model!r} was not found at https://inference.example/20231130"
        f" (404 NotAuthorizedOrNotFound): set {flag}"
    )


def test_auth_error_trips_with_itself() -> None:
    b = _breaker()
    err = AuthError("bad signature", status=401, code="NotAuthenticated")
    with pytest.raises(AuthError) as info:
        b.failed("embed", err)
    assert info.value is err
    with pytest.raises(AuthError):
        b.check()


# ------------------------------------------------------------------ 400 on everything


def test_400_on_every_single_input_trips_after_five_and_none_is_final_before() -> None:
    b = _breaker()
    for _ in range(4):
        out = b.gave_up("embed", _rejected(), inputs=1)
        assert isinstance(out, UnconfirmedRequestError) and out.retryable
        assert out.status == 400 and out.code == "InvalidParameter"
    # 400s on whole batches are split by the caller; they do not count
    for _ in range(10):
        assert b.gave_up("embed", _rejected(), inputs=8).retryable is False
    with pytest.raises(ConfigError) as info:
        b.gave_up("embed", _rejected(), inputs=1)
    text = str(info.value)
    assert "refused every embed request and accepted none" in text
    assert "check --output-dimensions" in text and "not supported by this model" in text


def test_after_a_success_a_400_is_the_inputs_fault() -> None:
    b = _breaker()
    b.succeeded("embed")
    for _ in range(20):
        out = b.gave_up("embed", _rejected(), inputs=1)
        assert type(out) is BadRequestError and not out.retryable
    assert b.tripped is None
    # a success of one operation says nothing of the other
    assert isinstance(b.gave_up("summary", _rejected()), UnconfirmedRequestError)


# ------------------------------------------------------------------ outage


def test_outage_trips_after_twenty_failed_requests() -> None:
    b = _breaker()
    for _ in range(19):
        assert b.gave_up("embed", _unavailable()) is not None
    with pytest.raises(OutageError) as info:
        b.gave_up("summary", _unavailable())
    text = str(info.value)
    assert text.startswith("the service failed the last 20 requests after retries")
    assert "503 ServiceUnavailable" in text and "re-run to resume" in text


@pytest.mark.parametrize(
    "reset",
    [
        lambda b: b.succeeded("embed"),
        lambda b: b.gave_up("embed", _rejected(), inputs=1),  # the service answered
    ],
)
def test_an_answer_resets_the_outage_count(reset: Callable[[Breaker], object]) -> None:
    b = _breaker()
    for _ in range(3):
        for _ in range(19):
            b.gave_up("embed", TransportError("reset by peer"))
        reset(b)
    assert b.tripped is None


def test_outage_by_time_needs_a_few_requests_over_the_window() -> None:
    clock = Clock()
    b = _breaker(clock)
    b.gave_up("embed", _unavailable())
    clock.now += 100
    b.gave_up("embed", _unavailable())  # two failures over 100 s: too few to judge
    assert b.tripped is None
    b.succeeded("embed")
    b.gave_up("embed", _unavailable())
    clock.now += 30
    b.gave_up("embed", _unavailable())
    clock.now += 29
    b.gave_up("embed", _unavailable())  # three, but within 59 s
    assert b.tripped is None
    clock.now += 1
    with pytest.raises(OutageError, match="last 4 requests after retries over 60 s"):
        b.gave_up("embed", _unavailable())


def test_throttling_outage_names_the_limits_to_lower() -> None:
    from pipeline.errors import ThrottledError

    b = _breaker(outage_requests=2)
    b.gave_up("embed", ThrottledError("slow down", status=429, code="TooManyRequests"))
    with pytest.raises(OutageError, match="lower --max-rpm or --max-in-flight"):
        b.gave_up("embed", ThrottledError("slow down", status=429, code="TooManyRequests"))


def test_an_error_made_here_is_no_answer_from_the_service() -> None:
    b = _breaker(outage_requests=3)
    b.gave_up("embed", _unavailable())
    b.gave_up("embed", _unavailable())
    # e.g. a text that cannot be encoded as JSON: never sent, says nothing of the service
    local = BadRequestError("the request cannot be encoded as JSON")
    assert b.gave_up("embed", local) is local
    with pytest.raises(OutageError):
        b.gave_up("embed", _unavailable())


def test_pacing_while_probing_failing_and_open() -> None:
    b = _breaker(max_in_progress=32)
    assert b.limit("embed") == 1 and b.limit("summary") == 1  # probing, each on its own
    b.failed("embed", _unavailable())  # a 503 says nothing of the settings
    assert b.limit("embed") == 32 and b.limit("summary") == 1
    for _ in range(7):
        b.failed("embed", _unavailable())
    assert b.failing() and b.limit("embed") == 4  # new requests do not pour in
    b.failed("embed", _rejected())  # the service answered: it is up
    assert not b.failing() and b.limit("embed") == 32
    for _ in range(8):
        b.failed("embed", TransportError("reset"))
    assert b.limit("embed") == 4
    b.succeeded("embed")
    assert b.limit("embed") == 32


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValueError, match="outage_requests"):
        _breaker(outage_requests=0)


# ------------------------------------------------------------------ through the Caller


class Scripted:
    """A backend whose answers follow ``script(call_no, op, texts)``: it may raise, or
    return a vector size for embed (None: the right one). Counts calls in flight."""

    name = "scripted"
    embed_model_id = "scripted/embed"
    summary_model_id = "scripted/sum"
    dim = 16
    max_batch_inputs = 96
    max_batch_tokens: int | None = None
    max_input_tokens = 256
    token_counter = RegexTokenCounter()

    def __init__(self, script: Callable[[int, str, list[str]], int | None]) -> None:
        self.script = script
        self.calls: list[tuple[str, int]] = []
        self.in_flight = 0
        self.peak = 0

    def fingerprint(self) -> dict[str, object]:
        return {"backend": self.name}

    async def _enter(self, op: str, texts: list[str]) -> int | None:
        self.calls.append((op, len(texts)))
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0)  # let the other requests pile up
            return self.script(len(self.calls), op, texts)
        finally:
            self.in_flight -= 1

    async def embed(self, texts: list[str]) -> EmbedResult:
        dim = await self._enter("embed", texts) or self.dim
        return EmbedResult(hash_vectors(texts, dim), [False] * len(texts), self.embed_model_id)

    async def summarize(self, text: str, settings: SummarySettings) -> SummaryResult:
        await self._enter("summary", [text])
        return SummaryResult(text[:10], self.summary_model_id)

    async def aclose(self) -> None:
        return None


def _caller(backend: Scripted, attempts: int = 4) -> Caller:
    now = [0.0]

    async def sleep(s: float) -> None:  # fake time: the clock moves only by sleeping
        now[0] += s

    budget = RateBudget(max_in_flight=16, clock=lambda: now[0], sleep=sleep)
    return Caller(backend, budget, max_attempts=attempts)


def _embed(caller: Caller, n: int) -> tuple[list[object], list[object]]:
    """``n`` inputs as the call stage sends them: full requests, all at once; the results
    in input order, each failure's index into all ``n``."""
    texts = [f"text {i}" for i in range(n)]
    size = caller.backend.max_batch_inputs

    async def requests() -> tuple[list[object], list[object]]:
        starts = range(0, n, size)
        answers = await asyncio.gather(
            *(
                caller.embed_request(texts[i : i + size], [1] * len(texts[i : i + size]))
                for i in starts
            )
        )
        out: list[object] = []
        failures: list[object] = []
        for start, (part, failed) in zip(starts, answers, strict=True):
            out.extend(part)
            failures.extend(dataclasses.replace(f, index=start + f.index) for f in failed)
        return out, failures

    return asyncio.run(requests())


def test_caller_stops_a_wrong_dimension_after_three_calls() -> None:
    backend = Scripted(lambda n, op, texts: 8)  # 8-d answers where 16 are expected
    backend.max_batch_inputs = 4
    with pytest.raises(ConfigError, match="returns 8-d vectors; the job expects 16"):
        _embed(_caller(backend, attempts=6), 400)  # 100 requests if nothing stopped them
    assert len(backend.calls) == 3 and backend.peak == 1


def test_caller_retries_a_stray_wrong_dimension_and_then_runs_wide() -> None:
    backend = Scripted(lambda n, op, texts: 8 if n == 1 else None)
    backend.max_batch_inputs = 4
    out, failures = _embed(_caller(backend), 400)
    assert failures == [] and all(r is not None for r in out)
    assert len(backend.calls) == 101
    assert backend.peak > 1  # probing ended with the first success


def test_caller_stops_on_404_after_one_call_and_dead_letters_nothing() -> None:
    def script(n: int, op: str, texts: list[str]) -> None:
        raise ServiceError("embedText: HTTP 404", status=404, code="NotAuthorizedOrNotFound")

    backend = Scripted(script)
    with pytest.raises(ConfigError, match="embed model 'scripted/embed' was not found"):
        _embed(_caller(backend), 500)
    assert len(backend.calls) == 1


def test_caller_stops_a_400_on_everything_within_a_few_calls() -> None:
    def script(n: int, op: str, texts: list[str]) -> None:
        raise BadRequestError("inputType is invalid", status=400, code="InvalidParameter")

    backend = Scripted(script)
    with pytest.raises(ConfigError, match="check --input-type"):
        _embed(_caller(backend), 500)  # six requests of 96 or fewer
    # newest first while probing: a depth-first split reaches single inputs quickly
    assert len(backend.calls) <= 20  # not the ~1,000 calls of splitting all of it
    assert sum(1 for _, size in backend.calls if size == 1) == 5


def test_caller_keeps_splitting_out_a_bad_input_when_others_pass() -> None:
    def script(n: int, op: str, texts: list[str]) -> None:
        if any(t == "text 7" for t in texts):
            raise BadRequestError("bad input", status=400, code="InvalidParameter")

    backend = Scripted(script)
    out, failures = _embed(_caller(backend), 40)
    assert [f.index for f in failures] == [7]  # type: ignore[attr-defined]
    assert not failures[0].error.retryable  # type: ignore[attr-defined]
    assert sum(r is not None for r in out) == 39


def test_caller_stops_an_outage_after_twenty_failed_requests() -> None:
    def script(n: int, op: str, texts: list[str]) -> None:
        raise _unavailable()

    backend = Scripted(script)
    caller = _caller(backend, attempts=2)
    texts = [f"doc {i}" for i in range(300)]
    with pytest.raises(OutageError, match="failed the last 20 requests"):
        asyncio.run(caller.summarize(texts, [1] * 300, SummarySettings()))
    # 20 requests of 2 attempts, plus those in progress when it tripped (at most twice
    # the in-flight ceiling): not 600
    assert 40 <= len(backend.calls) <= 2 * (20 + 2 * 16)
    assert backend.peak > 1  # a 503 says nothing of the settings: no probing


def test_caller_probes_one_request_at_a_time_until_a_success() -> None:
    backend = Scripted(lambda n, op, texts: None)
    out, _ = _embed(_caller(backend), 960)
    assert all(r is not None for r in out) and backend.peak > 1
    first_ops = backend.calls[:1]
    assert first_ops == [("embed", 96)]


def test_the_caller_builds_its_breaker_from_the_backend() -> None:
    backend = Scripted(lambda n, op, texts: None)
    caller = _caller(backend)
    assert caller.breaker.target.embed_model == "scripted/embed"
    assert caller.breaker.target.dim == 16
    own = Breaker(dim=16)
    assert Caller(backend, RateBudget(), breaker=own).breaker is own


def test_after_a_trip_nothing_more_is_sent() -> None:
    b = _breaker(wrong_dim_answers=1)

    async def main() -> list[str]:
        seen: list[str] = []

        async def one(k: int) -> None:
            try:
                async with b.admit("embed"):
                    seen.append(f"sent {k}")
                    await asyncio.sleep(0)
                    if k == 0:
                        b.failed("embed", _wrong())
            except ConfigError:
                seen.append(f"stopped {k}")

        await asyncio.gather(*(one(k) for k in range(4)))
        return seen

    # the first request probes alone; the trip wakes the waiters, which do not send
    seen = asyncio.run(main())
    assert seen[:2] == ["sent 0", "stopped 0"]
    assert sorted(seen[2:]) == ["stopped 1", "stopped 2", "stopped 3"]
    with pytest.raises(ConfigError):
        b.gave_up("embed", GenAIError("late"))


# ------------------------------------------------------------------ through a whole shard


def test_an_outage_mid_run_keeps_what_was_committed_and_a_rerun_resumes(tmp_path) -> None:
    import pyarrow.dataset as ds

    from pipeline.config import JobConfig
    from pipeline.runner import plan, run_shard
    from tests.conftest import write_corpus

    n = 4000  # 42 embed requests, 96 inputs each (summaries off: one kind of call)
    docs = [{"doc_id": f"d{i:04d}", "text": f"Document {i} says something."} for i in range(n)]
    write_corpus(str(tmp_path / "docs.parquet"), docs)
    down = {"after": 5}

    def script(call: int, op: str, texts: list[str]) -> None:
        if down["after"] and call > down["after"]:
            raise _unavailable()

    backend = Scripted(script)
    config = JobConfig(
        source=str(tmp_path / "docs.parquet"),
        output=str(tmp_path / "out"),
        backend="hash",
        max_attempts=2,
        batch_docs=8,
        part_rows=40,  # small parts, so some commit before the outage
        summaries=False,
        progress=False,
    )

    def rows(name: str) -> list[dict]:
        return ds.dataset(str(tmp_path / "out" / name)).to_table().to_pylist()

    (spec,) = plan(config)
    with pytest.raises(OutageError):
        run_shard(spec, config, backend=backend)  # type: ignore[arg-type]
    sent = len(backend.calls)
    # 5 answered, then about 20 requests of up to 2 tries (requests in progress at the
    # stop are cut short) and no more; without the stop every remaining embed and summary
    # request would be tried twice
    assert 5 + 20 <= sent <= 5 + 2 * (20 + 8)
    kept = {r["doc_id"] for r in rows("embeddings")}
    assert 0 < len(kept) < n  # the parts done before the outage stay committed
    assert not [f for f in rows("failures") if f["permanent"]]
    down["after"] = 0
    backend.calls.clear()
    report = run_shard(spec, config, backend=backend)  # type: ignore[arg-type]
    assert report["counts"]["documents_skipped"] == len(kept)
    embedded = [r["doc_id"] for r in rows("embeddings")]
    assert sorted(embedded) == [d["doc_id"] for d in docs]  # each exactly once
