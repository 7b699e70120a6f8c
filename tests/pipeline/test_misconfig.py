"""Misconfiguration and a total outage end to end against the emulator over loopback
(signed requests): the run stops within a few calls with one error naming the setting,
counted from the emulator's own statistics; no document is dead-lettered as permanent
for it; and a later run with the setting fixed does every document exactly once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from pipeline.config import JobConfig
from pipeline.errors import ConfigError, OutageError
from pipeline.genai.emulator import Emulator, EmulatorConfig
from pipeline.runner import run
from tests.conftest import write_corpus
from tests.oci_fixtures import running_emulator

COMPARTMENT = "ocid1.compartment.oc1..test"


@pytest.fixture(scope="module")
def emu(tmp_path_factory) -> Iterator[tuple[Emulator, str]]:
    with running_emulator(tmp_path_factory.mktemp("oci")) as pair:
        yield pair


@pytest.fixture
def emulator(emu) -> Iterator[Emulator]:
    emulator, _ = emu
    emulator.configure(**EmulatorConfig(embedder="hash").as_dict())
    emulator.missing_models.clear()
    emulator.reset()
    yield emulator
    emulator.missing_models.clear()


def _corpus(tmp_path: Path, n: int) -> None:
    rows = [
        {"doc_id": f"d{i:04d}", "text": f"Document {i} tells of rivers, lakes and hills."}
        for i in range(n)
    ]
    write_corpus(str(tmp_path / "docs.parquet"), rows)


def _config(tmp_path: Path, emu: tuple[Emulator, str], **kw: object) -> JobConfig:
    emulator, oci_config = emu
    values: dict[str, object] = {
        "source": str(tmp_path / "docs.parquet"),
        "output": str(tmp_path / "out"),
        "backend": "oci",
        "genai_endpoint": emulator.url,
        "oci_config": oci_config,
        "compartment": COMPARTMENT,
        "batch_docs": 100,
        "summaries": False,
        "timeout_s": 5.0,
        "progress": False,
    }
    values.update(kw)
    return JobConfig(**values)  # type: ignore[arg-type]


def _table(tmp_path: Path, name: str) -> list[dict]:
    path = tmp_path / "out" / name
    if not path.exists():
        return []
    return ds.dataset(str(path), format="parquet").to_table().to_pylist()


def _nothing_dead_lettered(tmp_path: Path) -> None:
    """No permanent failure row: nothing a later run would skip."""
    assert [f for f in _table(tmp_path, "failures") if f["permanent"]] == []


def _rerun_does_everything_once(
    tmp_path: Path, emu: tuple[Emulator, str], n: int, *, summaries: bool = False, **kw: object
) -> dict:
    emulator, _ = emu
    emulator.reset()
    report = run(_config(tmp_path, emu, summaries=summaries, **kw)).report
    assert report["counts"]["documents_completed"] + report["counts"].get(
        "documents_skipped", 0
    ) == n
    want = {f"d{i:04d}" for i in range(n)}
    embedded = Counter(r["doc_id"] for r in _table(tmp_path, "embeddings"))
    assert set(embedded) == want and set(embedded.values()) == {1}
    if summaries:
        summarized = Counter(r["doc_id"] for r in _table(tmp_path, "summaries"))
        assert set(summarized) == want and set(summarized.values()) == {1}
    return report


def test_wrong_dimension_stops_after_a_few_embed_calls(tmp_path, emu, emulator) -> None:
    _corpus(tmp_path, 600)  # 6 parts, 6+ embed requests if nothing stopped it
    emulator.configure(dim=1024)  # the job asks embed v4 for its default, 1536
    with pytest.raises(ConfigError) as info:
        run(_config(tmp_path, emu, max_attempts=6))
    assert str(info.value) == (
        "the endpoint returns 1024-d vectors; the job expects 1536: set --output-dimensions 1024"
    )
    assert emulator.stats()["actions"]["embedText"] <= 5
    assert _table(tmp_path, "embeddings") == []
    _nothing_dead_lettered(tmp_path)
    # the message's advice works
    report = _rerun_does_everything_once(tmp_path, emu, 600, output_dimensions=1024)
    assert report["counts"]["documents_skipped"] == 0


def test_stray_wrong_dimensions_are_still_retried(tmp_path, emu, emulator) -> None:
    _corpus(tmp_path, 400)
    emulator.configure(wrong_dim_rate=0.2, seed=5)
    report = run(_config(tmp_path, emu, output_dimensions=256, max_attempts=10)).report
    assert emulator.stats()["faults"]["wrong_dim"] > 0
    assert report["counts"]["failures"] == 0 and report["calls"]["retries"] > 0
    assert len(_table(tmp_path, "embeddings")) == 400


def test_unknown_embed_model_stops_at_the_first_404(tmp_path, emu, emulator) -> None:
    _corpus(tmp_path, 1000)
    emulator.missing_models.add("cohere.embed-v4.0")
    with pytest.raises(ConfigError) as info:
        run(_config(tmp_path, emu, output_dimensions=256))
    assert str(info.value).startswith(
        f"embed model 'cohere.embed-v4.0' was not found at {emulator.url}/20231130"
        " (404 NotAuthorizedOrNotFound): set --embed-model"
    )
    stats = emulator.stats()
    assert stats["statuses"] == {"404": stats["requests"]} and stats["requests"] <= 5
    assert _table(tmp_path, "embeddings") == [] and _table(tmp_path, "failures") == []


def test_unknown_summary_model_stops_and_commits_nothing(tmp_path, emu, emulator) -> None:
    _corpus(tmp_path, 300)
    model = "meta.llama-9-unknown"
    emulator.missing_models.add(model)
    with pytest.raises(ConfigError) as info:
        run(_config(tmp_path, emu, output_dimensions=256, summaries=True, summary_model=model))
    assert str(info.value).startswith(
        f"summary model {model!r} was not found at {emulator.url}/20231130"
        " (404 NotAuthorizedOrNotFound): set --summary-model"
    )
    assert emulator.stats()["statuses"].get("404", 0) <= 5
    _nothing_dead_lettered(tmp_path)
    emulator.missing_models.clear()
    _rerun_does_everything_once(
        tmp_path, emu, 300, output_dimensions=256, summaries=True, summary_model=model
    )


def test_400_on_every_request_stops_without_dead_lettering(tmp_path, emu, emulator) -> None:
    # every text holds "Document": the service refuses every input, as it would a setting
    _corpus(tmp_path, 300)
    emulator.configure(reject_substring="Document")
    # one document per part: the worst case, a part is one single-input request
    with pytest.raises(ConfigError) as info:
        run(_config(tmp_path, emu, output_dimensions=256, batch_docs=1))
    text = str(info.value)
    assert text.startswith("the service refused every embed request and accepted none")
    assert "400 InvalidParameter" in text
    assert emulator.stats()["actions"].get("embedText", 0) == 0  # refused before the model
    assert emulator.stats()["statuses"]["400"] <= 20
    # the parts that ended before the stop recorded why, but as not final
    fails = _table(tmp_path, "failures")
    assert fails and all(not f["permanent"] and f["http_status"] == 400 for f in fails)
    emulator.configure(reject_substring=None)
    report = _rerun_does_everything_once(tmp_path, emu, 300, output_dimensions=256, batch_docs=1)
    assert report["counts"]["documents_skipped"] == 0  # nothing was marked done or failed


def test_total_outage_stops_early_and_a_rerun_resumes(tmp_path, emu, emulator) -> None:
    n = 2000
    _corpus(tmp_path, n)
    emulator.configure(fault_rate=1.0)
    with pytest.raises(OutageError) as info:
        run(_config(tmp_path, emu, output_dimensions=256, summaries=True, max_attempts=2))
    text = str(info.value)
    assert text.startswith("the service failed the last 20 requests after retries")
    assert "re-run to resume" in text
    sent = emulator.stats()["requests"]
    # without the stop: 2,000 summaries and 20 embed requests, each tried twice
    assert 40 <= sent <= 150, sent
    assert _table(tmp_path, "embeddings") == [] and _table(tmp_path, "summaries") == []
    _nothing_dead_lettered(tmp_path)
    emulator.configure(fault_rate=0.0)
    _rerun_does_everything_once(tmp_path, emu, n, output_dimensions=256, summaries=True)
