"""Directory sources: one file at a time, as plain text, Markdown, HTML, JSON, JSON
Lines, PDF or DOCX, each optionally gzip-compressed.

What a file is comes from its first bytes as well as its name (see
:mod:`pipeline.sources.formats`): a PDF without ``.pdf``, or a gzip stream without
``.gz``, is read as what it is. A file is read whole only up to the size a document may
have (``max_doc_chars`` × 4 bytes); JSON Lines files are streamed line by line, so a file
of any length is fine. Anything wrong with one file or line becomes a :class:`Failure`;
nothing here raises for bad input.
"""

from __future__ import annotations

import codecs
import gzip
import posixpath
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any, cast

import orjson
import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.models import Document, Failure, Section, SourceBatch
from pipeline.sources import formats
from pipeline.sources.batching import Batcher
from pipeline.sources.formats import Extracted, UnreadableDocument
from pipeline.sources.html_text import html_to_text
from pipeline.sources.location import relative
from pipeline.sources.markdown_text import markdown_sections
from pipeline.sources.objects import ObjectGone, Opened, oci_client_of, open_oci
from pipeline.sources.options import (
    GZIP_SUFFIX,
    HTML_SUFFIXES,
    JSON_SUFFIXES,
    JSONL_SUFFIXES,
    SourceOptions,
    SourceUnit,
)
from pipeline.sources.validate import (
    MAX_BYTES_PER_CHAR,
    Validator,
    coerce_datetime,
    coerce_id,
    decode_bytes,
)

_CHUNK = 1 << 20
_SNIFF = 8192
#: Share of undecodable bytes or control characters above which a file is binary
#: ("mostly non-text"). Lower would call short Latin-1 texts binary; those are better
#: reported as InvalidUtf8.
_BINARY_SHARE = 0.50
# Control characters that do occur in text files; every other one counts as binary.
_ODD = {c: None for c in range(32) if chr(c) not in "\t\n\r\f\b\x1b"} | {0xFFFD: None}
_READ_ERRORS = (OSError, EOFError, zlib.error, pa.ArrowException)
# What gzip raises for bad bytes: a bad header (BadGzipFile), a cut-off stream (EOFError),
# bad deflate data or a wrong CRC (zlib.error, BadGzipFile). Re-reading gives the same.
_CORRUPT_ARCHIVE = (gzip.BadGzipFile, EOFError, zlib.error)


def file_kind(name: str) -> tuple[str, bool]:
    """``(kind, gzipped)`` of a file name; kind is html, json, jsonl, markdown, pdf, docx
    or plain (the default, also for other extensions a glob selected explicitly)."""
    lower = name.lower()
    gzipped = lower.endswith(GZIP_SUFFIX)
    if gzipped:
        lower = lower[: -len(GZIP_SUFFIX)]
    if lower.endswith(HTML_SUFFIXES):
        return formats.HTML, gzipped
    if lower.endswith(JSONL_SUFFIXES):
        return formats.JSONL, gzipped
    if lower.endswith(JSON_SUFFIXES):
        return formats.JSON, gzipped
    if lower.endswith(formats.MARKDOWN_SUFFIXES):
        return formats.MARKDOWN, gzipped
    if lower.endswith(formats.PDF_SUFFIXES):
        return formats.PDF, gzipped
    if lower.endswith(formats.DOCX_SUFFIXES):
        return formats.DOCX, gzipped
    return formats.PLAIN, gzipped


