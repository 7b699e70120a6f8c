"""The OCI GenAI runs page (plugins/oci_genai_runs.py) served by a real ``airflow
api-server`` (private AIRFLOW_HOME, SQLite, loopback, SimpleAuthManager with a password),
checked over HTTP with and without a token, and rendered in headless Chromium (the
screenshot goes to the test's temporary folder; ``scripts/screenshots.py`` makes the ones in
``docs/`` from a real run).

Set-up, in order: a pipeline output made the way the DAG's tasks make it (plan.json, then
each shard through ``runner.run_shard`` with a ``ProgressFile``, then the commit) against
the emulator with faults, a rate limit and empty documents, so that retries, 429s and dead
letters are real; a DAG run of ``oci_genai_backfill`` recorded by ``airflow dags test``
from a DAG file whose ``plan`` task pushes the XComs the real plan task pushes (``run_id``,
``output``, ``config``); then the api-server.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import runner
from pipeline.config import JobConfig
from pipeline.progress import ProgressFile
from pipeline.runview import run_view
from pipeline.sinks import OutputStore
from tests.airflow.cdp import INSTALL_HINT, chromium, chromium_binary, open_page
from tests.oci_fixtures import running_emulator
from tests.throttling import throttled_at_first

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
PIPELINE_RUN = "bf-20261126-r1"
PRICE = 0.5

# The plan task's XCom contract (dags/ + oci_genai_provider/dagtasks.py): the shard refs
# as its return value, and run_id / output / config under keys of their own.
DAG_FILE = """
from __future__ import annotations

from datetime import datetime

from airflow.sdk import Param, dag, get_current_context, task


@dag(
    dag_id="oci_genai_backfill",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        "output": Param("out/demo", type="string"),
        "price_per_million_chars": Param(None, type=["number", "null"]),
        "pipeline_run": Param("", type="string"),
    },
)
def oci_genai_backfill():
    @task
    def plan():
        context = get_current_context()
        params = context["params"]
        ti = context["ti"]
        ti.xcom_push(key="run_id", value=params["pipeline_run"])
        ti.xcom_push(key="output", value=params["output"])
        config = {"output": params["output"], "run_id": params["pipeline_run"],
                  "price_per_million_chars": params["price_per_million_chars"]}
        ti.xcom_push(key="config", value=config)
        return []

    plan()


oci_genai_backfill()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_output(tmp: Path) -> tuple[str, list[dict[str, Any]]]:
    """A committed pipeline output of run PIPELINE_RUN over 3 shards, made the way the
    DAG's tasks make it, against the emulator (seeded 503s, a rate limit at first, 15 ms of
    latency). Returns (output, shard reports)."""
    from pipeline import demo

    docs = demo.collect()[:72]
    src = tmp / "src"
    src.mkdir()
    for k in range(3):
        rows = [{"doc_id": str(d["doc_id"]), "text": str(d["text"])} for d in docs[k::3]]
        for j in range(k + 1):  # 1, 2 and 3 empty documents: dead letters
            rows.append({"doc_id": f"empty-{k}-{j}", "text": "   "})
        pq.write_table(pa.Table.from_pylist(rows), str(src / f"part{k}.parquet"))
    out = str(tmp / "out")
    with running_emulator(
        tmp / "oci", fault_rate=0.04, seed=5, retry_after=0.05, latency_ms=15
    ) as (emu, oci_config):
        config = JobConfig(
            source=str(src),
            output=out,
            backend="oci",
            genai_endpoint=emu.url,
            oci_config=oci_config,
            compartment="ocid1.compartment.oc1..test",
            output_dimensions=256,
            batch_docs=4,
            max_attempts=10,
            summaries=False,
            shards=3,
            run_id=PIPELINE_RUN,
            price_per_million_chars=PRICE,
            progress=False,
        )
        specs = [s.to_json() for s in runner.plan(config)]
        store = OutputStore(out)
        store.write_json(f"_state/runs/{PIPELINE_RUN}/plan.json", {"shards": specs})
        reports = []
        # the first shard meets 429s (and retries them)
        with throttled_at_first(emu, 3):
            for spec in specs:
                with ProgressFile(
                    store, PIPELINE_RUN, spec["shard_id"], est_docs=spec["est_docs"], every_s=0.5
                ) as progress:
                    reports.append(runner.run_shard(spec, config, on_progress=progress))
        runner.commit(config, reports)
    return out, reports


