"""PDF text with PDFium (pypdfium2: Apache-2.0 / BSD, the library ships in the wheel, no
model download), one child process at a time per reading thread.

Why a child process: PDFium is C code. A thread running it cannot be stopped, and a
crash or a runaway allocation on a hostile file would take the whole shard down. The
child (:mod:`pipeline.sources.pdf_worker`) is started once and reused for document after
document (about 0.1 s to start); the parent waits for each answer at most
``timeout_s`` seconds, then kills it (a ``ParseTimeout`` row) and starts a fresh one for
the next PDF. A child that dies is a ``ParserCrashed`` row. Its address space is capped
(:data:`MEMORY_LIMIT`), and a page cap bounds the work of a document with countless pages.

The text of each page is kept apart: every page starts a section (chunks never run
across pages, so each chunk has one page number), and the outline (bookmarks) gives the
heading path: an entry starts where its title is found on its page, else at the top of
that page. PDFium marks a word hyphenated at a line end with U+FFFE; the word is joined.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import select
import struct
import subprocess
import sys
import threading
import time
from typing import Any

import orjson

from pipeline.models import Section
from pipeline.sources.formats import Extracted, HeadingPath, UnreadableDocument

#: Address space of the child process (bytes): enough for the text of very large PDFs,
#: not for a decompression bomb to take the machine's memory.
MEMORY_LIMIT = 3 << 30
_IN = struct.Struct("<IQ")
_OUT = struct.Struct("<Q")
_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pdf_worker.py")
_IDLE_KEPT = 4  # idle children kept for reuse
_PAGE_GAP = "\n\n"


class _Child:
    """One child process. ``-P``: the worker's own folder is not put on ``sys.path``
    (its modules would shadow nothing today, but must not); the environment is kept, so a
    ``PYTHONPATH`` that finds pypdfium2 for the parent finds it for the child."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-P", _WORKER, str(MEMORY_LIMIT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def ask(self, data: bytes, max_pages: int, deadline: float) -> dict[str, Any]:
        """Send one PDF and wait for the answer until ``deadline`` (monotonic)."""
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(_IN.pack(max_pages, len(data)))
            stdin.write(data)
            stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None
        (size,) = _OUT.unpack(self._read(stdout.fileno(), _OUT.size, deadline))
        return dict(orjson.loads(self._read(stdout.fileno(), size, deadline)))

    def _read(self, fd: int, size: int, deadline: float) -> bytes:
        parts: list[bytes] = []
        left = size
        while left:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                self.kill()
                raise _Timeout
            part = os.read(fd, min(left, 1 << 20))
            if not part:
                raise self._died()
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def _died(self) -> UnreadableDocument:
        code = self.proc.wait()
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        return UnreadableDocument("ParserCrashed", f"it made the PDF parser die ({how})")

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()

    def alive(self) -> bool:
        return self.proc.poll() is None


class _Timeout(Exception):
    pass


class _Children:
    """Children not in use; one is taken per PDF and given back when it answered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Child] = []

    def take(self) -> _Child:
        with self._lock:
            while self._idle:
                child = self._idle.pop()
                if child.alive():
                    return child
        return _Child()

    def give_back(self, child: _Child) -> None:
        with self._lock:
            if len(self._idle) < _IDLE_KEPT and child.alive():
                self._idle.append(child)
                return
        child.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for child in idle:
            child.close()


_CHILDREN = _Children()
atexit.register(_CHILDREN.close)


def read_pdf(data: bytes, *, max_pages: int, timeout_s: float) -> Extracted:
    """The text, pages and outline of a PDF; raises :class:`UnreadableDocument`."""
    deadline = time.monotonic() + timeout_s
    child = _CHILDREN.take()
    try:
        answer = child.ask(data, max_pages, deadline)
    except _Timeout:
        raise UnreadableDocument(
            "ParseTimeout", f"it took more than {timeout_s:g} s to read as a PDF; stopped"
        ) from None
    except UnreadableDocument:
        raise
    except BaseException:
        child.kill()  # interrupted mid-answer: the child's state is unknown
        raise
    _CHILDREN.give_back(child)
    if "error" in answer:
        raise UnreadableDocument(str(answer["error"]), str(answer["message"]))
    pages = [_clean(p) for p in answer["pages"]]
    if not any(pages):
        raise UnreadableDocument(
            "NoTextLayer",
            f"it is a PDF of {len(pages)} page(s) without a text layer (scanned images?);"
            " text is not recognised from images (no OCR)",
        )
    pages = strip_running_lines(pages)
    return assemble(pages, [(int(a), str(b), int(c)) for a, b, c in answer["outline"]])


def _clean(page: str) -> str:
    return page.replace("\ufffe", "").replace("\r\n", "\n").replace("\r", "\n").strip()


_DIGITS = re.compile(r"\d+")
#: A first or last line of a page is a running header or footer when it repeats (digits
#: aside) on at least this many pages, or is a page number ("7", "- 7 -", "Page 7 of 9").
_RUNNING_MIN = 3
_PAGE_NUMBER = re.compile(r"(?i)(?:page\s*)?[-–]?\s*#\s*[-–]?(?:\s*(?:of|/)\s*#)?")


def strip_running_lines(pages: list[str]) -> list[str]:
    """The pages without their running headers and footers: a first or last line that,
    digits aside, repeats on many pages ("Chapter 3: Basic Shell Features 15", a page
    number alone). They would otherwise start and end chunks on every page."""
    edges: list[tuple[str, str]] = []
    counts: dict[str, int] = {}
    for text in pages:
        first, _, _ = text.partition("\n")
        _, _, last = text.rpartition("\n")
        pair = (_DIGITS.sub("#", first.strip()), _DIGITS.sub("#", last.strip()))
        edges.append(pair)
        for key in set(pair):
            if key:
                counts[key] = counts.get(key, 0) + 1

    def running(key: str) -> bool:
        return counts.get(key, 0) >= _RUNNING_MIN or bool(_PAGE_NUMBER.fullmatch(key))

    out: list[str] = []
    for text, (first, last) in zip(pages, edges, strict=True):
        lines = text.split("\n")
        if len(lines) > 1 and running(first):
            lines = lines[1:]
        if len(lines) > 1 and running(last):
            lines = lines[:-1]
        out.append("\n".join(lines).strip())
    return out


# what may stand before a heading's title on its line: a section number
_NUMBERING = re.compile(r"(?:[A-Z]|\d+)(?:\.\d+)*\.?\s+")


def _title_at(text: str, title: str, start: int) -> re.Match[str] | None:
    words = title.split()
    if not words:
        return None
    pattern = r"\s+".join(re.escape(w) for w in words)
    return re.compile(pattern).search(text, start)


def assemble(pages: list[str], outline: list[tuple[int, str, int]]) -> Extracted:
    """One text from the pages' texts (a blank line between pages) with a section per page
    and per outline entry ``(level, title, page index)`` (level 0 = top)."""
    by_page: dict[int, list[tuple[int, str]]] = {}
    for level, title, index in outline:
        if 0 <= index < len(pages):
            by_page.setdefault(index, []).append((level, title))
    path = HeadingPath()
    sections: list[Section] = []
    offset = 0
    for index, text in enumerate(pages):
        found: list[tuple[int, int, int, str]] = []  # start, body start, level, title
        at_top: list[tuple[int, str]] = []
        cursor = 0
        for level, title in by_page.get(index, ()):
            match = _title_at(text, title, cursor)
            if match is None:
                at_top.append((level, title))
                continue
            start = match.start()
            line_start = text.rfind("\n", 0, start) + 1
            if _NUMBERING.fullmatch(text, line_start, start):
                start = line_start  # "3.1.2 Quoting": the number belongs to the heading
            line_end = text.find("\n", match.end())
            body = len(text) if line_end < 0 else line_end
            found.append((start, body, level, title))
            cursor = match.end()
        for level, title in at_top:
            path.enter(level + 1, title)
        sections.append(Section(offset, path.path(), index + 1))
        for start, body, level, title in found:
            name = path.enter(level + 1, title)
            if start == 0:
                sections[-1] = Section(offset, name, index + 1, offset + body)
            else:
                sections.append(Section(offset + start, name, index + 1, offset + body))
        offset += len(text) + len(_PAGE_GAP)
    return Extracted(_PAGE_GAP.join(pages), tuple(sections))