class _Prefixed:
    """A stream whose first bytes were already read: ``head``, then the rest."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size is None or size < 0:
                data, self._head = self._head + self._rest.read(), b""
                return data
            data, self._head = self._head[:size], self._head[size:]
            return data
        return self._rest.read(size)


def looks_binary(sample: bytes) -> bool:
    """Whether the first bytes of a file are not text: a NUL byte, or more than half
    undecodable bytes and control characters. UTF-16 (with a byte order mark) is text."""
    if not sample or sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return False
    if b"\x00" in sample:
        return True
    # Incremental, so a character cut at the end of the sample does not count as bad.
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(sample, final=False)
    odd = len(text) - len(text.translate(_ODD))
    return odd > _BINARY_SHARE * max(len(text), 1)


@dataclass(frozen=True)
class _File:
    """What every document of one file shares."""

    path: str  # unit path, for messages, Failure.source and Document.uri
    doc_id: str  # relative to the source root
    name: str  # file name without .gz: the default title
    mtime: datetime | None
    size: int
    etag: str | None = None  # object stores
    md5: str | None = None

    def metadata(self) -> dict[str, Any]:
        """What each document of the file records in ``Document.extra`` (and so what
        ``passthrough`` can carry into the output rows): its path or URI, time
        modified, size in bytes, and the etag and md5 an object store gives."""
        return {
            "uri": self.path,
            "updated_at": self.mtime,
            "size": self.size,
            "etag": self.etag,
            "md5": self.md5,
        }


def read_file_unit(
    fs: pafs.FileSystem,
    fs_path: str,
    unit: SourceUnit,
    options: SourceOptions,
    validator: Validator,
) -> Iterator[SourceBatch]:
    """Yield the documents of one file, at most ``options.batch_size`` per batch."""
    batcher = Batcher(options.batch_size)
    for item in _items(fs, fs_path, unit, options, validator):
        full = batcher.add(item)
        if full is not None:
            yield full
    last = batcher.flush()
    if last is not None:
        yield last


def _read_failure(f: _File | str, error_class: str, message: str) -> Failure:
    path = f if isinstance(f, str) else f.path
    doc_id = None if isinstance(f, str) else f.doc_id
    # An I/O error may pass (object storage hiccup, a file being replaced): let a re-run
    # retry it. What the bytes are (binary) does not change.
    permanent = error_class != "ReadError"
    return Failure(doc_id, "read", error_class, message, permanent=permanent, source=path)


@contextmanager
def _open(fs: pafs.FileSystem, fs_path: str, unit: SourceUnit) -> Iterator[Opened]:
    """Open one file or object for streaming, with what its store says of it.

    Raises :class:`ObjectGone` when it no longer exists, OSError (and the pyarrow and
    gzip errors of ``_READ_ERRORS``) when it cannot be read; from object storage, an
    AuthError or SourceError when the credentials or the bucket are no longer good."""
    client = oci_client_of(fs)
    if client is not None:
        # one GetObject: its headers give size, etag and time modified (no HeadObject)
        listed = datetime.fromisoformat(unit.mtime) if unit.mtime else None
        with open_oci(client, fs_path, unit.path, unit.etag, listed) as opened:
            yield opened
        return
    info = fs.get_file_info(fs_path)
    if info.type != pafs.FileType.File:
        if isinstance(fs, pafs.LocalFileSystem):
            raise ObjectGone(f"file {unit.path} no longer exists", "ReadError")
        raise ObjectGone(f"object {unit.path} was listed but is gone (not found)")
    with fs.open_input_stream(fs_path, compression=None) as stream:
        yield Opened(
            stream=cast("IO[bytes]", stream),
            size=info.size or 0,
            mtime=coerce_datetime(info.mtime),
            etag=unit.etag,
            md5=unit.md5,
        )


def _items(
    fs: pafs.FileSystem,
    fs_path: str,
    unit: SourceUnit,
    options: SourceOptions,
    validator: Validator,
) -> Iterator[Document | Failure]:
    name = posixpath.basename(fs_path)
    by_name, gzipped = file_kind(name)
    doc_id = relative(unit.path, unit.root) if unit.root else name
    cap = options.max_doc_chars * MAX_BYTES_PER_CHAR + len(codecs.BOM_UTF8)
    f: _File | None = None
    try:
        with ExitStack() as stack:
            opened = stack.enter_context(_open(fs, fs_path, unit))
            f = _File(
                path=unit.path,
                doc_id=doc_id,
                name=name[: -len(GZIP_SUFFIX)] if gzipped else name,
                mtime=opened.mtime,
                size=opened.size,
                etag=opened.etag,
                md5=opened.md5,
            )
            if by_name != formats.JSONL and not gzipped and f.size > cap:
                detail = f"it has {f.size:,} bytes"
                yield validator.too_large(f.doc_id, f"file {f.path}", f.path, detail)
                return
            stream = opened.stream
            sample = stream.read(_SNIFF)
            # a gzip stream is unpacked whatever its name says
            gzipped = gzipped or sample.startswith(formats.GZIP_MAGIC)
            if gzipped:
                raw = cast("IO[bytes]", _Prefixed(sample, stream))
                unpacked = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
                stream = cast("IO[bytes]", unpacked)
                sample = stream.read(_SNIFF)
            kind = formats.resolve_kind(by_name, formats.sniff(sample))
            binary = kind in _BINARY_KINDS
            if not binary and looks_binary(sample):
                yield _read_failure(f, "BinaryFile", f"file {f.path} is binary, not text")
                return
            if kind == formats.JSONL:
                yield from _jsonl(stream, sample, f, options, validator, cap)
                return
            data = _read_capped(stream, sample, cap)
            if data is None:
                detail = f"it decompresses to more than {cap:,} bytes"
                yield validator.too_large(f.doc_id, f"file {f.path}", f.path, detail)
                return
    except ObjectGone as exc:
        yield _read_failure(unit.path, exc.error_class, str(exc))
        return
    except _READ_ERRORS as exc:
        if f is not None and gzipped and isinstance(exc, _CORRUPT_ARCHIVE):
            message = f"file {f.path} is not a valid gzip file: {exc}"
            yield _read_failure(f, "CorruptArchive", message)
        else:
            message = f"file {unit.path} cannot be read: {exc}"
            yield _read_failure(f or unit.path, "ReadError", message)
        return
    if binary:
        yield _binary_document(data, kind, f, options, validator, cap)
        return
    text, bad = decode_bytes(data)
    if kind == formats.JSON:
        yield from _json(text, bad > 0, f, options, validator)
        return
    extracted = Extracted(text)
    if kind == formats.HTML:
        extracted = html_to_text(text)
        bad = extracted.text.count("\ufffd") if bad else 0
    yield _document(extracted, kind, bad, f, validator)


_BINARY_KINDS = frozenset({formats.PDF, formats.DOCX, formats.ZIP, formats.OLE})


def _document(
    extracted: Extracted, kind: str, bad: int, f: _File, validator: Validator
) -> Document | Failure:
    """The document of a file's text once validated; Markdown headings become sections."""
    checked = validator.check(
        f.doc_id,
        extracted.text,
        where=f"file {f.path}",
        source=f.path,
        id_label="file path",
        bad_chars=bad,
    )
    if isinstance(checked, Failure):
        return checked
    sections: tuple[Section, ...] = extracted.sections
    if kind == formats.MARKDOWN:
        sections = markdown_sections(checked[1])
    return Document(
        checked[0],
        checked[1],
        extracted.title or f.name,
        f.path,
        f.mtime,
        extra=f.metadata(),
        sections=sections,
    )


