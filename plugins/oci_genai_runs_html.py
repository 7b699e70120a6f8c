"""HTML of the OCI GenAI runs page: server-rendered, no script, the chart as inline SVG.

Plain Python (no Airflow): ``page(runs)`` renders a list of ``RunCard`` (a DAG run and the
``pipeline.runview.run_view`` of its pipeline run). Every value that comes from a run, a
conf or an output is escaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#1f2933;background:#fff}
h1{font-size:20px;margin:0 0 12px}
.run{border:1px solid #d2d6dc;border-radius:6px;padding:12px 16px;margin-bottom:16px}
.run h2{font-size:16px;margin:0 0 6px}
.meta{color:#52606d;margin-bottom:8px}
.state{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;color:#fff}
.s-success,.s-committed,.s-done{background:#2f855a}.s-failed{background:#c53030}
.s-running{background:#2b6cb0}.s-queued,.s-planned,.s-unknown,.s-pending{background:#718096}
.kpis{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0}
.kpi{background:#f5f7fa;border-radius:4px;padding:4px 10px}.kpi b{font-size:16px}
table{border-collapse:collapse;margin:6px 0}
th,td{padding:3px 8px;border-bottom:1px solid #e4e7eb;text-align:left;font-size:13px}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{width:160px;height:10px;background:#e4e7eb;border-radius:5px;display:inline-block}
.bar i{display:block;height:10px;border-radius:5px;background:#3182ce}
.cols{display:flex;flex-wrap:wrap;gap:24px}
code{font-size:12px;background:#f5f7fa;padding:1px 4px;border-radius:3px}
.empty{color:#7b8794}
"""


@dataclass
class RunCard:
    """One DAG run of a pipeline DAG. ``view`` is ``run_view(...)`` or None when the run
    has no pipeline run yet (not planned) or its output is unknown; ``note`` says why."""

    dag_id: str
    dag_run_id: str
    state: str
    started: str | None
    link: str
    output: str | None
    run_id: str | None
    view: dict[str, Any] | None
    note: str | None = None
    detail_link: str | None = None


def _e(value: object) -> str:
    return escape("" if value is None else str(value))


