"""Deletions and compaction: a changed document keeps only its new chunks, a deleted one
is recorded once and dropped by ``compact``, a failure that later succeeded is dropped,
the resume index after compaction skips what it skipped before, and a compaction
SIGKILLed at many instants then run again leaves every current chunk exactly once.
Locally, and on S3 (moto) and OCI Object Storage (the emulator)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.compact import compact
from pipeline.config import JobConfig
from pipeline.errors import BadRequestError, LockedError
from pipeline.genai.base import EmbedResult
from pipeline.genai.hashembed import HashBackend
from pipeline.lease import RunLease
from pipeline.runner import commit, prepare, record_deletions, run_shard
from pipeline.sinks import OutputStore
from tests.conftest import CLI
from tests.pipeline.test_object_output import (  # noqa: F401
    Bucket,
    bucket,
    oci_emulator,
)
from tests.s3_fixtures import moto_s3_fixture, s3_fixture  # noqa: F401


class Backend(HashBackend):
    """The hash backend, counting inputs; texts holding POISON are refused (400)."""

    def __init__(self) -> None:
        super().__init__(dim=8)
        self.inputs: list[str] = []

    async def embed(self, texts: list[str]) -> EmbedResult:
        if any("POISON" in t for t in texts):
            raise BadRequestError("content rejected", status=400, code="InvalidParameter")
        self.inputs.extend(texts)
        return await super().embed(texts)


def _text(i: int, version: int = 0) -> str:
    # two chunks a document (chunk_tokens 16): rows per document are exact
    body = " ".join(f"w{i}x{version}y{k}" for k in range(24))
    return f"Document {i} version {version}. {body}"


def _write(src: str, docs: dict[str, str]) -> None:
    rows = [{"doc_id": k, "text": v} for k, v in sorted(docs.items())]
    pq.write_table(pa.Table.from_pylist(rows), src)


def _config(src: str, out: str, run_id: str, **kw: Any) -> JobConfig:
    fields: dict[str, Any] = {
        "source": src,
        "output": out,
        "backend": "hash",
        "dim": 8,
        "chunk_tokens": 16,
        "chunk_overlap": 2,
        "batch_docs": 5,
        "part_rows": 10,
        "shards": 2,
        "run_id": run_id,
        "progress": False,
        "max_attempts": 1,
    }
    fields.update(kw)
    return JobConfig(**fields)


def _run(config: JobConfig, backend: Backend | None = None) -> dict[str, Any]:
    backend = backend or Backend()
    store = OutputStore(config.output)
    specs = prepare(config)
    reports = [run_shard(s, config, backend=backend) for s in specs]
    with RunLease(store, config.run_id).acquire():
        record_deletions(config, [s.shard_id for s in specs])
    return commit(config, reports)


def _dataset(out: str, name: str, columns: list[str]) -> pa.Table:
    where = storage.resolve(f"{out.rstrip('/')}/{name}")
    if where.local and not os.path.isdir(where.path):
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    dataset = ds.dataset(where.path, filesystem=where.fs, format="parquet")
    if not dataset.files:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    return dataset.to_table(columns=columns)


def _chunks(out: str) -> Counter[tuple[str, str, str]]:
    t = _dataset(out, "embeddings", ["doc_id", "chunk_id", "content_hash"])
    return Counter(zip(*(t.column(c).to_pylist() for c in t.column_names), strict=True))


def _deletions(out: str) -> list[dict[str, Any]]:
    t = _dataset(out, "deletions", ["doc_id", "content_hash", "run_id"])
    return sorted(t.to_pylist(), key=lambda r: (r["run_id"], r["doc_id"]))


def _scenario(src: str, out: str) -> tuple[dict[str, str], Backend]:
    """Run 1: 20 documents, d03 poisoned. Run 2: d01 changed, d02 deleted, d03 fixed.
    Returns the source as it is after run 2."""
    docs = {f"d{i:02d}": _text(i) for i in range(20)}
    docs["d03"] = "POISON " + _text(3)
    _write(src, docs)
    report = _run(_config(src, out, "r1"))
    assert report["deletions"]["status"] == "baseline"
    docs["d01"] = _text(1, version=1)
    del docs["d02"]
    docs["d03"] = _text(3)
    _write(src, docs)
    backend = Backend()
    report = _run(_config(src, out, "r2"), backend)
    assert report["deletions"] == {"status": "recorded", "deleted": 1, "present": 19}
    assert len(backend.inputs) == 4  # d01 and d03: two chunks each
    return docs, backend


def _assert_current(out: str, docs: dict[str, str]) -> None:
    from pipeline.models import content_hash

    chunks = _chunks(out)
    assert all(n == 1 for n in chunks.values()), [k for k, n in chunks.items() if n > 1]
    by_doc: Counter[str] = Counter(doc for doc, _, _ in chunks)
    assert set(by_doc) == set(docs)
    assert all(n == 2 for n in by_doc.values())
    assert {(doc, h) for doc, _, h in chunks} == {(d, content_hash(t)) for d, t in docs.items()}


def test_a_deletion_records_the_newest_content_hash(tmp_path: Path) -> None:
    """d01 changed in run 2 (parts of both versions are in the records), then deleted:
    its deletion row carries the hash of the newest version, found by reading the records
    one at a time, not all of them held at once."""
    src, out = str(tmp_path / "src.parquet"), str(tmp_path / "out")
    docs, _ = _scenario(src, out)
    del docs["d01"]
    _write(src, docs)
    _run(_config(src, out, "r3"))
    from pipeline.models import content_hash

    rows = [r for r in _deletions(out) if r["run_id"] == "r3"]
    assert [r["doc_id"] for r in rows] == ["d01"]
    assert rows[0]["content_hash"] == content_hash(_text(1, version=1))
    assert rows[0]["content_hash"] != content_hash(_text(1))


def test_deletions_changed_failed_and_compact_locally(tmp_path: Path) -> None:
    src, out = str(tmp_path / "src.parquet"), str(tmp_path / "out")
    docs, _ = _scenario(src, out)
    # before compaction: d01 has both versions, d02 is still there
    before = Counter(doc for doc, _, _ in _chunks(out).elements())
    assert before["d01"] == 4 and before["d02"] == 2
    rows = _deletions(out)
    assert [(r["doc_id"], r["run_id"]) for r in rows] == [("d02", "r2")]
    assert rows[0]["content_hash"] is not None
    failures = _dataset(out, "failures", ["doc_id"]).column("doc_id").to_pylist()
    assert "d03" in failures

    report = compact(out, part_rows=1000)
    assert report.deleted_documents == 1
    _assert_current(out, docs)
    assert _dataset(out, "failures", ["doc_id"]).num_rows == 0  # d03 later succeeded
    summaries = _dataset(out, "summaries", ["doc_id"]).column("doc_id").to_pylist()
    assert sorted(summaries) == sorted(docs)
    # no superseded or staged file is left anywhere a reader looks
    assert not [p for p in (tmp_path / "out").rglob("*.tmp")]

    # the index after compaction skips exactly what it skipped before: nothing is sent
    backend = Backend()
    report3 = _run(_config(src, out, "r3"), backend)
    assert backend.inputs == []
    assert report3["deletions"]["deleted"] == 0  # a disappearance is recorded once
    assert [r["doc_id"] for r in _deletions(out)] == ["d02"]
    # a second compaction of a current output changes nothing
    again = compact(out, part_rows=1000)
    assert again.rewritten == 0 and again.superseded == 0
    _assert_current(out, docs)

    # d02 comes back with the same text: embedded again (compaction dropped its rows and
    # its index entry), then disappears again: recorded again
    docs["d02"] = _text(2)
    _write(src, docs)
    backend = Backend()
    _run(_config(src, out, "r4"), backend)
    assert len(backend.inputs) == 2
    compact(out, part_rows=1000)
    _assert_current(out, docs)
    del docs["d02"]
    _write(src, docs)
    _run(_config(src, out, "r5"))
    assert [(r["doc_id"], r["run_id"]) for r in _deletions(out)] == [("d02", "r2"), ("d02", "r5")]
    compact(out, part_rows=1000)
    _assert_current(out, docs)


def test_a_shard_whose_ids_outgrow_memory_writes_them_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline import deletions

    def batch(doc_ids: list[str], failed: list[str | None]) -> SimpleNamespace:
        return SimpleNamespace(
            documents=[SimpleNamespace(doc_id=d) for d in doc_ids],
            failures=[SimpleNamespace(doc_id=d, stage="validate", source="x") for d in failed],
        )

    seen = deletions.Seen(in_memory=4)
    seen.add(batch(["d02", "d00", "d01"], []))
    seen.add(batch(["d03"], []))  # 4 ids: written as one sorted batch
    seen.add(batch(["d05", "d04"], ["d01", None]))  # d01 again (a duplicate's failure)
    store = OutputStore(str(tmp_path / "ids"))
    deletions.write_seen(store, "r", "s0", seen)
    written = deletions.read_ids(store, f"{deletions.seen_dir('r')}/s0.arrow").to_pylist()
    assert written == ["d00", "d01", "d02", "d03", "d01", "d04", "d05"]
    assert store.read_json(f"{deletions.seen_dir('r')}/s0.json")["complete"]

    # a whole run with batches of 3 ids per shard, compared on disk, records the same
    monkeypatch.setattr(deletions, "SEEN_IN_MEMORY", 3)
    monkeypatch.setattr(deletions, "DELETIONS_IN_MEMORY", 0)
    src, out = str(tmp_path / "src.parquet"), str(tmp_path / "out")
    docs, _ = _scenario(src, out)  # asserts 1 deleted, 19 present
    assert [(r["doc_id"], r["run_id"]) for r in _deletions(out)] == [("d02", "r2")]
    out_store = OutputStore(out)
    present = deletions.current_ids(out_store)
    assert present is not None and present.to_pylist() == sorted(docs)
    docs["d02"] = _text(2)  # back, and d05 gone
    del docs["d05"]
    _write(src, docs)
    report = _run(_config(src, out, "r3"))
    assert report["deletions"] == {"status": "recorded", "deleted": 1, "present": 19}
    assert [(r["doc_id"], r["run_id"]) for r in _deletions(out)] == [("d02", "r2"), ("d05", "r3")]


def test_no_deletions_from_a_partial_listing(tmp_path: Path) -> None:
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    os.makedirs(src)
    for i in range(6):
        (Path(src) / f"doc{i}.txt").write_text(_text(i))
    _run(_config(src, out, "r1"))
    os.remove(Path(src) / "doc0.txt")
    # a modified window reads part of the source: nothing recorded, snapshot kept
    windowed = _run(_config(src, out, "r2", modified_since="2000-01-01"))
    assert windowed["deletions"]["status"] == "skipped"
    # a different glob is another listing: a new baseline, nothing recorded
    globbed = _run(_config(src, out, "r3", glob="doc*.txt"))
    assert globbed["deletions"]["status"] == "baseline"
    assert _deletions(out) == []
    # an input that cannot be read and names no document (a link loop): skipped
    os.remove(Path(src) / "doc4.txt")
    (Path(src) / "docloop.txt").symlink_to("docloop.txt")
    broken = _run(_config(src, out, "r4", glob="doc*.txt"))
    assert broken["deletions"]["status"] == "skipped", broken["deletions"]
    assert _deletions(out) == []
    os.remove(Path(src) / "docloop.txt")
    # the same listing as the baseline, doc4 gone: recorded
    ok = _run(_config(src, out, "r5", glob="doc*.txt"))
    assert ok["deletions"]["status"] == "recorded"
    assert [r["doc_id"] for r in _deletions(out)] == ["doc4.txt"]


def test_compact_refuses_while_a_run_holds_the_output(tmp_path: Path) -> None:
    src, out = str(tmp_path / "src.parquet"), str(tmp_path / "out")
    _scenario(src, out)
    with RunLease(OutputStore(out), "live-run").acquire(), pytest.raises(LockedError):
        compact(out)
    proc = subprocess.run(
        [CLI, "compact", "--output", str(tmp_path / "nothing-here")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "not an output" in proc.stderr


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pipeline import sinks
    from pipeline.compact import compact

    kill_at = int(sys.argv[2])
    calls = [0]

    def counting(name):
        original = getattr(sinks.LocalStore, name)
        def wrapper(self, *a, **kw):
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, *a, **kw)
        setattr(sinks.LocalStore, name, wrapper)

    for name in ("stage_parquet", "write_json", "publish", "delete"):
        counting(name)
    compact(sys.argv[1], part_rows=7)
    print("COMPLETED", calls[0])
    """
)