def _binary_document(
    data: bytes, kind: str, f: _File, options: SourceOptions, validator: Validator, cap: int
) -> Document | Failure:
    """A PDF or DOCX file as a document, or its dead-letter row."""
    from pipeline.sources.docx_text import read_docx
    from pipeline.sources.pdf import read_pdf

    try:
        if kind == formats.PDF:
            extracted = read_pdf(
                data, max_pages=options.max_pdf_pages, timeout_s=options.parse_timeout_s
            )
        elif kind == formats.OLE:
            raise UnreadableDocument(
                "UnsupportedFormat",
                "it is a legacy Office file (Word 97-2003 .doc, .xls or .ppt), which is not"
                " read; save it as DOCX",
            )
        else:
            extracted = read_docx(data, max_bytes=cap)
            kind = formats.DOCX
    except UnreadableDocument as exc:
        return _read_failure(f, exc.error_class, f"file {f.path}: {exc.reason}")
    return _document(extracted, kind, 0, f, validator)


def _read_capped(stream: IO[bytes], head: bytes, cap: int) -> bytes | None:
    """The rest of ``stream`` after ``head``; ``None`` as soon as it passes ``cap`` bytes."""
    parts = [head]
    total = len(head)
    while total <= cap:
        chunk = stream.read(_CHUNK)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        total += len(chunk)
    return None


def _lines(stream: IO[bytes], head: bytes, cap: int) -> Iterator[bytes | None]:
    """The lines of ``stream`` (without the newline); ``None`` for a line longer than
    ``cap`` bytes, whose bytes are skipped rather than buffered."""
    buf = bytearray(head)
    scan = 0
    skipping = False
    while True:
        start = 0
        while (newline := buf.find(b"\n", scan)) >= 0:
            yield None if skipping or newline - start > cap else bytes(buf[start:newline])
            skipping = False
            start = scan = newline + 1
        del buf[:start]
        scan = len(buf)
        if len(buf) > cap:
            skipping = True
            buf.clear()
            scan = 0
        chunk = stream.read(_CHUNK)
        if not chunk:
            break
        buf += chunk
    if skipping:
        yield None
    elif buf:
        yield None if len(buf) > cap else bytes(buf)


