"""Remake the README's screenshots from a real local Airflow (not part of ``make test``).

    .venv/bin/python scripts/screenshots.py [--docs docs] [--shards 4] [--max-rpm 12]

What it does, in order (about two to three minutes on 2 cores):
1. writes a small corpus, the demo corpus split into four Parquet files, to
   ``out/walkthrough-corpus/`` and empties ``out/walkthrough/`` (the run's output);
2. starts Airflow through ``make airflow`` on free loopback ports in a temporary
   ``AIRFLOW_HOME`` (DAGs paused at creation, so ``oci_genai_nightly`` stays quiet);
3. in headless Chromium (``tests/airflow/cdp.py``), logged in with a JWT from
   ``POST /auth/token`` as the ``_token`` cookie: opens ``oci_genai_backfill``, clicks
   **Trigger**, fills the Params form (source, output, backend ``hash``, shards, max_rpm,
   price) and saves ``docs/trigger-form.png``, then submits the form;
4. waits for the DAG run to succeed (the REST API), then saves the runs page
   (``docs/runs-page.png``) and the DAG run's grid (``docs/dag-run.png``);
5. stops Airflow with ``make airflow-stop`` and removes the temporary home, also on error.

The output stays in ``out/walkthrough/`` for a look (``out/`` is not in git). The UI's
element names (the ``Trigger Dag`` button, ``element_<param>`` inputs) are Airflow 3.3's;
when the UI changes, this script is the one place to adjust.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pyarrow.dataset as ds
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.airflow.cdp import Page, chromium, open_page  # noqa: E402

DAG_ID = "oci_genai_backfill"
CORPUS = "out/walkthrough-corpus"
OUTPUT = "out/walkthrough"
WIDTH = 1280


def free_port(pair: bool = False) -> int:
    """A free loopback port (with ``pair``, one whose successor is free too: the worker
    log server's port and the triggerer's, which is the next one)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not pair:
            return port
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


def make_corpus(parts: int) -> None:
    from pipeline import demo

    demo_file = ROOT / "out/demo-corpus/stdlib-docs.parquet"
    if not demo_file.exists():
        demo.build(str(demo_file))
    table = pq.read_table(demo_file)
    corpus = ROOT / CORPUS
    shutil.rmtree(corpus, ignore_errors=True)
    corpus.mkdir(parents=True)
    n = table.num_rows
    for k in range(parts):
        start, end = k * n // parts, (k + 1) * n // parts
        pq.write_table(table.slice(start, end - start), corpus / f"part-{k}.parquet")
    shutil.rmtree(ROOT / OUTPUT, ignore_errors=True)