def test_compact_killed_at_every_step_then_run_again(tmp_path: Path) -> None:
    src, base = str(tmp_path / "src.parquet"), str(tmp_path / "base")
    docs, _ = _scenario(src, base)
    import shutil

    completed = False
    kill_at = 1
    killed = 0
    while not completed:
        out = str(tmp_path / f"out-{kill_at}")
        shutil.copytree(base, out, symlinks=True)
        proc = subprocess.run(
            [sys.executable, "-c", _KILLER, out, str(kill_at)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "OCI_GENAI_BATCH_LEASE_TTL": "600"},
        )
        if "COMPLETED" in proc.stdout:
            completed = True
        else:
            assert proc.returncode == -9, proc.stderr[-2000:]
            killed += 1
        # whatever instant it died at, a compaction run again leaves the current rows
        compact(out, part_rows=7)
        _assert_current(out, docs)
        assert _dataset(out, "failures", ["doc_id"]).num_rows == 0
        assert not [p for p in Path(out).rglob("*.tmp")]
        # and the index still skips every document
        backend = Backend()
        _run(_config(src, out, f"after-{kill_at}"), backend)
        assert backend.inputs == []
        shutil.rmtree(out)
        kill_at += 1
    assert killed >= 10


def test_deletions_and_compact_on_object_storage(
    bucket: Bucket,  # noqa: F811
    tmp_path: Path,
) -> None:
    src = str(tmp_path / "src.parquet")
    out = bucket.uri("compacted")
    docs = {f"d{i:02d}": _text(i) for i in range(12)}
    _write(src, docs)
    _run(_config(src, out, "r1", **bucket.job))
    docs["d01"] = _text(1, version=1)
    del docs["d02"]
    _write(src, docs)
    report = _run(_config(src, out, "r2", **bucket.job))
    assert report["deletions"]["deleted"] == 1
    assert [r["doc_id"] for r in _deletions(out)] == ["d02"]
    result = compact(out, part_rows=1000)
    assert result.deleted_documents == 1 and result.superseded + result.rewritten > 0
    _assert_current(out, docs)
    # nothing staged is left, and every visible part is named by a commit record
    staged = [k for k in bucket.keys("compacted/_state/staging/") if not k.endswith("/")]
    assert staged == []
    backend = Backend()
    _run(_config(src, out, "r3", **bucket.job), backend)
    assert backend.inputs == []
