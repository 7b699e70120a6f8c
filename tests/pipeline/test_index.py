"""The compacted index: same skip decisions as reading every commit record, a start-up
that reads a bounded number of files however many runs came before, and recovery from a
kill in the middle of a compaction."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from pipeline import index as idx
from pipeline.checkpoint import FAILED, OK, Checkpoint, CommitRecord
from pipeline.config import JobConfig
from pipeline.runner import run
from pipeline.sinks import LocalStore, OutputStore
from tests.conftest import ROOT, write_corpus

# ---------------------------------------------------------------------- helpers


class CountingHandler(pafs.FileSystemHandler):
    """A local filesystem that counts the files opened for reading."""

    def __init__(self) -> None:
        self.fs = pafs.LocalFileSystem()
        self.reads: Counter[str] = Counter()

    def __eq__(self, other: object) -> bool:
        return other is self

    def __ne__(self, other: object) -> bool:
        return other is not self

    def get_type_name(self) -> str:
        return "counting-local"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self.fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise NotImplementedError

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.fs.copy_file(src, dest)

    def open_input_stream(self, path: str) -> Any:
        self.reads[path] += 1
        return self.fs.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        self.reads[path] += 1
        return self.fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        return self.fs.open_output_stream(path)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        return self.fs.open_append_stream(path)


def counting_store(root: str) -> tuple[LocalStore, CountingHandler]:
    handler = CountingHandler()
    store = LocalStore(root, filesystem=pafs.PyFileSystem(handler))
    assert isinstance(store, LocalStore)
    return store, handler


def reference_decisions(
    records: list[CommitRecord], fp: str, queries: list[tuple[str, str, bool]]
) -> list[bool]:
    """What the index answered before it was compacted: every record, in commit order,
    into a dict."""
    table: dict[str, tuple[str, str]] = {}
    for rec in sorted(records, key=lambda r: (r.committed_at, r.shard, r.seq)):
        for doc_id, chash, e_state, _ in rec.docs:
            if e_state and rec.embed_fp == fp:
                table[str(doc_id)] = (str(chash), e_state)
    out = []
    for doc_id, chash, retry in queries:
        entry = table.get(doc_id)
        out.append(entry is None or entry[0] != chash or (retry and entry[1] == FAILED))
    return out


def _record(shard: str, seq: int, at: str, docs: list[list[Any]], fp: str = "fp") -> CommitRecord:
    return CommitRecord(
        shard=shard,
        seq=seq,
        run_id="r",
        committed_at=at,
        embed_fp=fp,
        summary_fp=None,
        docs=docs,
    )


# ---------------------------------------------------------------------- units


def test_folded_ranges_merge_and_answer() -> None:
    f = idx.Folded()
    for seq in (0, 1, 2, 5, 3, 7, 6):
        f.add("s", seq)
    assert f.ranges == {"s": [[0, 3], [5, 7]]}
    assert ("s", 4) not in f and ("s", 5) in f and ("t", 0) not in f
    assert list(f.seqs("s")) == [0, 1, 2, 3, 5, 6, 7]


def test_partitions_follow_key_order() -> None:
    keys = sorted(idx.hash64(f"doc-{i}") for i in range(2000))
    parts = [idx.partition_of(k) for k in keys]
    assert parts == sorted(parts)
    assert set(parts) == set(range(idx.PARTITIONS))


def test_same_decisions_as_reading_every_record(tmp_path) -> None:
    """Random histories (changed texts, failures, two fingerprints, several shards, ties
    in commit time), compacted at random points: the lookup answers exactly what the
    full scan of the records answers."""
    rng = random.Random(7)
    store = OutputStore(str(tmp_path))
    ck = Checkpoint(store)
    ids = [f"doc-{i}" for i in range(300)]
    records: list[CommitRecord] = []
    seqs: Counter[str] = Counter()
    for step in range(60):
        shard = rng.choice(["a", "b", "c"])
        at = f"2026-01-01T00:{step // 2:02d}:00+00:00"  # two records per instant: ties
        docs = [
            [d, f"h{rng.randrange(3)}", rng.choice([OK, OK, OK, FAILED]), None]
            for d in rng.sample(ids, 25)
        ]
        rec = _record(shard, seqs[shard], at, docs, fp=rng.choice(["fp", "fp", "fp2"]))
        seqs[shard] += 1
        ck.commit(rec)
        records.append(rec)
        if rng.random() < 0.15:
            ck.compact_index()
        queries = [(d, f"h{rng.randrange(3)}", rng.random() < 0.3) for d in ids]
        if step % 10 == 9:
            with ck.load_index("fp", None) as index:
                index.prefetch(d for d, _, _ in queries)
                got = [index.needs_embedding(d, h, retry) for d, h, retry in queries]
            assert got == reference_decisions(records, "fp", queries)
    assert idx.latest_manifest(store) is not None


def test_plain_fingerprint_and_summaries_keep_their_meaning(tmp_path) -> None:
    store = OutputStore(str(tmp_path))
    ck = Checkpoint(store)
    old = _record("s", 0, "2026-01-01T00:00:00+00:00", [["plain", "h", OK, None]], fp="old")
    new = _record("s", 1, "2026-01-02T00:00:00+00:00", [["x", "h", OK, OK]], fp="new")
    new.summary_fp = "sfp"
    for rec in (old, new):
        ck.commit(rec)
    for compacted in (False, True):
        if compacted:
            assert ck.compact_index() is not None
        with ck.load_index("new", "sfp", "old") as index:
            assert len(index) == 1
            assert not index.needs_embedding("plain", "h")  # rows from before sections
            assert index.needs_embedding("plain", "h", sectioned=True)
            assert index.needs_embedding("plain", "changed")
            assert not index.needs_embedding("x", "h") and not index.needs_summary("x", "h")
        with ck.load_index("new", "other") as index:
            assert index.needs_summary("x", "h")  # another prompt: summarized again


def test_a_folded_record_deleted_by_dataset_compaction_stops_counting(tmp_path) -> None:
    """``pipeline.compact`` deletes superseded records (a document deleted from the
    source, an old text): what they said must not stay "done" in the index."""
    store = OutputStore(str(tmp_path))
    ck = Checkpoint(store)
    ck.commit(_record("s", 0, "2026-01-01T00:00:00", [["gone", "h", OK, None]]))
    ck.commit(_record("s", 1, "2026-01-02T00:00:00", [["kept", "h", OK, None]]))
    assert ck.compact_index() is not None
    with ck.load_index("fp", None) as index:
        assert not index.needs_embedding("gone", "h")
    store.delete("_state/commits/s/000000.json")
    with ck.load_index("fp", None) as index:
        assert index.needs_embedding("gone", "h")
        assert not index.needs_embedding("kept", "h")
    assert ck.recover("s") == (2, [])  # the kept part stays; seq 0 is never reused
    rebuilt = ck.compact_index()
    assert rebuilt is not None and rebuilt.generation == 2 and rebuilt.records == 1
    with ck.load_index("fp", None) as index:
        assert index.needs_embedding("gone", "h") and not index.needs_embedding("kept", "h")


# ---------------------------------------------------------------------- runs


def _corpus(path: str, texts: dict[str, str]) -> str:
    return write_corpus(path, [{"doc_id": k, "text": v} for k, v in texts.items()])


def _startup_reads(out: str) -> tuple[int, int]:
    """(files a shard's start-up opens: recover + load_index, commit records among them)."""
    manifest = idx.latest_manifest(OutputStore(out))
    assert manifest is not None
    (embed,) = [t.removeprefix("embed-") for t in manifest.tables if t.startswith("embed-")]
    (summary,) = [t.removeprefix("summary-") for t in manifest.tables if t.startswith("summary")]
    store, handler = counting_store(out)
    ck = Checkpoint(store)
    shard = sorted(os.listdir(os.path.join(out, "_state", "commits")))[-1]
    ck.recover(shard)
    with ck.load_index(embed, summary) as index:
        assert len(index) == 120
    records = sum(n for p, n in handler.reads.items() if "/_state/commits/" in p)
    return sum(handler.reads.values()), records


def test_startup_reads_a_bounded_number_of_files_after_50_runs(tmp_path, stdlib_docs) -> None:
    """50 nightly runs, each with a few changed documents and the shard count changing
    between runs: every run sends exactly the changed documents, and a shard's start-up
    opens as many files after 50 runs as after 1."""
    rng = random.Random(3)
    texts = {f"d{i:03d}": f"Copy {i}. {stdlib_docs[i % 40]['text'][:200]}" for i in range(120)}
    src = str(tmp_path / "docs.parquet")
    out = str(tmp_path / "out")
    reads: dict[int, tuple[int, int]] = {}
    for night in range(1, 51):
        changed = rng.sample(sorted(texts), 4) if night > 1 else sorted(texts)
        for d in changed if night > 1 else []:
            texts[d] = f"{texts[d]} (edited on night {night})"
        _corpus(src, texts)
        config = JobConfig(
            source=src,
            output=out,
            backend="hash",
            dim=16,
            part_rows=2,  # several commit records per run
            shards=1 + night % 3,
            run_id=f"night-{night:02d}",
        )
        report = run(config).report
        assert report["counts"]["chunks_sent"] == len(changed), night
        assert report["counts"]["documents_skipped"] == len(texts) - len(changed)
        if night in (1, 10, 50):
            reads[night] = _startup_reads(out)
    records = sum(len(f) for _, _, f in os.walk(os.path.join(out, "_state", "commits")))
    assert records > 100  # what reading every record would cost
    # the manifest (read by recover and by load_index) and the partition files of the
    # two tables asked for (embeddings, summaries): no commit record
    assert reads[50] == reads[10] == reads[1], reads
    total, from_records = reads[50]
    assert from_records == 0
    assert total <= 2 + 2 * idx.PARTITIONS
    # old generations are collected: the kept manifests and what they name
    gens = os.listdir(os.path.join(out, "_state", "index", "manifests"))
    assert len(gens) == idx.KEEP_MANIFESTS


def test_output_written_before_the_index_resumes_then_gets_one(tmp_path, stdlib_docs) -> None:
    src = write_corpus(str(tmp_path / "d.parquet"), stdlib_docs[:30])
    out = str(tmp_path / "out")
    config = JobConfig(source=src, output=out, backend="hash", dim=16, part_rows=5)
    run(config.replace(run_id="old"))
    # what an earlier version left: commit records only
    import shutil

    shutil.rmtree(os.path.join(out, "_state", "index"))
    store = OutputStore(out)
    assert idx.latest_manifest(store) is None
    again = run(config.replace(run_id="new")).report
    assert again["counts"]["chunks_sent"] == 0
    assert again["counts"]["documents_skipped"] == 30
    manifest = idx.latest_manifest(store)
    assert manifest is not None and manifest.generation == 1
    shard = next(iter(manifest.folded.ranges))
    assert list(manifest.folded.seqs(shard))  # the old records are folded in


# ---------------------------------------------------------------------- kills

_KILLED_COMPACTION = """
import os, sys, time
from pipeline import index
from pipeline.sinks import OutputStore

store = OutputStore(sys.argv[1])
real = type(store).write_parquet
count = 0

def slow(self, rel, table):
    global count
    real(self, rel, table)
    count += 1
    if count == int(sys.argv[2]):
        open(sys.argv[3], "w").close()
        time.sleep(60)

type(store).write_parquet = slow
index.compact(store)
"""


@pytest.mark.parametrize("after_files", [1, 9])
def test_kill_during_compaction_then_resume(tmp_path, stdlib_docs, after_files) -> None:
    """SIGKILL a compaction after some of its partition files are written (before its
    manifest): readers still see everything through the records, the next run pays for
    nothing, and the next compaction completes and removes the dead one's files."""
    src = write_corpus(str(tmp_path / "d.parquet"), stdlib_docs[:60])
    out = str(tmp_path / "out")
    config = JobConfig(source=src, output=out, backend="hash", dim=16, part_rows=7)
    run(config.replace(run_id="one"))
    # a second run whose records are not compacted yet: drop its manifest
    texts = {r["doc_id"]: r["text"] + "\nedited" for r in stdlib_docs[:60]}
    _corpus(src, texts)
    store = OutputStore(out)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(idx, "compact", lambda store: None)
        assert run(config.replace(run_id="two")).report["counts"]["chunks_sent"] >= 1
    assert idx.latest_manifest(store).generation == 1  # type: ignore[union-attr]

    marker = str(tmp_path / "marker")
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_COMPACTION, out, str(after_files), marker], env=env
    )
    deadline = time.monotonic() + 60
    while not os.path.exists(marker):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    dead = [
        os.path.join(d, f)
        for d, _, fs in os.walk(os.path.join(out, "_state", "index"))
        for f in fs
        if "g00000002-" in d
    ]
    assert len(dead) >= after_files
    assert idx.latest_manifest(store).generation == 1  # type: ignore[union-attr]

    # the records the dead compaction was folding still count
    report = run(config.replace(run_id="three")).report
    assert report["counts"]["chunks_sent"] == 0
    assert report["counts"]["documents_skipped"] == 60
    manifest = idx.latest_manifest(store)
    assert manifest is not None and manifest.generation == 2
    assert not any(os.path.exists(p) for p in dead)
    # a reader of **/*.parquet sees the datasets only
    for d, _, fs in os.walk(out):
        for f in fs:
            if f.endswith(".parquet"):
                assert os.path.relpath(d, out).split(os.sep)[0] in (
                    "embeddings",
                    "summaries",
                    "failures",
                )
    rows = ds.dataset(os.path.join(out, "embeddings"), format="parquet").to_table()
    assert rows.num_rows >= 60


