"""Plain data types passed between stages, and the Arrow schemas of every output.

Each stage takes one of these and returns another; no stage reaches into another's state.
The Arrow schemas here are the output contract (see the README's "Outputs" section):
readers need pyarrow, DuckDB or Polars, never this package.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

from pipeline.errors import GenAIError

PIPELINE_VERSION = "0.1.0"


def normalize_text(text: str) -> str:
    """The form of a document's text that its content hash is taken over.

    NFC, line endings folded to ``\\n``, trailing white space of the whole text removed:
    a re-export that only changes CRLF to LF is not a new version of the document.
    """
    text = unicodedata.normalize("NFC", text)
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip()


def content_hash(text: str) -> str:
    """sha256 (hex, 32 chars) of the normalized text."""
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Section:
    """Where a part of a document's text starts that a chunk must not run across: a
    heading, or a page of a PDF. It runs to the next section's ``start``.

    ``path`` is the heading path ("Server Administration > Client Authentication"), or
    ``None`` before the first heading; ``page`` is 1-based, ``None`` where the format has no
    pages. ``body`` is where the text after the heading line starts (``start`` when there is
    no heading line): a section with nothing after its heading joins the next one."""

    start: int
    path: str | None = None
    page: int | None = None
    body: int | None = None

    @property
    def body_start(self) -> int:
        return self.start if self.body is None else self.body


@dataclass(frozen=True, slots=True)
class Document:
    """One input document, already validated: ``doc_id`` non-empty, ``text`` non-blank.

    ``sections`` (sorted by ``start``) is the structure the format gave: headings of
    Markdown, HTML and DOCX, pages and the outline of a PDF. Empty for plain text, whose
    chunks are then exactly what they were before sections existed."""

    doc_id: str
    text: str
    title: str | None = None
    uri: str | None = None
    updated_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    sections: tuple[Section, ...] = ()
    #: of the normalized text; computed once here, since every stage asks for it
    content_hash: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "content_hash", content_hash(self.text))


@dataclass(frozen=True, slots=True)
class Chunk:
    """A span of one document's text. ``chunk_id`` is stable: same document text and
    chunker settings give the same ids on every run."""

    doc_id: str
    chunk_id: str
    chunk_index: int
    char_start: int
    char_end: int
    text: str
    token_count: int
    content_hash: str  # of the whole document
    section: str | None = None  # heading path, where the format has headings
    page: int | None = None  # 1-based page, where the format has pages


@dataclass(frozen=True, slots=True)
class Failure:
    """One input that did not make it: a document, a chunk or a summary.

    ``permanent`` failures (bad input, a 400 from the service) are not retried by a
    re-run unless asked; transient ones (retries exhausted on 429 / 5xx / timeouts) are.
    """

    doc_id: str | None
    stage: str  # read | validate | chunk | embed | summarize
    error_class: str
    message: str
    permanent: bool = True
    chunk_id: str | None = None
    chunk_index: int | None = None
    source: str | None = None  # file / object / row the input came from
    http_status: int | None = None
    oci_code: str | None = None
    opc_request_id: str | None = None
    attempts: int = 0

    @classmethod
    def of_error(
        cls,
        err: GenAIError,
        *,
        doc_id: str,
        stage: str,
        message: str,
        attempts: int,
        chunk_id: str | None = None,
        chunk_index: int | None = None,
    ) -> Failure:
        """The dead-letter row of a model call's final error: its class, whether it is
        permanent, HTTP status, OCI code and opc-request-id, and the tries made."""
        return cls(
            doc_id=doc_id,
            stage=stage,
            error_class=type(err).__name__,
            message=message,
            permanent=not err.retryable,
            chunk_id=chunk_id,
            chunk_index=chunk_index,
            http_status=err.status,
            oci_code=err.code,
            opc_request_id=err.request_id,
            attempts=attempts,
        )


@dataclass(slots=True)
class SourceBatch:
    """What a source yields: a bounded batch of good documents and the rows it rejected."""

    documents: list[Document]
    failures: list[Failure] = field(default_factory=list)


# --------------------------------------------------------------------------- schemas


def embeddings_schema(dim: int, extra: pa.Schema | None = None) -> pa.Schema:
    fields = [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("chunk_index", pa.int32(), nullable=False),
        pa.field("char_start", pa.int64(), nullable=False),
        pa.field("char_end", pa.int64(), nullable=False),
        pa.field("token_count", pa.int32(), nullable=False),
        pa.field("char_count", pa.int32(), nullable=False),
        pa.field("text", pa.string()),
        pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("model_version", pa.string()),
        pa.field("input_type", pa.string()),
        pa.field("truncated", pa.bool_(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("embedded_at", pa.timestamp("us", tz="UTC"), nullable=False),
        # added later, so last: the chunk's heading path and page where the format has
        # them (null for plain text, and in parts written before they existed)
        pa.field("section", pa.string()),
        pa.field("page", pa.int32()),
    ]
    if extra is not None:
        fields.extend(f for f in extra if f.name not in {x.name for x in fields})
    return pa.schema(fields)


SUMMARIES_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("summary", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("model_version", pa.string()),
        pa.field("prompt_fingerprint", pa.string(), nullable=False),
        pa.field("input_tokens", pa.int32()),
        pa.field("output_tokens", pa.int32()),
        # model calls the summary took: 1, or more for a long document (map-reduce)
        pa.field("summary_calls", pa.int32()),
        pa.field("content_hash", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

FAILURES_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string()),
        pa.field("chunk_id", pa.string()),
        pa.field("chunk_index", pa.int32()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error_class", pa.string(), nullable=False),
        pa.field("permanent", pa.bool_(), nullable=False),
        pa.field("http_status", pa.int32()),
        pa.field("oci_code", pa.string()),
        pa.field("message", pa.string(), nullable=False),
        pa.field("opc_request_id", pa.string()),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("failed_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
