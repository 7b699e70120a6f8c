"""DOCX (Word 2007 and later) text with python-docx: paragraphs and tables in document
order, headings as sections.

A heading is a paragraph whose style is ``Title`` or ``Heading N`` (python-docx gives the
built-in names whatever the language of Word), or any style with an outline level, the
way Word's navigation pane finds headings; ``Title`` is level 1 above ``Heading 1``.
A table becomes one line per row, cells joined by `` | `` (a merged cell, which
python-docx repeats, once). Headers, footers, comments and footnotes are left out.

A DOCX is a ZIP archive, so it is checked before parsing: a ZIP without
``word/document.xml`` is not a Word document, and one whose members would unpack to
more than the document size limit is refused (a decompression bomb).
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterator

from lxml import etree

from pipeline.models import Section
from pipeline.sources.formats import Extracted, HeadingPath, UnreadableDocument

_MAIN_PART = "word/document.xml"
_HEADING = re.compile(r"Heading (\d)")
_CELL_SEP = " | "
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


def _check_zip(data: bytes, max_bytes: int) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = set(zf.namelist())
            unpacked = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        reason = f"it is not a readable ZIP archive ({exc})"
        raise UnreadableDocument("CorruptDocument", reason) from None
    if _MAIN_PART not in names:
        raise UnreadableDocument(
            "UnsupportedFormat",
            "it is a ZIP archive but not a Word document (no word/document.xml);"
            " only DOCX is read from ZIP archives",
        )
    if unpacked > max_bytes:
        raise UnreadableDocument(
            "DocumentTooLarge",
            f"it unpacks to {unpacked:,} bytes, more than the limit of {max_bytes:,}",
        )


def _outline_level(style: object) -> int | None:
    """1-based heading level of a paragraph style, or None when it is body text."""
    seen = 0
    while style is not None and seen < 10:  # base styles chain; a loop must end
        name = getattr(style, "name", None) or ""
        if name == "Title":
            return 0
        match = _HEADING.fullmatch(name)
        if match:
            return int(match.group(1))
        element = getattr(style, "element", None)
        if element is not None:
            level = element.find(f"{_W}pPr/{_W}outlineLvl")
            if level is not None:
                value = level.get(f"{_W}val")
                if value is not None and value.isdigit() and int(value) < 9:
                    return int(value) + 1
        style = getattr(style, "base_style", None)
        seen += 1
    return None


def _row_text(row: object) -> str:
    cells: list[str] = []
    last = None
    for cell in getattr(row, "cells", ()):
        if cell._tc is last:  # a merged cell is listed once per grid column
            continue
        last = cell._tc
        cells.append(" ".join(cell.text.split()))
    return _CELL_SEP.join(cells).strip()


def _blocks(document: object) -> Iterator[tuple[str, int | None]]:
    """``(text, heading level or None)`` of each paragraph and table row, in order."""
    from docx.table import Table

    levels: dict[str | None, int | None] = {}  # by style id: a style lookup is slow
    for block in document.iter_inner_content():  # type: ignore[attr-defined]
        if isinstance(block, Table):
            for row in block.rows:
                text = _row_text(row)
                if text.replace("|", "").strip():
                    yield text, None
            continue
        text = block.text
        if not text.strip():
            continue
        style_id = block._p.style
        if style_id not in levels:
            levels[style_id] = _outline_level(block.style) if block.style is not None else None
        yield text.strip(), levels[style_id]


def read_docx(data: bytes, *, max_bytes: int) -> Extracted:
    """The text and headings of a DOCX; raises :class:`UnreadableDocument`."""
    _check_zip(data, max_bytes)
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(io.BytesIO(data))
        blocks = list(_blocks(document))
        title = " ".join((document.core_properties.title or "").split()) or None
    except (PackageNotFoundError, KeyError, ValueError, zipfile.BadZipFile, etree.Error) as exc:
        raise UnreadableDocument("CorruptDocument", f"it is not a readable DOCX ({exc})") from None
    parts: list[str] = []
    sections: list[Section] = []
    path = HeadingPath()
    offset = 0
    for text, level in blocks:
        if level is not None:
            name = path.enter(level + 1, text)
            sections.append(Section(offset, name, None, offset + len(text)))
        parts.append(text)
        offset += len(text) + 1
    return Extracted("\n".join(parts), tuple(sections), title)
