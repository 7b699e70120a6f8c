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
from datetime import datetime
from typing import Any

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import celery_deployment, celery_work, print_table, shards_per_worker  # noqa: E402

DAG = "oci_genai_backfill"


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
    return {
        "seconds": seconds,
        "docs_per_s": docs / seconds,
        "shard_phase_s": last - first,
        "shard_mean_s": sum(t["duration"] for t in shards) / len(shards),
        "requests": stats.get("actions", {}).get("embedText", stats.get("requests")),
        "by_worker": shards_per_worker(shards),
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

    work, conf, oci_config = celery_work("bench-celery-", args.docs, args.shards)
    conf["max_in_flight"] = args.max_in_flight
    rows = []
    with celery_deployment(
        oci_config,
        DAG,
        args.concurrency,
        args.latency_ms,
        pool_slots=args.shards,
        env={"OCI_GENAI_SHARD_RETRIES": "0"},
    ) as stack:
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
    title = (
        f"bench_celery: {args.docs} single-chunk documents, {args.shards} shards, "
        f"emulator hash embedder, {args.latency_ms} ms latency, no rate limit, "
        f"max_in_flight {args.max_in_flight} per shard, {args.concurrency} Celery "
        f"processes per worker, pool {args.shards} slots; {os.cpu_count()} cores"
    )
    head = ["workers", "run seconds", "documents/s", "vs 1 worker", "shard phase s"]
    head += ["mean shard s", "shards per worker", "embed requests", "load avg"]
    cells = [
        [
            f"{workers}",
            f"{r['seconds']:.1f}",
            f"{r['docs_per_s']:.0f}",
            f"{r['docs_per_s'] / one:.2f}x",
            f"{r['shard_phase_s']:.1f}",
            f"{r['shard_mean_s']:.1f}",
            f"{r['by_worker']}",
            f"{r['requests']}",
            f"{r['load']:.1f}",
        ]
        for workers, r in rows
    ]
    print_table(title, head, cells, args.save, "bench_celery.txt")


if __name__ == "__main__":
    main()
