"""A real deployment: Airflow 3 on CeleryExecutor, PostgreSQL and Redis of this machine.

One stack for the module (``tests/deploy/stack.py``): its own PostgreSQL database and Redis
database number, a fresh ``AIRFLOW_HOME``, api-server, scheduler, dag-processor, two Celery
workers (``w1``, ``w2``; each names itself as its task instances' hostname) and the
project's emulator (signed requests, hash embedder, added latency) behind the default
``oci_genai`` connection. Backfills of the demo corpus (428 documents, six Parquet files,
so six shards) are triggered through the REST API, as the UI's form does.

1. A backfill runs to success with shards on both workers; every chunk once.
2. A second backfill into a fresh output: a worker is SIGKILLed (its whole session: the
   worker, its pool, the task supervisors and task runners) while it runs a shard that has
   already committed part of its documents. The scheduler finds the task without
   heartbeats, Airflow retries it on the surviving worker, the retry resumes from the
   shard's checkpoint, the run succeeds, and every chunk is in the output exactly once.
3. Stopping the stack leaves no process of any session it started, no database and no
   Redis key.

Select these with ``-m deploy``; they run in the plain ``pytest`` too.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.genai.emulator.devconfig import write_dev_config
from tests.deploy.stack import CeleryStack, database_exists, redis_db_size

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(900)]

DAG = "oci_genai_backfill"
WORKERS = ("w1", "w2")
SHARDS = 6
COMPARTMENT = "ocid1.compartment.oc1..deploytest"
# A shard of ~71 documents cut into 256-byte chunks (~9 requests, packed 96 inputs full)
# commits a part every 12 chunk rows as its documents settle, one request at a time against
# the emulator's latency; in the kill run each request takes ~1 s, so a shard spends several
# seconds with part of it committed, and a kill lands between its parts.
LATENCY_MS = 250
KILL_LATENCY_MS = 1000
# The scheduler fails a task whose supervisor stopped heartbeating after this many seconds;
# the task SDK heartbeats every 5 s, so it must stay well above that under load.
HEARTBEAT_TIMEOUT_S = 20


def _conf(corpus: str, output: Path) -> dict[str, Any]:
    return {
        "source": corpus,
        "output": str(output),
        "backend": "oci",
        "shards": SHARDS,
        "summaries": False,
        "max_in_flight": 1,
        "batch_docs": 12,
        "part_rows": 12,
        "chunk_tokens": 256,
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, stdlib_docs) -> tuple[str, set[str]]:
    """The demo corpus as six Parquet files (a shard each); its directory and doc ids."""
    root = tmp_path_factory.mktemp("corpus")
    size = -(-len(stdlib_docs) // SHARDS)
    for k in range(SHARDS):
        rows = stdlib_docs[k * size : (k + 1) * size]
        pq.write_table(pa.Table.from_pylist(rows), str(root / f"part{k}.parquet"))
    return str(root), {d["doc_id"] for d in stdlib_docs}


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[CeleryStack]:
    oci_dir = tmp_path_factory.mktemp("oci")
    oci_config, _ = write_dev_config(oci_dir)
    st = CeleryStack(
        oci_config=oci_config,
        emulator_args=["--embedder", "hash", "--latency-ms", str(LATENCY_MS)],
        connection={"oci_config": oci_config, "compartment": COMPARTMENT},
        pool_slots=4,
        env={
            "OCI_GENAI_SHARD_RETRIES": "2",
            "OCI_GENAI_RETRY_DELAY_S": "2",
            "OCI_GENAI_PROGRESS_EVERY_S": "5",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            # a task the dead worker had taken but not started would wait 600 s by default
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "120",
        },
    )
    try:
        st.setup()
        st.start_servers()
        for name in WORKERS:
            st.start_worker(name, concurrency=2)
        st.wait_ready(DAG)
        yield st
    finally:
        try:
            st.close()
        finally:
            st.remove_home()


def _run(stack: CeleryStack, conf: dict[str, Any], timeout: float = 300, tick: Any = None) -> str:
    run_id = stack.trigger(DAG, conf)
    state = stack.wait_run(DAG, run_id, timeout, tick)
    assert state == "success", _diagnose(stack, run_id)
    return run_id


def _diagnose(stack: CeleryStack, run_id: str) -> str:
    rows = [
        (t["task_id"], t["map_index"], t["state"], t["hostname"], t["try_number"])
        for t in stack.task_instances(DAG, run_id)
    ]
    logs = {p.name: stack.log_text(p.name)[-1500:] for p in stack.procs}
    return f"run {run_id}: {rows}\n" + "\n".join(f"--- {k}\n{v}" for k, v in logs.items())


def _check_output(output: Path, doc_ids: set[str]) -> int:
    """Every document's chunks exactly once, only committed files visible; chunk count."""
    table = pq.read_table(str(output / "embeddings"), columns=["doc_id", "chunk_index"])
    keys = list(zip(table["doc_id"].to_pylist(), table["chunk_index"].to_pylist(), strict=True))
    assert len(keys) == len(set(keys)), "a chunk is in the output more than once"
    assert set(table["doc_id"].to_pylist()) == doc_ids
    committed = set()
    for record in (output / "_state" / "commits").glob("*/*.json"):
        files = json.loads(record.read_text())["files"]
        if files.get("embeddings"):
            committed.add(files["embeddings"])
    visible = {
        f"embeddings/{p.name}" for p in (output / "embeddings").iterdir()
        if not p.name.startswith(".")
    }
    assert visible == committed, f"uncommitted: {visible - committed}, lost: {committed - visible}"
    assert not (output / "failures").exists() or not list((output / "failures").glob("*.parquet"))
    return len(keys)


