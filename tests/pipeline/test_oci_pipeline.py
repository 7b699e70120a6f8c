"""The pipeline's oci backend end to end against the emulator over loopback, with signed
requests, and every fault the issue lists: what was retried, split, dead-lettered or
failed, and that nothing was committed twice or lost."""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from pipeline.config import JobConfig
from pipeline.errors import AuthError
from pipeline.genai.emulator import Emulator, EmulatorConfig
from pipeline.runner import run
from tests.conftest import write_corpus
from tests.oci_fixtures import make_oci_config, wrong_key_config

COMPARTMENT = "ocid1.compartment.oc1..test"


@pytest.fixture(scope="module")
def oci_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("oci")


@pytest.fixture(scope="module")
def oci_files(oci_dir) -> tuple[str, str]:
    return make_oci_config(oci_dir)


@pytest.fixture(scope="module")
def oci_config(oci_files) -> str:
    return oci_files[0]


@pytest.fixture(scope="module")
def emulator(oci_config) -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(embedder="hash"), oci_config=oci_config) as emu:
        yield emu


@pytest.fixture(autouse=True)
def _clean(emulator: Emulator) -> Iterator[None]:
    emulator.configure(**EmulatorConfig(embedder="hash").as_dict())
    emulator.reset()
    yield


# requests are packed full (96 inputs): enough one-chunk documents for several requests
MANY = 5 * 96


def _corpus(tmp_path: Path, n: int = 40, poison: int | None = None) -> str:
    rows = [
        {"doc_id": f"d{i:03d}", "text": f"Document {i} describes rivers, lakes and hills."}
        for i in range(n)
    ]
    if poison is not None:
        rows[poison]["text"] = "This document is POISON for the service."
    return write_corpus(str(tmp_path / "docs.parquet"), rows)


