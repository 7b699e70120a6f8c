"""Checks every input document passes before it becomes a :class:`Document`.

A rejected input becomes a :class:`Failure` (permanent: re-reading gives the same
answer); it never raises, so one bad row cannot take its neighbours down.
"""

from __future__ import annotations

import codecs
import hashlib
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from pipeline.models import Failure
from pipeline.sources.options import SourceOptions

#: Above this share of U+FFFD replacement characters a lossy decode is not kept.
MAX_REPLACEMENT_SHARE = 0.01
#: A UTF-8 character is at most 4 bytes, so more bytes than this many times the character
#: limit cannot fit: reject before decoding (and before reading further).
MAX_BYTES_PER_CHAR = 4

_REPLACEMENT = "\ufffd"
_MAX_ID_IN_MESSAGE = 120


def decode_bytes(data: bytes) -> tuple[str, int]:
    """Decode text bytes; returns the text and how many characters could not be decoded.

    UTF-8 (a leading byte order mark is dropped) or, with a UTF-16 byte order mark,
    UTF-16. Undecodable bytes become U+FFFD; when the strict decode succeeds the count is
    0 even if the text itself contains U+FFFD characters.
    """
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        return data.decode(encoding), 0
    except UnicodeDecodeError:
        text = data.decode(encoding, errors="replace")
        return text, text.count(_REPLACEMENT)


