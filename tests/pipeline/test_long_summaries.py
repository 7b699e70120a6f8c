"""Summaries of documents of any length, against the emulator over loopback (signed
requests), and the summary fingerprint: a 2 MB document overflows command-a's context
window in one call (OCI's 400) and gets a summary map-reduce; the local summarizer handles
the same document; every setting that changes a summary changes its fingerprint, and a
changed chat format re-summarizes while the embeddings are skipped."""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.dataset as ds
import pytest

from pipeline.checkpoint import fingerprint_id
from pipeline.chunking import ChunkSettings
from pipeline.config import JobConfig
from pipeline.errors import BadRequestError
from pipeline.execute import Caller
from pipeline.fingerprint import fingerprints, summary_settings
from pipeline.genai import make_backend
from pipeline.genai.base import Backend, SummaryResult
from pipeline.genai.emulator import Emulator, EmulatorConfig
from pipeline.genai.emulator.actions import context_window
from pipeline.genai.oci_backend import OciBackend, default_summary_input_tokens
from pipeline.mapreduce import split_text, summarize_document, upper_bound_tokens
from pipeline.runner import run
from pipeline.throttle import RateBudget
from tests.conftest import write_corpus
from tests.oci_fixtures import make_oci_config

COMPARTMENT = "ocid1.compartment.oc1..test"


@pytest.fixture(scope="module")
def oci_config(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_oci_config(tmp_path_factory.mktemp("oci"))[0]


@pytest.fixture(scope="module")
def emulator(oci_config: str) -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(embedder="hash"), oci_config=oci_config) as emu:
        yield emu


@pytest.fixture(autouse=True)
def _clean(emulator: Emulator) -> None:
    emulator.configure(**EmulatorConfig(embedder="hash").as_dict())
    emulator.reset()


@pytest.fixture(scope="module")
def book(stdlib_docs: list[dict[str, str]]) -> str:
    """About 2 MB of real prose: the demo corpus, chapter after chapter, each numbered so
    no two pieces are alike."""
    chapters: list[str] = []
    size = 0
    while size < 2_000_000:
        for d in stdlib_docs:
            chapters.append(f"Chapter {len(chapters) + 1}.\n\n{d['text']}")
            size += len(chapters[-1]) + 2
    return "\n\n".join(chapters)


def _config(tmp_path: Path, emulator: Emulator, oci_config: str, **kw: object) -> JobConfig:
    values: dict[str, object] = {
        "source": str(tmp_path / "docs.parquet"),
        "output": str(tmp_path / "out"),
        "backend": "oci",
        "genai_endpoint": emulator.url,
        "oci_config": oci_config,
        "compartment": COMPARTMENT,
        "output_dimensions": 256,
        "max_attempts": 2,
        "timeout_s": 30.0,
        "progress": False,
    }
    values.update(kw)
    return JobConfig.from_mapping(values)


def _one(backend: Backend, config: JobConfig, caller: Caller):  # type: ignore[no-untyped-def]
    """One summary call through the pipeline's budget and retries (``Caller``)."""
    settings = summary_settings(config)

    async def one(text: str) -> SummaryResult:
        out, failures = await caller.summarize([text], [upper_bound_tokens(text)], settings)
        if failures:
            raise failures[0].error
        assert out[0] is not None
        return out[0]

    return one


def _summarize(config: JobConfig, text: str, budget: int | None) -> SummaryResult:
    async def go() -> SummaryResult:
        async with make_backend(config) as backend:
            caller = Caller(backend, RateBudget(max_in_flight=8), max_attempts=config.max_attempts)
            return await summarize_document(
                text,
                _one(backend, config, caller),
                count_tokens=upper_bound_tokens,
                input_budget=budget,
            )

    return asyncio.run(go())


# ------------------------------------------------------------------ the 2 MB document