def _config(tmp_path: Path, emulator: Emulator, oci_config: str, **kw: object) -> JobConfig:
    values: dict[str, object] = {
        "source": str(tmp_path / "docs.parquet"),
        "output": str(tmp_path / "out"),
        "backend": "oci",
        "genai_endpoint": emulator.url,
        "oci_config": oci_config,
        "compartment": COMPARTMENT,
        "output_dimensions": 256,
        "batch_docs": 8,
        "max_attempts": 6,
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


def _exactly_once(tmp_path: Path, n: int, missing: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    ids = Counter(r["doc_id"] for r in _table(tmp_path, "embeddings"))
    assert set(ids) == {f"d{i:03d}" for i in range(n)} - missing
    assert set(ids.values()) <= {1}


def test_end_to_end_embeddings_and_chat_summaries(tmp_path, emulator, oci_config) -> None:
    _corpus(tmp_path)
    for fmt in ("COHERE", "GENERIC"):
        out = tmp_path / fmt
        cfg = _config(
            tmp_path, emulator, oci_config, summaries=True, chat_format=fmt, output=str(out)
        )
        report = run(cfg).report
        emb = ds.dataset(str(out / "embeddings")).to_table()
        assert emb.schema.field("embedding").type.list_size == 256
        assert emb.num_rows == 40 and set(emb.column("model_id").to_pylist()) == {
            "cohere.embed-v4.0"
        }
        summaries = ds.dataset(str(out / "summaries")).to_table().to_pylist()
        assert len(summaries) == 40 and all(s["summary"] for s in summaries)
        assert report["counts"]["failures"] == 0
    stats = emulator.stats()
    assert stats["actions"]["chat"] == 80
    # 40 one-chunk documents in source batches of 8: one request per run, not one per batch
    assert stats["actions"]["embedText"] == 2
    assert stats["unauthenticated"] == 0


def test_summarize_text_action(tmp_path, emulator, oci_config) -> None:
    _corpus(tmp_path, n=5)
    run(
        _config(
            tmp_path,
            emulator,
            oci_config,
            summaries=True,
            summary_api="summarize_text",
            summary_model="ocid1.generativeaiendpoint.oc1..dedicated",
        )
    )
    assert len(_table(tmp_path, "summaries")) == 5
    assert emulator.stats()["actions"]["summarizeText"] == 5


def test_wrong_key_fails_fast_with_a_clear_error(tmp_path, emulator, oci_dir) -> None:
    _corpus(tmp_path)
    wrong, _ = wrong_key_config(oci_dir / "wrong")
    with pytest.raises(AuthError) as info:
        run(_config(tmp_path, emulator, wrong))
    assert info.value.status == 401 and info.value.code == "NotAuthenticated"
    assert emulator.stats()["unauthenticated"] >= 1
    # a permanent auth error is not retried request after request
    assert emulator.stats()["requests"] <= 8
    assert _table(tmp_path, "embeddings") == []


def test_429_storm_is_ridden_out(tmp_path, emulator, oci_config) -> None:
    _corpus(tmp_path, n=MANY)
    emulator.configure(rpm=1)
    lift = threading.Timer(2.0, lambda: emulator.configure(rpm=None))
    lift.start()
    try:
        report = run(_config(tmp_path, emulator, oci_config, max_attempts=8)).report
    finally:
        lift.cancel()
    assert report["calls"]["throttled"] > 0
    assert report["counts"]["failures"] == 0
    _exactly_once(tmp_path, MANY)


@pytest.mark.parametrize(
    "fault",
    ["fault_rate", "reset_rate", "malformed_rate", "wrong_count_rate", "wrong_dim_rate"],
)
def test_transient_faults_are_retried(tmp_path, emulator, oci_config, fault) -> None:
    _corpus(tmp_path, n=MANY)
    emulator.configure(**{fault: 0.3, "seed": 7})
    report = run(_config(tmp_path, emulator, oci_config, max_attempts=10)).report
    assert report["calls"]["retries"] > 0
    assert report["counts"]["failures"] == 0
    assert sum(emulator.stats()["faults"].values()) > 0
    _exactly_once(tmp_path, MANY)


def test_timeouts_are_retried(tmp_path, emulator, oci_config) -> None:
    _corpus(tmp_path, n=16)
    emulator.configure(timeout_rate=0.3, timeout_s=3.0, seed=3)
    report = run(_config(tmp_path, emulator, oci_config, timeout_s=0.5, max_attempts=10)).report
    assert report["calls"]["retries"] > 0 and report["counts"]["failures"] == 0
    _exactly_once(tmp_path, 16)


def test_bad_input_is_split_out_with_its_request_id(tmp_path, emulator, oci_config) -> None:
    _corpus(tmp_path, poison=13)
    emulator.configure(reject_substring="POISON")
    report = run(_config(tmp_path, emulator, oci_config)).report
    fails = _table(tmp_path, "failures")
    assert [(f["doc_id"], f["http_status"], f["oci_code"], f["permanent"]) for f in fails] == [
        ("d013", 400, "InvalidParameter", True)
    ]
    assert fails[0]["opc_request_id"]
    assert report["counts"]["failures"] == 1
    _exactly_once(tmp_path, 40, missing={"d013"})


def test_persistent_outage_commits_nothing_then_resumes(tmp_path, emulator, oci_config) -> None:
    _corpus(tmp_path, n=16)
    emulator.configure(fault_rate=1.0)
    first = run(_config(tmp_path, emulator, oci_config, max_attempts=2)).report
    assert first["counts"]["documents_pending"] == 16
    assert _table(tmp_path, "embeddings") == []
    assert all(
        not f["permanent"] and f["http_status"] in (500, 503) for f in _table(tmp_path, "failures")
    )
    emulator.configure(fault_rate=0.0)
    emulator.reset()
    second = run(_config(tmp_path, emulator, oci_config)).report
    assert second["counts"]["documents_completed"] == 16
    _exactly_once(tmp_path, 16)


def test_no_secret_reaches_outputs_logs_or_errors(
    tmp_path, emulator, oci_dir, oci_files, caplog
) -> None:
    config_path, key_path = oci_files
    key_text = Path(key_path).read_text()
    secret_lines = [x for x in key_text.splitlines() if x and not x.startswith("-----")]
    _corpus(tmp_path, poison=3)
    emulator.configure(reject_substring="POISON", fault_rate=0.2, seed=11)
    caplog.set_level(logging.DEBUG)
    run(_config(tmp_path, emulator, config_path, max_attempts=8))
    wrong, _ = wrong_key_config(oci_dir / "secret-wrong")
    with pytest.raises(AuthError) as info:
        run(_config(tmp_path, emulator, wrong, output=str(tmp_path / "out2")))
    texts = [caplog.text, str(info.value), repr(info.value)]
    for root, _, files in os.walk(tmp_path):
        for f in files:
            texts.append(Path(root, f).read_bytes().decode("latin-1"))
    blob = "\n".join(texts)
    for line in secret_lines[:5] + secret_lines[-5:]:
        assert line not in blob
    assert "PRIVATE KEY" not in blob
    # the scan covered real outputs: the dead letter and the vectors were written
    assert _table(tmp_path, "failures") and _table(tmp_path, "embeddings")
