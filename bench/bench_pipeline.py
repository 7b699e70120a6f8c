"""Pipeline overhead with the hash backend: end-to-end chunks/s and peak RSS by corpus size.

    .venv/bin/python bench/bench_pipeline.py [--sizes 10000,100000] [--workdir out/bench]

Each size runs the real CLI in a fresh process over a Parquet corpus made of the demo
corpus's documents (each copy gets its own id and a distinct last line), and samples that
process's RSS every 50 ms. Prints one table row per size, the median of ``--repeat``
runs (a sampled RSS peak varies by 10-20 % run to run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import sample_rss  # noqa: E402
from pipeline import demo  # noqa: E402


def make_corpus(path: str, n: int) -> int:
    """Write ``n`` documents in row groups of 10,000; returns total characters."""
    base = demo.collect()
    writer = None
    chars = 0
    for start in range(0, n, 10_000):
        ids, texts = [], []
        for i in range(start, min(n, start + 10_000)):
            src = base[i % len(base)]
            ids.append(f"{src['doc_id']}#{i}")
            texts.append(f"{src['text']}\n\ncopy {i}")
        chars += sum(map(len, texts))
        table = pa.table({"doc_id": ids, "text": texts})
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()
    return chars


CLI = os.path.join(os.path.dirname(sys.executable), "oci-genai-batch")


def run_once(corpus: str, output: str, extra: list[str]) -> tuple[float, float, dict]:
    """A run into a fresh ``output``: see :func:`run_cli`."""
    shutil.rmtree(output, ignore_errors=True)
    return run_cli(corpus, output, extra)


def run_cli(
    corpus: str, output: str, extra: list[str], cli: str = CLI
) -> tuple[float, float, dict]:
    """Run ``cli run`` (hash backend) on ``corpus`` into ``output`` as it is, sampling the
    process's RSS every 50 ms: (seconds, peak RSS in MiB, the run's report)."""
    cmd = [
        cli,
        "run",
        "--source",
        corpus,
        "--output",
        output,
        "--backend",
        "hash",
        "--no-progress",
        *extra,
    ]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = max((mb for _, mb in sample_rss(proc, started)), default=0.0)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"run failed with status {proc.returncode}: {' '.join(cmd)}")
    with open(os.path.join(output, "report.json"), "rb") as fh:
        report = orjson.loads(fh.read())
    return seconds, peak, report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--workdir", default=os.path.join(ROOT, "out", "bench"))
    ap.add_argument("--extra", default="", help="more CLI flags, space separated")
    ap.add_argument("--repeat", type=int, default=3, help="runs per size; the median is shown")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        corpus = os.path.join(args.workdir, f"corpus-{n}.parquet")
        if not os.path.exists(corpus):
            make_corpus(corpus, n)
        runs = [
            run_once(corpus, os.path.join(args.workdir, f"out-{n}"), args.extra.split())
            for _ in range(args.repeat)
        ]
        seconds = statistics.median(r[0] for r in runs)
        peak_mb = statistics.median(r[1] for r in runs)
        c = runs[0][2]["counts"]
        rows.append((n, c.get("chunks_embedded", 0), seconds, peak_mb))
    print(f"backend=hash  (end to end, CLI process, start-up included; median of {args.repeat})")
    print(
        f"{'documents':>10} {'chunks':>9} {'seconds':>8} {'chunks/s':>9} {'docs/s':>8} "
        f"{'peak RSS MB':>12}"
    )
    for n, chunks, seconds, peak in rows:
        print(
            f"{n:>10} {chunks:>9} {seconds:>8.1f} {chunks / seconds:>9.0f} {n / seconds:>8.0f} "
            f"{peak:>12.0f}"
        )
    if len(rows) >= 2:
        print(
            f"peak RSS ratio {rows[-1][0]} vs {rows[0][0]} documents: "
            f"{rows[-1][3] / rows[0][3]:.2f}x"
        )


if __name__ == "__main__":
    main()
