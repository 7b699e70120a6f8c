"""What a document file is, by its first bytes as well as its name; and what the readers
of each format (PDF, DOCX, HTML, Markdown) give back.

Content wins over the name for the binary formats (a PDF named ``report.txt`` or
``report`` is a PDF; a gzip stream without ``.gz`` is unpacked first), and HTML is
recognised by its first tag when the name says nothing more specific than text. The few
signatures needed are checked here directly: ``%PDF-`` (within the first 1,024 bytes, as
readers accept), the ZIP local header (a DOCX is a ZIP holding ``word/document.xml``),
the OLE2 header of legacy Office files, and the gzip magic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.models import Section

# kinds a file can be read as
PLAIN, MARKDOWN, HTML, JSON, JSONL, PDF, DOCX = (
    "plain", "markdown", "html", "json", "jsonl", "pdf", "docx",
)  # fmt: skip
ZIP, OLE = "zip", "ole"  # containers recognised by content, read only as DOCX

MARKDOWN_SUFFIXES = (".md", ".markdown")
PDF_SUFFIXES = (".pdf",)
DOCX_SUFFIXES = (".docx",)

GZIP_MAGIC = b"\x1f\x8b"
_PDF_MAGIC = b"%PDF-"
_PDF_WINDOW = 1024
_ZIP_MAGIC = b"PK\x03\x04"
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# an HTML document's first markup, after white space, a byte order mark, an XML
# declaration and comments
_HTML_START = re.compile(
    rb"\A(?:\xef\xbb\xbf)?(?:\s|<\?xml[^>]*>|<!--.*?-->)*<(?:!doctype\s+html|html|head|body)\b",
    re.IGNORECASE | re.DOTALL,
)


def sniff(sample: bytes) -> str | None:
    """The format the first bytes of a file show, or None when they show none of ours."""
    if sample.startswith(GZIP_MAGIC):
        return "gzip"
    if _PDF_MAGIC in sample[:_PDF_WINDOW]:
        return PDF
    if sample.startswith(_ZIP_MAGIC):
        return ZIP
    if sample.startswith(_OLE_MAGIC):
        return OLE
    if _HTML_START.match(sample):
        return HTML
    return None


def resolve_kind(by_name: str, sniffed: str | None) -> str:
    """The kind to read a file as, from its name's kind and what its content shows."""
    if sniffed in (PDF, ZIP, OLE):
        # a DOCX is a ZIP: the reader checks it holds a Word document
        return by_name if sniffed == ZIP and by_name == DOCX else sniffed
    if sniffed == HTML and by_name == PLAIN:
        return HTML
    if by_name in (PDF, DOCX):
        # named as a binary format, but it is not one: read what it is (text or HTML)
        return HTML if sniffed == HTML else PLAIN
    return by_name


@dataclass(frozen=True)
class Extracted:
    """The text a reader found, its sections (see :class:`Section`) and a title."""

    text: str
    sections: tuple[Section, ...] = ()
    title: str | None = None


class UnreadableDocument(Exception):
    """A document file that cannot be read as its format: a dead-letter row.

    ``error_class``: ``CorruptDocument``, ``EncryptedDocument``, ``NoTextLayer``,
    ``UnsupportedFormat``, ``DocumentTooLarge``, ``ParseTimeout`` or ``ParserCrashed``;
    ``reason`` follows "file X: " ("it is encrypted (needs a password)")."""

    def __init__(self, error_class: str, reason: str) -> None:
        super().__init__(reason)
        self.error_class = error_class
        self.reason = reason


SEPARATOR = " > "


class HeadingPath:
    """The path of headings in effect while a document is read in order."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []

    def enter(self, level: int, title: str) -> str | None:
        """A heading of ``level`` (1 = top) was read: the path it opens (None while every
        heading in effect is empty)."""
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, " ".join(title.split())))
        return self.path()

    def path(self) -> str | None:
        return SEPARATOR.join(t for _, t in self._stack if t) or None
