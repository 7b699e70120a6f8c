"""The backfill DAG writing to OCI Object Storage (``oci://``, the emulator) on the hash
backend: the ``oci_genai`` connection's credentials sign the storage requests of every
task (an inline key, no compartment: the connection serves storage only here)."""

from __future__ import annotations

import configparser
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds

from pipeline.genai.emulator import Emulator, EmulatorConfig
from tests.airflow.helpers import task_instances, write_parts
from tests.oci_fixtures import make_oci_config

CONN_ID = "oci_store_test"


def test_backfill_to_an_oci_output_signed_with_the_connection(
    dagbag, tmp_path, stdlib_docs, monkeypatch
) -> None:
    from airflow.utils.state import DagRunState

    config_path, _ = make_oci_config(tmp_path / "oci")
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(config_path)
    profile = dict(parser["DEFAULT"])
    with open(profile["key_file"], encoding="ascii") as fh:
        key = fh.read()
    root = tmp_path / "os-root"
    (root / "outb").mkdir(parents=True)  # a bucket: a subdirectory of the emulator's root
    with Emulator(EmulatorConfig(embedder="hash"), oci_config=config_path, os_root=root) as emu:
        extra = {
            "auth": "api_key",
            "user": profile["user"],
            "tenancy": profile["tenancy"],
            "fingerprint": profile["fingerprint"],
            "private_key": key,
            "region": "us-chicago-1",
            "os_endpoint": emu.url,
        }
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{CONN_ID.upper()}",
            json.dumps({"conn_type": "oci_genai", "extra": extra}),
        )
        source = write_parts(tmp_path / "docs", stdlib_docs[:30], parts=2)
        conf = {
            "source": source,
            "output": "oci://outb@emulator/out",
            "backend": "hash",
            "shards": 2,
            "conn_id": CONN_ID,
        }
        dr = dagbag.get_dag("oci_genai_backfill").test(run_conf=conf)
        ops = emu.stats()["object_storage"]
        unauthenticated = emu.stats()["unauthenticated"]
        # the runs page reads the run from the bucket with the run's settings and key
        card = _runs_page_card(dr)
    assert dr.state == DagRunState.SUCCESS, task_instances(dr)
    assert unauthenticated == 0  # every request was signed with the connection's key
    assert ops.get("CreateBucket", 0) == 0
    assert ops["RenameObject"] >= 2  # each shard's parts moved out of the staging prefix

    out = root / "outb" / "out"  # the emulator keeps each object as a file
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["documents_completed"] == 30
    table = ds.dataset(str(out / "embeddings"), format="parquet").to_table(columns=["doc_id"])
    assert set(table["doc_id"].to_pylist()) == {d["doc_id"] for d in stdlib_docs[:30]}
    assert not list((out / "_state").glob("staging/**/*.tmp"))

    assert card.note is None and card.view is not None, card.note
    assert card.view["state"] == "committed"
    assert card.view["totals"]["shards_done"] == 2
    assert card.view["outputs"]["embeddings"]["files"] >= 2


def _runs_page_card(dr: Any) -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))
    from airflow.utils.session import create_session
    from oci_genai_runs import run_card

    from pipeline import storage

    storage.configure(storage.StorageSettings())  # the api-server has no job's settings
    with create_session() as session:
        return run_card(session, dr)
