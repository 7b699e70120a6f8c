"""Compaction's plan (``pipeline.compact._Plan``, held in a temporary SQLite file) says
exactly what the definition in ``pipeline.compact``'s docstring says, computed here in
memory the plain way: on many random records with ties in commit time, duplicate
entries, documents whose newest record has no embed or summary state, empty states,
records without entries, failure rows with and without a document, and deleted ids,
some of which came back to the source."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.checkpoint import Checkpoint, CommitRecord
from pipeline.compact import _failure_keys, _Plan, _task, record_path
from pipeline.deletions import (
    DELETIONS,
    DELETIONS_SCHEMA,
    PRESENCE,
    deleted_ids,
    deletion_log_ids,
    present_ids,
    write_ids,
)
from pipeline.sinks import OutputStore

Key = tuple[str | None, str | None, str | None]


class _Reference:
    """The plan as the definition states it, every document in dictionaries."""

    def __init__(self, store: OutputStore, records: list[CommitRecord], deleted: set[str]):
        self.records = records
        self.deleted = deleted
        self.newest_hash: dict[str, str] = {}
        self.cur: dict[str, dict[str, int]] = {"embed": {}, "summary": {}}
        self.newest_fail: dict[tuple[str, str], int] = {}
        self.newest_place: dict[str, int] = {}
        self.fail_keys: dict[int, list[Key]] = {}
        for i, rec in enumerate(records):
            for doc, chash, e, s in rec.docs:
                assert doc is not None and chash is not None
                self.newest_hash[doc] = chash
                if e:
                    self.cur["embed"][doc] = i
                if s:
                    self.cur["summary"][doc] = i
            rel = rec.files.get("failures")
            if rel and store.exists(rel):
                keys = _failure_keys(store, rel)
                self.fail_keys[i] = keys
                for doc, stage, place in keys:
                    if doc is None:
                        self.newest_place[place or ""] = i
                    else:
                        self.newest_fail[(doc, _task(stage))] = i

    def _entry(self, i: int, doc: str, chash: str, task: str, state: str | None) -> str | None:
        if not state or doc in self.deleted:
            return None
        if self.cur[task].get(doc) != i or chash != self.newest_hash.get(doc):
            return None
        return state

    def kept_docs(self, i: int) -> list[list[str | None]]:
        out: list[list[str | None]] = []
        for doc, chash, e, s in self.records[i].docs:
            assert doc is not None and chash is not None
            ke = self._entry(i, doc, chash, "embed", e)
            ks = self._entry(i, doc, chash, "summary", s)
            if ke or ks:
                out.append([doc, chash, ke, ks])
        return out

    def failure_kept(self, i: int, doc: str | None, stage: str | None, place: str | None) -> bool:
        if doc is None:
            return self.newest_place.get(place or "") == i
        if doc in self.deleted:
            return False
        task = _task(stage)
        if self.newest_fail.get((doc, task)) != i:
            return False
        settled = self.cur[task].get(doc)
        return settled is None or settled <= i


def _build(store: OutputStore, rng: random.Random, n_records: int) -> None:
    docs = [f"d{k:03d}" for k in range(40)]
    seqs: dict[str, int] = {}
    for r in range(n_records):
        shard = rng.choice(["s0", "s1", "s2"])
        seq = seqs[shard] = seqs.get(shard, -1) + 1
        entries: list[list[str | None]] = []
        if rng.random() > 0.1:  # some records hold no entries
            for doc in rng.sample(docs, rng.choice([1, 1, 2, rng.randint(3, 12)])):
                e = rng.choice([None, "ok", "ok", "failed", ""])
                s = rng.choice([None, None, "ok", "failed", ""])
                entries.append([doc, rng.choice(["h1", "h2", "h3"]), e, s])
            if rng.random() < 0.2:  # the same document twice in one record
                again = list(entries[0])
                again[1] = rng.choice(["h1", "h2", "h3"])
                entries.append(again)
        files: dict[str, str] = {}
        if rng.random() < 0.4:
            rel = f"failures/part-{shard}-{seq:06d}.parquet"
            rows = []
            for _ in range(rng.randint(1, 4)):
                doc = rng.choice([None, *rng.sample(docs, 3)])
                rows.append(
                    {
                        "doc_id": doc,
                        "stage": rng.choice(["embed", "summarize", None]),
                        "source": rng.choice(["a.parquet", "b.parquet", None]),
                    }
                )
            pq.write_table(pa.Table.from_pylist(rows), store.path(rel), filesystem=store.fs)
            files["failures"] = rel
        rec = CommitRecord(
            shard=shard,
            seq=seq,
            run_id=f"r{r}",
            committed_at=f"2024-01-01T00:00:{rng.randint(0, 9):02d}",  # ties on purpose
            embed_fp="fp",
            summary_fp=None,
            files=files,
            docs=entries,
            counts={"embeddings": len(entries)},
        )
        store.write_json(record_path(rec), rec.to_json())
    # deletions: some ids of the records, some never committed, some back in the source
    log = [*rng.sample(docs, 15), "never-committed"]
    store.fs.create_dir(store.path(DELETIONS), recursive=True)
    for name, ids in (("a", log[:8]), ("b", log[5:])):
        now = datetime.now(UTC)
        rows = [{"doc_id": d, "content_hash": None, "run_id": "r", "detected_at": now} for d in ids]
        table = pa.Table.from_pylist(rows, schema=DELETIONS_SCHEMA)
        pq.write_table(table, store.path(f"{DELETIONS}/deletions-{name}.parquet"))
    back = rng.sample(log, 5)
    write_ids(store, "_state/presence/p.arrow", [pa.array(back[:2]), pa.array(back[2:])])
    store.write_json(PRESENCE, {"run_id": "p", "ids": "_state/presence/p.arrow"})


@pytest.mark.parametrize("seed", range(12))
def test_the_plan_on_disk_matches_the_definition(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = OutputStore(str(tmp_path / "out"))
    store.fs.create_dir(store.path("failures"), recursive=True)
    _build(store, rng, n_records=rng.choice([1, 5, 60]))
    records = Checkpoint(store).records()
    deleted = set(deleted_ids(store).to_pylist())
    ref = _Reference(store, records, deleted)

    plan = _Plan()
    try:
        plan.load(Checkpoint(store).iter_records())
        gone = plan.compute(deletion_log_ids(store), present_ids(store))
        plan.load_failures(store)
        # the same order as Checkpoint.records(), headers without their docs
        assert [(r.shard, r.seq) for r in plan.records] == [(r.shard, r.seq) for r in records]
        assert all(not r.docs for r in plan.records)
        assert gone == sum(1 for d in deleted if d in ref.newest_hash)
        assert plan.fail_keys == ref.fail_keys
        for i, rec in enumerate(records):
            kept = ref.kept_docs(i)
            assert plan.kept_docs(i) == kept, i
            entries, n_kept, same = plan.counts(i)
            assert entries == len(rec.docs)
            assert n_kept == len(kept)
            assert (same == entries) == (kept == [list(d) for d in rec.docs]), i
            for key in ref.fail_keys.get(i, []):
                assert plan.failure_kept(i, *key) == ref.failure_kept(i, *key), (i, key)
    finally:
        plan.close()


def test_deletions_streamed_match_deleted_ids_without_a_snapshot(tmp_path: Path) -> None:
    store = OutputStore(str(tmp_path / "out"))
    store.fs.create_dir(store.path("failures"), recursive=True)
    _build(store, random.Random(99), n_records=10)
    store.delete(PRESENCE)
    assert present_ids(store) is None
    logged: list[Any] = [d for batch in deletion_log_ids(store) for d in batch.to_pylist()]
    assert set(logged) == set(deleted_ids(store).to_pylist())