def _n(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return _e(value)


def _cost(cost: dict[str, Any]) -> str:
    if cost.get("estimated") is None:
        return "no price set"
    return _e(cost["text"])


def chart(throughput: dict[str, Any], width: int = 560, height: int = 170) -> str:
    """Chunks/s and documents/s over the run as an inline SVG line chart."""
    points = throughput.get("points") or []
    if not points:
        return '<p class="empty">No progress samples yet (the chart fills as shards run).</p>'
    left, bottom, top, right = 48, 22, 10, 10
    w, h = width - left - right, height - top - bottom
    tmax = max(p["t"] for p in points) or 1.0
    ymax = max(max(p["chunks_per_s"], p["docs_per_s"]) for p in points) or 1.0

    def line(key: str) -> str:
        pts = [(0.0, points[0][key])] + [(p["t"], p[key]) for p in points]
        return " ".join(
            f"{left + w * t / tmax:.1f},{top + h - h * min(v, ymax) / ymax:.1f}" for t, v in pts
        )

    grid = "".join(
        f'<line x1="{left}" x2="{left + w}" y1="{top + h * k / 4:.1f}" y2="{top + h * k / 4:.1f}"'
        ' stroke="#e4e7eb"/>'
        for k in range(5)
    )
    return (
        f'<svg class="chart" role="img" aria-label="throughput over time" width="{width}"'
        f' height="{height}" viewBox="0 0 {width} {height}">{grid}'
        f'<polyline fill="none" stroke="#3182ce" stroke-width="2" points="{line("chunks_per_s")}"/>'
        f'<polyline fill="none" stroke="#dd6b20" stroke-width="2" points="{line("docs_per_s")}"/>'
        f'<text x="{left - 6}" y="{top + 4}" font-size="11" text-anchor="end">{ymax:,.1f}/s</text>'
        f'<text x="{left - 6}" y="{top + h}" font-size="11" text-anchor="end">0</text>'
        f'<text x="{left}" y="{height - 6}" font-size="11">0 s</text>'
        f'<text x="{left + w}" y="{height - 6}" font-size="11"'
        f' text-anchor="end">{tmax:,.0f} s</text>'
        f'<text x="{left + 8}" y="{top + 12}" font-size="11" fill="#3182ce">chunks/s</text>'
        f'<text x="{left + 70}" y="{top + 12}" font-size="11" fill="#dd6b20">documents/s</text>'
        "</svg>"
    )


def _shards(view: dict[str, Any]) -> str:
    rows = []
    for s in view["shards"]:
        pct = s["percent"]
        bar = f'<span class="bar"><i style="width:{pct or 0:.0f}%"></i></span>'
        of = f" of ~{_n(s['est_docs'])}" if s["est_docs"] else ""
        rows.append(
            f"<tr><td><code>{_e(s['shard_id'])}</code></td>"
            f'<td><span class="state s-{_e(s["state"])}">{_e(s["state"])}</span></td>'
            f"<td>{bar} {'' if pct is None else f'{pct:.0f}%'}</td>"
            f'<td class="n">{_n(s["docs"])}{of}</td><td class="n">{_n(s["chunks"])}</td>'
            f'<td class="n">{_n(s["retries"])}</td><td class="n">{_n(s["throttled"])}</td>'
            f'<td class="n">{_n(s["failures"])}</td></tr>'
        )
    if not rows:
        return '<p class="empty">No shards planned yet.</p>'
    return (
        "<table><tr><th>shard</th><th>state</th><th>progress</th><th>documents</th>"
        "<th>chunks</th><th>retries</th><th>429s</th><th>dead letters</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _dead(view: dict[str, Any]) -> str:
    dead = view["dead_letters"]
    if not dead["top"]:
        return '<p class="empty">No dead-lettered rows.</p>'
    items = "".join(
        f'<tr><td><code>{_e(t["code"])}</code></td><td class="n">{_n(t["count"])}</td></tr>'
        for t in dead["top"]
    )
    more = "" if dead["complete"] else '<p class="empty">(from the newest failure files)</p>'
    return f"<table><tr><th>top error codes</th><th>rows</th></tr>{items}</table>{more}"


def _outputs(view: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td><code>{_e(o['uri'])}</code></td>"
        f'<td class="n">{_n(o["files"])} file(s)</td></tr>'
        for name, o in view["outputs"].items()
    )
    return f"<table>{rows}</table>"


def card(run: RunCard) -> str:
    title = (
        f'<h2>{_e(run.dag_id)} · <a href="{_e(run.link)}">{_e(run.dag_run_id)}</a>'
        f' <span class="state s-{_e(run.state)}">{_e(run.state)}</span></h2>'
    )
    meta = (
        f'<div class="meta">started {_e(run.started or "not yet")} · pipeline run'
        f" <code>{_e(run.run_id or '–')}</code> · output <code>{_e(run.output or '–')}</code>"
        + (f' · <a href="{_e(run.detail_link)}">details</a>' if run.detail_link else "")
        + "</div>"
    )
    view = run.view
    if view is None:
        note = _e(run.note or "No pipeline run found for this DAG run yet.")
        return f'<section class="run">{title}{meta}<p class="empty">{note}</p></section>'
    t, dead, cost = view["totals"], view["dead_letters"], view["cost"]
    est = f" of ~{_n(t['est_docs'])}" if t["est_docs"] else ""
    kpis = [
        ("shards done", f"{t['shards_done']} / {t['shards']}"),
        ("documents", f"{_n(t['docs'])}{est}"),
        ("chunks", _n(t["chunks"])),
        ("model calls", _n(t["calls"])),
        ("retries", _n(t["retries"])),
        ("429s", _n(t["throttled"])),
        ("dead letters", _n(dead["count"])),
        ("estimated cost", _cost(cost)),
    ]
    kpi = "".join(f'<span class="kpi">{k} <b>{v}</b></span>' for k, v in kpis)
    return (
        f'<section class="run">{title}{meta}'
        f'<div class="meta">output state: <span class="state s-{_e(view["state"])}">'
        f"{_e(view['state'])}</span></div>"
        f'<div class="kpis">{kpi}</div>'
        f'<div class="cols"><div><h3>Throughput</h3>{chart(view["throughput"])}</div>'
        f"<div><h3>Dead letters</h3>{_dead(view)}<h3>Outputs</h3>{_outputs(view)}</div></div>"
        f"<h3>Shards</h3>{_shards(view)}</section>"
    )


def page(
    runs: list[RunCard], *, title: str = "OCI GenAI runs", note: str = "", refresh_s: int = 30
) -> str:
    """The whole page; it reloads itself every ``refresh_s`` seconds (0: never), without
    script, so that a running backfill can be watched."""
    body = "".join(card(r) for r in runs) or '<p class="empty">No runs of the pipeline DAGs.</p>'
    intro = f'<p class="meta">{_e(note)}</p>' if note else ""
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s > 0 else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{refresh}'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>"
        f"<body><h1>{_e(title)}</h1>{intro}{body}</body></html>"
    )


__all__ = ["RunCard", "card", "chart", "page"]
