"""Throughput against a rate-limited service: the pipeline's oci backend vs the emulator.

    .venv/bin/python bench/bench_throughput.py [--rpm 600] [--latency-ms 200] [--seconds 150]

The emulator (a separate process, hash embedder, signatures verified) accepts ``--rpm``
requests per minute and answers after ~``--latency-ms``. Three clients run for
``--seconds`` each, measured from the first request the emulator sees:
  1. ``--max-rpm R``: the configured ceiling (aim: >= 95 % of R, <= 1 % throttled);
  2. no ceiling, adaptive pacing only (aim: >= 85 % of R, <= 5 % throttled);
  3. one request at a time (``--max-in-flight 1``), for the ratio.
Prints accepted requests/min, % of R and % of requests throttled for each.
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

from bench.common import CLI, emulator, make_corpus, run_args, work_dir  # noqa: E402


def measure(url: str, cmd: list[str], seconds: float) -> dict[str, float]:
    httpx.post(f"{url}/_emulator/reset")
    client = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = None
    stats: dict = {}
    while True:
        time.sleep(0.25)
        stats = httpx.get(f"{url}/_emulator/stats").json()
        now = time.monotonic()
        if t0 is None and stats["requests"] > 0:
            t0 = now
        if t0 is not None and now - t0 >= seconds:
            break
        if client.poll() is not None:
            break
    client.send_signal(signal.SIGTERM)
    client.wait()
    elapsed = (time.monotonic() - t0) if t0 else float("nan")
    accepted = sum(stats.get("actions", {}).values())
    throttled = stats.get("throttled", 0)
    return {
        "elapsed": elapsed,
        "accepted": accepted,
        "throttled": throttled,
        "per_min": accepted / elapsed * 60,
        "throttled_pct": 100.0 * throttled / max(accepted + throttled, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rpm", type=int, default=600)
    ap.add_argument("--latency-ms", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=150)
    args = ap.parse_args()
    work, config = work_dir("bench-throughput")
    corpus = os.path.join(work, "corpus.parquet")
    n = int(args.rpm * args.seconds / 60 * 96 * 1.3)
    make_corpus(corpus, n)
    with emulator(config, args.latency_ms, args.rpm) as (_, url):
        modes = [
            (f"--max-rpm {args.rpm} (configured ceiling)", ["--max-rpm", str(args.rpm)]),
            ("adaptive only (no ceiling)", ["--max-in-flight", "16"]),
            ("one request at a time", ["--max-in-flight", "1"]),
        ]
        rows = []
        for i, (label, extra) in enumerate(modes):
            out = os.path.join(work, f"out-{i}-{time.time_ns()}")
            cmd = [CLI, *run_args(corpus, out, url, config, *extra)]
            rows.append((label, measure(url, cmd, args.seconds)))
    print(
        f"emulator: {args.rpm} requests/min, ~{args.latency_ms} ms latency, 96 inputs per "
        f"request; {args.seconds:.0f} s per client"
    )
    print(f"{'client':<36} {'req/min':>8} {'% of R':>7} {'throttled %':>12} {'requests':>9}")
    for label, r in rows:
        print(
            f"{label:<36} {r['per_min']:>8.1f} {100 * r['per_min'] / args.rpm:>7.1f} "
            f"{r['throttled_pct']:>12.2f} {r['accepted']:>9.0f}"
        )
    if rows[2][1]["per_min"]:
        ratio = rows[1][1]["per_min"] / rows[2][1]["per_min"]
        print(f"ratio adaptive / one-at-a-time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
