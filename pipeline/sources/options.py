"""Settings of a source and the unit of work a source is split into.

Kept apart from the readers so every module of the package (and callers that only plan
shards) can import them without pulling in Parquet or HTML code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pipeline.errors import ConfigError

#: Parquet files are recognised by name; content sniffing would cost a read per file.
PARQUET_SUFFIXES: tuple[str, ...] = (".parquet", ".parq", ".pq")
PLAIN_SUFFIXES: tuple[str, ...] = (".txt", ".md", ".markdown", ".rst", ".text")
HTML_SUFFIXES: tuple[str, ...] = (".html", ".htm", ".xhtml")
JSON_SUFFIXES: tuple[str, ...] = (".json",)
JSONL_SUFFIXES: tuple[str, ...] = (".jsonl",)
BINARY_DOCUMENT_SUFFIXES: tuple[str, ...] = (".pdf", ".docx")
DOCUMENT_SUFFIXES: tuple[str, ...] = (
    PLAIN_SUFFIXES + HTML_SUFFIXES + JSON_SUFFIXES + JSONL_SUFFIXES + BINARY_DOCUMENT_SUFFIXES
)
GZIP_SUFFIX = ".gz"

#: Target size of a Parquet unit. Units are whole row groups, so a single row group larger
#: than this stays one unit (splitting inside a row group would decode it more than once).
ROWS_PER_UNIT = 50_000

#: Kind of a unit found unreadable when planning: reading it yields one failure row.
FAILED = "failed"


@dataclass(frozen=True)
class SourceOptions:
    """How to read a source. Column names apply to Parquet; the ``json_*`` fields to
    ``.json`` / ``.jsonl`` files of a directory source (the title, uri, updated_at and
    passthrough names are looked up in JSON objects too, when present)."""

    id_column: str = "doc_id"
    text_column: str = "text"
    title_column: str | None = "title"  # used when present
    uri_column: str | None = "uri"
    updated_at_column: str | None = "updated_at"
    passthrough: tuple[str, ...] = ()  # extra columns copied into Document.extra
    json_text_field: str = "text"  # for .json / .jsonl files in a directory
    json_id_field: str | None = None  # for .jsonl: id field; default "<file path>#<line no>"
    batch_size: int = 256  # documents per yielded batch
    max_doc_chars: int = 50_000_000  # larger documents are rejected with a Failure
    glob: str | None = None  # directory source: only files matching this pattern
    follow_links: bool = False  # follow links whose target is outside the source root
    # PDF: most pages, and seconds to read one (the parser runs in a child process that
    # is killed at the deadline); see pipeline.sources.pdf
    max_pdf_pages: int = 10_000
    parse_timeout_s: float = 120.0
    #: Only files / objects modified in ``[modified_since, modified_until)`` (aware UTC
    #: datetimes; None: unbounded). An entry whose time is unknown is kept.
    modified_since: datetime | None = None
    modified_until: datetime | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_doc_chars < 1:
            raise ConfigError(f"max_doc_chars must be at least 1, got {self.max_doc_chars}")
        if not self.id_column:
            raise ConfigError("id_column must not be empty")
        if not self.text_column:
            raise ConfigError("text_column must not be empty")
        if not self.json_text_field:
            raise ConfigError("json_text_field must not be empty")
        if self.max_pdf_pages < 1:
            raise ConfigError(f"max_pdf_pages must be at least 1, got {self.max_pdf_pages}")
        if not self.parse_timeout_s > 0:
            raise ConfigError(f"parse_timeout_s must be positive, got {self.parse_timeout_s}")
        for name in ("modified_since", "modified_until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ConfigError(f"{name} must be a datetime with a time zone, got {value!r}")
        since, until = self.modified_since, self.modified_until
        if since is not None and until is not None and since >= until:
            raise ConfigError(
                f"modified_since ({since.isoformat()}) must be before modified_until"
                f" ({until.isoformat()})"
            )

    @property
    def has_window(self) -> bool:
        return self.modified_since is not None or self.modified_until is not None

    def in_window(self, modified: datetime | None) -> bool:
        """Whether a file modified at ``modified`` is selected by the modified window.
        Unknown times are selected: a window may skip work, never lose a document."""
        if modified is None:
            return True
        if self.modified_since is not None and modified < self.modified_since:
            return False
        return self.modified_until is None or modified < self.modified_until


@dataclass(frozen=True)
class SourceUnit:
    """One shard-able unit of a source: a file, or a row range of a Parquet file.

    ``path`` is the file as the filesystem sees it. For a source given as a URI with a
    scheme (``s3://…``) and no explicit filesystem, ``path`` keeps the scheme so that
    :func:`read_unit` can find the filesystem again on another worker; with an explicit
    filesystem, pass the same filesystem to ``read_unit``. Local paths are absolute.

    ``root`` (document files only) is the directory that ``doc_id`` is relative to;
    ``None`` means the file's own directory.

    A unit of kind ``"failed"`` was found unreadable when planning (a link outside the
    source, a loop, a name that is not UTF-8, a Parquet file whose footer is corrupt):
    ``error_class`` and ``error`` say why, and reading it yields one failure row.

    ``mtime`` (ISO 8601, UTC), ``etag`` and ``md5`` are what the listing said of the file
    or object, when it said it (``etag`` and ``md5``: object stores). A document records
    them; they are not part of the shard id (see ``runner._unit_key``).
    """

    path: str  # path or URI of the file
    kind: str  # "parquet" | "file" | "failed"
    row_start: int = 0
    row_end: int | None = None  # None = to the end (parquet only)
    size: int = 0  # bytes (for shard balancing)
    root: str | None = None
    error_class: str | None = None  # failed units only
    error: str | None = None
    mtime: str | None = None
    etag: str | None = None
    md5: str | None = None
