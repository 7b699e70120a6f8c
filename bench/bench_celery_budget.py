"""One rate budget across Celery workers: the share of a global limit a backfill achieves.

    .venv/bin/python bench/bench_celery_budget.py [--rpm 300] [--docs 28800] [--shards 8]
        [--pool 4] [--concurrency 2] [--latency-ms 200] [--save]

The deployment of ``tests/deploy/test_celery.py`` (``tests/deploy/stack.py``: this
machine's PostgreSQL and Redis, api-server, scheduler, dag-processor, Celery workers with
``--concurrency`` processes each, the pool ``oci_genai`` of ``--pool`` slots) with the
project's emulator enforcing a global limit of ``--rpm`` requests/min (a leaky bucket of
2 s) at ``--latency-ms``, behind the default ``oci_genai`` connection. The backfill
(``--docs`` single-chunk documents in ``--shards`` Parquet files, ``max_rpm`` = the
limit, no summaries) is triggered through the REST API:

- with the shared budget: ``redis_url`` in the run's conf (the stack's Redis database),
  so every shard task on every worker draws on one budget;
- with the K-share: no Redis, each shard task takes 1/``--pool`` of ``max_rpm``.

Measured from the emulator's own counts, polled every 100 ms during the run: from the
first request it saw to the last answer it accepted. Share of the limit = accepted
requests per minute / ``--rpm``; 429 share = 429s / all requests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Any

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import (  # noqa: E402
    celery_deployment,
    celery_work,
    print_table,
    shards_per_worker,
    watch_limit,
)
from tests.deploy.stack import REDIS  # noqa: E402

DAG = "oci_genai_backfill"


def measure(stack: Any, conf: dict[str, Any], rpm: int) -> dict[str, Any]:
    url = stack.emulator_url
    httpx.post(f"{url}/_emulator/reset")
    load = os.getloadavg()[0]
    run_id = stack.trigger(DAG, conf)
    state = "queued"

    def finished() -> bool:
        nonlocal state
        state = stack.run_state(DAG, run_id)
        return state in ("success", "failed")

    result = watch_limit(url, rpm, finished, 0.1, 1800)
    if state != "success":
        raise SystemExit(f"run {run_id} ended {state}")
    by_worker = shards_per_worker(stack.task_instances(DAG, run_id))
    return {**result, "by_worker": by_worker, "load": max(load, os.getloadavg()[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rpm", type=int, default=300)
    ap.add_argument("--docs", type=int, default=28_800)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--pool", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=2, help="Celery processes per worker")
    ap.add_argument("--latency-ms", type=int, default=200)
    ap.add_argument("--max-in-flight", type=int, default=8)
    ap.add_argument("--save", action="store_true", help="write it to bench/results/")
    args = ap.parse_args()

    work, conf, oci_config = celery_work("bench-celery-budget-", args.docs, args.shards)
    conf.update(max_rpm=args.rpm, max_in_flight=args.max_in_flight)
    rows = []
    with celery_deployment(
        oci_config,
        DAG,
        args.concurrency,
        args.latency_ms,
        args.rpm,
        pool_slots=args.pool,
        env={"OCI_GENAI_SHARD_RETRIES": "0", "OCI_GENAI_POOL_SLOTS": str(args.pool)},
    ) as stack:
        shared = f"redis://{REDIS[0]}:{REDIS[1]}/{stack.redis_db}"
        plan = [
            (1, "shared budget (Redis)", {"redis_url": shared}),
            (1, f"K-share (1/{args.pool} each)", {}),
            (2, "shared budget (Redis)", {"redis_url": shared}),
            (2, f"K-share (1/{args.pool} each)", {}),
        ]
        for i, (workers, label, extra) in enumerate(plan):
            if workers == 2 and len(stack.workers()) < 2:
                stack.start_worker("w2", args.concurrency)
                stack.wait_ready(DAG)
            out = os.path.join(work, f"out-{i}")
            result = measure(stack, {**conf, **extra, "output": out}, args.rpm)
            rows.append((workers, label, result))
            print(f"{workers} worker(s), {label}: {result}", flush=True)

    shutil.rmtree(work, ignore_errors=True)
    title = (
        f"bench_celery_budget: the emulator limits to {args.rpm} requests/min (2 s bucket),"
        f" {args.latency_ms} ms latency; {args.docs} single-chunk documents in {args.shards}"
        f" shards, max_rpm {args.rpm}, max_in_flight {args.max_in_flight} per shard;"
        f" {args.concurrency} Celery processes per worker, pool {args.pool} slots;"
        f" {os.cpu_count()} cores"
    )
    head = ["workers", "budget", "seconds", "accepted", "429s", "share of the limit"]
    head += ["429 share", "shards per worker", "load avg"]
    cells = [
        [
            f"{workers}",
            label,
            f"{r['seconds']:.1f}",
            f"{r['accepted']}",
            f"{r['throttled']}",
            f"{r['share']:.2f}",
            f"{100 * r['throttled_share']:.1f} %",
            f"{r['by_worker']}",
            f"{r['load']:.1f}",
        ]
        for workers, label, r in rows
    ]
    print_table(title, head, cells, args.save, "bench_celery_budget.txt")


if __name__ == "__main__":
    main()
