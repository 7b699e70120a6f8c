"""Failure semantics a data engineer can trust, under ``dag.test()`` against the project's
emulator (in this process, over loopback), counting the inputs the service embedded.

- a transient failure fails the shard task; Airflow's retry resumes from the checkpoint
  and no committed input is sent twice;
- refused credentials fail the shard at once, with no retry;
- clearing one finished shard re-runs only that shard, with no model call.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.genai.emulator import Emulator, EmulatorConfig
from tests.airflow.helpers import rerun, task_instances, write_parts
from tests.conftest import write_corpus
from tests.oci_fixtures import make_oci_config, wrong_key_config

COMPARTMENT = "ocid1.compartment.oc1..test"
N_DOCS = 480  # five requests of 96 inputs: a fault can hit some and spare others


@pytest.fixture(scope="module")
def oci_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("oci")


@pytest.fixture(scope="module")
def emulator(oci_dir) -> Iterator[tuple[Emulator, str]]:
    config_path, _ = make_oci_config(oci_dir)
    with Emulator(EmulatorConfig(embedder="hash"), oci_config=config_path) as emu:
        yield emu, config_path


@pytest.fixture
def emu(emulator, monkeypatch) -> Emulator:
    """The emulator, healthy and with fresh counts, and the connection ``oci_genai_test``
    (an ``oci_genai`` connection in the environment) pointing at it."""
    emu, config_path = emulator
    emu.configure(**EmulatorConfig(embedder="hash").as_dict())
    emu.reset()
    _connection(monkeypatch, config_path, emu.url)
    return emu


def _connection(monkeypatch, config_path: str, url: str) -> None:
    extra = {"oci_config": config_path, "compartment": COMPARTMENT, "genai_endpoint": url}
    monkeypatch.setenv(
        "AIRFLOW_CONN_OCI_GENAI_TEST", json.dumps({"conn_type": "oci_genai", "extra": extra})
    )


def _rows(n: int = N_DOCS) -> list[dict[str, Any]]:
    return [
        {"doc_id": f"d{i:03d}", "text": f"Document {i} is about lakes and hills."} for i in range(n)
    ]


def _conf(source: str, out: Path, **kw: Any) -> dict[str, Any]:
    conf = {
        "source": source,
        "output": str(out),
        "backend": "oci",
        "conn_id": "oci_genai_test",
        "summaries": False,
        "output_dimensions": 256,
        # conf keys beyond the form are JobConfig settings too: no pipeline-level retries,
        # so a failed call leaves its documents pending for Airflow's retry
        "max_attempts": 1,
        "batch_docs": 2,
        "timeout_s": 5.0,
    }
    conf.update(kw)
    return conf


def _embedded_ids(out: Path) -> list[str]:
    import pyarrow.dataset as ds

    return ds.dataset(str(out / "embeddings"), format="parquet").to_table()["doc_id"].to_pylist()


def test_a_transient_failure_is_retried_from_the_checkpoint(dagbag, tmp_path, emu) -> None:
    from airflow.utils.state import DagRunState

    source = write_corpus(str(tmp_path / "docs.parquet"), _rows())
    out = tmp_path / "out"
    emu.configure(fault_rate=0.5, seed=7)  # half the calls fail: some documents stay pending
    first_try: dict[str, int] = {}

    def heal_after_the_first_try() -> None:
        # the shard writes its report before it fails: then the service comes back
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(out.glob("_state/reports/*/*.json")):
            time.sleep(0.02)
        first_try["inputs"] = emu.stats()["inputs_embedded"]
        emu.configure(fault_rate=0.0)

    watcher = threading.Thread(target=heal_after_the_first_try, daemon=True)
    watcher.start()
    dr = dagbag.get_dag("oci_genai_backfill").test(run_conf=_conf(source, out, shards=1))
    watcher.join(5)

    assert dr.state == DagRunState.SUCCESS
    tis = task_instances(dr)
    assert tis[("run_shard", 0)] == ("success", 2)  # failed once, the retry finished it
    assert tis[("plan", -1)] == ("success", 1)
    assert 0 < first_try["inputs"] < N_DOCS  # the first try committed some documents
    # every input reached the service intact exactly once: the retry sent only the rest
    assert emu.stats()["inputs_embedded"] == N_DOCS
    assert sorted(_embedded_ids(out)) == [f"d{i:03d}" for i in range(N_DOCS)]


def test_refused_credentials_fail_the_shard_at_once(
    dagbag, tmp_path, emulator, emu, monkeypatch
) -> None:
    from airflow.utils.state import DagRunState

    _, good_config = emulator
    wrong, _ = wrong_key_config(tmp_path / "wrong", good_config=good_config)
    _connection(monkeypatch, wrong, emu.url)
    source = write_corpus(str(tmp_path / "docs.parquet"), _rows(8))
    dr = dagbag.get_dag("oci_genai_backfill").test(run_conf=_conf(source, tmp_path / "out"))
    assert dr.state == DagRunState.FAILED
    tis = task_instances(dr)
    assert tis[("run_shard", 0)] == ("failed", 1)  # shard tasks have retries: none was used
    assert emu.stats()["unauthenticated"] >= 1
    assert emu.stats()["inputs_embedded"] == 0


def test_clearing_one_shard_reruns_it_without_model_calls(dagbag, tmp_path, emu) -> None:
    from airflow.utils.state import DagRunState

    source = write_parts(tmp_path / "docs", _rows(), parts=3)
    out = tmp_path / "out"
    dag = dagbag.get_dag("oci_genai_backfill")
    dr = dag.test(run_conf=_conf(source, out, shards=3, max_attempts=3))
    assert dr.state == DagRunState.SUCCESS
    assert emu.stats()["inputs_embedded"] == N_DOCS
    emu.reset()

    state = rerun(dag, dr, {("run_shard", 1), ("commit", -1)})
    assert state == DagRunState.SUCCESS
    tis = task_instances(dr)
    assert tis[("run_shard", 1)] == ("success", 2)  # re-ran
    assert tis[("run_shard", 0)] == ("success", 1)  # untouched
    assert tis[("run_shard", 2)] == ("success", 1)
    assert tis[("commit", -1)] == ("success", 2)
    assert emu.stats()["requests"] == 0  # everything it holds was committed: no call
    assert sorted(_embedded_ids(out)) == [f"d{i:03d}" for i in range(N_DOCS)]


def test_an_inline_key_connection_runs_the_backfill(
    dagbag, tmp_path, emulator, emu, monkeypatch
) -> None:
    import configparser
    import glob
    import tempfile

    from airflow.utils.state import DagRunState

    _, config_path = emulator
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(config_path)
    profile = parser["DEFAULT"]
    with open(profile["key_file"], encoding="ascii") as fh:
        key = fh.read()
    extra = {
        "user": profile["user"],
        "tenancy": profile["tenancy"],
        "fingerprint": profile["fingerprint"],
        "private_key": key,
        "compartment": COMPARTMENT,
        "genai_endpoint": emu.url,
    }
    monkeypatch.setenv(
        "AIRFLOW_CONN_OCI_GENAI_TEST", json.dumps({"conn_type": "oci_genai", "extra": extra})
    )
    leftovers = os.path.join(tempfile.gettempdir(), "oci-genai-key-*")
    before = set(glob.glob(leftovers))
    source = write_parts(tmp_path / "docs", _rows(12), parts=2)
    out = tmp_path / "out"
    dr = dagbag.get_dag("oci_genai_backfill").test(run_conf=_conf(source, out, shards=2))
    assert dr.state == DagRunState.SUCCESS
    assert emu.stats()["inputs_embedded"] == 12
    assert emu.stats()["unauthenticated"] == 0
    assert set(glob.glob(leftovers)) == before  # every task removed its key file
    assert key.strip() not in (out / "report.json").read_text()
