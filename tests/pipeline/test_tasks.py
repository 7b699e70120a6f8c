"""pipeline.tasks: what the Airflow tasks call, without Airflow. Run state in the output,
small XCom payloads, one run id per run, errors sorted into permanent and transient."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import orjson
import pyarrow.dataset as ds
import pytest

from pipeline import tasks
from pipeline.config import JobConfig
from pipeline.errors import (
    AuthError,
    ConfigError,
    LockedError,
    OutageError,
    SourceError,
    StorageError,
    ThrottledError,
)
from pipeline.genai.emulator import Emulator, EmulatorConfig
from tests.conftest import write_corpus
from tests.oci_fixtures import make_oci_config

XCOM_LIMIT = 4096


def _docs_dir(root: Path, n: int) -> str:
    root.mkdir()
    for i in range(n):
        (root / f"doc{i:03d}.txt").write_text(f"Document {i}. It talks about rivers and hills.\n")
    return str(root)


def _size(obj: object) -> int:
    return len(orjson.dumps(obj))


# --------------------------------------------------------------------------- JobConfig JSON


def test_job_config_round_trips_through_json_with_every_field() -> None:
    config = JobConfig(
        source="/data/in",
        output="/data/out",
        backend="hash",
        passthrough=("title", "uri"),
        max_rpm=600,
        price_per_million_chars=0.1,
        max_cost=5.0,
        glob="*.md",
        summaries=False,
    )
    data = config.to_json()
    assert set(data) == {f.name for f in dataclasses.fields(JobConfig)}
    text = json.dumps(data)  # JSON-able as it is
    back = JobConfig.from_json(text)
    assert back == config
    assert back.run_id == config.run_id
    assert JobConfig.from_json(data) == config
    assert back.passthrough == ("title", "uri")


def test_job_config_from_json_rejects_unknown_keys_and_bad_values() -> None:
    data = JobConfig(source="a", output="b").to_json()
    with pytest.raises(ConfigError, match=r"unknown setting.*colour"):
        JobConfig.from_json({**data, "colour": "red"})
    with pytest.raises(ConfigError, match="shards: must be an integer from 1 to 100000, got 0"):
        JobConfig.from_json({**data, "shards": 0})
    with pytest.raises(ConfigError, match="not valid JSON"):
        JobConfig.from_json("{not json")
    with pytest.raises(ConfigError, match=r"config JSON: required setting\(s\) missing: source$"):
        JobConfig.from_json({"output": "b"})
    with pytest.raises(ConfigError, match=r"required setting\(s\) missing: source, output"):
        JobConfig.from_json({**data, "source": None, "output": None})


# --------------------------------------------------------------------------- plan / shard / commit


def test_a_100_shard_run_keeps_every_xcom_small_and_one_run_id(tmp_path) -> None:
    source = _docs_dir(tmp_path / "docs", 100)
    out = str(tmp_path / "out")
    conf = {"source": source, "output": out, "backend": "hash", "shards": 100}
    planned = tasks.plan_job(conf)
    assert planned["counts"]["shards"] == 100
    assert len(planned["shards"]) == 100
    assert all(isinstance(s, str) for s in planned["shards"])  # ids: the specs are large
    assert _size(planned) <= XCOM_LIMIT, _size(planned)
    run_id = planned["run_id"]
    assert (Path(out) / "_state" / "runs" / run_id / "plan.json").exists()

    results = [tasks.run_shard_task(planned["config"], ref) for ref in planned["shards"]]
    assert max(_size(r) for r in results) <= 512
    assert sum(r["documents_completed"] for r in results) == 100
    reports = sorted((Path(out) / "_state" / "reports" / run_id).glob("*.json"))
    assert len(reports) == 100  # every shard wrote under the plan's run id

    committed = tasks.commit_job(planned["config"])
    assert _size(committed) <= XCOM_LIMIT
    assert committed["run_id"] == run_id
    assert committed["shards"] == 100
    assert committed["documents_completed"] == 100
    report = json.loads((Path(out) / "report.json").read_text())
    assert report["run_id"] == run_id
    assert report["counts"]["documents_completed"] == 100
    rows = ds.dataset(f"{out}/embeddings", format="parquet").to_table().num_rows
    assert rows == 100


def test_small_plans_carry_the_specs_inline(tmp_path, small_corpus) -> None:
    planned = tasks.plan_job(
        {"source": small_corpus, "output": str(tmp_path / "out"), "backend": "hash"}
    )
    assert len(planned["shards"]) == 1
    spec = planned["shards"][0]
    assert isinstance(spec, dict) and spec["est_docs"] == 60
    result = tasks.run_shard_task(planned["config"], spec)
    assert result["shard_id"] == spec["shard_id"]
    assert result["documents_completed"] == 60
    # a second run of the same shard (a cleared task) finds everything committed
    again = tasks.run_shard_task(planned["config"], spec)
    assert again["documents_skipped"] == 60
    assert again["chunks_sent"] == 0


def test_connection_overrides_fill_only_what_conf_leaves_unset(tmp_path, small_corpus) -> None:
    planned = tasks.plan_job(
        {"source": small_corpus, "output": str(tmp_path / "o"), "backend": "hash", "max_rpm": 7},
        overrides={"max_rpm": 100, "max_tpm": 5000, "region": "eu-frankfurt-1"},
    )
    config = JobConfig.from_json(planned["config"])
    assert (config.max_rpm, config.max_tpm, config.region) == (7, 5000, "eu-frankfurt-1")


def test_a_bad_conf_value_raises_jobconfigs_message(tmp_path, small_corpus) -> None:
    conf = {"source": small_corpus, "output": str(tmp_path / "o"), "shards": 0}
    with pytest.raises(ConfigError) as err:
        tasks.plan_job(conf)
    assert "shards: must be an integer from 1 to 100000, got 0" in str(err.value)
    assert tasks.is_permanent(err.value)
    assert not (tmp_path / "o").exists()


def test_a_missing_source_is_a_permanent_error(tmp_path) -> None:
    with pytest.raises(SourceError) as err:
        tasks.plan_job({"source": str(tmp_path / "nope.parquet"), "output": str(tmp_path / "o")})
    assert "nope.parquet" in str(err.value)
    assert tasks.is_permanent(err.value)


def test_an_unwritable_output_fails_the_plan(tmp_path, small_corpus) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # fails for root too, unlike a chmod
    with pytest.raises(StorageError) as err:
        tasks.plan_job({"source": small_corpus, "output": str(blocker / "out")})
    assert str(blocker / "out") in str(err.value)


def test_dry_run_previews_and_plans_nothing(tmp_path, small_corpus) -> None:
    out = tmp_path / "o"
    planned = tasks.plan_job({"source": small_corpus, "output": str(out), "dry_run": True})
    assert planned["dry_run"] is True
    assert planned["shards"] == []
    assert planned["preview"]["documents"] == 60
    assert not out.exists()


def test_permanent_and_transient_errors() -> None:
    for exc in (ConfigError("x"), SourceError("x"), AuthError("x", status=401), LockedError("x")):
        assert tasks.is_permanent(exc), exc
    for exc in (
        OutageError("x"),
        StorageError("x"),
        ThrottledError("x", status=429),
        tasks.ShardIncompleteError("s", 3),
        RuntimeError("x"),
    ):
        assert not tasks.is_permanent(exc), exc


# --------------------------------------------------------------------------- pending → retry


@pytest.fixture
def emulator(tmp_path) -> Iterator[tuple[Emulator, str]]:
    config_path, _ = make_oci_config(tmp_path / "oci")
    with Emulator(EmulatorConfig(embedder="hash"), oci_config=config_path) as emu:
        yield emu, config_path


def test_pending_documents_fail_the_shard_and_a_retry_resumes(tmp_path, emulator) -> None:
    emu, config_path = emulator
    # requests are packed 96 inputs full: enough documents for five requests
    n = 480
    rows = [{"doc_id": f"d{i:03d}", "text": f"Document {i} about lakes."} for i in range(n)]
    source = write_corpus(str(tmp_path / "docs.parquet"), rows)
    conf = {
        "source": source,
        "output": str(tmp_path / "out"),
        "backend": "oci",
        "genai_endpoint": emu.url,
        "oci_config": config_path,
        "compartment": "ocid1.compartment.oc1..test",
        "summaries": False,
        "batch_docs": 2,
        "max_attempts": 1,
        "timeout_s": 5.0,
    }
    planned = tasks.plan_job(conf)
    (spec,) = planned["shards"]
    # half the calls fail and the pipeline may not retry: some documents are committed,
    # the rest stay pending and the shard fails with a transient error
    emu.configure(fault_rate=0.5, seed=7)
    with pytest.raises(tasks.ShardIncompleteError) as err:
        tasks.run_shard_task(planned["config"], spec)
    pending = err.value.pending
    assert 0 < pending < n
    assert emu.stats()["inputs_embedded"] == n - pending
    assert not tasks.is_permanent(err.value)
    # the service is back: the retry resumes and sends only the pending documents
    emu.configure(fault_rate=0.0)
    emu.reset()
    retried = tasks.run_shard_task(planned["config"], spec)
    assert retried["documents_completed"] == pending
    assert retried["documents_skipped"] == n - pending
    assert emu.stats()["inputs_embedded"] == pending
    # and one more try (a cleared task) sends nothing
    emu.reset()
    again = tasks.run_shard_task(planned["config"], spec)
    assert again["documents_skipped"] == n
    assert emu.stats()["inputs_embedded"] == 0


# --------------------------------------------------------------------------- progress


def test_progress_lines_show_documents_rate_and_eta() -> None:
    now = [100.0]
    lines: list[str] = []
    progress = tasks.ProgressLog("abc", 100, every=3600, emit=lines.append, clock=lambda: now[0])
    with progress:
        progress(10, 40)
        now[0] += 10.0
        progress(15, 90)
    assert len(lines) == 1  # the closing line; the timer never fired
    assert lines[0] == "shard abc: 25/100 documents, 90 chunks, 9.0 chunks/s, ETA 30 s"


def test_progress_timer_logs_while_nothing_moves() -> None:
    import time

    lines: list[str] = []
    with tasks.ProgressLog("abc", 5, every=0.05, emit=lines.append):
        time.sleep(0.3)
    assert len(lines) >= 3
    assert all("ETA unknown" in line for line in lines)


def test_the_task_functions_load_no_airflow() -> None:
    import subprocess
    import sys

    code = (
        "import sys, pipeline.tasks\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'airflow'))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