def _jsonl(
    stream: IO[bytes],
    head: bytes,
    f: _File,
    options: SourceOptions,
    validator: Validator,
    cap: int,
) -> Iterator[Document | Failure]:
    for number, line in enumerate(_lines(stream, head, cap), start=1):
        where, source = f"line {number} of {f.path}", f"{f.path}#line={number}"
        default_id = f"{f.doc_id}#{number}"
        if line is None:
            yield validator.too_large(None, where, source, f"the line has more than {cap:,} bytes")
            continue
        if number == 1 and line.startswith(codecs.BOM_UTF8):
            line = line[len(codecs.BOM_UTF8) :]
        if not line.strip():
            continue  # blank lines (a trailing newline, say) are not records
        try:
            text, bad = line.decode("utf-8"), 0
        except UnicodeDecodeError:
            text = line.decode("utf-8", errors="replace")
            bad = 1
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            yield _record_failure(where, source, f"is not valid JSON ({exc})")
            continue
        yield _record(obj, default_id, where, source, bad > 0, f, options, validator)


def _json(
    text: str, lossy: bool, f: _File, options: SourceOptions, validator: Validator
) -> Iterator[Document | Failure]:
    where = f"file {f.path}"
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        yield _record_failure(where, f.path, f"is not valid JSON ({exc})", doc_id=f.doc_id)
        return
    if isinstance(parsed, dict):
        yield _record(parsed, f.doc_id, where, f.path, lossy, f, options, validator, f.name)
    elif isinstance(parsed, list):
        for index, obj in enumerate(parsed):
            yield _record(
                obj,
                f"{f.doc_id}#{index}",
                f"item {index} of {f.path}",
                f"{f.path}#item={index}",
                lossy,
                f,
                options,
                validator,
            )
    else:
        message = f"holds a JSON {type(parsed).__name__}, not an object or a list of objects"
        yield _record_failure(where, f.path, message, doc_id=f.doc_id)


def _record_failure(where: str, source: str, what: str, *, doc_id: str | None = None) -> Failure:
    return Failure(doc_id, "read", "InvalidJson", f"{where} {what}", permanent=True, source=source)


def _record(
    obj: Any,
    default_id: str,
    where: str,
    source: str,
    lossy: bool,
    f: _File,
    options: SourceOptions,
    validator: Validator,
    default_title: str | None = None,
) -> Document | Failure:
    """One JSON object as a document: text from ``json_text_field``, id from
    ``json_id_field`` (or ``default_id``); title, uri, updated_at and passthrough fields
    are taken when present, else ``default_title``, the file's path and its mtime."""
    if not isinstance(obj, dict):
        return _record_failure(where, source, f"is a JSON {type(obj).__name__}, not an object")
    if options.json_id_field:
        raw_id: object = obj.get(options.json_id_field)
        id_label = f"field {options.json_id_field!r}"
    else:
        raw_id, id_label = default_id, "line number"
    field = options.json_text_field
    text = obj.get(field)
    if text is None and field not in obj and coerce_id(raw_id) is not None:
        message = f"{where}: has no field {field!r} (set --json-text-field)"
        return Failure(coerce_id(raw_id), "validate", "NullText", message, source=source)
    bad = text.count("\ufffd") if lossy and isinstance(text, str) else 0
    checked = validator.check(
        raw_id, text, where=where, source=source, id_label=id_label, bad_chars=bad
    )
    if isinstance(checked, Failure):
        return checked
    # the file's metadata, then the named fields of the object (the file's value when
    # the object lacks one)
    extra = f.metadata()
    extra.update({name: obj[name] for name in options.passthrough if name in obj})
    return Document(
        doc_id=checked[0],
        text=checked[1],
        title=_field_str(obj, options.title_column) or default_title,
        uri=_field_str(obj, options.uri_column) or f.path,
        updated_at=coerce_datetime(obj.get(options.updated_at_column or "")) or f.mtime,
        extra=extra,
    )


def _field_str(obj: dict[str, Any], name: str | None) -> str | None:
    value = obj.get(name) if name else None
    return value if isinstance(value, str) and value else None
