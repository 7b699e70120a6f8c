"""Tests of pipeline.sources: real files under tmp_path, no mocks."""

from __future__ import annotations

import gzip
import itertools
import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.errors import SourceError
from pipeline.models import Document, Failure, SourceBatch
from pipeline.sources import SourceOptions, SourceUnit, list_units, read_source, read_unit

# ----------------------------------------------------------------------------- helpers


def write_parquet(path: Path, columns: dict[str, Any], **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = columns if isinstance(columns, pa.Table) else pa.table(columns)
    pq.write_table(table, path, **kwargs)
    return path


def collect(batches: Iterable[SourceBatch]) -> tuple[list[Document], list[Failure]]:
    docs: list[Document] = []
    fails: list[Failure] = []
    for batch in batches:
        docs.extend(batch.documents)
        fails.extend(batch.failures)
    return docs, fails


def read_all(uri: Path | str, **options: Any) -> tuple[list[Document], list[Failure]]:
    return collect(read_source(str(uri), SourceOptions(**options)))


def ids(docs: Iterable[Document]) -> list[str]:
    return [d.doc_id for d in docs]


def classes(fails: Iterable[Failure]) -> list[tuple[str | None, str]]:
    return [(f.doc_id, f.error_class) for f in fails]


# ------------------------------------------------------------------ bad inputs, Parquet


def test_null_text_is_rejected_and_neighbours_come_through(tmp_path: Path) -> None:
    src = write_parquet(
        tmp_path / "d.parquet", {"doc_id": ["a", "b", "c"], "text": ["x", None, "z"]}
    )
    docs, fails = read_all(src)
    assert ids(docs) == ["a", "c"]
    assert classes(fails) == [("b", "NullText")]
    failure = fails[0]
    assert failure.stage == "validate" and failure.permanent
    assert failure.source == f"{src}#row=1"
    assert failure.message == f"row 1 of {src}: text is null"


def test_empty_and_whitespace_text_are_rejected(tmp_path: Path) -> None:
    texts = ["ok", "", "   \n\t ", "fine"]
    src = write_parquet(tmp_path / "d.parquet", {"doc_id": ["a", "b", "c", "d"], "text": texts})
    docs, fails = read_all(src)
    assert ids(docs) == ["a", "d"]
    assert classes(fails) == [("b", "EmptyText"), ("c", "EmptyText")]
    assert fails[0].message == f"row 1 of {src}: text is empty"


def test_missing_ids_are_rejected_without_an_id(tmp_path: Path) -> None:
    src = write_parquet(
        tmp_path / "d.parquet",
        {"doc_id": ["a", None, "", "  ", "e"], "text": ["1", "2", "3", "4", "5"]},
    )
    docs, fails = read_all(src)
    assert ids(docs) == ["a", "e"]
    assert [(f.doc_id, f.error_class, f.source) for f in fails] == [
        (None, "MissingId", f"{src}#row=1"),
        (None, "MissingId", f"{src}#row=2"),
        (None, "MissingId", f"{src}#row=3"),
    ]
    assert "column 'doc_id'" in fails[0].message and "null" in fails[0].message


def test_duplicate_ids_first_wins_within_a_unit(tmp_path: Path) -> None:
    src = write_parquet(
        tmp_path / "d.parquet",
        {"doc_id": ["a", "b", "a", "a"], "text": ["first", "b", "second", "third"]},
    )
    (unit,) = list_units(str(src), SourceOptions())
    docs, fails = collect(read_unit(unit, SourceOptions()))
    assert [(d.doc_id, d.text) for d in docs] == [("a", "first"), ("b", "b")]
    assert [(f.doc_id, f.error_class, f.source) for f in fails] == [
        ("a", "DuplicateId", f"{src}#row=2"),
        ("a", "DuplicateId", f"{src}#row=3"),
    ]
    assert "first one is kept" in fails[0].message


def test_duplicate_ids_across_files_of_a_source(tmp_path: Path) -> None:
    write_parquet(tmp_path / "ds" / "part-0.parquet", {"doc_id": ["a", "b"], "text": ["1", "2"]})
    write_parquet(tmp_path / "ds" / "part-1.parquet", {"doc_id": ["b", "c"], "text": ["3", "4"]})
    docs, fails = read_all(tmp_path / "ds")
    assert [(d.doc_id, d.text) for d in docs] == [("a", "1"), ("b", "2"), ("c", "4")]
    assert classes(fails) == [("b", "DuplicateId")]
    assert fails[0].source == f"{tmp_path / 'ds' / 'part-1.parquet'}#row=0"
    # Read unit by unit (sharded), each unit only dedupes within itself.
    units = list_units(str(tmp_path / "ds"), SourceOptions())
    per_unit = [collect(read_unit(u, SourceOptions())) for u in units]
    assert [ids(d) for d, _ in per_unit] == [["a", "b"], ["b", "c"]]


def test_rejected_first_copy_does_not_shadow_a_good_later_one(tmp_path: Path) -> None:
    src = write_parquet(tmp_path / "d.parquet", {"doc_id": ["a", "a"], "text": ["", "good"]})
    docs, fails = read_all(src)
    assert [(d.doc_id, d.text) for d in docs] == [("a", "good")]
    assert classes(fails) == [("a", "EmptyText")]


def test_invalid_utf8_in_a_binary_text_column(tmp_path: Path) -> None:
    mostly_ok = b"x" * 1000 + b"\xff"  # 1 bad byte in 1001: kept
    mostly_bad = b"ab\xff\xfe\xfd cd"  # 3 of 8: rejected
    src = write_parquet(
        tmp_path / "d.parquet",
        {
            "doc_id": ["ok", "lossy", "bad"],
            "text": pa.array([b"plain", mostly_ok, mostly_bad], pa.binary()),
        },
    )
    docs, fails = read_all(src)
    assert ids(docs) == ["ok", "lossy"]
    assert docs[1].text == "x" * 1000 + "\ufffd"
    assert classes(fails) == [("bad", "InvalidUtf8")]
    assert "not valid UTF-8" in fails[0].message


def test_document_too_large_is_rejected(tmp_path: Path) -> None:
    src = write_parquet(
        tmp_path / "d.parquet", {"doc_id": ["small", "big"], "text": ["x" * 10, "y" * 11]}
    )
    docs, fails = read_all(src, max_doc_chars=10)
    assert ids(docs) == ["small"]
    assert classes(fails) == [("big", "DocumentTooLarge")]
    assert "11 characters" in fails[0].message and "max_doc_chars" in fails[0].message


def test_integer_ids_are_converted_to_strings(tmp_path: Path) -> None:
    src = write_parquet(tmp_path / "d.parquet", {"doc_id": [7, 8, None], "text": ["a", "b", "c"]})
    docs, fails = read_all(src)
    assert ids(docs) == ["7", "8"]
    assert classes(fails) == [(None, "MissingId")]


def test_failure_message_names_the_row_and_file(tmp_path: Path) -> None:
    texts = ["t"] * 17 + [""] + ["t"] * 2
    src = write_parquet(tmp_path / "docs.parquet", {"doc_id": range(20), "text": texts})
    _, fails = read_all(src)
    assert [f.message for f in fails] == [f"row 17 of {src}: text is empty"]


# ------------------------------------------------------------------ Parquet sources


def test_parquet_file_directory_and_glob(tmp_path: Path) -> None:
    write_parquet(tmp_path / "data" / "a.parquet", {"doc_id": ["a1", "a2"], "text": ["1", "2"]})
    write_parquet(tmp_path / "data" / "b.parquet", {"doc_id": ["b1"], "text": ["3"]})
    (tmp_path / "data" / "_SUCCESS").write_text("")
    (tmp_path / "data" / "notes.md").write_text("not part of the dataset")

    assert ids(read_all(tmp_path / "data" / "a.parquet")[0]) == ["a1", "a2"]
    assert ids(read_all(tmp_path / "data")[0]) == ["a1", "a2", "b1"]
    assert ids(read_all(tmp_path / "data" / "b*.parquet")[0]) == ["b1"]

    units = list_units(str(tmp_path / "data"), SourceOptions())
    assert [(u.path, u.kind) for u in units] == [
        (str(tmp_path / "data" / "a.parquet"), "parquet"),
        (str(tmp_path / "data" / "b.parquet"), "parquet"),
    ]
    assert all(u.size > 0 for u in units)


def test_relative_glob_gives_absolute_unit_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_parquet(tmp_path / "data" / "x.parquet", {"doc_id": ["a"], "text": ["1"]})
    monkeypatch.chdir(tmp_path)
    (unit,) = list_units("data/*.parquet", SourceOptions())
    assert unit.path == str(tmp_path / "data" / "x.parquet")


def test_configurable_columns_and_passthrough(tmp_path: Path) -> None:
    stamp = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    src = write_parquet(
        tmp_path / "d.parquet",
        {
            "key": ["k1", "k2"],
            "body": ["hello", "world"],
            "headline": ["H1", None],
            "link": ["https://x/1", "https://x/2"],
            "changed": pa.array([stamp, None], pa.timestamp("ns", tz="UTC")),
            "lang": ["en", "de"],
            "score": [0.5, 1.5],
            "unused": ["u", "v"],
        },
    )
    options = dict(
        id_column="key",
        text_column="body",
        title_column="headline",
        uri_column="link",
        updated_at_column="changed",
        passthrough=("lang", "score"),
    )
    docs, fails = read_all(src, **options)
    assert fails == []
    assert docs == [
        Document("k1", "hello", "H1", "https://x/1", stamp, {"lang": "en", "score": 0.5}),
        Document("k2", "world", None, "https://x/2", None, {"lang": "de", "score": 1.5}),
    ]


def test_optional_columns_absent_are_none(tmp_path: Path) -> None:
    src = write_parquet(tmp_path / "d.parquet", {"doc_id": ["a"], "text": ["t"]})
    (doc,) = read_all(src)[0]
    assert (doc.title, doc.uri, doc.updated_at, doc.extra) == (None, None, None, {})


def test_missing_column_error_names_column_and_file(tmp_path: Path) -> None:
    src = write_parquet(tmp_path / "x.parquet", {"a": [1], "b": ["t"], "c": [2]})
    with pytest.raises(SourceError) as info:
        list_units(str(src), SourceOptions(text_column="b"))
    message = str(info.value)
    assert message == f"source {src} has no column 'doc_id' (columns: a, b, c); set --id-column"

    write_parquet(tmp_path / "ds" / "p0.parquet", {"doc_id": ["a"], "text": ["t"]})
    write_parquet(tmp_path / "ds" / "p1.parquet", {"doc_id": ["b"], "body": ["t"]})
    with pytest.raises(SourceError, match="has no column 'text'") as info:
        list_units(str(tmp_path / "ds"), SourceOptions())
    assert str(tmp_path / "ds" / "p1.parquet") in str(info.value)

    with pytest.raises(SourceError, match="has no column 'lang'"):
        list_units(str(src), SourceOptions(id_column="a", text_column="b", passthrough=("lang",)))


def test_text_column_of_wrong_type_is_a_source_error(tmp_path: Path) -> None:
    src = write_parquet(tmp_path / "x.parquet", {"doc_id": ["a"], "text": [1]})
    with pytest.raises(SourceError, match="text column 'text' has type int64"):
        list_units(str(src), SourceOptions())


def test_nonexistent_path_raises_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "data.parquet"
    with pytest.raises(SourceError, match="does not exist") as info:
        list_units(str(missing), SourceOptions())
    assert str(missing) in str(info.value)
    with pytest.raises(SourceError, match="does not exist"):
        list(read_source(str(tmp_path / "nope" / "*.parquet"), SourceOptions()))


def test_directory_without_usable_files_raises(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(SourceError, match="no usable files") as info:
        list_units(str(tmp_path / "empty"), SourceOptions())
    assert str(tmp_path / "empty") in str(info.value)


def test_row_range_units_cover_every_row_exactly_once(tmp_path: Path) -> None:
    n = 130_000
    src = write_parquet(
        tmp_path / "big.parquet",
        {"doc_id": pa.array(range(n)), "text": pa.array(["t"] * n)},
        row_group_size=20_000,
    )
    units = list_units(str(src), SourceOptions(batch_size=4096))
    assert len(units) > 1
    assert all(u.row_end is not None and u.row_end - u.row_start <= 50_000 for u in units)
    assert units[0].row_start == 0 and units[-1].row_end == n
    assert all(a.row_end == b.row_start for a, b in itertools.pairwise(units))
    seen: list[str] = []
    for unit in units:
        seen.extend(ids(collect(read_unit(unit, SourceOptions(batch_size=4096)))[0]))
    assert seen == [str(i) for i in range(n)]


def test_unaligned_row_range_is_respected(tmp_path: Path) -> None:
    src = write_parquet(
        tmp_path / "d.parquet",
        {"doc_id": [f"d{i}" for i in range(100)], "text": ["t"] * 100},
        row_group_size=30,
    )
    unit = SourceUnit(str(src), "parquet", row_start=25, row_end=65)
    docs, _ = collect(read_unit(unit, SourceOptions(batch_size=7)))
    assert ids(docs) == [f"d{i}" for i in range(25, 65)]


def test_batches_are_bounded(tmp_path: Path) -> None:
    n = 10_000
    src = write_parquet(
        tmp_path / "d.parquet", {"doc_id": pa.array(range(n)), "text": pa.array(["t"] * n)}
    )
    batches = list(read_source(str(src), SourceOptions(batch_size=256)))
    assert max(len(b.documents) for b in batches) <= 256
    assert sum(len(b.documents) for b in batches) == n
    (unit,) = list_units(str(src), SourceOptions())
    assert max(len(b.documents) for b in read_unit(unit, SourceOptions(batch_size=256))) <= 256


def test_twenty_megabyte_document_is_accepted(tmp_path: Path) -> None:
    big = "word " * 4_000_000  # 20 MB
    src = write_parquet(tmp_path / "d.parquet", {"doc_id": ["big"], "text": [big]})
    (doc,) = read_all(src)[0]
    assert len(doc.text) == len(big)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "big.txt").write_text(big)
    docs, fails = read_all(tmp_path / "docs")
    assert fails == [] and len(docs[0].text) == len(big)


def test_hundred_thousand_character_line_is_accepted(tmp_path: Path) -> None:
    line = "a" * 100_000
    src = write_parquet(tmp_path / "d.parquet", {"doc_id": ["x"], "text": [line]})
    assert read_all(src)[0][0].text == line
    docs_dir = tmp_path / "docs"
    docs_dir.mkdir()
    (docs_dir / "line.txt").write_text(line)
    (docs_dir / "line.jsonl").write_text(json.dumps({"text": line}) + "\n")
    docs, fails = read_all(docs_dir)
    assert fails == []
    assert [(d.doc_id, len(d.text)) for d in docs] == [
        ("line.jsonl#1", 100_000),
        ("line.txt", 100_000),
    ]


# ------------------------------------------------------------------ directory sources


def test_all_directory_formats(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("plain text")
    (root / "b.md").write_text("# markdown")
    (root / "c.rst").write_text("restructured")
    (root / "d.text").write_text("text file")
    (root / "sub" / "e.html").write_text(
        "<html><head><title> The  Title </title><style>p {color: red}</style></head>"
        "<body><p>Fish &amp; chips\n   are   &lt;good&gt;</p><script>var x = 1;</script>"
        "<div>second&nbsp;line</div></body></html>"
    )
    (root / "f.htm").write_text("<p>no title here</p>")
    (root / "g.json").write_text(json.dumps({"text": "one object", "title": "G"}))
    (root / "h.json").write_text(json.dumps([{"text": "item zero"}, {"text": "item one"}]))
    (root / "i.jsonl").write_text('{"text": "line one"}\n\n{"text": "line three"}\n')
    with gzip.open(root / "j.txt.gz", "wt") as fh:
        fh.write("compressed text")
    with gzip.open(root / "k.jsonl.gz", "wt") as fh:
        fh.write('{"text": "compressed line"}\n')
    with gzip.open(root / "sub" / "l.html.gz", "wt") as fh:
        fh.write("<title>Zipped</title><p>compressed html</p>")
    (root / "skipped.csv").write_text("a,b\n1,2\n")
    (root / ".hidden.txt").write_text("hidden")

    docs, fails = read_all(root)
    assert fails == []
    by_id = {d.doc_id: d for d in docs}
    assert {k: (v.text, v.title) for k, v in by_id.items()} == {
        "a.txt": ("plain text", "a.txt"),
        "b.md": ("# markdown", "b.md"),
        "c.rst": ("restructured", "c.rst"),
        "d.text": ("text file", "d.text"),
        "sub/e.html": ("Fish & chips are <good>\nsecond line", "The Title"),
        "f.htm": ("no title here", "f.htm"),
        "g.json": ("one object", "G"),
        "h.json#0": ("item zero", None),
        "h.json#1": ("item one", None),
        "i.jsonl#1": ("line one", None),
        "i.jsonl#3": ("line three", None),
        "j.txt.gz": ("compressed text", "j.txt"),
        "k.jsonl.gz#1": ("compressed line", None),
        "sub/l.html.gz": ("compressed html", "Zipped"),
    }
    a = by_id["a.txt"]
    assert a.uri == str(root / "a.txt")
    mtime = datetime.fromtimestamp(os.stat(root / "a.txt").st_mtime, UTC)
    assert a.updated_at is not None and abs((a.updated_at - mtime).total_seconds()) < 1e-3
    # what each document of a file records, for --passthrough to carry (no etag locally)
    assert a.extra == {
        "uri": a.uri,
        "updated_at": a.updated_at,
        "size": len("plain text"),
        "etag": None,
        "md5": None,
    }
    assert by_id["j.txt.gz"].extra["size"] == (root / "j.txt.gz").stat().st_size


def test_glob_option_selects_files(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("a")
    (root / "b.txt").write_text("b")
    (root / "sub" / "c.md").write_text("c")
    (root / "notes.log").write_text("a log line")
    assert ids(read_all(root, glob="*.md")[0]) == ["a.md", "sub/c.md"]
    assert ids(read_all(root, glob="sub/*.md")[0]) == ["sub/c.md"]
    # A glob selects files of any extension explicitly.
    assert ids(read_all(root, glob="*.log")[0]) == ["notes.log"]
    # So does a glob in the URI; doc ids stay relative to the glob's directory.
    assert ids(read_all(root / "**" / "*.md")[0]) == ["a.md", "sub/c.md"]


def test_jsonl_id_field(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "r.jsonl").write_text(
        '{"id": "x", "body": "one", "lang": "en"}\n'
        '{"body": "no id"}\n'
        '{"id": 5, "body": "five"}\n'
        '{"id": "y"}\n'
        "not json\n"
    )
    options = dict(json_id_field="id", json_text_field="body", passthrough=("lang",))
    docs, fails = read_all(root, **options)
    assert [(d.doc_id, d.text, d.extra.get("lang")) for d in docs] == [
        ("x", "one", "en"),
        ("5", "five", None),
    ]
    assert [(f.doc_id, f.error_class, f.source) for f in fails] == [
        (None, "MissingId", f"{root / 'r.jsonl'}#line=2"),
        ("y", "NullText", f"{root / 'r.jsonl'}#line=4"),
        (None, "InvalidJson", f"{root / 'r.jsonl'}#line=5"),
    ]
    assert (
        fails[1].message
        == f"line 4 of {root / 'r.jsonl'}: has no field 'body' (set --json-text-field)"
    )


def test_binary_file_in_directory_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "good.txt").write_text("fine")
    (root / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (root / "noise.md").write_bytes(bytes(range(128, 256)) * 20)  # no NUL, but not text
    docs, fails = read_all(root)
    assert ids(docs) == ["good.txt"]
    assert [(f.doc_id, f.stage, f.error_class) for f in fails] == [
        ("image.txt", "read", "BinaryFile"),
        ("noise.md", "read", "BinaryFile"),
    ]
    assert fails[0].message == f"file {root / 'image.txt'} is binary, not text"


def test_invalid_utf8_text_files(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "lossy.txt").write_bytes("café au lait ".encode() * 20 + b"\xe9")  # 1 bad char
    (root / "latin1.txt").write_bytes("Le café est à côté".encode("latin-1"))  # 4 of 18 bad
    docs, fails = read_all(root)
    assert ids(docs) == ["lossy.txt"]
    assert docs[0].text.endswith("lait \ufffd")
    assert classes(fails) == [("latin1.txt", "InvalidUtf8")]
    assert fails[0].stage == "validate" and str(root / "latin1.txt") in fails[0].message


def test_empty_and_too_large_files(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "empty.txt").write_text("")
    (root / "blank.md").write_text("  \n\n ")
    (root / "script_only.html").write_text("<script>alert(1)</script>")
    (root / "big.txt").write_text("x" * 101)
    with gzip.open(root / "bigger.txt.gz", "wt") as fh:
        fh.write("y" * 1000)
    (root / "ok.txt").write_text("x" * 100)
    docs, fails = read_all(root, max_doc_chars=100)
    assert ids(docs) == ["ok.txt"]
    assert sorted(classes(fails)) == [
        ("big.txt", "DocumentTooLarge"),
        ("bigger.txt.gz", "DocumentTooLarge"),
        ("blank.md", "EmptyText"),
        ("empty.txt", "EmptyText"),
        ("script_only.html", "EmptyText"),
    ]


def test_overlong_jsonl_line_is_skipped_not_buffered(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    long_line = json.dumps({"text": "z" * 5000})
    (root / "r.jsonl").write_text(f'{{"text": "short"}}\n{long_line}\n{{"text": "after"}}\n')
    docs, fails = read_all(root, max_doc_chars=10)
    assert [d.text for d in docs] == ["short", "after"]
    assert [(f.error_class, f.source) for f in fails] == [
        ("DocumentTooLarge", f"{root / 'r.jsonl'}#line=2")
    ]


def test_duplicate_json_ids_across_files(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.jsonl").write_text('{"id": "x", "text": "first"}\n')
    (root / "b.json").write_text(json.dumps([{"id": "x", "text": "second"}]))
    docs, fails = read_all(root, json_id_field="id")
    assert [(d.doc_id, d.text) for d in docs] == [("x", "first")]
    assert [(f.doc_id, f.error_class, f.source) for f in fails] == [
        ("x", "DuplicateId", f"{root / 'b.json'}#item=0")
    ]


def test_many_small_files_are_merged_into_bounded_batches(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    for i in range(25):
        (root / f"{i:02}.txt").write_text(f"doc {i}")
    batches = list(read_source(str(root), SourceOptions(batch_size=10)))
    assert [len(b.documents) for b in batches] == [10, 10, 5]


# ------------------------------------------------------------------ filesystems


def test_explicit_pyarrow_and_fsspec_filesystems(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    memory.pipe("/bucket/docs/a.txt", b"from memory")
    memory.pipe("/bucket/docs/sub/b.md", b"nested")
    try:
        docs, fails = collect(read_source("/bucket/docs", SourceOptions(), filesystem=memory))
        assert fails == []
        assert [(d.doc_id, d.text) for d in docs] == [
            ("a.txt", "from memory"),
            ("sub/b.md", "nested"),
        ]
        units = list_units("memory://bucket/docs", SourceOptions(), filesystem=memory)
        docs, _ = collect(read_unit(units[1], SourceOptions(), filesystem=memory))
        assert ids(docs) == ["sub/b.md"]
    finally:
        memory.rm("/bucket", recursive=True)

    src = write_parquet(tmp_path / "d.parquet", {"doc_id": ["a"], "text": ["t"]})
    local = pafs.LocalFileSystem()
    assert ids(collect(read_source(str(src), SourceOptions(), filesystem=local))[0]) == ["a"]


def test_file_uri(tmp_path: Path) -> None:
    src = write_parquet(tmp_path / "d.parquet", {"doc_id": ["a"], "text": ["t"]})
    (unit,) = list_units(src.as_uri(), SourceOptions())
    assert unit.path == str(src)
    assert ids(collect(read_unit(unit, SourceOptions()))[0]) == ["a"]


# ------------------------------------------------------- duplicate ids beyond memory


def test_seen_ids_moved_to_disk_still_find_every_duplicate() -> None:
    from pipeline.sources.validate import SeenIds

    seen = SeenIds(in_memory=3)
    for i in range(10):
        assert seen.add(f"id-{i}", f"data/a.parquet#row={i}")
    assert seen.on_disk and len(seen) == 10
    for i in range(10):  # both the ids on disk and the ones still in memory
        assert not seen.add(f"id-{i}", "data/b.parquet#row=0")
        assert seen.where(f"id-{i}") == f"row {i} of data/a.parquet"
    assert seen.where("id-10") is None and len(seen) == 10
    seen.close()
    assert not seen.on_disk and len(seen) == 0


def test_duplicate_ids_are_the_same_when_the_ids_outgrow_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.sources import validate

    doc_ids = [f"d{i % 37}" for i in range(100)]  # each id 2 or 3 times, far apart
    write_parquet(tmp_path / "ds" / "part-0.parquet", {"doc_id": doc_ids[:60], "text": ["x"] * 60})
    write_parquet(tmp_path / "ds" / "part-1.parquet", {"doc_id": doc_ids[60:], "text": ["y"] * 40})
    in_memory = read_all(tmp_path / "ds")
    monkeypatch.setattr(validate, "SEEN_IDS_IN_MEMORY", 5)
    on_disk = read_all(tmp_path / "ds")
    assert on_disk == in_memory
    docs, fails = on_disk
    assert ids(docs) == [f"d{i}" for i in range(37)]
    assert len(fails) == 63 and {f.error_class for f in fails} == {"DuplicateId"}
    assert fails[-1].message == (
        f"row 39 of {tmp_path / 'ds' / 'part-1.parquet'}: document id 'd25' was already read"
        f" from row 25 of {tmp_path / 'ds' / 'part-0.parquet'}; the first one is kept"
    )