def coerce_id(value: object) -> str | None:
    """A document id from a column or field value; ``None`` when missing or blank.

    Integers (and other scalars) are converted with ``str()``; bytes are decoded as UTF-8.
    The id is otherwise kept exactly as given.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    doc_id = value if isinstance(value, str) else str(value)
    if not doc_id or doc_id.isspace():
        return None
    return doc_id


def coerce_datetime(value: object) -> datetime | None:
    """A timezone-aware datetime from a timestamp, date or ISO 8601 string; naive values
    are taken as UTC. Anything else gives ``None`` (a bad timestamp does not reject a
    document: it only loses its ``updated_at``)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def optional_str(value: object) -> str | None:
    """A title or uri value: strings as is, other scalars through ``str()``, empty → None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = value if isinstance(value, str) else str(value)
    return text or None


def _show_id(doc_id: str) -> str:
    shown = doc_id if len(doc_id) <= _MAX_ID_IN_MESSAGE else doc_id[:_MAX_ID_IN_MESSAGE] + "…"
    return repr(shown)


_KINDS = ("", "row", "line", "item")
_NUMBER_BITS = 40


#: How many ids :class:`SeenIds` holds in memory before it moves them to a temporary
#: SQLite file (about 11 MB of dict at this size).
SEEN_IDS_IN_MEMORY = 100_000


@dataclass
class SeenIds:
    """The ids already accepted from a source, for duplicate detection, and where each
    was read (to name the winning copy in a duplicate's failure row).

    Stores an 8-byte blake2b digest per id (as an int) and its place packed in one int
    (which path, row / line / item number), not the id nor the place's text: about 110
    bytes per document in memory whatever the id length. Memory does not grow with the
    source: once ``in_memory`` ids are held they move to a private temporary SQLite file
    (deleted when closed or garbage collected; under ``TMPDIR``), and every later lookup
    checks both. A source of fewer ids never touches the disk. Two different ids collide
    with probability about n²/2⁶⁵ (≈3·10⁻⁴ at 10⁸ documents); a collision rejects the
    later document as a duplicate, which shows in the failures.
    """

    in_memory: int = field(default_factory=lambda: SEEN_IDS_IN_MEMORY)
    _digests: dict[int, int] = field(default_factory=dict)
    _paths: list[str] = field(default_factory=list)
    _path_index: dict[str, int] = field(default_factory=dict)
    _db: sqlite3.Connection | None = field(default=None, repr=False, compare=False)
    _spilled: int = 0

    @staticmethod
    def _key(doc_id: str) -> int:
        digest = hashlib.blake2b(doc_id.encode("utf-8", "surrogatepass"), digest_size=8)
        return int.from_bytes(digest.digest(), "little", signed=True)  # an SQLite integer

    def _pack(self, source: str) -> int:
        path, _, where = source.rpartition("#")
        kind, _, number = where.partition("=")
        if not path or kind not in _KINDS or not number.isdigit():
            path, kind, number = source, "", "0"
        index = self._path_index.setdefault(path, len(self._paths))
        if index == len(self._paths):
            self._paths.append(path)
        return ((index * len(_KINDS) + _KINDS.index(kind)) << _NUMBER_BITS) | int(number)

    def _unpack(self, packed: int) -> str:
        head, number = divmod(packed, 1 << _NUMBER_BITS)
        index, kind = divmod(head, len(_KINDS))
        path = self._paths[index]
        return f"{_KINDS[kind]} {number} of {path}" if kind else path

    def _lookup(self, key: int) -> int | None:
        packed = self._digests.get(key)
        if packed is None and self._db is not None:
            row = self._db.execute("SELECT place FROM ids WHERE key = ?", (key,)).fetchone()
            packed = None if row is None else int(row[0])
        return packed

    def _spill(self) -> None:
        if self._db is None:
            # "" = a private temporary database on disk, removed when it is closed; the
            # reader calls from worker threads one at a time, hence check_same_thread.
            self._db = sqlite3.connect("", check_same_thread=False)
            self._db.execute("PRAGMA cache_size = -8000")  # KiB: 8 MB, bounded
            self._db.execute("PRAGMA journal_mode = OFF")
            self._db.execute("PRAGMA synchronous = OFF")
            self._db.execute("CREATE TABLE ids (key INTEGER PRIMARY KEY, place INTEGER NOT NULL)")
        with self._db:
            self._db.executemany("INSERT INTO ids VALUES (?, ?)", sorted(self._digests.items()))
        self._spilled += len(self._digests)
        self._digests = {}

    def add(self, doc_id: str, source: str = "") -> bool:
        """Record ``doc_id``, read from ``source`` (``path`` or ``path#row=N``);
        ``False`` when it was already recorded."""
        key = self._key(doc_id)
        if self._lookup(key) is not None:
            return False
        self._digests[key] = self._pack(source)
        if len(self._digests) >= self.in_memory:
            self._spill()
        return True

    def where(self, doc_id: str) -> str | None:
        """Where ``doc_id`` was first read ("row 3 of data/a.parquet"), if it was."""
        packed = self._lookup(self._key(doc_id))
        return None if packed is None else self._unpack(packed)

    @property
    def on_disk(self) -> bool:
        """Whether the ids outgrew memory and moved (in part) to the temporary file."""
        return self._db is not None

    def close(self) -> None:
        """Remove the temporary file, if any (the set is empty afterwards)."""
        if self._db is not None:
            self._db.close()
            self._db = None
        self._digests = {}
        self._spilled = 0

    def __len__(self) -> int:
        return self._spilled + len(self._digests)


@dataclass
class Validator:
    """Applies the document checks of one source; shares ``seen`` across its units.

    :meth:`check` returns ``(doc_id, text)`` for a good input, or the :class:`Failure`
    for a bad one. Checks run in this order: id, null text, size, decoding, blank text,
    duplicate id. An id is only recorded once its document passes every other check, so a
    rejected first copy does not shadow a good later one.
    """

    options: SourceOptions
    seen: SeenIds = field(default_factory=SeenIds)

    def fail(
        self,
        doc_id: str | None,
        error_class: str,
        message: str,
        *,
        source: str,
        stage: str = "validate",
    ) -> Failure:
        return Failure(
            doc_id=doc_id,
            stage=stage,
            error_class=error_class,
            message=message,
            permanent=True,
            source=source,
        )

    def too_large(self, doc_id: str | None, where: str, source: str, detail: str) -> Failure:
        limit = self.options.max_doc_chars
        return self.fail(
            doc_id,
            "DocumentTooLarge",
            f"{where}: {detail}, more than the limit of {limit:,} characters (max_doc_chars)",
            source=source,
        )

    def check(
        self,
        raw_id: object,
        text: object,
        *,
        where: str,
        source: str,
        id_label: str,
        bad_chars: int = 0,
    ) -> tuple[str, str] | Failure:
        """Validate one input.

        ``where`` names the input for messages ("row 17 of data/docs.parquet"), ``source``
        goes to ``Failure.source``, ``id_label`` names the id's origin ("column
        'doc_id'"). ``text`` may be ``str``, ``bytes`` (decoded here) or anything else
        (rejected). ``bad_chars`` is the number of characters the caller could not decode.
        """
        doc_id = coerce_id(raw_id)
        if doc_id is None:
            state = "null" if raw_id is None else "empty"
            return self.fail(
                None, "MissingId", f"{where}: document id ({id_label}) is {state}", source=source
            )
        if text is None:
            return self.fail(doc_id, "NullText", f"{where}: text is null", source=source)
        limit = self.options.max_doc_chars
        if isinstance(text, bytes):
            if len(text) > limit * MAX_BYTES_PER_CHAR:
                return self.too_large(doc_id, where, source, f"text has {len(text):,} bytes")
            text, bad_chars = decode_bytes(text)
        if not isinstance(text, str):
            return self.fail(
                doc_id,
                "InvalidText",
                f"{where}: text is a {type(text).__name__}, not a string",
                source=source,
            )
        if len(text) > limit:
            return self.too_large(doc_id, where, source, f"text has {len(text):,} characters")
        if bad_chars and bad_chars > MAX_REPLACEMENT_SHARE * len(text):
            share = bad_chars / max(len(text), 1)
            return self.fail(
                doc_id,
                "InvalidUtf8",
                f"{where}: text is not valid UTF-8 ({bad_chars:,} of {len(text):,} "
                f"characters, {share:.1%}, could not be decoded)",
                source=source,
            )
        if not text:
            return self.fail(doc_id, "EmptyText", f"{where}: text is empty", source=source)
        if text.isspace():
            return self.fail(
                doc_id, "EmptyText", f"{where}: text is empty (only white space)", source=source
            )
        if not self.seen.add(doc_id, source):
            return self.duplicate(doc_id, where, source, self.seen.where(doc_id))
        return doc_id, text

    def duplicate(self, raw_id: object, where: str, source: str, first: str | None) -> Failure:
        """The ``DuplicateId`` failure of a later copy of an id first read at ``first``."""
        doc_id = coerce_id(raw_id)
        shown = _show_id(doc_id) if doc_id is not None else "(none)"
        place = first or "earlier in this source"
        return self.fail(
            doc_id,
            "DuplicateId",
            f"{where}: document id {shown} was already read from {place}; the first one is kept",
            source=source,
        )
