"""Hostile sources: link loops, links out of the source, undecodable names, corrupt
archives and corrupt Parquet, each as real files on disk; and duplicate ids across the
files and shards of a run."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import JobConfig
from pipeline.errors import SourceError
from pipeline.models import Document, Failure, SourceBatch
from pipeline.runner import ShardSpec, plan, source_options
from pipeline.sinks import OutputStore
from pipeline.sources import Duplicates, SourceOptions, list_units, read_units
from pipeline.sources.duplicates import duplicates_path
from tests.conftest import CLI, ROOT

# ----------------------------------------------------------------------------- helpers


def read(
    uri: Path | str, duplicates: Duplicates | None = None, **options: Any
) -> tuple[list[Document], list[Failure]]:
    opts = SourceOptions(**options)
    units = list_units(str(uri), opts)
    return collect(read_units(units, opts, duplicates=duplicates))


def collect(batches: Iterable[SourceBatch]) -> tuple[list[Document], list[Failure]]:
    docs: list[Document] = []
    fails: list[Failure] = []
    for batch in batches:
        docs.extend(batch.documents)
        fails.extend(batch.failures)
    return docs, fails


def by_class(fails: Iterable[Failure]) -> dict[str, list[Failure]]:
    out: dict[str, list[Failure]] = {}
    for f in fails:
        out.setdefault(f.error_class, []).append(f)
    return out


def write_docs(root: Path, names: Iterable[str]) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"the text of {name}\n", encoding="utf-8")


def write_rows(path: Path, ids: list[str], *, row_group_size: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    texts = [f"document {i}: " + "words of some length " * 20 for i in ids]
    pq.write_table(pa.table({"doc_id": ids, "text": texts}), path, row_group_size=row_group_size)
    return path


def corrupt_row_group(path: Path, group: int, column: int = 1) -> None:
    """Overwrite bytes in the middle of one column chunk's data pages."""
    meta = pq.ParquetFile(path).metadata.row_group(group).column(column)
    start = meta.dictionary_page_offset if meta.has_dictionary_page else meta.data_page_offset
    end = start + meta.total_compressed_size
    middle = (meta.data_page_offset + end) // 2
    with open(path, "r+b") as fh:
        fh.seek(middle - 32)
        fh.write(b"\xff" * 64)


