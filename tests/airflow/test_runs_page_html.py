"""The runs page's HTML (plugins/oci_genai_runs_html.py, no Airflow needed): values from
runs, confs and outputs are escaped; the chart follows the samples."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))

from oci_genai_runs_html import RunCard, chart, page

from pipeline.runview import throughput


def test_values_are_escaped() -> None:
    hostile = RunCard(
        dag_id="oci_genai_backfill",
        dag_run_id='manual__<script>alert("x")</script>',
        state="failed",
        started=None,
        link="/dags/oci_genai_backfill/runs/x",
        output="/data/<b>out</b>",
        run_id=None,
        view=None,
        note="The output <img src=x> cannot be read",
    )
    html = page([hostile])
    assert "<script>" not in html and "<img" not in html and "<b>out" not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x&gt;" in html
    assert '<meta http-equiv="refresh" content="30">' in html
    assert "refresh" not in page([hostile], refresh_s=0)


def test_chart_draws_both_rates_from_the_samples() -> None:
    assert "No progress samples yet" in chart(throughput([]))
    samples = [[100.0 + t, 4 * t, 6 * t] for t in range(21)]  # 4 docs/s, 6 chunks/s
    svg = chart(throughput([{"samples": samples}]), width=560, height=170)
    lines = re.findall(r'<polyline[^>]*points="([^"]+)"', svg)
    assert len(lines) == 2
    chunks = [tuple(map(float, p.split(","))) for p in lines[0].split()]
    docs = [tuple(map(float, p.split(","))) for p in lines[1].split()]
    # steady rates: flat lines, chunks/s at the top of the scale, documents/s below it
    assert len({y for _, y in chunks}) == 1 and len({y for _, y in docs}) == 1
    assert chunks[0][1] < docs[0][1]
    assert "6.0/s" in svg and "20 s" in svg
