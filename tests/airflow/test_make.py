"""`make demo`, `make airflow` and `make airflow-stop`, run as a user runs them.

Each test gives make its own Airflow home, output and ports (make variables), so the
repository's `.airflow/` and `out/` are left alone; a small corpus and the `hash` backend
keep the runs short. Real subprocesses: make, `airflow dags test`, `airflow standalone`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from tests.airflow.helpers import write_parts
from tests.conftest import write_corpus

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(ROOT / ".venv" / "bin" / "airflow")


def _env() -> dict[str, str]:
    # conftest points this process's Airflow at its own home: make must choose its own
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["OCI_GENAI_RETRY_DELAY_S"] = "1"
    return env


def _make(
    *args: str, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args],
        env={**_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _table(stdout: str) -> dict[str, str]:
    """The summary table's rows (`  name  value`) as {name: value}."""
    rows = {}
    for line in stdout.splitlines():
        m = re.match(r"^  (\S.*?)\s{2,}(\S.*)$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_port_pair() -> int:
    """A port p with p and p + 1 free (the worker and triggerer log servers)."""
    for _ in range(50):
        p = _free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise AssertionError("no two consecutive free ports")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_make_demo_runs_the_dag_then_skips_everything(tmp_path, stdlib_docs) -> None:
    corpus = write_corpus(str(tmp_path / "docs.parquet"), stdlib_docs[:12])
    home, out = tmp_path / "airflow-home", tmp_path / "out"
    demo = [
        "demo",
        f"AIRFLOW_HOME_DIR={home}",
        f"DEMO_CORPUS={corpus}",
        f"DEMO_OUT={out}",
        "DEMO_BACKEND=hash",
        "DEMO_SHARDS=2",
    ]

    first = _make(*demo, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    table = _table(first.stdout)
    assert table["documents read"] == "12"
    assert table["documents completed"] == "12"
    assert int(table["model calls"]) > 0
    chunks = int(table["chunks embedded"])
    assert ds.dataset(str(out / "embeddings")).count_rows() == chunks > 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["documents_completed"] == 12

    # the home's own airflow.cfg carries the settings: a plain command needs only the home
    cfg = (home / "airflow.cfg").read_text()
    assert f"dags_folder = {ROOT / 'dags'}" in cfg
    assert "\nload_examples = False" in cfg

    second = _make(*demo, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    table = _table(second.stdout)
    assert table["documents skipped (already done)"] == "12"
    assert table["documents completed"] == "0"
    assert table["model calls"] == "0"
    assert ds.dataset(str(out / "embeddings")).count_rows() == chunks

    runs = subprocess.run(
        [AIRFLOW, "dags", "list-runs", "oci_genai_backfill", "-o", "json"],
        env={**_env(), "AIRFLOW_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    # stdout starts with warnings (graphviz); the JSON is the line that starts with "[{"
    listing = next(ln for ln in runs.stdout.splitlines() if ln.startswith("[{"))
    states = [r["state"] for r in json.loads(listing)]
    assert states == ["success", "success"]


def test_make_demo_fails_when_the_dag_run_fails(tmp_path, stdlib_docs) -> None:
    corpus = write_corpus(str(tmp_path / "docs.parquet"), stdlib_docs[:3])
    out = tmp_path / "out"
    result = _make(
        "demo",
        f"AIRFLOW_HOME_DIR={tmp_path / 'airflow-home'}",
        f"DEMO_CORPUS={corpus}",
        f"DEMO_OUT={out}",
        "DEMO_BACKEND=hash",
        "DEMO_SHARDS=0",  # JobConfig refuses it: the plan task fails, so does the run
        timeout=300,
    )
    assert result.returncode != 0
    assert "DagRun failed" in result.stdout + result.stderr
    assert "shards" in result.stdout + result.stderr
    assert not (out / "report.json").exists()


def _api(port: int, path: str, token: str | None = None, body: Any = None) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:  # a loaded 2-core box is slow
        return json.loads(resp.read())


def _wait(what: str, check: Any, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(2)


def test_make_airflow_serves_the_dags_and_stop_ends_its_processes(tmp_path, stdlib_docs):
    corpus = write_parts(tmp_path / "docs", stdlib_docs[:8], parts=2)  # two shards
    home, out = tmp_path / "airflow-home", tmp_path / "out"
    port = _free_port()
    variables = [
        f"AIRFLOW_HOME_DIR={home}",
        f"AIRFLOW_PORT={port}",
        f"AIRFLOW_LOG_PORT={_free_port_pair()}",
        f"DEMO_CORPUS={corpus}",  # exists: make builds no demo corpus in the repository
    ]
    pgid = None
    try:
        # the unpaused nightly DAG runs its latest interval at once: keep it small and
        # out of the repository's out/
        nightly = {
            "OCI_GENAI_NIGHTLY_SOURCE": corpus,
            "OCI_GENAI_NIGHTLY_OUTPUT": str(tmp_path / "nightly"),
            "OCI_GENAI_NIGHTLY_BACKEND": "hash",
        }
        started = _make("airflow", *variables, timeout=400, env=nightly)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        pgid = int((home / "standalone.pid").read_text())
        assert os.getpgid(pgid) == pgid  # the recorded PID leads its own process group
        login = re.search(r"login: user (\S+)\s+password (\S+)", started.stdout)
        assert login, started.stdout
        assert f"http://127.0.0.1:{port}" in started.stdout

        assert _api(port, "/api/v2/version")["version"].startswith("3.")
        try:
            _api(port, "/api/v2/dags")
            raise AssertionError("the API answered without a token")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        token = _api(port, "/auth/token", body={"username": login[1], "password": login[2]})[
            "access_token"
        ]

        def dag_ids() -> set[str]:
            dags = _api(port, "/api/v2/dags", token)["dags"]
            ids = {d["dag_id"] for d in dags}
            return ids if {"oci_genai_backfill", "oci_genai_nightly"} <= ids else set()

        _wait("the DAGs in the API", dag_ids, 120)

        conf = {"source": corpus, "output": str(out), "backend": "hash", "shards": 2}
        subprocess.run(
            [AIRFLOW, "dags", "trigger", "oci_genai_backfill", "-c", json.dumps(conf)],
            env={**_env(), "AIRFLOW_HOME": str(home)},
            cwd=ROOT,
            capture_output=True,
            timeout=120,
            check=True,
        )

        def finished() -> list[str]:
            runs = _api(port, "/api/v2/dags/oci_genai_backfill/dagRuns", token)["dag_runs"]
            states = [r["state"] for r in runs]
            return states if states and all(s in ("success", "failed") for s in states) else []

        assert _wait("the triggered run to finish", finished, 240) == ["success"]
        report = json.loads((out / "report.json").read_text())
        assert report["counts"]["documents_completed"] == 8
        assert report["shards"] == 2

        stopped = _make("airflow-stop", *variables, timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "stopped" in stopped.stdout
        assert not _group_alive(pgid)
        assert not (home / "standalone.pid").exists()
        with socket.socket() as s, pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", port))  # nothing listens on the API's port any more

        again = _make("airflow-stop", *variables, timeout=60)
        assert again.returncode == 0
        assert "no local Airflow running" in again.stdout
    finally:
        if pgid is not None and _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
