"""The child process that reads PDFs for :mod:`pipeline.sources.pdf`.

Run as a script (``python pdf_worker.py MEMORY_LIMIT``), not imported: it needs only
pypdfium2 and the standard library, so it starts in a fraction of a second. PDFium is C
code running in this process, so a PDF that makes it loop, crash or allocate without end
takes down this process only: the parent kills it at its deadline, or sees it die, and
the shard goes on. The address space is capped at ``MEMORY_LIMIT`` bytes (0: no cap).

Protocol, repeated until standard input closes. In: ``<IQ`` (most pages, PDF size) then
the PDF's bytes. Out: ``<Q`` (answer size) then the answer as JSON:
``{"pages": [text, ...], "outline": [[level, title, page index], ...]}`` or
``{"error": class, "message": text}``.
"""

from __future__ import annotations

import json
import resource
import struct
import sys
from typing import IO, Any

_IN = struct.Struct("<IQ")
_OUT = struct.Struct("<Q")
# PDFium's error codes (FPDF_ERR_*): 4 is a password the document needs
_PASSWORD = 4
_OUTLINE_DEPTH = 12
_OUTLINE_ITEMS = 10_000


def _read(stream: IO[bytes], size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def _parse(data: bytes, max_pages: int) -> dict[str, Any]:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if getattr(exc, "err_code", None) == _PASSWORD:
            return {"error": "EncryptedDocument", "message": "it is encrypted (needs a password)"}
        return {"error": "CorruptDocument", "message": f"it is not a readable PDF ({exc})"}
    try:
        count = len(pdf)
        if count > max_pages:
            return {
                "error": "DocumentTooLarge",
                "message": f"it has {count:,} pages, more than the limit of {max_pages:,}",
            }
        pages: list[str] = []
        for index in range(count):
            page = pdf[index]
            try:
                textpage = page.get_textpage()
                try:
                    text = textpage.get_text_range()
                    # a lone surrogate (a broken font map) cannot be encoded: "?"
                    pages.append(text.encode("utf-8", "replace").decode("utf-8"))
                finally:
                    textpage.close()
            finally:
                page.close()
        outline: list[list[Any]] = []
        for item in pdf.get_toc(max_depth=_OUTLINE_DEPTH):
            dest = item.get_dest()
            page_index = dest.get_index() if dest is not None else None
            if page_index is not None:
                outline.append([item.level, item.get_title(), page_index])
            if len(outline) >= _OUTLINE_ITEMS:
                break
        return {"pages": pages, "outline": outline}
    except pdfium.PdfiumError as exc:
        return {"error": "CorruptDocument", "message": f"it is not a readable PDF ({exc})"}
    finally:
        pdf.close()


def main() -> None:
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = _read(stdin, _IN.size)
        if head is None:
            return
        max_pages, size = _IN.unpack(head)
        data = _read(stdin, size)
        if data is None:
            return
        try:
            answer = _parse(data, max_pages)
        except MemoryError:
            answer = {"error": "DocumentTooLarge", "message": "reading it needs too much memory"}
        except Exception as exc:  # anything else PDFium's bindings raise on a bad file
            answer = {"error": "CorruptDocument", "message": f"it cannot be read ({exc!r})"}
        out = json.dumps(answer, ensure_ascii=False).encode("utf-8", "replace")
        stdout.write(_OUT.pack(len(out)))
        stdout.write(out)
        stdout.flush()


if __name__ == "__main__":
    main()
