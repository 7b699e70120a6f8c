"""`python -m pipeline.report_table OUTPUT`: the CLI's summary table from report.json."""

from __future__ import annotations

import subprocess
import sys

from pipeline.config import JobConfig
from pipeline.runner import run
from tests.conftest import write_corpus


def _table(tmp_path, stdlib_docs) -> tuple[str, dict]:
    corpus = write_corpus(str(tmp_path / "docs.parquet"), stdlib_docs[:5])
    out = str(tmp_path / "out")
    report = run(JobConfig(source=corpus, output=out, backend="hash", progress=False)).report
    return out, report


def test_prints_the_runs_counts(tmp_path, stdlib_docs) -> None:
    out, report = _table(tmp_path, stdlib_docs)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.report_table", out],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {}
    for line in done.stdout.splitlines():
        if "outputs:" not in line:
            name, value = line.strip().rsplit("  ", 1)
            rows[name.strip()] = value
    assert rows["documents completed"].strip() == "5"
    assert rows["chunks embedded"].strip() == str(report["counts"]["chunks_embedded"])
    assert rows["model calls"].strip() == str(report["calls"]["calls"])
    assert f"outputs: {out}/embeddings/" in done.stdout


def test_no_report_is_an_error_naming_the_output(tmp_path) -> None:
    missing = str(tmp_path / "nowhere")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.report_table", missing],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert f"output {missing}" in done.stderr
    assert done.stdout == ""
