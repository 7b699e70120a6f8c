"""The compacted index: shard start-up after many nightly runs, and the peak RSS of a
re-run over an unchanged corpus beside the first run's, with the hash backend.

    .venv/bin/python bench/bench_index.py [--nightly-docs 20000] [--nights 50]
        [--sizes 100000,1000000] [--workdir out/bench-index]

Part 1, start-up: ``--nights`` runs (in this process, ``runner.run``) over a corpus of
``--nightly-docs`` documents in which 1 % of the documents change every night. After the
1st, 10th and 50th, a fresh store times a shard's start-up (``Checkpoint.recover`` of the
shard plus ``Checkpoint.load_index``), and beside it what the same start-up cost before
the index was compacted (every commit record read into a dict).

Part 2, memory: per size, the real CLI in a fresh process makes the first run, then runs
again over the same corpus (0 model calls); the process's RSS is sampled every 50 ms.
``--cli`` runs another checkout's command instead (the figures before this change).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.bench_pipeline import run_cli  # noqa: E402
from pipeline import index as idx  # noqa: E402
from pipeline.checkpoint import Checkpoint  # noqa: E402
from pipeline.config import JobConfig  # noqa: E402
from pipeline.runner import run  # noqa: E402
from pipeline.sinks import OutputStore  # noqa: E402


def make_corpus(path: str, n: int) -> None:
    """``n`` single-chunk documents (a few hundred characters, each its own text)."""
    rng = random.Random(n)
    words = ["batch", "embed", "summary", "shard", "index", "commit", "record", "lookup"]
    writer = None
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        ids = [f"doc-{i:08d}" for i in range(start, stop)]
        texts = [f"Document {i}. " + " ".join(rng.choices(words, k=40)) for i in range(start, stop)]
        table = pa.table({"doc_id": ids, "text": texts})
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()


def _old_startup(store: OutputStore, embed_fp: str) -> int:
    """The start-up before compaction: every record read, every document in a dict."""
    table: dict[str, tuple[str, str]] = {}
    for rec in Checkpoint(store).records():
        for doc_id, chash, e_state, _ in rec.docs:
            if e_state and rec.embed_fp == embed_fp:
                table[str(doc_id)] = (str(chash), e_state)
    return len(table)


def startup(args: argparse.Namespace) -> list[str]:
    work = os.path.join(args.workdir, "nightly")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    src, out = os.path.join(work, "docs.parquet"), os.path.join(work, "out")
    rng = random.Random(1)
    n = args.nightly_docs
    texts = [f"Document {i}. " + "lorem ipsum " * rng.randrange(4, 40) for i in range(n)]
    lines = [
        f"start-up of a shard after N nightly runs ({n} documents, 1 % changed a night,"
        " summaries off, 1 shard)",
        f"{'runs':>5} {'records':>8} {'index s':>8} {'files':>6} {'all-records s':>14}",
    ]
    for night in range(1, args.nights + 1):
        if night > 1:
            for i in rng.sample(range(n), n // 100):
                texts[i] += f" (night {night})"
        pq.write_table(pa.table({"doc_id": [f"d{i}" for i in range(n)], "text": texts}), src)
        config = JobConfig(
            source=src,
            output=out,
            backend="hash",
            dim=32,
            summaries=False,
            part_rows=1000,
            run_id=f"night-{night:02d}",
        )
        shard = run(config).shards[0]["shard_id"]
        if night not in (1, 10, 50) and night != args.nights:
            continue
        store = OutputStore(out)
        manifest = idx.latest_manifest(store)
        assert manifest is not None
        (table,) = manifest.tables
        fp = table.removeprefix("embed-")
        records = sum(len(f) for _, _, f in os.walk(os.path.join(out, "_state", "commits")))
        started = time.perf_counter()
        ck = Checkpoint(OutputStore(out))
        ck.recover(shard)
        with ck.load_index(fp, None) as index:
            assert len(index) == n
        seconds = time.perf_counter() - started
        files = 2 + len(manifest.tables[table]["parts"])
        started = time.perf_counter()
        assert _old_startup(OutputStore(out), fp) == n
        old = time.perf_counter() - started
        lines.append(f"{night:>5} {records:>8} {seconds:>8.2f} {files:>6} {old:>14.2f}")
        print(lines[-1], flush=True)
    return lines


def memory(args: argparse.Namespace) -> list[str]:
    lines = [
        "peak RSS, first run and unchanged re-run (CLI process, hash backend, 1 shard)",
        f"{'documents':>10} {'first s':>8} {'first MB':>9} {'re-run s':>9} {'re-run MB':>10}"
        f" {'ratio':>6} {'calls':>6}",
    ]
    for n in [int(s) for s in args.sizes.split(",") if s]:
        corpus = os.path.join(args.workdir, f"corpus-{n}.parquet")
        if not os.path.exists(corpus):
            make_corpus(corpus, n)
        out = os.path.join(args.workdir, f"out-{n}")
        shutil.rmtree(out, ignore_errors=True)
        extra = args.extra.split()
        first_s, first_mb, _ = run_cli(corpus, out, extra, args.cli)
        again_s, again_mb, report = run_cli(corpus, out, extra, args.cli)
        calls = report["calls"]["calls"]
        lines.append(
            f"{n:>10} {first_s:>8.1f} {first_mb:>9.0f} {again_s:>9.1f} {again_mb:>10.0f}"
            f" {again_mb / first_mb:>6.2f} {calls:>6}"
        )
        print(lines[-1], flush=True)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nightly-docs", type=int, default=20_000)
    ap.add_argument("--nights", type=int, default=50)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--workdir", default=os.path.join(ROOT, "out", "bench-index"))
    ap.add_argument("--extra", default="", help="more CLI flags for part 2, space separated")
    ap.add_argument("--keep", action="store_true", help="keep the outputs of part 2")
    ap.add_argument(
        "--cli",
        default=os.path.join(os.path.dirname(sys.executable), "oci-genai-batch"),
        help="the command part 2 runs (another checkout's, to compare before and after)",
    )
    ap.add_argument("--skip-startup", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    lines = [] if args.skip_startup else startup(args)
    lines += memory(args)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