def test_backfill_runs_on_both_workers(stack, corpus, tmp_path) -> None:
    source, doc_ids = corpus
    run_id = _run(stack, _conf(source, tmp_path / "out"))
    tis = stack.task_instances(DAG, run_id)
    shards = [t for t in tis if t["task_id"] == "run_shard"]
    assert len(shards) == SHARDS
    assert all(t["state"] == "success" for t in tis)
    assert {t["hostname"] for t in shards} == set(WORKERS), [t["hostname"] for t in shards]
    chunks = _check_output(tmp_path / "out", doc_ids)
    assert chunks >= len(doc_ids)
    print(f"\nstack: {stack.timings}; run 1: {_who(tis)}, {chunks} chunks")


def _who(tis: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{t['task_id']}[{t['map_index']}] try {t['try_number']} {t['state']} on {t['hostname']}"
        for t in sorted(tis, key=lambda t: (t["task_id"] != "plan", t["task_id"], t["map_index"]))
    )


def test_killed_worker_shard_is_retried_on_the_survivor(stack, corpus, tmp_path) -> None:
    source, doc_ids = corpus
    output = tmp_path / "out"
    httpx.post(f"{stack.emulator_url}/_emulator/config", json={"latency_ms": KILL_LATENCY_MS})
    victim: dict[str, Any] = {}
    plan: list[str] = []

    def kill_mid_shard() -> None:
        """Once a shard task runs on a worker and has committed part of its documents,
        SIGKILL that worker's whole session."""
        if victim:
            return
        if not plan:
            runs = list((output / "_state" / "runs").glob("*/plan.json"))
            if not runs:
                return
            plan.extend(s["shard_id"] for s in json.loads(runs[0].read_text())["shards"])
        for ti in stack.task_instances(DAG, run_id):
            if ti["task_id"] != "run_shard" or ti["state"] != "running":
                continue
            shard = plan[ti["map_index"]]
            commits = list((output / "_state" / "commits" / shard).glob("*.json"))
            if commits and not list((output / "_state" / "reports").glob(f"*/{shard}.json")):
                victim.update(
                    worker=ti["hostname"], map_index=ti["map_index"], shard=shard,
                    commits=len(commits), wall=time.time(),
                    killed=stack.kill_worker(ti["hostname"]),
                )
                return

    run_id = stack.trigger(DAG, _conf(source, output))
    state = stack.wait_run(DAG, run_id, 400, kill_mid_shard)
    assert victim, "no shard was caught running with part of it committed"
    assert state == "success", _diagnose(stack, run_id)
    survivor = next(w for w in WORKERS if w != victim["worker"])

    tries = stack.tries(DAG, run_id, "run_shard")
    killed = [t for t in tries if t["map_index"] == victim["map_index"]]
    # the killed try failed (no heartbeat), a later one succeeded on the survivor
    assert [t["try_number"] for t in killed] == list(range(1, len(killed) + 1)), killed
    assert killed[0]["hostname"] == victim["worker"] and killed[0]["state"] == "failed"
    assert killed[-1]["hostname"] == survivor and killed[-1]["state"] == "success"
    # nothing started on the dead worker after it died
    final = stack.task_instances(DAG, run_id)
    for t in [*tries, *final]:
        if t["start_date"] and _epoch(t["start_date"]) > victim["wall"]:
            assert t["hostname"] == survivor, t
    assert all(t["state"] == "success" for t in final)
    commit = next(t for t in final if t["task_id"] == "commit")
    assert commit["hostname"] == survivor
    assert _check_output(output, doc_ids) >= len(doc_ids)
    # the retry resumed: the commits made before the kill are still the shard's first ones
    shard_commits = sorted((output / "_state" / "commits" / victim["shard"]).glob("*.json"))
    assert len(shard_commits) > victim["commits"]
    print(f"run 2: {_who(tries)}; commit on {commit['hostname']}")
    print(f"killed {victim['worker']} ({victim['killed']} processes) in shard "
          f"{victim['map_index']} after {victim['commits']} commit(s); retried on {survivor}")


def test_stopping_leaves_nothing_behind(stack) -> None:
    sessions = list(stack.sessions)
    database, redis_db, home = stack.database, stack.redis_db, stack.home
    assert sessions and database and redis_db >= 0
    stack.close()
    assert stack.leftovers() == []
    assert not any(os.path.exists(f"/proc/{sid}") and _alive(sid) for sid in sessions)
    assert not database_exists(database)
    assert redis_db_size(redis_db) == 0
    assert os.path.isdir(home)  # the fixture removes it
    print(f"stopped in {stack.timings['stop']:.1f} s; {len(sessions)} sessions, none left")


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
