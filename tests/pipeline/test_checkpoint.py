"""The commit protocol: what a kill between any two steps leaves behind, and recovery."""

from __future__ import annotations

import os

import pyarrow as pa

from pipeline.checkpoint import OK, Checkpoint, CommitRecord, part_name
from pipeline.sinks import OutputStore


def _record(shard: str, seq: int, files: dict[str, str]) -> CommitRecord:
    return CommitRecord(
        shard=shard,
        seq=seq,
        run_id="r1",
        committed_at=f"2026-01-01T00:00:0{seq}",
        embed_fp="fp",
        summary_fp=None,
        files=files,
        docs=[[f"doc{seq}", "h", OK, None]],
    )


def _parquet_files(root: str) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), root)
        for d, _, fs in os.walk(root)
        for f in fs
        if f.endswith(".parquet")
    )


def test_staged_part_is_invisible_until_committed(tmp_path) -> None:
    store = OutputStore(str(tmp_path))
    rel = f"embeddings/{part_name('s1', 0)}"
    store.stage_parquet(rel, pa.table({"x": [1, 2]}), {"k": "v"})
    assert _parquet_files(str(tmp_path)) == []  # staged: no *.parquet yet
    Checkpoint(store).commit(_record("s1", 0, {"embeddings": rel}))
    assert _parquet_files(str(tmp_path)) == [rel]


def test_recover_removes_uncommitted_and_rolls_committed_forward(tmp_path) -> None:
    store = OutputStore(str(tmp_path))
    ck = Checkpoint(store)
    committed = f"embeddings/{part_name('s1', 0)}"
    store.stage_parquet(committed, pa.table({"x": [1]}), {})
    # killed after the commit record, before the rename
    store.write_json(
        "_state/commits/s1/000000.json", _record("s1", 0, {"embeddings": committed}).to_json()
    )
    # killed before the commit record: staged only
    orphan = f"embeddings/{part_name('s1', 1)}"
    store.stage_parquet(orphan, pa.table({"x": [2]}), {})
    # a published file no commit names (object-store style orphan)
    stray = f"failures/{part_name('s1', 2)}"
    store.stage_parquet(stray, pa.table({"x": [3]}), {})
    store.publish(stray)
    # another shard's files are not touched
    other = f"embeddings/{part_name('s2', 0)}"
    store.stage_parquet(other, pa.table({"x": [4]}), {})

    next_seq, removed = ck.recover("s1")
    assert next_seq == 1
    assert sorted(removed) == sorted([f"embeddings/.{part_name('s1', 1)}.tmp", stray])
    assert _parquet_files(str(tmp_path)) == [committed]
    assert os.path.exists(tmp_path / "embeddings" / f".{part_name('s2', 0)}.tmp")
    # idempotent
    assert ck.recover("s1") == (1, [])


def test_index_follows_latest_commit_and_fingerprint(tmp_path) -> None:
    store = OutputStore(str(tmp_path))
    ck = Checkpoint(store)
    first = _record("s1", 0, {})
    first.docs = [["doc0", "h", OK, None], ["doc1", "h", OK, None]]
    ck.commit(first)
    rec = _record("s1", 1, {})
    rec.docs = [["doc0", "h2", OK, None]]  # doc0 changed and was redone later
    ck.commit(rec)
    index = ck.load_index("fp", None)
    assert not index.needs_embedding("doc1", "h")
    assert index.needs_embedding("doc0", "h")
    assert not index.needs_embedding("doc0", "h2")
    assert ck.load_index("other-model", None).needs_embedding("doc1", "h")
