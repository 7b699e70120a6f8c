"""The commit protocol: what a kill between any two steps leaves behind, and recovery."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.checkpoint import OK, Checkpoint, CommitRecord, part_name
from pipeline.errors import LockedError
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
    record = _record("s1", 0, {"embeddings": committed})
    record.writer = store.writer
    store.write_json("_state/commits/s1/000000.json", record.to_json())
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
    assert sorted(removed) == sorted([store.temp_name(orphan), stray])
    assert _parquet_files(str(tmp_path)) == [committed]
    assert os.path.exists(os.path.join(str(tmp_path), store.temp_name(other)))
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


def test_recover_reads_what_earlier_versions_left(tmp_path) -> None:
    """Records without a ``writer`` and temporary files named ``.NAME.tmp``."""
    store = OutputStore(str(tmp_path))
    committed = f"embeddings/{part_name('s1', 0)}"
    orphan = f"embeddings/{part_name('s1', 1)}"
    for rel in (committed, orphan):
        store.stage_parquet(rel, pa.table({"x": [1]}), {})
        os.rename(
            os.path.join(str(tmp_path), store.temp_name(rel)),
            os.path.join(str(tmp_path), store.temp_name(rel, writer="")),
        )
    old = _record("s1", 0, {"embeddings": committed}).to_json()
    del old["writer"]
    store.write_json("_state/commits/s1/000000.json", old)
    next_seq, removed = Checkpoint(store).recover("s1")
    assert (next_seq, removed) == (1, [store.temp_name(orphan, writer="")])
    assert _parquet_files(str(tmp_path)) == [committed]


def test_two_writers_never_share_a_temp_name_or_a_commit(tmp_path) -> None:
    a, b = OutputStore(str(tmp_path)), OutputStore(str(tmp_path))
    rel = f"embeddings/{part_name('s1', 0)}"
    assert a.temp_name(rel) != b.temp_name(rel)
    a.stage_parquet(rel, pa.table({"x": [1]}), {})
    b.stage_parquet(rel, pa.table({"x": [2, 2]}), {})
    Checkpoint(a).commit(_record("s1", 0, {"embeddings": rel}))
    with pytest.raises(LockedError, match="part 0 was committed by another writer"):
        Checkpoint(b).commit(_record("s1", 0, {"embeddings": rel}))
    # the committed part is a's, whole; b's staged file is left for recovery to remove
    assert pq.read_table(os.path.join(str(tmp_path), rel)).column("x").to_pylist() == [1]
    assert Checkpoint(b).recover("s1") == (1, [b.temp_name(rel)])
