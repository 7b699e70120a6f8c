"""A full request pipe: the whole pipeline against the emulator at 200 ms latency.

    .venv/bin/python bench/bench_pipe.py [--docs 60000] [--latency-ms 200]

The emulator (a separate process, hash embedder, signatures verified, no rate limit)
answers each request after ~``--latency-ms``. The CLI runs ``--backend oci
--no-summaries --output-dimensions 256`` over single-chunk documents with
``--max-in-flight`` 64 (and 8 for comparison), in a fresh process each. Prints inputs/s
(wall time of the whole run, start-up included, and of the shard), the peak of requests
in flight (from the run's report), embed calls per 1,000 documents (from the emulator's
count of embedText calls) and the aim of each.

In the same run, against the same emulator, a bare async client (the oci SDK's
``AsyncGenerativeAiInferenceClient`` with ``skip_deserialization``, as langchain-oci's
async path uses it; ``bench/bench_cpu.py``'s) embeds the same texts with 64 requests in
flight, in a fresh process: its inputs/s (whole process) and CPU per 1,000 inputs are the
baseline the pipeline's figures are given against.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import CLI, emulator, make_corpus, run_args, work_dir  # noqa: E402


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(
    url: str, config: str, corpus: str, out: str, in_flight: int, emulator_pid: int
) -> dict[str, float]:
    httpx.post(f"{url}/_emulator/reset")
    cmd = [CLI, *run_args(corpus, out, url, config, "--max-in-flight", str(in_flight))]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    emu_before = _cpu_seconds(emulator_pid)
    started = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    emu_cpu = _cpu_seconds(emulator_pid) - emu_before
    with open(os.path.join(out, "report.json"), encoding="utf-8") as fh:
        report = json.load(fh)
    stats = httpx.get(f"{url}/_emulator/stats").json()
    inputs = report["counts"]["chunks_sent"]
    return {
        "wall": wall,
        "shard_s": report["shard_seconds"],
        "inputs": inputs,
        "per_s_wall": inputs / wall,
        "per_s_shard": inputs / report["shard_seconds"],
        "peak": report["calls"]["peak_in_flight"],
        "calls": report["calls"]["calls"],
        "emulator_calls": stats["actions"].get("embedText", 0),
        "cpu_ms_per_1000": 1000 * cpu / inputs * 1000,
        "emu_cpu_ms_per_1000": 1000 * emu_cpu / inputs * 1000,
    }


def run_bare(url: str, config: str, corpus: str, in_flight: int, inputs: int) -> dict[str, float]:
    """The bare async SDK client (bench_cpu.py's child mode) over ``corpus``."""
    httpx.post(f"{url}/_emulator/reset")
    me = os.path.join(ROOT, "bench", "bench_cpu.py")
    cmd = [sys.executable, me, "--bare-client", corpus, url, config]
    cmd += ["--bare-in-flight", str(in_flight), "--bare-dim", "256"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert int(done.stdout.split()[-1]) == inputs, done.stdout
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "per_s_wall": inputs / wall, "cpu_ms_per_1000": 1e6 * cpu / inputs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=60_000)
    ap.add_argument("--latency-ms", type=int, default=200)
    args = ap.parse_args()
    work, config = work_dir("bench-pipe")
    corpus = os.path.join(work, f"corpus-{args.docs}.parquet")
    if not os.path.exists(corpus):
        make_corpus(corpus, args.docs)
    rows = []
    # no --rpm: an emulator without a rate limit
    with emulator(config, args.latency_ms) as (emu, url):
        for in_flight in (64, 8):
            out = os.path.join(work, f"out-{in_flight}-{time.time_ns()}")
            rows.append((in_flight, run_once(url, config, corpus, out, in_flight, emu.pid)))
        bare = run_bare(url, config, corpus, 64, args.docs)
    print(
        f"emulator: ~{args.latency_ms} ms latency, no rate limit, hash embedder; "
        f"{args.docs:,} single-chunk documents, 256-d, --no-summaries; one fresh CLI per row"
    )
    print(
        f"{'--max-in-flight':>15} {'inputs/s (wall)':>16} {'inputs/s (shard)':>17} "
        f"{'peak in flight':>15} {'embed calls':>12} {'calls/1,000 docs':>17}"
    )
    for in_flight, r in rows:
        print(
            f"{in_flight:>15} {r['per_s_wall']:>16,.0f} {r['per_s_shard']:>17,.0f} "
            f"{r['peak']:>15.0f} {r['emulator_calls']:>12,.0f} "
            f"{1000 * r['emulator_calls'] / args.docs:>17.2f}"
        )
    print(
        f"{'--max-in-flight':>15} {'pipeline CPU ms/1,000 inputs':>29} "
        f"{'emulator CPU ms/1,000 inputs':>29} {'wall s':>7}"
    )
    for in_flight, r in rows:
        print(
            f"{in_flight:>15} {r['cpu_ms_per_1000']:>29.0f} {r['emu_cpu_ms_per_1000']:>29.0f} "
            f"{r['wall']:>7.1f}"
        )
    p64 = rows[0][1]
    print(
        f"bare async oci SDK client (skip_deserialization), 64 in flight: "
        f"{bare['per_s_wall']:,.0f} inputs/s (whole process), {bare['cpu_ms_per_1000']:.0f} ms"
        f" CPU/1,000 inputs, {bare['wall']:.1f} s"
    )
    print(
        f"pipeline at 64 / bare client at 64: inputs/s (whole run) "
        f"{p64['per_s_wall'] / bare['per_s_wall']:.2f}, CPU per input "
        f"{p64['cpu_ms_per_1000'] / bare['cpu_ms_per_1000']:.2f}"
    )
    print(f"load average at the end (other work on this machine): {os.getloadavg()[0]:.1f}")
    print(
        f"aims: peak in flight = --max-in-flight; >= 5,000 inputs/s at 64; "
        f"calls per 1,000 documents = {1000 / 96:.2f} (ceil: {math.ceil(args.docs / 96):,} calls)"
    )


if __name__ == "__main__":
    main()
