"""The dry run: what a backfill would send, cost and take, with no model call."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from pipeline.config import JobConfig
from pipeline.errors import ConfigError
from pipeline.mapreduce import summarize_document, upper_bound_tokens
from pipeline.preview import format_duration, format_money, preview, summary_calls
from pipeline.runner import check_cost_ceiling
from tests.conftest import write_corpus
from tests.oci_fixtures import running_emulator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = os.path.join(os.path.dirname(sys.executable), "oci-genai-batch")
EMBED, CHAT = "cohere.embed-v4.0", "cohere.command-a-03-2025"


def _one_chunk_docs(tmp_path, n: int) -> str:
    rows = [{"doc_id": f"d{i:05d}", "text": f"Document {i} is about rivers."} for i in range(n)]
    return write_corpus(str(tmp_path / "docs.parquet"), rows)


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (9e-06, "USD 0.0000090"),
        (0.004123, "USD 0.0041"),
        (0.0, "USD 0.00"),
        (0.07, "USD 0.07"),
        (1234.567, "USD 1,234.57"),
        (12_000_000.0, "USD 12,000,000.00"),
    ],
)
def test_money_is_written_as_money(amount: float, text: str) -> None:
    assert format_money(amount) == text
    assert "e-" not in format_money(amount, "EUR")


def test_durations_read_as_durations() -> None:
    assert format_duration(0.4) == "0.4 s"
    assert format_duration(45) == "45 s"
    assert format_duration(135) == "2 min 15 s"
    assert format_duration(3 * 3600 + 300) == "3 h 05 min"


def test_counts_prices_and_times_what_the_run_would_send(tmp_path) -> None:
    src = _one_chunk_docs(tmp_path, 1000)
    chars = sum(len(f"Document {i} is about rivers.") for i in range(1000))
    config = JobConfig(
        source=src,
        output=str(tmp_path / "o"),
        backend="oci",  # no compartment, no key: a preview needs neither
        max_rpm=120,
        prices={EMBED: 0.1, CHAT: 2.0},
    )
    p = preview(config)
    assert (p.documents, p.chunks, p.characters, p.embed_characters) == (1000, 1000, chars, chars)
    assert p.embed_requests == math.ceil(1000 / 96)  # packed full, as the pack stage does
    assert p.summary_requests == 1000  # one chat call per document
    assert p.estimated_cost == pytest.approx(chars / 1e6 * 0.1 + chars / 1e6 * 2.0)
    assert p.expected_seconds == pytest.approx((11 + 1000) / 120 * 60)
    assert p.bound_by == "max_rpm"
    text = p.text()
    assert "1,000 documents" in text and "11 embed (cohere.embed-v4.0)" in text
    assert "1,000 chat (cohere.command-a-03-2025)" in text
    assert f"estimated cost: {format_money(p.estimated_cost)}" in text  # type: ignore[arg-type]
    assert "expected duration at the configured limits: 8 min 26 s" in text  # 1,011 requests


def test_an_unpriced_remote_model_is_named_and_a_local_one_costs_nothing(tmp_path) -> None:
    src = _one_chunk_docs(tmp_path, 10)
    remote = preview(JobConfig(source=src, output="o", backend="oci", prices={EMBED: 0.1}))
    assert remote.unpriced == [CHAT] and remote.estimated_cost is not None
    assert f"plus {CHAT} (no price set)" in remote.text()
    local = preview(JobConfig(source=src, output="o", backend="hash"))
    assert local.unpriced == [] and local.estimated_cost == 0.0
    assert local.summary_requests == 1  # one batched pass of the local summarizer
    nothing = preview(JobConfig(source=src, output="o", backend="oci", summaries=False))
    assert nothing.estimated_cost is None and "unknown (no price for" in nothing.text()
    assert "no max_rpm or max_tpm set" in nothing.text()


def test_tokens_per_minute_can_bound_the_duration(tmp_path) -> None:
    src = _one_chunk_docs(tmp_path, 200)
    p = preview(JobConfig(source=src, output="o", backend="oci", max_rpm=6000, max_tpm=600))
    assert p.bound_by == "max_tpm"
    assert p.expected_seconds == pytest.approx((p.embed_tokens + p.summary_tokens) / 600 * 60)


def test_map_reduce_calls_are_counted_at_most(tmp_path, stdlib_docs) -> None:
    """The estimate of a long document's summary calls is at least what map-reduce makes
    (each level at most half the one before)."""
    import asyncio

    from pipeline.genai.base import SummaryResult

    text = "\n\n".join(d["text"] for d in stdlib_docs[:60])
    budget = 2_000
    calls = 0

    async def one(piece: str) -> SummaryResult:
        nonlocal calls
        calls += 1
        return SummaryResult(piece[: len(piece) // 2], "m")  # the longest it may be

    asyncio.run(
        summarize_document(text, one, count_tokens=upper_bound_tokens, input_budget=budget)
    )
    assert calls > 2
    assert summary_calls(text, budget) == calls
    assert summary_calls("short", budget) == 1


def test_the_cost_ceiling_uses_the_price_table(tmp_path) -> None:
    src = _one_chunk_docs(tmp_path, 100)
    config = JobConfig(
        source=src, output="o", backend="oci", prices={EMBED: 1000.0}, max_cost=0.5
    )
    with pytest.raises(ConfigError, match=r"max_cost: .* an estimated USD 2\.\d\d; over the"):
        check_cost_ceiling(config)
    check_cost_ceiling(config.replace(max_cost=10.0))


def test_prices_are_read_from_flags_files_and_conf() -> None:
    flags = JobConfig.from_mapping(
        {"source": "s", "output": "o", "prices": f"{EMBED}=0.1, {CHAT}=1.5"}
    )
    assert flags.prices == {EMBED: 0.1, CHAT: 1.5}
    conf = JobConfig.from_mapping({"source": "s", "output": "o", "prices": {EMBED: 1}})
    assert conf.prices == {EMBED: 1.0}
    assert JobConfig.from_json(conf.to_json()) == conf
    as_json = JobConfig.from_mapping({"source": "s", "output": "o", "prices": '{"m": 2}'})
    assert as_json.prices == {"m": 2.0}
    for bad in ("m", {"m": -1}, {"m": "x"}, {"m": float("nan")}):
        with pytest.raises(ConfigError, match="prices"):
            JobConfig.from_mapping({"source": "s", "output": "o", "prices": bad})


def test_the_dry_run_command_prints_it_all_and_calls_no_model(tmp_path) -> None:
    src = _one_chunk_docs(tmp_path, 300)
    with running_emulator(tmp_path / "oci") as (emu, oci_config):
        done = subprocess.run(
            [
                CLI,
                "run",
                "--source",
                src,
                "--output",
                str(tmp_path / "o"),
                "--backend",
                "oci",
                "--genai-endpoint",
                emu.url,
                "--oci-config",
                oci_config,
                "--compartment",
                "ocid1.compartment.oc1..test",
                "--dry-run",
                "--max-rpm",
                "60",
                "--prices",
                f"{EMBED}=0.1,{CHAT}=0.0002",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        stats = emu.stats()
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "300 documents" in out and "chunks: 300" in out
    assert "requests: 4 embed (cohere.embed-v4.0), 300 chat" in out
    assert "estimated cost: USD 0.0" in out and "e-0" not in out
    assert "expected duration at the configured limits: 5 min 04 s (max_rpm bound)" in out
    assert stats["requests"] == 0  # no model call
    assert not (tmp_path / "o").exists()
