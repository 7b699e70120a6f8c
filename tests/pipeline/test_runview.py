"""Progress files (``pipeline.progress``) and the run view built from an output's state
(``pipeline.runview``): against a real CLI run's output, and against shards run the way the
Airflow shard task runs them (``runner.run_shard`` with a ``ProgressFile``), over the
emulator with faults, throttling and a rejected document."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline import runner
from pipeline.config import JobConfig
from pipeline.progress import ProgressFile, progress_path, tee, thin
from pipeline.report import format_money
from pipeline.runview import known_runs, run_view, throughput
from pipeline.sinks import OutputStore
from tests.conftest import CLI
from tests.oci_fixtures import running_emulator
from tests.throttling import throttled_at_first


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _read(out: Path, run_id: str, shard: str) -> dict:
    return json.loads((out / progress_path(run_id, shard)).read_text())


def test_progress_file_writes_at_most_every_interval_and_at_close(tmp_path) -> None:
    out = tmp_path / "out"
    clock = Clock()
    progress = ProgressFile(str(out), "r1", "s0", est_docs=100, every_s=10, clock=clock)
    first = _read(out, "r1", "s0")
    assert (first["state"], first["docs"], first["est_docs"], first["attempt"]) == (
        "running",
        0,
        100,
        1,
    )
    for _ in range(5):  # 5 batches of 4 documents within 5 s: no rewrite yet
        clock.t += 1
        progress(4, progress.chunks + 6)
    assert _read(out, "r1", "s0")["docs"] == 0
    clock.t += 5  # 10 s since the last write
    progress(4, 36)
    mid = _read(out, "r1", "s0")
    assert (mid["docs"], mid["chunks"]) == (24, 36)
    assert [s[1] for s in mid["samples"]] == [0, 4, 8, 12, 16, 20, 24]
    clock.t += 1
    progress(6, 40)
    progress.close()
    done = _read(out, "r1", "s0")
    assert (done["state"], done["docs"], done["chunks"]) == ("done", 30, 40)
    assert done["samples"][-1] == [clock.t, 30, 40]
    # a second attempt of the same shard (an Airflow retry) counts itself
    with ProgressFile(str(out), "r1", "s0", clock=clock) as again:
        again(1, 1)
    assert _read(out, "r1", "s0")["attempt"] == 2


def test_progress_file_marks_a_failed_shard_and_bounds_samples(tmp_path) -> None:
    out = tmp_path / "out"
    clock = Clock()
    try:
        with ProgressFile(str(out), "r2", "s1", every_s=3600, max_samples=50, clock=clock) as p:
            for i in range(1, 5001):
                clock.t += 0.01
                p(1, i)
            raise RuntimeError("shard died")
    except RuntimeError:
        pass
    data = _read(out, "r2", "s1")
    assert data["state"] == "failed"
    assert data["docs"] == 5000
    assert 25 <= len(data["samples"]) <= 50
    # the first and the last sample survive the thinning, times stay ordered
    assert data["samples"][0][1] == 0 and data["samples"][-1][1] == 5000
    times = [s[0] for s in data["samples"]]
    assert times == sorted(times)
    assert thin([[i, i, i] for i in range(7)], 3)[-1] == [6, 6, 6]


def test_progress_file_never_fails_the_shard(tmp_path, caplog) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    progress = ProgressFile(str(blocker / "out"), "r1", "s0", every_s=0)
    progress(3, 3)
    progress.close()
    assert progress.docs == 3
    assert "progress file" in caplog.text and "not written" in caplog.text


def test_throughput_sums_shards_over_time() -> None:
    # two shards, each 10 docs/s for 10 s, the second starting 5 s later
    a = {"samples": [[100.0 + t, 10 * t, 20 * t] for t in range(11)]}
    b = {"samples": [[105.0 + t, 10 * t, 10 * t] for t in range(11)]}
    view = throughput([a, b], points=15)
    pts = view["points"]
    assert len(pts) == 15 and pts[-1]["t"] == 15.0
    assert (view["docs"], view["chunks"]) == (200, 300)
    rates = {p["t"]: p["docs_per_s"] for p in pts}
    assert rates[3.0] == 10 and rates[8.0] == 20 and rates[14.0] == 10
    assert throughput([{"samples": []}])["points"] == []


def _write_source(root: Path, texts: list[list[str]]) -> str:
    root.mkdir(parents=True)
    for k, part in enumerate(texts):
        rows = [{"doc_id": f"p{k}-d{i:03d}", "text": t} for i, t in enumerate(part)]
        pq.write_table(pa.Table.from_pylist(rows), str(root / f"part{k}.parquet"))
    return str(root)


def test_run_view_of_a_cli_run(tmp_path) -> None:
    sentence = "The river bends past the mill, and the town grows along its banks. "
    texts = [
        [sentence * (1 + i % 5) if i % 7 else "  " for i in range(30)],
        [sentence * 3 if i % 9 else "" for i in range(25)],
    ]
    empty = sum(1 for part in texts for t in part if not t.strip())
    src = _write_source(tmp_path / "src", texts)
    out = tmp_path / "out"
    cmd = [CLI, "run", "--source", src, "--output", str(out), "--backend", "hash"]
    cmd += ["--run-id", "r1", "--shards", "2", "--price-per-million-chars", "0.5"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    report = json.loads((out / "report.json").read_text())
    view = run_view(str(out), "r1")
    assert view["state"] == "committed"
    assert [s["state"] for s in view["shards"]] == ["done", "done"]
    assert sum(s["docs"] for s in view["shards"]) == report["counts"]["documents_read"]
    assert view["totals"]["chunks"] == report["counts"]["chunks_embedded"] > 0
    assert view["totals"]["calls"] == report["calls"]["calls"]
    assert view["dead_letters"]["count"] == empty == report["counts"]["failures"]
    assert view["dead_letters"]["top"] == [{"code": "validate:EmptyText", "count": empty}]
    assert view["cost"]["estimated"] == report["estimated_cost"] > 0
    assert view["cost"]["source"] == "report"
    assert view["cost"]["text"] == format_money(report["estimated_cost"], "USD")
    assert view["cost"]["price_per_million_chars"] == report["price_per_million_chars"] == 0.5
    assert view["outputs"]["embeddings"] == {"uri": f"{out}/embeddings/", "files": 2}
    assert view["outputs"]["report"]["uri"] == f"{out}/report.json"
    assert known_runs(str(out)) == ["r1"]
    # another run id of the same output: nothing of it, and report.json is not its own
    other = run_view(str(out), "r9")
    assert (other["state"], other["shards"], other["cost"]["estimated"]) == ("unknown", [], None)


def test_the_cost_is_priced_from_the_price_table_in_its_currency(tmp_path) -> None:
    """A run priced with ``--prices`` (the table the dry run uses) and ``--currency``:
    the report and the view price the embedding model from the table and show money in
    that currency, the same figure the dry run printed for the same characters."""
    src = _write_source(tmp_path / "src", [["Tides turn slowly at the estuary. " * 40] * 12])
    out = tmp_path / "out"
    model = JobConfig(source=src, output=str(out), backend="hash").embed_model_id
    cmd = [CLI, "run", "--source", src, "--output", str(out), "--backend", "hash"]
    cmd += ["--run-id", "r2", "--prices", f"{model}=3.0,other-model=99", "--currency", "EUR"]
    cmd += ["--price-per-million-chars", "0.01", "--no-summaries"]  # the table's entry wins
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    report = json.loads((out / "report.json").read_text())
    chars = report["counts"]["characters_embedded"]
    assert report["price_per_million_chars"] == 3.0 and report["currency"] == "EUR"
    assert report["estimated_cost"] == round(chars / 1e6 * 3.0, 6) > 0
    view = run_view(str(out), "r2")
    assert view["cost"]["text"] == format_money(report["estimated_cost"], "EUR")
    assert view["cost"]["text"].startswith("EUR 0.")
    assert "e-" not in view["cost"]["text"]


def test_run_view_follows_shards_run_with_progress_files(tmp_path) -> None:
    """The shard task's way: plan.json written first, then each shard through
    ``runner.run_shard`` with a ``ProgressFile``. Retries, 429s and a rejected document
    come from the emulator; the view's numbers must equal the shard reports'."""
    texts = [
        [f"Document {k}-{i} is about rivers, lakes and hills." for i in range(24)] for k in (0, 1)
    ]
    texts[1][5] = "This document is POISON for the service."
    src = _write_source(tmp_path / "src", texts)
    out = tmp_path / "out"
    with running_emulator(
        tmp_path / "oci", fault_rate=0.1, seed=3, reject_substring="POISON", retry_after=0.05
    ) as (emu, oci_config):
        config = JobConfig(
            source=src,
            output=str(out),
            backend="oci",
            genai_endpoint=emu.url,
            oci_config=oci_config,
            compartment="ocid1.compartment.oc1..test",
            output_dimensions=256,
            batch_docs=4,
            max_attempts=10,
            summaries=False,
            shards=2,
            run_id="run-a",
            price_per_million_chars=2.0,
            progress=False,
        )
        specs = [s.to_json() for s in runner.plan(config)]
        assert len(specs) == 2
        store = OutputStore(str(out))
        store.write_json("_state/runs/run-a/plan.json", {"run_id": "run-a", "shards": specs})
        assert run_view(str(out), "run-a")["state"] == "planned"

        first = specs[0]
        with (
            throttled_at_first(emu, 2),
            ProgressFile(
                store, "run-a", first["shard_id"], est_docs=first["est_docs"], every_s=0
            ) as p,
        ):
            rep0 = runner.run_shard(first, config, on_progress=p)
        mid = run_view(str(out), "run-a", price_per_million_chars=2.0)
        assert mid["state"] == "running"
        states = {s["shard_id"]: s["state"] for s in mid["shards"]}
        assert states == {first["shard_id"]: "done", specs[1]["shard_id"]: "planned"}
        chars0 = rep0["counts"]["characters_embedded"]
        assert mid["cost"] == {
            "estimated": round(chars0 / 1e6 * 2.0, 6),
            "currency": "USD",
            "text": format_money(round(chars0 / 1e6 * 2.0, 6), "USD"),
            "characters": chars0,
            "price_per_million_chars": 2.0,
            "source": "shard reports",
        }

        second = specs[1]
        with ProgressFile(
            store, "run-a", second["shard_id"], est_docs=second["est_docs"], every_s=0
        ) as p:
            rep1 = runner.run_shard(second, config, on_progress=p)

    view = run_view(str(out), "run-a", price_per_million_chars=2.0)
    reps = [rep0, rep1]
    assert [s["state"] for s in view["shards"]] == ["done", "done"]
    assert all(s["percent"] == 100.0 and s["est_docs"] == 24 for s in view["shards"])
    assert view["totals"]["retries"] == sum(r["calls"]["retries"] for r in reps) > 0
    assert view["totals"]["throttled"] == sum(r["calls"]["throttled"] for r in reps) > 0
    fails = ds.dataset(str(out / "failures"), format="parquet").to_table().to_pylist()
    assert [(f["doc_id"], f["http_status"]) for f in fails] == [("p1-d005", 400)]
    assert view["dead_letters"]["count"] == 1
    code = f"embed:{fails[0]['error_class']} (400 {fails[0]['oci_code']})"
    assert view["dead_letters"]["top"] == [{"code": code, "count": 1}]
    # the chart: both shards' samples, documents summed over the run
    chart = view["throughput"]
    assert chart["points"] and chart["docs"] == 48
    assert chart["chunks"] == sum(r["counts"]["chunks_embedded"] for r in reps)
    assert Counter(s["shard_id"] for s in view["shards"]) == Counter(s["shard_id"] for s in specs)


def test_tee_feeds_every_callback(tmp_path) -> None:
    seen: list[tuple[int, int]] = []
    progress = ProgressFile(str(tmp_path / "out"), "r1", "s0", every_s=0)
    both = tee(progress, lambda d, c: seen.append((d, c)))
    both(3, 5)
    both(2, 9)
    assert seen == [(3, 5), (2, 9)] and (progress.docs, progress.chunks) == (5, 9)
