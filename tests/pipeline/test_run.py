"""End to end through the runner: outputs, incremental re-runs, bad rows, dead letters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline.config import JobConfig
from pipeline.genai.base import EmbedResult
from pipeline.genai.hashembed import HashBackend
from pipeline.runner import commit, plan, run, run_shard
from tests.conftest import write_corpus


def _table(out: str, name: str) -> pa.Table:
    return ds.dataset(os.path.join(out, name), format="parquet").to_table()


def test_outputs_follow_the_contract(tmp_path, small_corpus) -> None:
    out = str(tmp_path / "out")
    result = run(JobConfig(source=small_corpus, output=out, backend="hash", dim=64, batch_docs=16))
    emb = _table(out, "embeddings")
    assert emb.schema.field("embedding").type == pa.list_(pa.float32(), 64)
    assert len(set(emb.column("doc_id").to_pylist())) == 60
    assert emb.num_rows == result.report["counts"]["chunks_embedded"] >= 60
    assert len(set(emb.column("chunk_id").to_pylist())) == emb.num_rows
    summ = _table(out, "summaries")
    assert sorted(summ.column("doc_id").to_pylist()) == sorted(
        pq.read_table(small_corpus).column("doc_id").to_pylist()
    )
    meta = pq.read_schema(next(f for f in (tmp_path / "out" / "embeddings").iterdir())).metadata
    fp = json.loads(meta[b"oci_genai_batch.embed_fingerprint_json"])
    assert fp["backend"] == "hash" and fp["dim"] == 64
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["counts"]["documents_read"] == 60
    assert report["counts"]["failures"] == 0


def test_rerun_is_incremental(tmp_path, stdlib_docs) -> None:
    rows = [dict(r) for r in stdlib_docs[:40]]
    src = write_corpus(str(tmp_path / "a.parquet"), rows)
    out = str(tmp_path / "out")
    first = run(JobConfig(source=src, output=out, backend="hash"))
    assert first.report["counts"]["documents_skipped"] == 0
    again = run(JobConfig(source=src, output=out, backend="hash"))
    assert again.report["calls"]["calls"] == 0
    assert again.report["counts"]["documents_skipped"] == 40
    # one changed, one new: exactly those two cost calls
    rows[3]["text"] = str(rows[3]["text"]) + "\nA new closing sentence."
    rows.append(
        {
            "doc_id": "brand-new",
            "title": None,
            "uri": None,
            "text": "A document added since the last run.",
        }
    )
    write_corpus(src, rows)
    third = run(JobConfig(source=src, output=out, backend="hash"))
    assert third.report["counts"]["documents_skipped"] == 39
    assert third.report["counts"]["documents_completed"] == 2
    # a different model re-embeds everything (no mixing of vector spaces)
    fourth = run(JobConfig(source=src, output=out, backend="hash", dim=128, summaries=False))
    assert fourth.report["counts"]["documents_skipped"] == 0
    assert fourth.report["counts"]["documents_completed"] == 41


def test_bad_rows_are_dead_lettered_and_neighbours_survive(tmp_path, stdlib_docs) -> None:
    good = [{"doc_id": r["doc_id"], "text": r["text"]} for r in stdlib_docs[:5]]
    bad = [
        {"doc_id": "empty", "text": ""},
        {"doc_id": "blank", "text": "   \n\t "},
        {"doc_id": "null", "text": None},
        {"doc_id": None, "text": "no id"},
        {"doc_id": good[0]["doc_id"], "text": "a duplicate id"},
        {"doc_id": "long-line", "text": "word " * 20_000},
    ]
    src = write_corpus(str(tmp_path / "mixed.parquet"), good + bad)
    out = str(tmp_path / "out")
    result = run(JobConfig(source=src, output=out, backend="hash", batch_docs=4))
    fails = _table(out, "failures").to_pylist()
    classes = sorted(f["error_class"] for f in fails)
    assert classes == ["DuplicateId", "EmptyText", "EmptyText", "MissingId", "NullText"]
    assert all(f["message"] and f["stage"] in ("read", "validate") for f in fails)
    embedded = set(_table(out, "embeddings").column("doc_id").to_pylist())
    assert embedded == {g["doc_id"] for g in good} | {"long-line"}
    assert result.report["counts"]["failures"] == 5


def test_outputs_readable_without_the_package(tmp_path, small_corpus) -> None:
    out = str(tmp_path / "out")
    run(JobConfig(source=small_corpus, output=out, backend="hash", dim=32))
    code = f"""
import sys, pyarrow.dataset as ds, duckdb
t = ds.dataset({out + "/embeddings"!r}, format='parquet').to_table()
assert t.schema.field('embedding').type.list_size == 32
con = duckdb.connect()
n = con.execute("select count(*), count(distinct doc_id), min(len(embedding)) "
               "from read_parquet('{out}/embeddings/**/*.parquet')").fetchone()