def test_a_compaction_that_loses_the_race_removes_its_files(tmp_path, monkeypatch) -> None:
    store = OutputStore(str(tmp_path))
    ck = Checkpoint(store)
    ck.commit(_record("s", 0, "2026-01-01T00:00:00", [["a", "h", OK, None]]))
    real_latest = idx.latest_manifest
    first = idx.compact(OutputStore(str(tmp_path)))
    assert first is not None and first.generation == 1
    ck.commit(_record("s", 1, "2026-01-02T00:00:00", [["b", "h", OK, None]]))
    # a compactor that read the state before generation 1 existed
    monkeypatch.setattr(idx, "latest_manifest", lambda s: None)
    loser = OutputStore(str(tmp_path))
    assert idx.compact(loser) is None
    monkeypatch.setattr(idx, "latest_manifest", real_latest)
    left = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "_state" / "index") for f in fs]
    assert not any(loser.writer in f for f in left)
    assert len([f for f in left if f.endswith(".idx")]) == 1
    # the winner's index plus the unfolded record: both documents are done
    with ck.load_index("fp", None) as index:
        assert not index.needs_embedding("a", "h") and not index.needs_embedding("b", "h")
    assert idx.compact(store) is not None  # and the next compaction folds seq 1
    with ck.load_index("fp", None) as index:
        assert not index.needs_embedding("b", "h")