def make(target: str, home: str, port: int, log_port: int) -> str:
    env = {
        **os.environ,
        # the nightly DAG would otherwise run its latest interval at once
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    }
    done = subprocess.run(
        [
            "make",
            "--no-print-directory",
            target,
            f"AIRFLOW_HOME_DIR={home}",
            f"AIRFLOW_PORT={port}",
            f"AIRFLOW_LOG_PORT={log_port}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"make {target} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


async def wait_for(page: Page, expression: str, timeout: float = 30) -> Any:
    """Poll a JS expression until it is truthy (the React UI renders after load)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await page.text(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not true after {timeout} s: {expression}")
        await asyncio.sleep(0.5)


async def viewport(page: Page, height: int) -> None:
    await page.call(
        "Emulation.setDeviceMetricsOverride",
        width=WIDTH,
        height=height,
        deviceScaleFactor=1,
        mobile=False,
    )


async def fill(page: Page, param: str, value: str) -> None:
    """Type into a Params form field as a user would (React ignores a bare .value)."""
    found = await page.text(
        f"(() => {{ const e = document.querySelector("
        f"'[role=dialog] input[name=element_{param}]');"
        " if (!e) return false; e.focus(); e.select(); return true; })()"
    )
    if not found:
        raise RuntimeError(f"no form field for the Param {param!r}")
    await page.call("Input.insertText", text=value)


async def choose(page: Page, param: str, option: str) -> None:
    """Pick an option of an enum Param (a react-select combobox): type it, press Enter."""
    focused = await page.text(
        f"(() => {{ const e = document.querySelector("
        f"'[role=dialog] #element_{param} input[role=combobox]');"
        " if (!e) return false; e.focus(); return true; })()"
    )
    if not focused:
        raise RuntimeError(f"no select for the Param {param!r}")
    await page.call("Input.insertText", text=option)
    await asyncio.sleep(0.5)
    for kind in ("keyDown", "keyUp"):
        await page.call(
            "Input.dispatchKeyEvent",
            type=kind,
            key="Enter",
            code="Enter",
            windowsVirtualKeyCode=13,
        )
    await wait_for(
        page,
        f"document.querySelector('[role=dialog] input[name=element_{param}]').value == '{option}'",
        timeout=10,
    )


async def trigger_from_form(
    page: Page, base: str, params: dict[str, str], backend: str, shot: Path
) -> str:
    """Open the trigger dialog, fill it, screenshot it, submit it; the new DAG run's id."""
    await viewport(page, 900)
    await page.load(f"{base}/dags/{DAG_ID}")
    trigger = "document.querySelector('button[aria-label=\"Trigger Dag\"]')"
    await wait_for(page, f"!!{trigger}")
    await page.text(f"{trigger}.click()")
    await wait_for(page, "!!document.querySelector('[role=dialog] input[name=element_source]')")
    # tall enough for the whole form, then cut down to the dialog's end
    await viewport(page, 2600)
    for name, value in params.items():
        await fill(page, name, value)
    await choose(page, "backend", backend)
    submit = (
        "[...document.querySelectorAll('[role=dialog] button')]"
        ".find(b => b.innerText.trim() == 'Trigger')"
    )
    # the caret and focus ring off the last field typed into
    await page.text("document.activeElement && document.activeElement.blur()")
    bottom = await wait_for(page, f"{submit} && {submit}.getBoundingClientRect().bottom")
    await viewport(page, int(bottom) + 24)
    await asyncio.sleep(1)
    await page.screenshot(str(shot))
    before = await page.text("location.pathname")
    await page.text(f"{submit}.click()")
    # the UI goes to the new run's page
    path = await wait_for(
        page,
        f"location.pathname != '{before}' && location.pathname.includes('/runs/')"
        " && location.pathname",
    )
    return str(path).rsplit("/runs/", 1)[1]


def wait_run(base: str, token: str, dag_run_id: str, timeout: float) -> dict[str, Any]:
    url = f"{base}/api/v2/dags/{DAG_ID}/dagRuns/{quote(dag_run_id, safe='')}"
    deadline = time.monotonic() + timeout
    while True:
        resp = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        resp.raise_for_status()
        run = resp.json()
        if run["state"] in ("success", "failed"):
            return dict(run)
        if time.monotonic() > deadline:
            raise TimeoutError(f"DAG run {dag_run_id} still {run['state']} after {timeout} s")
        time.sleep(2)


async def screenshot_page(
    page: Page, url: str, shot: Path, settle: float, height: int | None = None
) -> str:
    """Load ``url`` at WIDTH and screenshot it; the page's text. With no ``height`` the
    viewport is fitted to the page's content (a server-rendered page such as the runs
    page; at most 1,400 px); the React UI fills any viewport, so it gets a fixed one."""
    # a short viewport first: scrollHeight is never less than the viewport's height
    await viewport(page, height or 500)
    status = await page.load(url)
    if status != 200:
        raise RuntimeError(f"{url}: HTTP {status}")
    await asyncio.sleep(settle)
    if height is None:
        content = int(await page.text("document.documentElement.scrollHeight"))
        await viewport(page, min(max(content + 16, 500), 1400))
        await asyncio.sleep(1)
    await page.screenshot(str(shot))
    return str(await page.text("document.body.innerText"))


async def browse(
    devtools: int, base: str, token: str, docs: Path, form: dict[str, str], backend: str
) -> dict[str, Any]:
    async with open_page(devtools) as page:
        await page.call("Network.setCookie", name="_token", value=token, url=base)
        dag_run_id = await trigger_from_form(page, base, form, backend, docs / "trigger-form.png")
        print(f"triggered from the form: {dag_run_id}")
        t0 = time.monotonic()
        run = wait_run(base, token, dag_run_id, timeout=900)
        print(f"DAG run {run['state']} in {time.monotonic() - t0:.0f} s")
        if run["state"] != "success":
            raise RuntimeError(f"DAG run {dag_run_id} {run['state']}: see the task logs")
        text = await screenshot_page(page, f"{base}/oci-genai/", docs / "runs-page.png", 0.5)
        grid = f"{base}/dags/{DAG_ID}/runs/{quote(dag_run_id, safe='')}"
        await screenshot_page(page, grid, docs / "dag-run.png", 4, height=900)
        return {"dag_run_id": dag_run_id, "runs_page": text}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", default=str(ROOT / "docs"), help="where the PNGs go")
    parser.add_argument("--parts", type=int, default=4, help="Parquet files in the corpus")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument(
        "--max-rpm", type=int, default=12, help="the job's, 1/4 per shard task; paces the run"
    )
    parser.add_argument("--backend", default="hash", choices=["hash", "local"])
    args = parser.parse_args(argv)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    make_corpus(args.parts)
    form = {
        "source": CORPUS,
        "output": OUTPUT,
        "shards": str(args.shards),
        "max_rpm": str(args.max_rpm),
        "price_per_million_chars": "0.1",
    }
    port, log_port = free_port(), free_port(pair=True)
    home = tempfile.mkdtemp(prefix="ogb-screenshots-")
    try:
        print(make("airflow", home, port, log_port).strip())
        base = f"http://127.0.0.1:{port}"
        passwords = Path(home, "simple_auth_manager_passwords.json.generated")
        password = json.loads(passwords.read_text())["admin"]
        resp = httpx.post(
            f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=30
        )
        resp.raise_for_status()
        token = resp.json()["access_token"]
        with chromium(os.path.join(home, "chromium")) as devtools:
            seen = asyncio.run(browse(devtools, base, token, docs, form, args.backend))
        if seen["dag_run_id"] not in seen["runs_page"]:
            raise RuntimeError("the runs page does not show the DAG run")
    finally:
        print(make("airflow-stop", home, port, log_port).strip())
        shutil.rmtree(home, ignore_errors=True)
    rows = ds.dataset(str(ROOT / OUTPUT / "embeddings"), format="parquet").count_rows()
    print(f"{OUTPUT}/embeddings: {rows} rows")
    for name in ("trigger-form.png", "runs-page.png", "dag-run.png"):
        print(f"{docs / name}: {(docs / name).stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
