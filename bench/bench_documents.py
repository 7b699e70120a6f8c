"""Reading documents as they are: PDF pages/s, DOCX and HTML documents/s, and the share of
chunks that start with navigation boilerplate on a real multi-page HTML manual, before
(the hand-written converter this replaced) and after (jusText).

    .venv/bin/python bench/bench_documents.py [--repeats 5]

The documents are the real ones of the tests (scripts/test-documents.sh fetches them into
.cache/test-documents): the Bash Reference Manual (PDF, 196 pages), a PostgreSQL manual
page that LibreOffice converted to DOCX, and the 1,169 pages of the PostgreSQL 15 manual
(HTML). Rates are through the directory source (``read_units``: listing, detection,
decoding, extraction, validation), one process, on this machine; the best of
``--repeats`` runs (HTML: of half as many). Chunks for the boilerplate share are the
local model's (WordPiece, 256 tokens, overlap 32). "Before" is the converter at commit
ab23453 (``git show``). Figures are printed and saved to ``bench/results/bench_documents.txt``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pipeline.chunking import ChunkSettings, chunk_document  # noqa: E402
from pipeline.genai.local import MiniLMTokenCounter  # noqa: E402
from pipeline.models import Document  # noqa: E402
from pipeline.sources import SourceOptions, list_units, read_units  # noqa: E402

CACHE = Path(ROOT) / ".cache" / "test-documents"
PG_HTML = CACHE / "root/usr/share/doc/postgresql-doc-15/html"
BASHREF = CACHE / "root/usr/share/doc/bash/bashref.pdf"
DOCX = CACHE / "converted/datatype-json.docx"
BEFORE_COMMIT = "ab23453"


def read_dir(root: Path) -> tuple[list[Document], int]:
    opts = SourceOptions()
    docs: list[Document] = []
    failed = 0
    for batch in read_units(list_units(str(root), opts), opts):
        docs.extend(batch.documents)
        failed += len(batch.failures)
    return docs, failed


def best_rate(root: Path, repeats: int, per_run: int) -> tuple[float, list[Document]]:
    best = float("inf")
    docs: list[Document] = []
    for _ in range(repeats):
        started = time.perf_counter()
        docs, failed = read_dir(root)
        best = min(best, time.perf_counter() - started)
        assert failed == 0, f"{failed} failures reading {root}"
    return per_run / best, docs


def nav_start(text: str) -> bool:
    """A chunk starting with the manual's navigation bar ("Prev Up ... Home Next")."""
    head = " ".join(text.split()[:12])
    return bool(re.match(r"(Prev\b|Next\b)", head)) or ("Prev" in head and "Home" in head)


def before_converter() -> types.ModuleType:
    source = subprocess.run(
        ["git", "-C", ROOT, "show", f"{BEFORE_COMMIT}:pipeline/sources/html_text.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType("html_text_before")
    exec(compile(source, "html_text_before", "exec"), module.__dict__)
    return module


def nav_share(docs: list[Document]) -> tuple[int, int]:
    counter = MiniLMTokenCounter()
    settings = ChunkSettings(256, 32)
    total = nav = 0
    for doc in docs:
        for chunk in chunk_document(doc, counter, settings):
            total += 1
            nav += nav_start(chunk.text)
    return nav, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    subprocess.run([os.path.join(ROOT, "scripts", "test-documents.sh"), str(CACHE)], check=True)
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        pdf_dir = Path(tmp) / "pdf"
        pdf_dir.mkdir()
        copies = 5
        for n in range(copies):
            shutil.copy(BASHREF, pdf_dir / f"bashref-{n}.pdf")
        read_dir(pdf_dir)  # the PDF child process starts once, not per run
        pages = 196 * copies
        rate, _ = best_rate(pdf_dir, args.repeats, pages)
        lines.append(f"PDF  (Bash Reference Manual, {pages} pages): {rate:,.0f} pages/s")
        docx_dir = Path(tmp) / "docx"
        docx_dir.mkdir()
        for n in range(50):
            shutil.copy(DOCX, docx_dir / f"json-{n}.docx")
        rate, docs = best_rate(docx_dir, args.repeats, 50)
        size = DOCX.stat().st_size
        lines.append(
            f"DOCX (a manual page, {size / 1000:.0f} KB, {len(docs[0].text):,} characters):"
            f" {rate:,.0f} documents/s"
        )
    pages_html = sorted(PG_HTML.glob("*.html"))
    rate, after_docs = best_rate(PG_HTML, max(1, args.repeats // 2), len(pages_html))
    mb = sum(p.stat().st_size for p in pages_html) / 1e6
    lines.append(
        f"HTML (PostgreSQL 15 manual, {len(pages_html):,} pages, {mb:.1f} MB):"
        f" {rate:,.0f} documents/s"
    )
    before = before_converter()
    before_best = float("inf")
    for _ in range(max(1, args.repeats // 2)):
        before_docs = []
        started = time.perf_counter()
        for path in pages_html:
            text, title = before.html_to_text(path.read_text(encoding="utf-8"))
            if text.strip():
                before_docs.append(Document(path.name, text, title))
        before_best = min(before_best, time.perf_counter() - started)
    before_rate = len(pages_html) / before_best
    lines.append(f"HTML, the hand-written converter before: {before_rate:,.0f} documents/s")
    for label, docs in (("before", before_docs), ("after", after_docs)):
        nav, total = nav_share(docs)
        lines.append(
            f"chunks starting with the navigation bar, {label}: {nav:,} of {total:,}"
            f" ({nav / total:.1%})"
        )
    with_heading = sum(1 for d in after_docs if d.sections)
    lines.append(
        f"HTML pages with their headings as sections, after: {with_heading:,} of"
        f" {len(after_docs):,} ({with_heading / len(after_docs):.0%})"
    )
    out = "\n".join(lines)
    print(out)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "bench_documents.txt"), "w") as fh:
        fh.write(out + "\n")


if __name__ == "__main__":
    main()
