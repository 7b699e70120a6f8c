"""SIGKILL the CLI at several instants, re-run it, and compare with an uninterrupted run.

Every document here is one chunk (short texts with a unique first line), so "model
inputs sent" per run is exact: a re-run must send only what no commit holds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import orjson
import pyarrow.dataset as ds

from tests.conftest import CLI, write_corpus

N_DOCS = 3000


def _corpus(path: str, stdlib_docs: list[dict[str, str]]) -> str:
    rows = []
    for i in range(N_DOCS):
        src = stdlib_docs[i % len(stdlib_docs)]
        rows.append({"doc_id": f"doc-{i:05d}", "text": f"Copy {i}. {src['text'][:400]}"})
    return write_corpus(path, rows)


def _cmd(src: str, out: str) -> list[str]:
    return [
        CLI,
        "run",
        "--source",
        src,
        "--output",
        out,
        "--backend",
        "hash",
        "--batch-docs",
        "25",
        "--part-rows",  # parts are sized by rows: 25 here, so there are many to kill between
        "25",
        "--no-progress",
        "--run-id",
        "r",
    ]


def _committed(out: str) -> tuple[int, int]:
    """(commit records, embedding rows they hold)."""
    root = os.path.join(out, "_state", "commits")
    records = rows = 0
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".json"):
                with open(os.path.join(d, f), "rb") as fh:
                    rec = orjson.loads(fh.read())
                records += 1
                rows += rec["counts"]["embeddings"]
    return records, rows


def _committed_files(out: str) -> set[str]:
    root = os.path.join(out, "_state", "commits")
    files: set[str] = set()
    for d, _, names in os.walk(root):
        for f in names:
            if f.endswith(".json"):
                with open(os.path.join(d, f), "rb") as fh:
                    files.update(orjson.loads(fh.read())["files"].values())
    return files


def _rows(out: str) -> list[tuple[str, str, int]]:
    t = ds.dataset(os.path.join(out, "embeddings"), format="parquet").to_table(
        columns=["doc_id", "chunk_id", "chunk_index"]
    )
    return sorted(zip(*(t.column(c).to_pylist() for c in t.column_names), strict=True))


def _report(out: str) -> dict:
    with open(os.path.join(out, "report.json"), "rb") as fh:
        return orjson.loads(fh.read())


def test_kill_and_resume_loses_nothing_and_pays_once(tmp_path, stdlib_docs) -> None:
    src = _corpus(str(tmp_path / "docs.parquet"), stdlib_docs)
    baseline = str(tmp_path / "baseline")
    subprocess.run(_cmd(src, baseline), check=True, capture_output=True)
    expected = _rows(baseline)
    assert len(expected) == N_DOCS
    assert _report(baseline)["counts"]["chunks_sent"] == N_DOCS

    out = str(tmp_path / "killed")
    total_parts = N_DOCS // 25
    kills = 0
    # kill once the run has committed this many parts (several instants through the run),
    # plus a small, varying delay so kills also land inside writes and commits
    for target, delay in ((1, 0.0), (20, 0.013), (45, 0.031), (80, 0.007)):
        proc = subprocess.Popen(
            _cmd(src, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while _committed(out)[0] < target and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        # whatever the kill left, no uncommitted file is visible as *.parquet
        visible = {
            os.path.relpath(os.path.join(d, f), out)
            for d, _, fs in os.walk(out)
            for f in fs
            if f.endswith(".parquet")
        }
        assert visible <= _committed_files(out)
    assert kills >= 3, "the run finished before it could be killed; make the corpus larger"

    records, rows_before = _committed(out)
    assert 0 < records < total_parts
    subprocess.run(_cmd(src, out), check=True, capture_output=True)
    report = _report(out)
    # the final run sent exactly the inputs that no commit held: nothing paid twice
    assert report["counts"]["chunks_sent"] == N_DOCS - rows_before
    assert report["counts"]["documents_skipped"] == rows_before
    # and the output equals the uninterrupted run's, each chunk exactly once
    assert _rows(out) == expected