def airflow_env(home: Path, dags: Path, port: int, passwords: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
            "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "OCI_GENAI_PROJECT_DIR": str(home.parent),
        }
    )
    return env


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> None:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{cmd[:3]} exit {done.returncode}:\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("runs-page")
    home, dags = tmp / "airflow-home", tmp / "dags"
    home.mkdir()
    dags.mkdir()
    (dags / "oci_genai_backfill.py").write_text(DAG_FILE)
    passwords = tmp / "passwords.json"
    admin_password = secrets.token_urlsafe(12)
    passwords.write_text(json.dumps({"admin": admin_password, "viewer": "viewer-pass"}))
    port = free_port()
    env = airflow_env(home, dags, port, passwords)
    # the metadata database is migrated while the pipeline output is made
    migrate = subprocess.Popen(
        [AIRFLOW, "db", "migrate"],
        env=env,
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = time.monotonic()
    output, reports = make_output(tmp)
    _, err = migrate.communicate(timeout=180)
    assert migrate.returncode == 0, f"airflow db migrate: {err[-3000:]}"
    print(f"output made and database migrated in {time.monotonic() - t0:.1f} s")
    # a relative output, as the DAG's default ("out/demo") is: resolved on the server
    # against OCI_GENAI_PROJECT_DIR
    rel_output = os.path.relpath(output, tmp)
    conf = {"output": rel_output, "price_per_million_chars": PRICE, "pipeline_run": PIPELINE_RUN}
    t0 = time.monotonic()
    _run([AIRFLOW, "dags", "test", "oci_genai_backfill", "-c", json.dumps(conf)], env, tmp)
    print(f"dag run recorded in {time.monotonic() - t0:.1f} s")
    t0 = time.monotonic()

    log = open(tmp / "api-server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env,
        cwd=tmp,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp / "api-server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "api-server did not come up in 120 s"
            time.sleep(0.5)
        print(f"api-server up in {time.monotonic() - t0:.1f} s")
        resp = httpx.post(
            f"{base}/auth/token", json={"username": "admin", "password": admin_password}
        )
        assert resp.status_code == 201, resp.text
        yield {
            "base": base,
            "token": resp.json()["access_token"],
            "output": output,
            "rel_output": rel_output,
            "reports": reports,
            "env": env,
            "tmp": tmp,
        }
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _dag_run_id(server: dict[str, Any]) -> str:
    resp = httpx.get(
        f"{server['base']}/api/v2/dags/oci_genai_backfill/dagRuns",
        headers={"Authorization": f"Bearer {server['token']}"},
    )
    assert resp.status_code == 200, resp.text
    runs = resp.json()["dag_runs"]
    assert len(runs) == 1 and runs[0]["state"] == "success"
    return str(runs[0]["dag_run_id"])


def test_the_page_is_refused_without_a_valid_token(server) -> None:
    base = server["base"]
    for path in ("/oci-genai/", f"/oci-genai/api/runs/oci_genai_backfill/{_dag_run_id(server)}"):
        assert httpx.get(base + path).status_code == 401
        bad = httpx.get(base + path, headers={"Authorization": "Bearer not-a-jwt"})
        assert bad.status_code in (401, 403)
        forged = httpx.get(base + path, cookies={"_token": "e30.e30.c2ln"})
        assert forged.status_code in (401, 403)
    # the plugin and its nav entry are registered with Airflow
    resp = httpx.get(
        f"{base}/api/v2/plugins", headers={"Authorization": f"Bearer {server['token']}"}
    )
    plugin = next(p for p in resp.json()["plugins"] if p["name"] == "oci_genai_runs")
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/oci-genai"
    assert plugin["external_views"][0]["href"] == "/oci-genai/"


def test_the_page_shows_the_run_with_a_token(server) -> None:
    base, token = server["base"], server["token"]
    dag_run_id = _dag_run_id(server)
    view = run_view(server["output"], PIPELINE_RUN)
    reports = server["reports"]
    for kind in ("bearer", "cookie"):
        if kind == "bearer":
            resp = httpx.get(f"{base}/oci-genai/", headers={"Authorization": f"Bearer {token}"})
        else:  # what a browser logged into the Airflow UI sends
            resp = httpx.get(f"{base}/oci-genai/", cookies={"_token": token})
        assert resp.status_code == 200, resp.text
        html = resp.text
        assert dag_run_id in html and PIPELINE_RUN in html
        assert f'href="/dags/oci_genai_backfill/runs/{quote(dag_run_id, safe="")}"' in html
        assert server["output"] in html  # the resolved output and its folders
        assert f"{server['output']}/embeddings/" in html
        for shard in view["shards"]:
            assert shard["shard_id"] in html
            assert f"{shard['docs']:,} of ~{shard['est_docs']:,}" in html
        assert html.count("<polyline") == 2
        assert "validate:EmptyText" in html
        assert view["cost"]["text"].startswith("USD ") and view["cost"]["text"] in html
        retries = sum(r["calls"]["retries"] for r in reports)
        throttled = sum(r["calls"]["throttled"] for r in reports)
        assert retries > 0 and throttled > 0
        assert f"retries <b>{retries:,}</b>" in html and f"429s <b>{throttled:,}</b>" in html
        assert f"dead letters <b>{view['dead_letters']['count']}</b>" in html

    # the JSON twin: the same numbers as reading the output directly
    data = httpx.get(
        f"{base}/oci-genai/api/runs/oci_genai_backfill/{quote(dag_run_id, safe='')}",
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    assert data["run_id"] == PIPELINE_RUN and data["output"] == server["rel_output"]
    assert data["view"]["totals"] == view["totals"]
    assert data["view"]["dead_letters"]["count"] == 6 == view["dead_letters"]["count"]
    assert data["view"]["cost"]["estimated"] == view["cost"]["estimated"] > 0
    missing = httpx.get(
        f"{base}/oci-genai/runs/oci_genai_backfill/nope",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert missing.status_code == 404


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def test_the_page_renders_in_headless_chromium(server, tmp_path) -> None:
    if chromium_binary() is None:
        pytest.fail(INSTALL_HINT)
    base, token = server["base"], server["token"]
    dag_run_id = _dag_run_id(server)

    async def browse(port: int) -> dict[str, Any]:
        async with open_page(port) as page:
            refused = await page.load(f"{base}/oci-genai/")
            refused_text = await page.text("document.body.innerText")
            await page.call(
                "Emulation.setDeviceMetricsOverride",
                width=1280,
                height=900,
                deviceScaleFactor=1,
                mobile=False,
            )
            await page.call("Network.setCookie", name="_token", value=token, url=base)
            status = await page.load(f"{base}/oci-genai/")
            found = {
                "status": status,
                "text": await page.text("document.body.innerText"),
                "polylines": await page.text("document.querySelectorAll('svg polyline').length"),
                "bars": await page.text("document.querySelectorAll('.bar i').length"),
                "link": await page.text("document.querySelector('h2 a').getAttribute('href')"),
            }
            shot = await page.screenshot(str(tmp_path / "runs-page.png"))
            return {"refused": refused, "refused_text": refused_text, "shot": shot, **found}

    with chromium(str(tmp_path / "profile")) as port:
        seen = asyncio.run(browse(port))
    assert seen["refused"] == 401 and "Not authenticated" in seen["refused_text"]
    assert seen["status"] == 200
    text = seen["text"]
    assert "OCI GenAI runs" in text and dag_run_id in text and PIPELINE_RUN in text
    assert "validate:EmptyText" in text and "estimated cost" in text
    assert seen["polylines"] == 2 and seen["bars"] == 3
    assert seen["link"] == f"/dags/oci_genai_backfill/runs/{quote(dag_run_id, safe='')}"
    assert _png_size(seen["shot"]) == (1280, 900)
    assert len(seen["shot"]) > 20_000  # a rendered page, not a blank frame