def test_two_mb_document_is_a_400_in_one_call_and_a_summary_map_reduce(
    tmp_path: Path, emulator: Emulator, oci_config: str, book: str
) -> None:
    config = _config(tmp_path, emulator, oci_config)
    assert config.summary_model_id == "cohere.command-a-03-2025"
    window = context_window(config.summary_model_id)
    assert window == 256_000 and upper_bound_tokens(book) // 4 > window

    # without map-reduce: the whole book in one prompt is refused like the service does
    with pytest.raises(BadRequestError) as info:
        _summarize(config, book, None)
    assert info.value.status == 400 and info.value.code == "InvalidParameter"
    assert "context window of 256000 tokens" in str(info.value)
    assert emulator.stats()["statuses"] == {"400": 1}

    # with the model's default budget: pieces, then one summary of their summaries
    emulator.reset()
    budget = OciBackend.from_config(config).summary_input_tokens
    assert budget == default_summary_input_tokens(config.summary_model_id) == 222_976
    started = time.monotonic()
    result = _summarize(config, book, budget)
    seconds = time.monotonic() - started
    pieces = split_text(book, budget, upper_bound_tokens)
    # cut at paragraph ends, each piece at least half the budget
    size = upper_bound_tokens(book)
    assert math.ceil(size / budget) <= len(pieces) <= math.ceil(size / (budget / 2))
    assert result.calls == len(pieces) + 1
    stats = emulator.stats()
    assert stats["actions"] == {"chat": result.calls}
    assert stats["statuses"] == {"200": result.calls}
    # the emulator's usage, summed: every piece's prompt plus the reduce prompt
    assert result.input_tokens == stats["tokens"]
    assert result.output_tokens is not None and result.output_tokens > 0
    assert result.summary and result.summary.startswith("Chapter 1.")
    assert result.model_id == config.summary_model_id
    print(f"2 MB via the emulator: {result.calls} calls in {seconds:.2f} s")


def test_emulator_context_window_is_configurable(
    tmp_path: Path, emulator: Emulator, oci_config: str, stdlib_docs: list[dict[str, str]]
) -> None:
    config = _config(tmp_path, emulator, oci_config, summary_model="meta.llama-3.3-70b-instruct")
    text = "\n\n".join(d["text"] for d in stdlib_docs[:40])  # ~40 KB, ~10k tokens
    assert _summarize(config, text, None).calls == 1
    emulator.configure(context_tokens=2_000)
    with pytest.raises(BadRequestError) as info:
        _summarize(config, text, None)
    assert "context window of 2000 tokens" in str(info.value)
    # a budget under the smaller window: map-reduce again
    result = _summarize(config, text, 4_000)
    assert result.calls > 2
    assert emulator.stats()["statuses"]["200"] == 1 + result.calls


def test_over_long_prompt_answer_has_ocis_error_shape() -> None:
    """The raw answer, as the SDK would see it: 400, {"code", "message"}, a request id."""
    with Emulator(EmulatorConfig(embedder="hash", context_tokens=100)) as open_emu:
        body = {
            "compartmentId": COMPARTMENT,
            "servingMode": {"servingType": "ON_DEMAND", "modelId": "cohere.command-a-03-2025"},
            "chatRequest": {"apiFormat": "COHERE", "message": "word " * 400, "maxTokens": 50},
        }
        r = httpx.post(
            f"{open_emu.url}/20231130/actions/chat",
            json=body,
            headers={"authorization": "Signature test"},
        )
    assert r.status_code == 400 and r.headers["opc-request-id"]
    data = r.json()
    assert set(data) == {"code", "message"} and data["code"] == "InvalidParameter"
    assert "500 prompt tokens and maxTokens 50" in data["message"]