def list_in_subprocess(uri: Path, **options: Any) -> list[dict[str, Any]]:
    """``list_units`` in a child with a timeout: a listing that never ends fails the test
    (and is killed) instead of hanging the suite while its memory grows."""
    code = (
        "import json, sys, dataclasses\n"
        "from pipeline.sources import SourceOptions, list_units\n"
        "units = list_units(sys.argv[1], SourceOptions(**json.loads(sys.argv[2])))\n"
        "print(json.dumps([dataclasses.asdict(u) for u in units]))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(uri), json.dumps(options)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    units: list[dict[str, Any]] = json.loads(res.stdout)
    return units


# ----------------------------------------------------------------------- links and loops


def test_directory_link_loops_end_and_each_file_is_read_once(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_docs(src, ["a.txt", "sub/b.txt", "sub/deeper/c.md"])
    (src / "sub" / "deeper" / "up").symlink_to("../..")  # a loop two levels up
    (src / "sub" / "again").symlink_to(src / "sub")  # a loop to its own directory
    units = list_in_subprocess(src)
    kinds = sorted((u["kind"], u["error_class"]) for u in units)
    assert kinds == [("failed", "SymlinkLoop")] * 2 + [("file", None)] * 3
    docs, fails = read(src)
    assert sorted(d.doc_id for d in docs) == ["a.txt", "sub/b.txt", "sub/deeper/c.md"]
    loops = by_class(fails)["SymlinkLoop"]
    assert {f.source for f in loops} == {str(src / "sub/deeper/up"), str(src / "sub/again")}
    assert all(f.permanent and "loop" in f.message for f in loops)


def test_self_link_does_not_multiply_one_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_docs(src, ["only.txt"])
    os.symlink(".", src / "self")
    docs, fails = read(src)
    assert [d.doc_id for d in docs] == ["only.txt"]
    assert [(f.error_class, f.source) for f in fails] == [("SymlinkLoop", str(src / "self"))]


def test_aliases_inside_the_source_are_read_once_under_their_real_path(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_docs(src, ["real/doc.txt", "z.txt"])
    os.symlink("real", src / "a_alias")  # sorts before "real": the real path still wins
    os.symlink("z.txt", src / "b_link.txt")
    os.link(src / "z.txt", src / "z_hard.txt")  # two real paths: the first in order wins
    docs, fails = read(src)
    assert sorted(d.doc_id for d in docs) == ["real/doc.txt", "z.txt"]
    assert fails == []


def test_links_out_of_the_source_are_not_followed_unless_asked(tmp_path: Path) -> None:
    outside = tmp_path / "secrets"
    write_docs(outside, ["key.txt", "dir/more.txt"])
    src = tmp_path / "src"
    write_docs(src, ["mine.txt"])
    os.symlink(outside / "key.txt", src / "key.txt")
    os.symlink(outside / "dir", src / "dir")
    os.symlink(tmp_path / "nowhere.txt", src / "dangling.txt")
    docs, fails = read(src)
    assert [d.doc_id for d in docs] == ["mine.txt"]
    groups = by_class(fails)
    outside_rows = groups["LinkOutsideSource"]
    assert sorted(f.source or "" for f in outside_rows) == [str(src / "dir"), str(src / "key.txt")]
    assert all("--follow-links" in f.message and f.permanent for f in outside_rows)
    assert [f.source for f in groups["BrokenLink"]] == [str(src / "dangling.txt")]
    assert all("secret" not in d.text for d in docs)

    docs, fails = read(src, follow_links=True)
    assert sorted(d.doc_id for d in docs) == ["dir/more.txt", "key.txt", "mine.txt"]
    assert [f.error_class for f in fails] == ["BrokenLink"]


def test_a_source_of_only_outside_links_is_refused_with_the_reason(tmp_path: Path) -> None:
    write_docs(tmp_path / "elsewhere", ["x.txt"])
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(tmp_path / "elsewhere" / "x.txt", src / "x.txt")
    with pytest.raises(SourceError, match=r"no usable files.*outside the source"):
        list_units(str(src), SourceOptions())


# ---------------------------------------------------------------------- undecodable names


def test_a_file_name_that_is_not_utf8_is_one_failure_row(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_docs(src, ["good.txt"])
    bad = os.fsencode(src) + b"/caf\xe9.txt"
    with open(bad, "wb") as fh:
        fh.write(b"latin-1 named file\n")
    units = list_units(str(src), SourceOptions())
    assert [u.kind for u in units] == ["failed", "file"]  # by path: caf\xe9 < good
    orjson.dumps([u.__dict__ for u in units])  # plans travel as JSON (XCom)
    docs, fails = read(src)
    assert [d.doc_id for d in docs] == ["good.txt"]
    assert [(f.error_class, f.permanent) for f in fails] == [("UndecodableName", True)]
    assert fails[0].source == f"{src}/caf\\xe9.txt"
    assert "not valid UTF-8" in fails[0].message


# -------------------------------------------------------------------------- corrupt gzip


def test_a_corrupt_gzip_is_a_permanent_failure(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_docs(src, ["fine.txt"])
    packed = gzip.compress(b"a long line of text\n" * 500)
    (src / "cut.txt.gz").write_bytes(packed[: len(packed) // 2])
    (src / "crc.txt.gz").write_bytes(packed[:-8] + b"\x00" * 8)
    (src / "fake.txt.gz").write_bytes(b"this was never gzip")
    lines = "".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(2000))
    packed_lines = gzip.compress(lines.encode())
    (src / "cut.jsonl.gz").write_bytes(packed_lines[: len(packed_lines) // 2])
    docs, fails = read(src)
    assert "fine.txt" in [d.doc_id for d in docs]
    corrupt = by_class(fails)["CorruptArchive"]
    assert sorted(f.doc_id or "" for f in corrupt) == [
        "crc.txt.gz",
        "cut.jsonl.gz",
        "cut.txt.gz",
        "fake.txt.gz",
    ]
    assert all(f.permanent for f in corrupt)
    assert len(fails) == 4


# ----------------------------------------------------------------------- corrupt Parquet


def test_a_corrupt_parquet_file_of_a_dataset_is_one_failure_and_the_rest_is_read(
    tmp_path: Path,
) -> None:
    src = tmp_path / "ds"
    write_rows(src / "a.parquet", ["a0", "a1"])
    bad = write_rows(src / "b.parquet", ["b0", "b1"])
    cut = write_rows(src / "c.parquet", ["c0", "c1"])
    write_rows(src / "d.parquet", ["d0"])
    bad.write_bytes(b"garbage" * 100)
    cut.write_bytes(cut.read_bytes()[:-200])  # a truncated file: no footer
    docs, fails = read(src)
    assert [d.doc_id for d in docs] == ["a0", "a1", "d0"]
    assert [(f.error_class, f.source, f.permanent) for f in fails] == [
        ("CorruptParquet", str(bad), True),
        ("CorruptParquet", str(cut), True),
    ]
    assert all(str(f.source) in f.message for f in fails)
    # a single corrupt file is still refused: there is nothing else to read
    with pytest.raises(SourceError, match="cannot be read as Parquet"):
        list_units(str(bad), SourceOptions())


def test_a_corrupt_row_group_is_one_failure_with_its_rows_and_later_rows_are_read(
    tmp_path: Path,
) -> None:
    ids = [f"r{i:04d}" for i in range(4000)]
    src = write_rows(tmp_path / "big.parquet", ids, row_group_size=1000)
    assert pq.ParquetFile(src).metadata.num_row_groups == 4
    corrupt_row_group(src, 1)
    for _ in range(2):  # the same on every re-run
        docs, fails = read(src, batch_size=300)
        assert [d.doc_id for d in docs] == ids[:1000] + ids[2000:]
        assert [(f.error_class, f.source, f.permanent) for f in fails] == [
            ("CorruptRowGroup", f"{src}#rows=1000..1999", True)
        ]
        assert "rows 1000..1999" in fails[0].message and str(src) in fails[0].message


# ---------------------------------------------------------------------- duplicate ids


def test_duplicate_ids_across_files_of_one_shard_name_the_first_copy(tmp_path: Path) -> None:
    src = tmp_path / "ds"
    write_rows(src / "a.parquet", ["x", "y"])
    write_rows(src / "b.parquet", ["z", "x", "y"])
    docs, fails = read(src)
    assert [d.doc_id for d in docs] == ["x", "y", "z"]
    assert [(f.doc_id, f.error_class, f.source) for f in fails] == [
        ("x", "DuplicateId", f"{src / 'b.parquet'}#row=1"),
        ("y", "DuplicateId", f"{src / 'b.parquet'}#row=2"),
    ]
    assert f"already read from row 0 of {src / 'a.parquet'}" in fails[0].message


def _read_shards(config: JobConfig) -> tuple[list[ShardSpec], list[Document], list[Failure]]:
    specs = plan(config)
    duplicates = Duplicates.load(OutputStore(config.output), config.run_id)
    docs: list[Document] = []
    fails: list[Failure] = []
    for spec in specs:  # each shard on its own, with its own validator
        d, f = collect(read_units(spec.units, source_options(config), duplicates=duplicates))
        docs += d
        fails += f
    return specs, docs, fails


def test_duplicate_ids_across_shards_first_wins(tmp_path: Path) -> None:
    src = tmp_path / "ds"
    write_rows(src / "a.parquet", ["s", "t", "u"])
    write_rows(src / "b.parquet", ["v", "t", "w", "v"])
    out = str(tmp_path / "out")
    config = JobConfig(source=str(src), output=out, backend="hash", shards=2, run_id="r1")
    specs, docs, fails = _read_shards(config)
    assert len(specs) == 2 and {len(s.units) for s in specs} == {1}
    assert sorted(d.doc_id for d in docs) == ["s", "t", "u", "v", "w"]
    assert [(f.doc_id, f.error_class, f.source) for f in fails] == [
        ("t", "DuplicateId", f"{src / 'b.parquet'}#row=1"),
        ("v", "DuplicateId", f"{src / 'b.parquet'}#row=3"),
    ]
    assert f"row 1 of {src / 'a.parquet'}" in fails[0].message
    assert f"row 0 of {src / 'b.parquet'}" in fails[1].message
    saved = json.loads((tmp_path / "out" / duplicates_path("r1")).read_text())
    assert saved["rows"] == {
        str(src / "b.parquet"): [
            [1, f"row 1 of {src / 'a.parquet'}"],
            [3, f"row 0 of {src / 'b.parquet'}"],
        ]
    }

    # without a shared id no state is written, and a re-plan drops a stale list
    write_rows(src / "b.parquet", ["v", "w"])
    _, docs, fails = _read_shards(config)
    assert sorted(d.doc_id for d in docs) == ["s", "t", "u", "v", "w"] and fails == []
    assert not (tmp_path / "out" / duplicates_path("r1")).exists()


def test_integer_and_string_ids_are_the_same_id_across_shards(tmp_path: Path) -> None:
    src = tmp_path / "ds"
    src.mkdir()
    pq.write_table(pa.table({"doc_id": [1, 2], "text": ["one", "two"]}), src / "a.parquet")
    write_rows(src / "b.parquet", ["2", "3"])
    config = JobConfig(source=str(src), output=str(tmp_path / "o"), backend="hash", shards=2)
    _, docs, fails = _read_shards(config)
    assert sorted(d.doc_id for d in docs) == ["1", "2", "3"]
    assert [(f.doc_id, f.source) for f in fails] == [("2", f"{src / 'b.parquet'}#row=0")]
    assert docs[[d.doc_id for d in docs].index("2")].text == "two"  # the first copy


def test_one_shard_needs_no_scan_and_still_catches_duplicates(tmp_path: Path) -> None:
    src = tmp_path / "ds"
    write_rows(src / "a.parquet", ["s", "t"])
    write_rows(src / "b.parquet", ["t"])
    config = JobConfig(source=str(src), output=str(tmp_path / "o"), backend="hash", run_id="r")
    _, docs, fails = _read_shards(config)
    assert sorted(d.doc_id for d in docs) == ["s", "t"]
    assert [(f.doc_id, f.error_class) for f in fails] == [("t", "DuplicateId")]
    assert not (tmp_path / "o" / duplicates_path("r")).exists()


# ------------------------------------------------------------------------- end to end


def _run_cli(src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["run", "--source", str(src), "--output", str(out), "--backend", "hash", *extra]
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120)


def _failures(out: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pq.read_table(out / "failures").to_pylist()
    return rows


def _embedded_ids(out: Path) -> set[str]:
    return set(pq.read_table(out / "embeddings", columns=["doc_id"]).column(0).to_pylist())


def test_cli_run_over_a_hostile_directory(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_docs(outside, ["private.txt"])
    src = tmp_path / "src"
    write_docs(src, ["a.txt", "sub/b.md"])
    os.symlink(".", src / "self")
    os.symlink("..", src / "sub" / "loop")
    os.symlink(outside / "private.txt", src / "private.txt")
    with open(os.fsencode(src) + b"/\xff\xfe.txt", "wb") as fh:
        fh.write(b"odd name\n")
    packed = gzip.compress(b"text " * 1000)
    (src / "broken.txt.gz").write_bytes(packed[: len(packed) // 3])
    out = tmp_path / "out"
    res = _run_cli(src, out)
    assert res.returncode == 0, res.stderr
    assert _embedded_ids(out) == {"a.txt", "sub/b.md"}
    classes = sorted(r["error_class"] for r in _failures(out))
    assert classes == [
        "CorruptArchive",
        "LinkOutsideSource",
        "SymlinkLoop",
        "SymlinkLoop",
        "UndecodableName",
    ]
    res = _run_cli(src, tmp_path / "out2", "--follow-links")
    assert res.returncode == 0, res.stderr
    assert _embedded_ids(tmp_path / "out2") == {"a.txt", "sub/b.md", "private.txt"}


def test_cli_run_over_a_dataset_with_corrupt_parquet(tmp_path: Path) -> None:
    src = tmp_path / "ds"
    ids = [f"m{i:04d}" for i in range(3000)]
    middle = write_rows(src / "b.parquet", ids, row_group_size=1000)
    corrupt_row_group(middle, 1)
    write_rows(src / "a.parquet", ["a0", "a1"])
    bad = write_rows(src / "c.parquet", ["c0"])
    bad.write_bytes(bad.read_bytes()[:50])
    out = tmp_path / "out"
    res = _run_cli(src, out, "--no-summaries")
    assert res.returncode == 0, res.stderr
    assert _embedded_ids(out) == {"a0", "a1", *ids[:1000], *ids[2000:]}
    failures = sorted((r["error_class"], r["source"], r["permanent"]) for r in _failures(out))
    assert failures == [
        ("CorruptParquet", str(bad), True),
        ("CorruptRowGroup", f"{middle}#rows=1000..1999", True),
    ]


def test_copy_of_a_shared_file_counts_as_a_duplicate_not_a_crash(tmp_path: Path) -> None:
    # the same Parquet file twice (a copy) in two shards: one set of rows
    src = tmp_path / "ds"
    first = write_rows(src / "p1.parquet", ["k0", "k1"])
    shutil.copy(first, src / "p2.parquet")
    config = JobConfig(source=str(src), output=str(tmp_path / "o"), backend="hash", shards=2)
    _, docs, fails = _read_shards(config)
    assert sorted(d.doc_id for d in docs) == ["k0", "k1"]
    assert sorted((f.doc_id, f.error_class) for f in fails) == [
        ("k0", "DuplicateId"),
        ("k1", "DuplicateId"),
    ]
