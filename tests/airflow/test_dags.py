"""The two DAGs under ``dag.test()`` (SQLite, in-process): import, shape, a backfill end to
end on the hash backend, and the settings errors that must fail the plan at once."""

from __future__ import annotations

import dataclasses
import json

import pyarrow.dataset as ds

from pipeline.config import JobConfig
from tests.airflow.helpers import task_instances, write_parts, xcom_size, xcoms

XCOM_LIMIT = 4096
JOB_FIELDS = {f.name for f in dataclasses.fields(JobConfig)}


def test_both_dags_import_cleanly(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert {"oci_genai_backfill", "oci_genai_nightly"} <= set(dagbag.dag_ids)
    for dag_id in ("oci_genai_backfill", "oci_genai_nightly"):
        dag = dagbag.get_dag(dag_id)
        assert dag.task_dict["run_shard"].pool == "oci_genai"
        assert dag.doc_md and "run_shard" in dag.doc_md
    backfill = dagbag.get_dag("oci_genai_backfill")
    assert set(backfill.task_dict) == {"plan", "run_shard", "commit"}
    assert backfill.task_dict["run_shard"].downstream_task_ids == {"commit"}
    # the nightly records deletions once every shard is done, and compacts last
    nightly = dagbag.get_dag("oci_genai_nightly")
    assert set(nightly.task_dict) == {"plan", "run_shard", "deletions", "commit", "compact"}
    assert nightly.task_dict["run_shard"].downstream_task_ids == {"deletions"}
    assert nightly.task_dict["deletions"].downstream_task_ids == {"commit"}
    assert nightly.task_dict["commit"].downstream_task_ids == {"compact"}
    assert nightly.task_dict["compact"].downstream_task_ids == set()


def test_backfill_params_are_jobconfig_settings(dagbag) -> None:
    dag = dagbag.get_dag("oci_genai_backfill")
    assert dag.schedule is None
    names = set(dag.params) - {"conn_id"}
    assert names <= JOB_FIELDS
    assert {
        "source", "output", "glob", "modified_since", "modified_until", "backend",
        "embed_model", "summary_model", "output_dimensions", "summaries", "shards", "max_rpm",
        "max_tpm", "max_in_flight", "dry_run", "price_per_million_chars", "max_cost",
    } == names  # fmt: skip
    assert "ISO 8601" in dag.params.get_param("modified_since").description
    assert dag.params["backend"] == "local"
    assert dag.params["conn_id"] == "oci_genai_default"


def test_nightly_schedule_is_configurable_without_code(monkeypatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from tests.airflow.conftest import DAGS

    assert DagBag(dag_folder=DAGS).get_dag("oci_genai_nightly").schedule == "@daily"
    monkeypatch.setenv("OCI_GENAI_NIGHTLY_SCHEDULE", "0 3 * * *")
    assert DagBag(dag_folder=DAGS).get_dag("oci_genai_nightly").schedule == "0 3 * * *"


def test_backfill_runs_end_to_end_with_small_xcoms(dagbag, tmp_path, stdlib_docs) -> None:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState

    source = write_parts(tmp_path / "docs", stdlib_docs[:30], parts=3)
    out = tmp_path / "out"
    conf = {"source": source, "output": str(out), "backend": "hash", "shards": 3}
    dr = dagbag.get_dag("oci_genai_backfill").test(run_conf=conf)
    assert dr.state == DagRunState.SUCCESS

    tis = task_instances(dr)
    assert tis[("plan", -1)] == ("success", 1)
    assert [tis[("run_shard", i)] for i in range(3)] == [("success", 1)] * 3
    assert tis[("commit", -1)] == ("success", 1)

    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["documents_completed"] == 30
    assert ds.dataset(str(out / "embeddings"), format="parquet").to_table().num_rows > 30
    ids = set(
        ds.dataset(str(out / "embeddings"), format="parquet").to_table()["doc_id"].to_pylist()
    )
    assert ids == {d["doc_id"] for d in stdlib_docs[:30]}

    values = xcoms(dr)
    assert max(xcom_size(v) for v in values.values()) <= XCOM_LIMIT
    run_id = values[("plan", -1, "run_id")]
    # one run id for the whole DAG run: the plan's, in every shard report and the report
    assert report["run_id"] == run_id
    assert len(list((out / "_state" / "reports" / run_id).glob("*.json"))) == 3
    assert values[("commit", -1, "return_value")]["run_id"] == run_id
    assert values[("plan", -1, "config")]["backend"] == "hash"

    with create_session() as session:
        uris = {
            a.uri
            for a in session.query(AssetModel).join(
                AssetEvent, AssetEvent.asset_id == AssetModel.id
            )
        }
    assert f"file://{out}" in uris


def _plan_failure(dagbag, conf) -> tuple[dict, list[str]]:
    """Run the backfill, expecting the plan to fail; return the task instances and the
    failure messages the plan task's failure callback saw."""
    from airflow.utils.state import DagRunState

    dag = dagbag.get_dag("oci_genai_backfill")
    task = dag.task_dict["plan"]
    seen: list[str] = []
    previous = task.on_failure_callback
    task.on_failure_callback = [lambda context: seen.append(str(context["exception"]))]
    try:
        dr = dag.test(run_conf=conf)
    finally:
        task.on_failure_callback = previous
    assert dr.state == DagRunState.FAILED
    return task_instances(dr), seen


def test_a_bad_value_fails_the_plan_at_once(dagbag, tmp_path, small_corpus) -> None:
    conf = {"source": small_corpus, "output": str(tmp_path / "o"), "backend": "hash", "shards": 0}
    tis, messages = _plan_failure(dagbag, conf)
    assert tis[("plan", -1)] == ("failed", 1)  # no retry although plan has retries=2
    assert messages == ["ConfigError: shards: must be an integer from 1 to 100000, got 0"]
    assert not (tmp_path / "o").exists()


def test_an_unknown_conf_key_fails_the_plan_at_once(dagbag, tmp_path, small_corpus) -> None:
    conf = {"source": small_corpus, "output": str(tmp_path / "o"), "max_rmp": 5}
    tis, messages = _plan_failure(dagbag, conf)
    assert tis[("plan", -1)] == ("failed", 1)
    assert len(messages) == 1 and "unknown setting 'max_rmp'" in messages[0]


def test_a_missing_source_fails_the_plan_at_once(dagbag, tmp_path) -> None:
    missing = tmp_path / "no-such-corpus.parquet"
    conf = {"source": str(missing), "output": str(tmp_path / "o"), "backend": "hash"}
    tis, messages = _plan_failure(dagbag, conf)
    assert tis[("plan", -1)] == ("failed", 1)
    assert messages == [f"SourceError: source {missing} does not exist"]
    assert ("run_shard", 0) not in tis or tis[("run_shard", 0)][1] == 0


def test_nightly_takes_its_settings_from_a_variable_and_is_incremental(
    dagbag, tmp_path, small_corpus, monkeypatch
) -> None:
    from airflow.utils.state import DagRunState

    out = tmp_path / "nightly"
    settings = {"source": small_corpus, "output": str(out), "backend": "hash"}
    monkeypatch.setenv("AIRFLOW_VAR_OCI_GENAI_NIGHTLY", json.dumps(settings))
    dag = dagbag.get_dag("oci_genai_nightly")
    first = dag.test()
    assert first.state == DagRunState.SUCCESS
    assert json.loads((out / "report.json").read_text())["counts"]["documents_completed"] == 60
    second = dag.test()  # the next night, nothing changed: nothing is sent again
    assert second.state == DagRunState.SUCCESS
    counts = json.loads((out / "report.json").read_text())["counts"]
    assert counts["documents_skipped"] == 60
    assert counts.get("chunks_sent", 0) == 0


def test_nightly_records_deletions_and_compacts_last(dagbag, tmp_path, monkeypatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from airflow.utils.state import DagRunState

    src, out = tmp_path / "src.parquet", tmp_path / "nightly"
    docs = {f"d{i}": f"Document {i}: " + " ".join(f"w{i}-{k}" for k in range(30)) for i in range(8)}

    def write() -> None:
        rows = [{"doc_id": k, "text": v} for k, v in sorted(docs.items())]
        pq.write_table(pa.Table.from_pylist(rows), src)

    write()
    settings = {"source": str(src), "output": str(out), "backend": "hash", "shards": 2}
    monkeypatch.setenv("AIRFLOW_VAR_OCI_GENAI_NIGHTLY", json.dumps(settings))
    dag = dagbag.get_dag("oci_genai_nightly")
    first = dag.test()
    assert first.state == DagRunState.SUCCESS
    tis = task_instances(first)
    assert tis[("deletions", -1)] == ("success", 1)
    assert tis[("compact", -1)] == ("success", 1)
    docs["d1"] = "Document 1, rewritten: " + " ".join(f"v{k}" for k in range(30))
    del docs["d2"]
    write()
    second = dag.test()
    assert second.state == DagRunState.SUCCESS
    report = json.loads((out / "report.json").read_text())
    assert report["deletions"]["deleted"] == 1
    gone = pq.read_table(out / "deletions").column("doc_id").to_pylist()
    assert gone == ["d2"]
    # compacted: the current documents only, each with its current text's rows only
    table = ds.dataset(out / "embeddings", format="parquet").to_table(
        columns=["doc_id", "content_hash"]
    )
    from pipeline.models import content_hash

    ids, hashes = table.column("doc_id").to_pylist(), table.column("content_hash").to_pylist()
    pairs = set(zip(ids, hashes, strict=True))
    assert pairs == {(k, content_hash(v)) for k, v in docs.items()}
    compacted = json.loads((out / "_state" / "compact.json").read_text())
    assert compacted["deleted_documents"] == 1
    third = dag.test()  # nothing changed: nothing sent, nothing to compact
    assert third.state == DagRunState.SUCCESS
    assert json.loads((out / "report.json").read_text())["counts"].get("chunks_sent", 0) == 0
    compacted = json.loads((out / "_state" / "compact.json").read_text())
    assert compacted["rewritten"] == 0 and compacted["superseded"] == 0


def test_a_100_shard_plan_keeps_every_xcom_small(dagbag, tmp_path) -> None:
    from airflow.utils.state import DagRunState

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(100):
        (docs / f"doc{i:03d}.txt").write_text(f"Document {i}: rivers, lakes and hills.\n")
    conf = {"source": str(docs), "output": str(tmp_path / "o"), "backend": "hash", "shards": 100}
    # the shards and the commit are marked done without running: only the plan's XComs
    # (what 100 mapped tasks are expanded from) are measured here
    dr = dagbag.get_dag("oci_genai_backfill").test(
        run_conf=conf, mark_success_pattern="run_shard|commit"
    )
    assert dr.state == DagRunState.SUCCESS
    values = xcoms(dr)
    refs = values[("plan", -1, "return_value")]
    assert len(refs) == 100 and all(isinstance(r, str) for r in refs)  # ids, not specs
    sizes = {key: xcom_size(v) for key, v in values.items()}
    assert max(sizes.values()) <= XCOM_LIMIT, sizes
    assert len([k for k in task_instances(dr) if k[0] == "run_shard"]) == 100


def test_a_dry_run_previews_and_runs_no_shard(dagbag, tmp_path, small_corpus) -> None:
    from airflow.utils.state import DagRunState

    out = tmp_path / "o"
    conf = {
        "source": small_corpus,
        "output": str(out),
        "dry_run": True,
        "price_per_million_chars": 0.1,
    }
    dr = dagbag.get_dag("oci_genai_backfill").test(run_conf=conf)
    assert dr.state == DagRunState.SUCCESS
    preview = xcoms(dr)[("plan", -1, "preview")]
    assert preview["documents"] == 60 and preview["estimated_cost"] > 0
    tis = task_instances(dr)
    assert tis[("plan", -1)] == ("success", 1)
    assert all(state == "skipped" for (task, _), (state, _) in tis.items() if task != "plan")
    assert not out.exists()


def test_a_date_range_backfill_reads_only_files_modified_in_the_window(dagbag, tmp_path) -> None:
    """The form's modified_since / modified_until select files by time modified; a window
    that selects nothing is a successful run with nothing to do (a quiet night)."""
    import os
    from datetime import UTC, datetime

    from airflow.utils.state import DagRunState

    src = tmp_path / "docs"
    src.mkdir()
    for name, month in (("jan.txt", 1), ("feb.txt", 2), ("mar.txt", 3)):
        path = src / name
        path.write_text(f"A document written in month {month}, with a few words.")
        stamp = datetime(2026, month, 15, tzinfo=UTC).timestamp()
        os.utime(path, (stamp, stamp))
    out = tmp_path / "out"
    conf = {
        "source": str(src), "output": str(out), "backend": "hash", "shards": 2,
        "modified_since": "2026-02-01", "modified_until": "2026-03-01T00:00:00+00:00",
    }  # fmt: skip
    dr = dagbag.get_dag("oci_genai_backfill").test(run_conf=conf)
    assert dr.state == DagRunState.SUCCESS
    ids = ds.dataset(str(out / "embeddings"), format="parquet").to_table()["doc_id"]
    assert set(ids.to_pylist()) == {"feb.txt"}
    config = xcoms(dr)[("plan", -1, "config")]
    assert (config["modified_since"], config["modified_until"]) == (
        "2026-02-01T00:00:00Z",
        "2026-03-01T00:00:00Z",
    )

    quiet = tmp_path / "quiet"
    conf = {**conf, "output": str(quiet), "modified_since": "2027-01-01", "modified_until": None}
    dr = dagbag.get_dag("oci_genai_backfill").test(run_conf=conf)
    assert dr.state == DagRunState.SUCCESS
    tis = task_instances(dr)
    assert tis[("plan", -1)] == ("success", 1)
    assert tis[("commit", -1)] == ("success", 1)
    report = json.loads((quiet / "report.json").read_text())
    assert report["counts"].get("documents_read", 0) == 0
