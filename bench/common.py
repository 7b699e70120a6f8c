"""Set-up the benches share: a work folder with a dev OCI config, the corpora, the emulator
in its own process on loopback, the ``run`` command against it, the emulator's counts
against a rate limit, and the Celery benches' stack start and table.

Only the standard library is imported at the top: ``bench_cpu.py`` runs itself as a child
(the bare client) whose start-up CPU it measures, so heavier imports stay in the functions
that need them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(os.path.dirname(sys.executable), "oci-genai-batch")
COMPARTMENT = "ocid1.compartment.oc1..bench"
# the corpora's topics: the one-file corpus cycles through all nine, the Celery one the first 8
WORDS = ["rivers", "lakes", "hills", "forests", "deserts", "oceans", "valleys", "plains"]
WORDS += ["islands"]


def work_dir(name: str, fresh: bool = False) -> tuple[str, str]:
    """``out/<name>`` under the checkout (emptied first if ``fresh``) holding a dev OCI
    config for the emulator; (folder, config path)."""
    from pipeline.genai.emulator.devconfig import write_dev_config

    work = os.path.join(ROOT, "out", name)
    if fresh:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    config, _ = write_dev_config(work)
    return work, config


def make_corpus(path: str, n: int) -> None:
    """One Parquet file of ``n`` single-chunk documents (one short sentence each)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [f"doc-{i:07d}" for i in range(n)]
    texts = [f"Document {i} is about {WORDS[i % 9]} and {WORDS[(i // 9) % 9]}." for i in range(n)]
    pq.write_table(pa.table({"doc_id": ids, "text": texts}), path)


def emulator_args(latency_ms: int, rpm: int | None = None) -> list[str]:
    """The emulator's options the benches use: the hash embedder, answers after
    ~``latency_ms``, a limit of ``rpm`` requests per minute if given (else none)."""
    args = ["--embedder", "hash", "--latency-ms", str(latency_ms)]
    return args if rpm is None else [*args, "--rpm", str(rpm)]