def test_local_summarizer_handles_the_two_mb_document(book: str) -> None:
    """The local summarizer samples a bounded set of sentences, so it reads the 2 MB
    document in one call (no budget by default); a budget, if set, is kept."""
    config = JobConfig(source="-", output="-", backend="local")
    backend = make_backend(config)
    assert backend.summary_input_tokens is None  # type: ignore[attr-defined]
    limited = make_backend(config.replace(summary_input_tokens=300_000))
    assert limited.summary_input_tokens == 300_000  # type: ignore[attr-defined]
    settings = summary_settings(config)

    async def go() -> tuple[SummaryResult, float]:
        await backend.summarize("Warm the model up with one short sentence here.", settings)
        started = time.monotonic()
        result = await summarize_document(
            book,
            lambda t: backend.summarize(t, settings),
            count_tokens=upper_bound_tokens,
            input_budget=backend.summary_input_tokens,  # type: ignore[attr-defined]
        )
        return result, time.monotonic() - started

    result, seconds = asyncio.run(go())
    assert result.calls == 1
    # extractive: whole sentences of the book (white space collapsed)
    flat = " ".join(book.split())
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", result.summary) if s]
    assert len(sentences) == 2 and all(s in flat for s in sentences)
    # 0.55 s on an idle 2-core machine; the bound leaves room for a loaded one
    assert seconds < 30
    print(f"2 MB local: {result.calls} call in {seconds:.2f} s")


# ------------------------------------------------------------------ fingerprints


def _summary_fp(config: JobConfig) -> str:
    backend = OciBackend.from_config(config, signer=object()) if config.backend == "oci" else None
    backend = backend or make_backend(config)
    chunking = ChunkSettings(max_tokens=config.chunk_tokens or config.default_chunk_tokens)
    _, summary = fingerprints(config, backend, chunking)
    assert summary is not None
    return fingerprint_id(summary)


def test_every_summary_setting_changes_the_fingerprint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pipeline.genai import oci_backend

    base = JobConfig(
        source="-",
        output="-",
        backend="oci",
        compartment=COMPARTMENT,
        genai_endpoint="http://127.0.0.1:9",
    )
    changes: dict[str, dict[str, object]] = {
        "summary model": {"summary_model": "meta.llama-3.3-70b-instruct"},
        "summary api": {"summary_api": "summarize_text"},
        "chat format": {"chat_format": "GENERIC"},
        "length": {"summary_length": "LONG"},
        "format": {"summary_format": "BULLETS"},
        "extractiveness": {"summary_extractiveness": "HIGH"},
        "input budget": {"summary_input_tokens": 50_000},
        "backend": {"backend": "hash"},
    }
    ids = {"base": _summary_fp(base)}
    for name, change in changes.items():
        ids[name] = _summary_fp(base.replace(**change))
    # the prompt's version and the temperature are code, not settings: patched here
    monkeypatch.setattr(oci_backend, "PROMPT_VERSION", "test-next")
    ids["prompt version"] = _summary_fp(base)
    monkeypatch.undo()
    monkeypatch.setattr(oci_backend, "_TEMPERATURE", 0.7)
    ids["temperature"] = _summary_fp(base)
    monkeypatch.undo()
    assert len(set(ids.values())) == len(ids), ids
    # and none of them is noise: the same settings give the same id
    assert _summary_fp(base) == ids["base"]
    # a setting that changes no summary leaves it alone
    assert _summary_fp(base.replace(max_rpm=60, batch_docs=7)) == ids["base"]


def test_a_changed_chat_format_resummarizes_and_skips_embeddings(
    tmp_path: Path, emulator: Emulator, oci_config: str, stdlib_docs: list[dict[str, str]]
) -> None:
    write_corpus(str(tmp_path / "docs.parquet"), stdlib_docs[:12])
    first = _config(tmp_path, emulator, oci_config, chat_format="COHERE")
    run(first)
    stats = emulator.stats()["actions"]
    assert stats["chat"] == 12 and stats["embedText"] >= 1

    emulator.reset()
    report = run(first.replace(chat_format="GENERIC", run_id="second")).report
    stats = emulator.stats()["actions"]
    assert stats == {"chat": 12}  # every summary again, not one embed call
    assert report["counts"]["failures"] == 0
    rows = ds.dataset(str(tmp_path / "out" / "summaries")).to_table().to_pylist()
    assert len(rows) == 24 and len({r["prompt_fingerprint"] for r in rows}) == 2

    emulator.reset()
    run(first.replace(chat_format="GENERIC", run_id="third"))
    assert emulator.stats()["actions"] == {}  # nothing left to do