s = con.execute("select count(*) from read_parquet('{out}/summaries/*.parquet')").fetchone()
assert not any(m == 'pipeline' or m.startswith('pipeline.') for m in sys.modules)
print(t.num_rows, n[0], n[1], n[2], s[0])
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path), env=env
    )
    assert res.returncode == 0, res.stderr
    rows, n, docs, dim, summaries = map(int, res.stdout.split())
    assert rows == n > 0 and docs == 60 and dim == 32 and summaries == 60


def test_directory_with_bad_files_and_a_20mb_document(tmp_path) -> None:
    src = tmp_path / "docs"
    src.mkdir()
    (src / "good.txt").write_text("A plain text document about rivers and lakes.\n")
    (src / "notes.md").write_text("# Notes\n\nSome markdown notes about mountains.\n")
    (src / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8)
    (src / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e ".encode("latin-1") * 50)
    big = "The quick brown fox jumps over the lazy dog. " * (20_000_000 // 45 + 1)
    (src / "big.txt").write_text(big)
    (src / "oneline.txt").write_text("lorem ipsum dolor " * 6000)
    out = str(tmp_path / "out")
    result = run(JobConfig(source=str(src), output=out, backend="hash", batch_docs=2))
    fails = {f["doc_id"]: f["error_class"] for f in _table(out, "failures").to_pylist()}
    assert fails == {"image.txt": "BinaryFile", "latin1.txt": "InvalidUtf8"}
    emb = _table(out, "embeddings")
    per_doc: dict[str, int] = {}
    for d in emb.column("doc_id").to_pylist():
        per_doc[d] = per_doc.get(d, 0) + 1
    assert set(per_doc) == {"good.txt", "notes.md", "big.txt", "oneline.txt"}
    assert per_doc["big.txt"] > 10_000  # every part of the 20 MB document is embedded
    ends = emb.filter(pa.compute.equal(emb.column("doc_id"), "big.txt")).column("char_end")
    assert max(ends.to_pylist()) >= len(big.rstrip()) - 1
    assert result.report["counts"]["documents_completed"] == 4


class _CountingHash(HashBackend):
    """The hash backend, keeping every input it was really sent."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[str] = []

    async def embed(self, texts: list[str]) -> EmbedResult:
        self.inputs.extend(texts)
        return await super().embed(texts)


def _run_counting(config: JobConfig) -> tuple[dict, list[str]]:
    backend = _CountingHash()
    reports = [run_shard(s, config, backend=backend) for s in plan(config)]
    return commit(config, reports), backend.inputs


@pytest.mark.parametrize("cache_entries", [40, None])
def test_identical_chunks_are_sent_once_and_every_row_is_written(
    tmp_path, stdlib_docs, monkeypatch, cache_entries
) -> None:
    import pipeline.shard.pack

    if cache_entries:
        monkeypatch.setattr(pipeline.shard.pack, "_CACHE_ENTRIES", cache_entries)  # evictions
    # 600 documents sharing long identical passages (copies of 30 texts): the cache of
    # identical chunk texts across parts must never lose a vector it promised
    rows = [
        {"doc_id": f"copy-{i}", "text": f"{stdlib_docs[i % 30]['text']}\n\ncopy {i}"}
        for i in range(600)
    ]
    src = write_corpus(str(tmp_path / "copies.parquet"), rows)
    out = str(tmp_path / "out")
    config = JobConfig(source=src, output=out, backend="hash", batch_docs=16, summaries=False)
    report, sent = _run_counting(config)
    c = report["counts"]
    emb = _table(out, "embeddings")
    assert c["failures"] == 0
    assert c["chunks_embedded"] == c["chunks"] == emb.num_rows
    # what the backend really received is what the report says was sent
    assert len(sent) == c["chunks_sent"] < c["chunks"]
    distinct = set(emb.column("text").to_pylist())
    assert set(sent) == distinct  # every distinct chunk text reached the backend
    if cache_entries is None:
        assert len(sent) == len(distinct)  # and, with room in the cache, exactly once


def test_passthrough_columns_reach_the_outputs(tmp_path) -> None:
    rows = [
        {
            "id": f"x{i}",
            "body": f"Text of document {i}.",
            "lang": "en",
            "stars": i,
            "title": f"T{i}",
        }
        for i in range(5)
    ]
    src = write_corpus(str(tmp_path / "p.parquet"), rows)
    out = str(tmp_path / "out")
    run(
        JobConfig(
            source=src,
            output=out,
            backend="hash",
            id_column="id",
            text_column="body",
            passthrough=("lang", "stars"),
        )
    )
    emb = _table(out, "embeddings")
    assert emb.column("lang").to_pylist() == ["en"] * 5
    assert sorted(emb.column("stars").to_pylist()) == [0, 1, 2, 3, 4]
    summ = _table(out, "summaries")
    assert dict(
        zip(summ.column("doc_id").to_pylist(), summ.column("stars").to_pylist(), strict=True)
    ) == {f"x{i}": i for i in range(5)}
