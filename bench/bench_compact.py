"""What ``compact`` costs on a local output of N documents (default 100,000).

    .venv/bin/python bench/bench_compact.py [--docs 100000] [--dim 256] [--change 0.01]

Builds the output with the hash backend (one chunk per document, no summaries), then a
second run after ``--change`` of the documents changed and as many deleted (so deletions
are recorded and old versions sit beside the new ones), then compacts it in a child
process and prints its seconds and peak RSS (the child's own ``VmHWM``), the parts and
rows before and after, and a second compaction of the now current output (nothing to do).
The first run's parts are 10,000 rows (the default ``part_rows``); compaction writes
parts of up to 100,000 rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline.config import JobConfig  # noqa: E402
from pipeline.runner import run  # noqa: E402

# The peak is the child's own: VmHWM of /proc/self/status (Linux). ``ru_maxrss`` is not:
# a child started by fork (or vfork) then exec keeps the parent's peak at the fork as a
# floor, and this parent has built the whole output by then.
_PEAK = """
def peak_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

_CHILD = (
    _PEAK
    + """
import json, sys, time
from pipeline.compact import compact
started = time.monotonic()
report = compact(sys.argv[1])
out = report.to_json()
out["wall_s"] = time.monotonic() - started
out["peak_rss_mb"] = peak_mb()
print(json.dumps(out))
"""
)

_BASELINE = (
    _PEAK
    + """
import pipeline.compact, pipeline.runner  # the imports alone
print(peak_mb())
"""
)


def _corpus(path: str, n: int, version: dict[int, int], deleted: set[int]) -> None:
    ids = [i for i in range(n) if i not in deleted]
    table = pa.table(
        {
            "doc_id": [f"doc-{i:07d}" for i in ids],
            "text": [f"Document {i} version {version.get(i, 0)}: a short text." for i in ids],
        }
    )
    pq.write_table(table, path)


def _run(src: str, out: str, run_id: str, dim: int) -> float:
    config = JobConfig(
        source=src,
        output=out,
        backend="hash",
        dim=dim,
        summaries=False,
        batch_docs=1000,
        max_in_flight=32,
        run_id=run_id,
        progress=False,
    )
    started = time.monotonic()
    run(config)
    return time.monotonic() - started


def _compact(out: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, out],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--change", type=float, default=0.01)
    args = parser.parse_args()
    n = args.docs
    step = max(1, int(1 / args.change))
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "src.parquet"), os.path.join(tmp, "out")
        _corpus(src, n, {}, set())
        first = _run(src, out, "r1", args.dim)
        changed = {i: 1 for i in range(0, n, step)}
        deleted = set(range(step // 2, n, step))
        _corpus(src, n, changed, deleted)
        second = _run(src, out, "r2", args.dim)
        baseline = float(
            subprocess.run(
                [sys.executable, "-c", _BASELINE], capture_output=True, text=True, cwd=ROOT
            ).stdout.strip()
        )
        first_compact = _compact(out)
        again = _compact(out)
    rows_before = first_compact["rows_before"]
    rows_after = first_compact["rows_after"]
    assert isinstance(rows_before, dict) and isinstance(rows_after, dict)
    print(f"documents: {n}, dim {args.dim}; changed {len(changed)}, deleted {len(deleted)}")
    print(f"run 1 (all): {first:.1f} s; run 2 (changes, deletions recorded): {second:.1f} s")
    print(
        f"compact: {first_compact['wall_s']:.2f} s, peak RSS {first_compact['peak_rss_mb']:.0f} MB"
        f" (a process that only imports the pipeline: {baseline:.0f} MB)"
    )
    print(
        f"  parts {first_compact['records_before']} -> {first_compact['records_after']}"
        f" ({first_compact['rewritten']} rewritten, {first_compact['superseded']} removed);"
        f" embedding rows {rows_before.get('embeddings')} -> {rows_after.get('embeddings')};"
        f" deleted documents dropped {first_compact['deleted_documents']}"
    )
    print(
        f"compact again (nothing to do): {again['wall_s']:.2f} s,"
        f" peak RSS {again['peak_rss_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()
