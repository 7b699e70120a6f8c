"""What a run looks like from its output alone: the data behind the Airflow runs page.

``run_view(output_uri, run_id)`` reads the run's state folder (plan, progress files, shard
reports), ``report.json`` when it belongs to this run, and the run's dead-letter rows, and
returns one JSON-able dict (see ``run_view``). Plain Python: no Airflow, no web framework.

Bounded work per call: progress files and shard reports are one small file per shard;
dead-letter rows are read from at most ``max_failure_files`` Parquet files, three columns.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.progress import progress_dir
from pipeline.report import estimate_cost, format_money
from pipeline.sinks import OutputStore
from pipeline.storage import StorageSettings

log = logging.getLogger(__name__)

OUTPUT_DIRS = ("embeddings", "summaries", "failures")
TOP_CODES = 5
CHART_POINTS = 40


def _read(store: OutputStore, rel: str) -> Any:
    try:
        return store.read_json(rel)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a torn or foreign file must not take the page down
        log.warning("%s: unreadable (%s)", store.display(rel), exc)
        return None


def _json_files(store: OutputStore, rel_dir: str) -> dict[str, Any]:
    """``{name without .json: content}`` of the JSON files directly in ``rel_dir``."""
    out = {}
    for name in store.list_files(rel_dir):
        if name.endswith(".json") and not name.startswith("."):
            data = _read(store, f"{rel_dir}/{name}")
            if isinstance(data, dict):
                out[name[: -len(".json")]] = data
    return out


def _run_times(store: OutputStore) -> dict[str, float]:
    ids: set[str] = set()
    for folder in ("_state/runs", "_state/reports", "_state/progress"):
        ids.update(store.list_dirs(folder))
    times = {}
    for run_id in ids:
        times[run_id] = 0.0
        for folder in ("_state/runs", "_state/reports", "_state/progress"):
            info = store.fs.get_file_info(store.path(f"{folder}/{run_id}"))
            if info.mtime is not None:
                times[run_id] = info.mtime.timestamp()
                break
    return times


def known_runs(output_uri: str, *, settings: StorageSettings | None = None) -> list[str]:
    """Run ids that left state in this output (planned, in progress or reported), newest
    first where the filesystem gives modification times (object stores may not)."""
    times = _run_times(OutputStore(output_uri, settings=settings))
    return sorted(times, key=lambda r: (times[r], r), reverse=True)


def _shard_row(
    shard_id: str,
    spec: dict[str, Any] | None,
    prog: dict[str, Any] | None,
    rep: dict[str, Any] | None,
) -> dict[str, Any]:
    counts = (rep or {}).get("counts", {})
    calls = (rep or {}).get("calls", {})
    est = (spec or {}).get("est_docs") or (prog or {}).get("est_docs") or None
    if rep is not None:
        # the report is final: it counts every document the shard read (skipped ones too)
        docs = int(counts.get("documents_read", 0))
        state = "pending" if counts.get("documents_pending") else "done"
        if prog is not None and prog.get("state") == "failed":
            state = "failed"
    elif prog is not None:
        docs = int(prog.get("docs", 0))
        state = str(prog.get("state", "running"))
    else:
        docs, state = 0, "planned"
    chunks = int(counts.get("chunks_embedded", (prog or {}).get("chunks", 0)))
    pct = None
    if est:
        pct = 100.0 if state == "done" else round(min(100.0, 100.0 * docs / est), 1)
    elif state == "done":
        pct = 100.0
    return {
        "shard_id": shard_id,
        "state": state,
        "attempt": (prog or {}).get("attempt"),
        "docs": docs,
        "est_docs": est,
        "percent": pct,
        "chunks": chunks,
        "completed": int(counts.get("documents_completed", 0)),
        "skipped": int(counts.get("documents_skipped", 0)),
        "pending": int(counts.get("documents_pending", 0)),
        "failures": int(counts.get("failures", 0)),
        "calls": int(calls.get("calls", 0)),
        "retries": int(calls.get("retries", 0)),
        "throttled": int(calls.get("throttled", 0)),
        "seconds": (rep or {}).get("seconds"),
        "updated_at": (prog or {}).get("updated_at"),
    }


def _cumulative_at(samples: list[list[float]], t: float) -> tuple[float, float]:
    """(docs, chunks) of one shard at time ``t``, linear between its samples (a batch's
    documents are spread over the time it took), flat before the first and after the last."""
    if t <= samples[0][0]:
        return samples[0][1], samples[0][2]
    for before, after in itertools.pairwise(samples):
        if t <= after[0]:
            span = after[0] - before[0]
            f = (t - before[0]) / span if span > 0 else 1.0
            return (
                before[1] + f * (after[1] - before[1]),
                before[2] + f * (after[2] - before[2]),
            )
    return samples[-1][1], samples[-1][2]


def throughput(progress: list[dict[str, Any]], points: int = CHART_POINTS) -> dict[str, Any]:
    """Docs/s and chunks/s of the whole run over time, from every shard's samples.

    The span from the first to the last sample is cut into at most ``points`` equal
    intervals; each point is the rate over its interval of the summed cumulative counts.
    Returns ``{"start", "end", "points": [{"t", "docs_per_s", "chunks_per_s"}],
    "docs", "chunks"}`` (``t`` in seconds from ``start``); no points without samples."""
    series = [sorted(p.get("samples") or [], key=lambda s: s[0]) for p in progress]
    series = [s for s in series if s]
    if not series:
        return {"start": None, "end": None, "points": [], "docs": 0, "chunks": 0}
    start = min(s[0][0] for s in series)
    end = max(s[-1][0] for s in series)
    n = max(1, min(points, len({x[0] for s in series for x in s}) - 1))
    step = (end - start) / n if end > start else 0.0
    out = []
    prev = (0.0, 0.0)
    for i in range(1, n + 1):
        t = start + i * step if step else end
        cum = [_cumulative_at(s, t) for s in series]
        docs, chunks = sum(c[0] for c in cum), sum(c[1] for c in cum)
        dt = step or 1.0
        out.append(
            {
                "t": round(t - start, 3),
                "docs_per_s": round((docs - prev[0]) / dt, 3),
                "chunks_per_s": round((chunks - prev[1]) / dt, 3),
            }
        )
        prev = (docs, chunks)
    return {
        "start": start,
        "end": end,
        "points": out,
        "docs": round(prev[0]),
        "chunks": round(prev[1]),
    }


def dead_letter_codes(
    store: OutputStore, run_id: str, *, max_files: int = 200
) -> tuple[Counter[str], int, bool]:
    """Error codes of this run's dead-letter rows: ``stage:error_class``, with the HTTP
    status and OCI code when the service gave them. Reads three columns of at most
    ``max_files`` files of ``failures/`` (the newest names last, so the newest are kept).
    Returns (codes, rows, complete)."""
    names = [n for n in store.list_files("failures") if n.endswith(".parquet")]
    complete = len(names) <= max_files
    codes: Counter[str] = Counter()
    rows = 0
    for name in names[-max_files:]:
        try:
            table = pq.read_table(
                store.path(f"failures/{name}"),
                filesystem=store.fs,
                columns=["run_id", "stage", "error_class", "http_status", "oci_code"],
            )
        except Exception as exc:
            log.warning("%s: unreadable (%s)", store.display(f"failures/{name}"), exc)
            complete = False
            continue
        table = table.filter(pc.equal(table["run_id"], run_id))
        for r in table.select(["stage", "error_class", "http_status", "oci_code"]).to_pylist():
            code = f"{r['stage']}:{r['error_class']}"
            extra = [str(x) for x in (r["http_status"], r["oci_code"]) if x is not None]
            codes[code + (f" ({' '.join(extra)})" if extra else "")] += 1
            rows += 1
    return codes, rows, complete


def run_view(
    output_uri: str,
    run_id: str,
    *,
    price_per_million_chars: float | None = None,
    currency: str = "USD",
    max_failure_files: int = 200,
    settings: StorageSettings | None = None,
) -> dict[str, Any]:
    """Everything the runs page shows about one run, from its output.

    Returns ``{"run_id", "output", "state", "outputs", "shards": [per shard], "totals",
    "throughput", "dead_letters": {"count", "top", "rows_read", "complete"}, "cost":
    {"estimated", "text", "currency", "characters", "price_per_million_chars", "source"},
    "report"}``; ``text`` is the estimate as money (``USD 0.42``), None without a price.
    ``state``: ``committed`` (report.json is this run's), ``running`` (progress or shard
    reports but no report), ``planned`` or ``unknown`` (nothing of this run found).
    ``price_per_million_chars`` prices the characters embedded so far when the run's
    report.json is not there (yet), in ``currency``. ``settings`` reach an object store with other
    credentials than this process's (``pipeline.storage.configure``)."""
    store = OutputStore(output_uri, settings=settings)
    plan = _read(store, f"_state/runs/{run_id}/plan.json") or {}
    specs = {s["shard_id"]: s for s in plan.get("shards", []) if isinstance(s, dict)}
    progress = _json_files(store, progress_dir(run_id))
    reports = _json_files(store, f"_state/reports/{run_id}")
    report = _read(store, "report.json")
    if not (isinstance(report, dict) and report.get("run_id") == run_id):
        report = None

    ids = sorted(set(specs) | set(progress) | set(reports))
    shards = [_shard_row(i, specs.get(i), progress.get(i), reports.get(i)) for i in ids]

    def total(key: str) -> int:
        return sum(int(s[key] or 0) for s in shards)

    est = sum(int(s["est_docs"] or 0) for s in shards) or None
    totals = {
        "shards": len(shards),
        "shards_done": sum(s["state"] == "done" for s in shards),
        **{k: total(k) for k in ("docs", "chunks", "completed", "skipped", "pending")},
        **{k: total(k) for k in ("failures", "calls", "retries", "throttled")},
        "est_docs": est,
    }

    by_class: Counter[str] = Counter()
    for rep in reports.values():
        by_class.update(rep.get("failures_by_class", {}))
    codes, rows, complete = dead_letter_codes(store, run_id, max_files=max_failure_files)
    top = codes if codes else by_class
    dead = {
        "count": max(sum(by_class.values()), total("failures"), rows),
        "top": [{"code": c, "count": n} for c, n in top.most_common(TOP_CODES)],
        "by_class": dict(by_class),
        "rows_read": rows,
        "complete": complete,
    }

    chars = sum(int(r.get("counts", {}).get("characters_embedded", 0)) for r in reports.values())
    if report is not None:
        cfg = report.get("config", {})
        # reports written before the price and currency were recorded beside the cost
        price = report.get("price_per_million_chars", cfg.get("price_per_million_chars"))
        cost = {
            "estimated": report.get("estimated_cost"),
            "currency": report.get("currency", cfg.get("currency", currency)),
            "characters": report.get("counts", {}).get("characters_embedded", chars),
            "price_per_million_chars": price,
            "source": "report",
        }
    else:
        cost = {
            "estimated": estimate_cost(chars, price_per_million_chars),
            "currency": currency,
            "characters": chars,
            "price_per_million_chars": price_per_million_chars,
            "source": "shard reports",
        }
    amount = cost["estimated"]
    cost["text"] = None if amount is None else format_money(amount, str(cost["currency"]))

    if report is not None:
        state = "committed"
    elif progress or reports:
        state = "running"
    elif plan:
        state = "planned"
    else:
        state = "unknown"

    outputs = {
        d: {"uri": store.display(d) + "/", "files": len(store.list_files(d))} for d in OUTPUT_DIRS
    }
    outputs["report"] = {
        "uri": store.display("report.json"),
        "files": 1 if store.exists("report.json") else 0,
    }
    return {
        "run_id": run_id,
        "output": output_uri,
        "state": state,
        "outputs": outputs,
        "shards": shards,
        "totals": totals,
        "throughput": throughput(list(progress.values())),
        "dead_letters": dead,
        "cost": cost,
        "report": None
        if report is None
        else {
            "uri": store.display("report.json"),
            "finished_at": report.get("finished_at"),
            "throughput": report.get("throughput"),
            "latency_ms": report.get("calls", {}).get("latency_ms"),
        },
    }


__all__ = ["dead_letter_codes", "known_runs", "run_view", "throughput"]