@contextlib.contextmanager
def emulator(
    config: str, latency_ms: int, rpm: int | None = None
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``oci-genai-batch emulator`` in its own process on a free loopback port for a
    ``with`` block, signatures verified against ``config``, with :func:`emulator_args`.
    Waits for it to listen and yields (process, base URL); stopped (SIGTERM) at the end."""
    cmd = [CLI, "emulator", "--port", "0", "--oci-config", config]
    cmd += emulator_args(latency_ms, rpm)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    url = None
    while url is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        if found:
            url = found.group(1)
        elif not line and proc.poll() is not None:
            break
    if url is None:
        proc.kill()
        raise SystemExit("the emulator did not start")
    try:
        yield proc, url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def run_args(
    corpus: str,
    out: str,
    url: str,
    config: str,
    *extra: str,
    compartment: str = COMPARTMENT,
    dimensions: int = 256,
) -> list[str]:
    """The CLI's arguments (without the program) for embeddings only (``--no-summaries``),
    ``dimensions``-d, of ``corpus`` into ``out`` with the oci backend against the emulator
    at ``url``, no progress bar; then ``extra``."""
    args = ["run", "--source", corpus, "--output", out, "--backend", "oci"]
    args += ["--genai-endpoint", url, "--oci-config", config, "--compartment", compartment]
    args += ["--no-summaries", "--output-dimensions", str(dimensions), "--no-progress"]
    return [*args, *extra]


def watch_limit(
    url: str, rpm: int, finished: Callable[[], bool], every: float, timeout: float
) -> dict[str, Any]:
    """Poll the emulator's counts every ``every`` seconds until ``finished()`` or
    ``timeout``: from the first request it saw to the last answer it accepted, the
    seconds, accepted requests, 429s, the share of the limit (accepted requests per
    minute / ``rpm``) and the share throttled (429s / all requests)."""
    import httpx

    first = last = None
    accepted = throttled = 0
    deadline = time.monotonic() + timeout
    while True:
        stats = httpx.get(f"{url}/_emulator/stats").json()
        now = time.monotonic()
        seen = sum(stats.get("actions", {}).values())
        if first is None and stats["requests"] > 0:
            first = now
        if seen != accepted:
            accepted, last = seen, now
        throttled = stats.get("throttled", 0)
        if finished() or now > deadline:
            break
        time.sleep(every)
    elapsed = (last - first) if first is not None and last is not None else float("nan")
    return {
        "seconds": elapsed,
        "accepted": accepted,
        "throttled": throttled,
        "share": accepted / elapsed * 60.0 / rpm if elapsed else float("nan"),
        "throttled_share": throttled / max(accepted + throttled, 1),
    }


def sample_rss(proc: subprocess.Popen[Any], started: float) -> list[tuple[float, float]]:
    """The RSS of ``proc`` every 50 ms until it ends: (seconds since ``started``, MiB)."""
    import psutil

    ps = psutil.Process(proc.pid)
    samples: list[tuple[float, float]] = []
    while proc.poll() is None:
        try:
            samples.append((time.monotonic() - started, ps.memory_info().rss / 2**20))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    return samples


# --------------------------------------------------------------------------- Celery benches


def celery_work(prefix: str, docs: int, files: int) -> tuple[str, dict[str, Any], str]:
    """A temporary folder with ``docs`` single-chunk documents in ``files`` Parquet files
    and a dev OCI config; (folder, the backfill's conf for that corpus without summaries,
    config path)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.genai.emulator.devconfig import write_dev_config

    work = tempfile.mkdtemp(prefix=prefix)
    corpus = os.path.join(work, "corpus")
    os.makedirs(corpus)
    per = -(-docs // files)
    for k in range(files):
        ids = range(k * per, min((k + 1) * per, docs))
        texts = [f"Document {i} is about {WORDS[i % 8]} and {WORDS[i // 8 % 8]}." for i in ids]
        table = pa.table({"doc_id": [f"doc-{i:07d}" for i in ids], "text": texts})
        pq.write_table(table, os.path.join(corpus, f"part{k}.parquet"))
    oci_config, _ = write_dev_config(os.path.join(work, "oci"))
    conf = {"source": corpus, "backend": "oci", "shards": files, "summaries": False}
    return work, conf, oci_config


@contextlib.contextmanager
def celery_deployment(
    oci_config: str,
    dag: str,
    concurrency: int,
    latency_ms: int,
    rpm: int | None = None,
    **stack_args: Any,
) -> Iterator[Any]:
    """``tests/deploy/stack.py``'s Celery deployment (``stack_args``: pool slots, env) with
    the emulator (:func:`emulator_args`) behind the default ``oci_genai`` connection, for a
    ``with`` block: its servers and a first worker ``w1`` (``concurrency`` processes)
    started and ``dag`` ready; says how long that took."""
    from tests.deploy.stack import celery_stack

    t0 = time.monotonic()
    with celery_stack(
        oci_config=oci_config,
        emulator_args=emulator_args(latency_ms, rpm),
        connection={"oci_config": oci_config, "compartment": COMPARTMENT},
        **stack_args,
    ) as stack:
        stack.start_servers()
        stack.start_worker("w1", concurrency)
        stack.wait_ready(dag)
        print(f"stack up in {time.monotonic() - t0:.1f} s", flush=True)
        yield stack


def shards_per_worker(task_instances: list[dict[str, Any]]) -> dict[str, int]:
    """How many ``run_shard`` tasks each worker (its hostname) ran."""
    by_worker: dict[str, int] = {}
    for t in task_instances:
        if t["task_id"] == "run_shard":
            by_worker[t["hostname"]] = by_worker.get(t["hostname"], 0) + 1
    return by_worker


def print_table(title: str, head: list[str], rows: list[list[str]], save: bool, name: str) -> None:
    """Print ``title``, a blank line and a Markdown table of ``head`` and ``rows`` (cells
    already formatted); with ``save`` also write it to ``bench/results/<name>``."""
    lines = [title, "", *("| " + " | ".join(cells) + " |" for cells in [head, *rows])]
    lines.insert(3, "|" + "---|" * len(head))
    text = "\n".join(lines)
    print(text)
    if save:
        path = os.path.join(ROOT, "bench", "results", name)
        with open(path, "w") as f:
            f.write(text + "\n")
        print(f"saved {path}")