# ------------------------------------------------------------------ end to end


def test_two_mb_document_end_to_end_gets_a_summary_row(
    tmp_path: Path,
    emulator: Emulator,
    oci_config: str,
    stdlib_docs: list[dict[str, str]],
    book: str,
) -> None:
    """Through the runner with --backend oci: the 2 MB document is summarized map-reduce
    (its row records the calls), beside small documents summarized in one call each.
    With the budget raised past the context window, it is a 400 in the dead letter.

    Passes once the shard's summarize stage calls ``pipeline.mapreduce.summarize_document``
    for each document and writes ``SummaryResult.calls`` as ``summary_calls`` (the
    pipeline/shard/ stages); the old stage.py sends the whole text in one call."""
    rows = [{"doc_id": "book", "text": book}] + [
        {"doc_id": f"d{i}", "text": d["text"]} for i, d in enumerate(stdlib_docs[:5])
    ]
    write_corpus(str(tmp_path / "docs.parquet"), rows)
    report = run(_config(tmp_path, emulator, oci_config)).report
    assert report["counts"]["failures"] == 0
    summaries = {
        r["doc_id"]: r
        for r in ds.dataset(str(tmp_path / "out" / "summaries")).to_table().to_pylist()
    }
    assert set(summaries) == {"book", "d0", "d1", "d2", "d3", "d4"}
    calls = len(split_text(book, 222_976, upper_bound_tokens)) + 1
    assert summaries["book"]["summary_calls"] == calls
    assert {summaries[f"d{i}"]["summary_calls"] for i in range(5)} <= {1, None}
    assert emulator.stats()["actions"]["chat"] == calls + 5
    assert summaries["book"]["input_tokens"] > context_window("cohere.command-a-03-2025")

    emulator.reset()
    out = tmp_path / "whole"
    report = run(
        _config(tmp_path, emulator, oci_config, output=str(out), summary_input_tokens=10**9)
    ).report
    failures = ds.dataset(str(out / "failures")).to_table().to_pylist()
    assert [(f["doc_id"], f["stage"], f["http_status"], f["oci_code"]) for f in failures] == [
        ("book", "summarize", 400, "InvalidParameter")
    ]
    assert report["counts"]["failures"] == 1


# ------------------------------------------------------------------ settings


def test_summary_input_tokens_setting_and_emulator_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline import cli
    from pipeline.genai.emulator.server import run_from_args

    src = write_corpus(str(tmp_path / "docs.parquet"), [{"doc_id": "a", "text": "Some words."}])
    argv = ["run", "--source", src, "--output", str(tmp_path / "out"), "--backend", "hash"]
    assert cli.main([*argv, "--summary-input-tokens", "100"]) == 2
    err = capsys.readouterr().err
    assert "summary_input_tokens: must be an integer from 256 to 10000000000, got 100" in err
    assert not (tmp_path / "out" / "summaries").exists()
    # a valid budget reaches the backend (and so the summarize stage)
    config = JobConfig(source=src, output="-", backend="hash", summary_input_tokens=4096)
    assert make_backend(config).summary_input_tokens == 4096  # type: ignore[attr-defined]

    parser = cli.argparse.ArgumentParser()
    cli._emulator_parser(parser.add_subparsers(dest="command"))
    assert run_from_args(parser.parse_args(["emulator", "--context-tokens", "-5"])) == 2
    assert "context_tokens must be >= 0" in capsys.readouterr().err
    args = parser.parse_args(["emulator", "--context-tokens", "2000"])
    assert args.context_tokens == 2000
    assert EmulatorConfig().replace(context_tokens=args.context_tokens).context_tokens == 2000
