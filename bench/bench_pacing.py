"""Adaptive pacing on short and long jobs: the pipeline with no limit configured against
the emulator enforcing one.

    .venv/bin/python bench/bench_pacing.py [--rpm 120] [--latency-ms 200] [--inputs 9600,28800]

The emulator (its own process, hash embedder, signatures verified) accepts ``--rpm``
requests per minute (a leaky bucket holding 2 s) and answers after ~``--latency-ms``.
For each job size (single-chunk documents, 96 per request: 9,600 inputs are 100 requests,
~50 s at 120 requests/min; 28,800 are ~150 s) the CLI runs to completion with no
``--max-rpm`` (adaptive pacing only) and ``--max-in-flight 16``. Measured from the
emulator's own counts, polled every 50 ms: from the first request it saw to the last
answer it accepted. Prints the share of the limit achieved (accepted requests per
minute over ``--rpm``) and the share of requests throttled (429s over all requests).
Aim (issue 9): at least 0.90 of the limit with at most 5 % throttled on the short job,
and no worse on the long one.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import CLI, emulator, make_corpus, run_args, watch_limit, work_dir  # noqa: E402


def run_job(url: str, cmd: list[str], rpm: int, timeout_s: float) -> dict[str, float]:
    httpx.post(f"{url}/_emulator/reset")
    client = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    result = watch_limit(url, rpm, lambda: client.poll() is not None, 0.05, timeout_s)
    if client.poll() is None:
        client.send_signal(signal.SIGTERM)
    _, err = client.communicate()
    if client.returncode != 0:
        print(f"  the job exited with {client.returncode}: {err.strip()[-300:]}", file=sys.stderr)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rpm", type=int, default=120)
    ap.add_argument("--latency-ms", type=int, default=200)
    ap.add_argument("--inputs", default="9600,28800", help="job sizes, comma-separated")
    ap.add_argument("--max-in-flight", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    work, config = work_dir("bench-pacing")
    rows = []
    with emulator(config, args.latency_ms, args.rpm) as (_, url):
        for n in (int(x) for x in args.inputs.split(",")):
            corpus = os.path.join(work, f"corpus-{n}.parquet")
            make_corpus(corpus, n)
            for _ in range(args.repeat):
                out = os.path.join(work, f"out-{n}-{time.time_ns()}")
                extra = ["--max-in-flight", str(args.max_in_flight)]
                cmd = [CLI, *run_args(corpus, out, url, config, *extra)]
                expected_s = n / 96 / args.rpm * 60
                rows.append((n, run_job(url, cmd, args.rpm, timeout_s=4 * expected_s + 60)))
    print(
        f"emulator: {args.rpm} requests/min (2 s burst), ~{args.latency_ms} ms latency;"
        f" no --max-rpm (adaptive pacing only), --max-in-flight {args.max_in_flight}"
    )
    head = ("inputs", "seconds", "accepted", "429s", "share of limit", "429 share")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (7, 8, 9, 5, 15, 10), strict=True)))
    for n, r in rows:
        print(
            f"{n:>7} {r['seconds']:>8.1f} {r['accepted']:>9.0f} {r['throttled']:>5.0f}"
            f" {r['share']:>15.3f} {100 * r['throttled_share']:>9.1f}%"
        )


if __name__ == "__main__":
    main()
