"""Documents/s of the backfill DAG on a real CeleryExecutor deployment: 1 worker vs 2.

    .venv/bin/python bench/bench_celery.py [--docs 20000] [--shards 8] [--concurrency 2]
        [--latency-ms 200] [--max-in-flight 8]

The deployment of ``tests/deploy/test_celery.py`` (``tests/deploy/stack.py``: PostgreSQL
and Redis of this machine, api-server, scheduler, dag-processor, Celery workers) with the
project's emulator (hash embedder, ``--latency-ms``, signatures verified, no rate limit)
behind the default ``oci_genai`` connection. One corpus of ``--docs`` single-chunk
documents in ``--shards`` Parquet files. The backfill is triggered through the REST API
with one worker running, then, with a second worker started, again into a fresh output.
Documents/s = documents / (the DAG run's end - start, as Airflow records them: plan,
shards and commit). The pool has a slot per shard, so only the workers' concurrency limits
how many shards run at once. "load avg" is the 1-minute load average (the higher of before
and after): the machine is shared, and on 2 cores the workers contend for CPU. Prints a
table; ``--save`` writes it to ``bench/results/bench_celery.txt``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pipeline.genai.emulator.devconfig import write_dev_config  # noqa: E402
from tests.deploy.stack import celery_stack  # noqa: E402

DAG = "oci_genai_backfill"
WORDS = ["rivers", "lakes", "hills", "forests", "deserts", "oceans", "valleys", "plains"]


def make_corpus(root: str, docs: int, files: int) -> str:
    os.makedirs(root, exist_ok=True)
    per = -(-docs // files)
    for k in range(files):
        ids = range(k * per, min((k + 1) * per, docs))
        pq.write_table(
            pa.table(
                {
                    "doc_id": [f"doc-{i:07d}" for i in ids],
                    "text": [f"Document {i} is about {WORDS[i % 8]} and {WORDS[i // 8 % 8]}."
                             for i in ids],
                }
            ),
            os.path.join(root, f"part{k}.parquet"),
        )
    return root


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def measure(stack: Any, conf: dict[str, Any], docs: int) -> dict[str, Any]:
    httpx.post(f"{stack.emulator_url}/_emulator/reset")
    load = os.getloadavg()[0]  # the machine is shared: say how busy it was
    run_id = stack.trigger(DAG, conf)
    state = stack.wait_run(DAG, run_id, 3600)
    if state != "success":
        raise SystemExit(f"run {run_id} ended {state}")
    run = stack.get(f"/dags/{DAG}/dagRuns/{run_id}")
    tis = stack.task_instances(DAG, run_id)
    shards = [t for t in tis if t["task_id"] == "run_shard"]
    seconds = _epoch(run["end_date"]) - _epoch(run["start_date"])
    first = min(_epoch(t["start_date"]) for t in shards)
    last = max(_epoch(t["end_date"]) for t in shards)
    stats = httpx.get(f"{stack.emulator_url}/_emulator/stats").json()
    by_worker: dict[str, int] = {}
    for t in shards:
        by_worker[t["hostname"]] = by_worker.get(t["hostname"], 0) + 1
    return {
        "seconds": seconds,
        "docs_per_s": docs / seconds,
        "shard_phase_s": last - first,
        "shard_mean_s": sum(t["duration"] for t in shards) / len(shards),
        "requests": stats.get("actions", {}).get("embedText", stats.get("requests")),
        "by_worker": by_worker,
        "load": max(load, os.getloadavg()[0]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=2, help="Celery processes per worker")
    ap.add_argument("--latency-ms", type=int, default=200)
    ap.add_argument("--max-in-flight", type=int, default=8, help="requests in flight per shard")
    ap.add_argument("--save", action="store_true", help="write bench/results/bench_celery.txt")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="bench-celery-")
    corpus = make_corpus(os.path.join(work, "corpus"), args.docs, args.shards)
    oci_config, _ = write_dev_config(os.path.join(work, "oci"))
    conf = {
        "source": corpus,
        "backend": "oci",
        "shards": args.shards,
        "summaries": False,
        "max_in_flight": args.max_in_flight,
    }
    rows = []
    t0 = time.monotonic()
    with celery_stack(
        oci_config=oci_config,
        emulator_args=["--embedder", "hash", "--latency-ms", str(args.latency_ms)],
        connection={"oci_config": oci_config, "compartment": "ocid1.compartment.oc1..bench"},
        pool_slots=args.shards,
        env={"OCI_GENAI_SHARD_RETRIES": "0"},
    ) as stack:
        stack.start_servers()
        stack.start_worker("w1", args.concurrency)
        stack.wait_ready(DAG)
        print(f"stack up in {time.monotonic() - t0:.1f} s", flush=True)
        for workers in (1, 2):
            if workers == 2:
                stack.start_worker("w2", args.concurrency)
                stack.wait_ready(DAG)
            out = os.path.join(work, f"out-{workers}")
            result = measure(stack, {**conf, "output": out}, args.docs)
            rows.append((workers, result))
            print(f"{workers} worker(s): {result}", flush=True)

    shutil.rmtree(work, ignore_errors=True)
    one = rows[0][1]["docs_per_s"]
    lines = [
        f"bench_celery: {args.docs} single-chunk documents, {args.shards} shards, "
        f"emulator hash embedder, {args.latency_ms} ms latency, no rate limit, "
        f"max_in_flight {args.max_in_flight} per shard, {args.concurrency} Celery "
        f"processes per worker, pool {args.shards} slots; {os.cpu_count()} cores",
        "",
        "| workers | run seconds | documents/s | vs 1 worker | shard phase s | mean shard s "
        "| shards per worker | embed requests | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for workers, r in rows:
        lines.append(
            f"| {workers} | {r['seconds']:.1f} | {r['docs_per_s']:.0f} | "
            f"{r['docs_per_s'] / one:.2f}x | {r['shard_phase_s']:.1f} | "
            f"{r['shard_mean_s']:.1f} | {r['by_worker']} | {r['requests']} | {r['load']:.1f} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.save:
        path = os.path.join(ROOT, "bench", "results", "bench_celery.txt")
        with open(path, "w") as f:
            f.write(text + "\n")
        print(f"saved {path}")


if __name__ == "__main__":
    main()
