"""Token-aware splitting of documents into overlapping chunks.

Counting method: the chunker measures every chunk with the backend's ``TokenCounter``
(for the local backend, the model's own WordPiece tokenizer, so counts are exact) and
adds the model's special tokens. After cutting, each chunk is measured again on its own
text and shrunk until it fits, so a chunk never holds more tokens than ``max_tokens``
by the counter's measure — the counter may over-count, never under-count.

Long documents are tokenized in segments, so a 20 MB document needs memory for one
segment's tokens, not the whole text's. A document that fits in one chunk (most of them)
is only counted (``count_tokens``, no spans): its one chunk runs from its first token to
its last, found from short windows at each end.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.genai.base import TokenCounter, count_tokens
from pipeline.models import Chunk, Document, Section

# Characters tokenized at once; grown when one segment holds less than one chunk.
_SEGMENT_CHARS = 64_000
_SENTENCE_END = frozenset(".!?;:")
# Longer texts (characters per token of the limit) are not counted whole first: they almost
# never fit, and the count would tokenize them twice. Speed only: either way gives one chunk.
_FIT_CHARS_PER_TOKEN = 8
# Characters at each end of a one-chunk document tokenized to find its first and last token
_EDGE_CHARS = 32
#: Version of the sectioned scheme (cut at sections first, then by tokens). It is part of
#: the embed fingerprint and of the chunk ids of documents with sections; documents
#: without sections are chunked as before and keep their ids.
SECTIONS_VERSION = 1


@dataclass(frozen=True, slots=True)
class ChunkSettings:
    """``max_tokens`` includes the model's special tokens; ``overlap`` is in tokens."""

    max_tokens: int = 256
    overlap: int = 32

    def __post_init__(self) -> None:
        if self.max_tokens < 8:
            raise ValueError(f"chunk max_tokens must be at least 8, got {self.max_tokens}")
        if not 0 <= self.overlap < self.max_tokens // 2:
            raise ValueError(
                f"chunk overlap must be >= 0 and < max_tokens/2 ({self.max_tokens // 2}),"
                f" got {self.overlap}"
            )

    def fingerprint(self, counter: TokenCounter) -> dict[str, object]:
        return self.fingerprint_for(counter.name)

    def fingerprint_for(self, counter_name: str) -> dict[str, object]:
        return {"max_tokens": self.max_tokens, "overlap": self.overlap, "counter": counter_name}


@functools.lru_cache(maxsize=64)
def _settings_key(settings: ChunkSettings, counter_name: str) -> str:
    """The settings' part of every chunk id, once per (settings, counter), not per document."""
    fingerprint = settings.fingerprint_for(counter_name)
    return hashlib.blake2b(repr(sorted(fingerprint.items())).encode(), digest_size=6).hexdigest()


def chunk_id(doc_id: str, content_hash: str, settings_key: str, index: int) -> str:
    raw = f"{doc_id}\x1f{content_hash}\x1f{settings_key}\x1f{index}".encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


def _extent(counter: TokenCounter, text: str) -> tuple[int, int] | None:
    """Start of the first token and end of the last token of ``text`` (None: no tokens).

    Tokenizers split at white space and drop nothing but white space and control
    characters, so the first token of a head window that ends before the cut starts where
    the whole text's first token does (likewise at the tail); a window is doubled until
    that holds, and a short text is tokenized whole. A counter with an ``extent`` method
    answers itself (the same value, without spans)."""
    own = getattr(counter, "extent", None)
    if own is not None:
        return own(text)
    n = len(text)
    width = _EDGE_CHARS
    while True:
        if 2 * width >= n:
            spans = counter.spans(text)
            return (spans[0][0], spans[-1][1]) if spans else None
        head = counter.spans(text[:width])
        tail = counter.spans(text[n - width :])
        # the first token must end before the cut, the last start after it
        if head and tail and head[0][1] < width and tail[-1][0] > 0:
            return head[0][0], n - width + tail[-1][1]
        width *= 2


def _bounds(counter: TokenCounter, text: str, pos: int) -> tuple[list[int], list[int]]:
    """Start and end offsets (plus ``pos``) of the tokens of ``text``, as two lists: from
    the counter's ``span_bounds`` arrays when it has them (no tuple per token), else from
    its spans."""
    fast = getattr(counter, "span_bounds", None)
    if fast is not None:
        starts, ends = fast(text)
        return (starts + pos).tolist(), (ends + pos).tolist()
    spans = counter.spans(text)
    return [pos + a for a, _ in spans], [pos + b for _, b in spans]


def _prefer_boundary(text: str, starts: list[int], ends: list[int], i: int, j: int) -> int:
    """Pull the end ``j`` back to a sentence or line end in the last quarter of the window."""
    floor = i + max(1, (j - i) * 3 // 4)
    for k in range(j, floor, -1):
        end = ends[k - 1]
        nxt = starts[k] if k < len(starts) else len(text)
        if text[end - 1] in _SENTENCE_END or "\n" in text[end:nxt]:
            return k
    return j


def chunk_document(
    doc: Document, counter: TokenCounter, settings: ChunkSettings
) -> Iterator[Chunk]:
    """Split one document into chunks of at most ``settings.max_tokens`` tokens.

    A document with ``sections`` is cut at their boundaries first (a chunk never runs
    across a heading or a page), then each section as a document of its own; every chunk
    records its section's heading path and page. Without sections the chunks are exactly
    those of the plain chunker, ids included."""
    text = doc.text
    chash = doc.content_hash
    key = _settings_key(settings, counter.name)
    budget = settings.max_tokens - counter.special_tokens
    if budget < 4:
        raise ValueError(f"max_tokens {settings.max_tokens} leaves no room after special tokens")
    if not doc.sections:
        for index, (start, end, piece, tokens) in enumerate(
            _windows(text, counter, settings, budget)
        ):
            yield Chunk(
                doc_id=doc.doc_id,
                chunk_id=chunk_id(doc.doc_id, chash, key, index),
                chunk_index=index,
                char_start=start,
                char_end=end,
                text=piece,
                token_count=tokens,
                content_hash=chash,
            )
        return
    # the sectioned scheme gives other chunks for the same text: other ids
    key = f"{key}/sections-{SECTIONS_VERSION}"
    index = 0
    for lo, hi, section in section_spans(doc):
        for start, end, piece, tokens in _windows(text[lo:hi], counter, settings, budget):
            yield Chunk(
                doc_id=doc.doc_id,
                chunk_id=chunk_id(doc.doc_id, chash, key, index),
                chunk_index=index,
                char_start=lo + start,
                char_end=lo + end,
                text=piece,
                token_count=tokens,
                content_hash=chash,
                section=section.path,
                page=section.page,
            )
            index += 1


def section_spans(doc: Document) -> list[tuple[int, int, Section]]:
    """``(start, end, section)`` of each part of the text chunked on its own: the text
    before the first section (no path, no page) and each section to the next. A section
    with nothing after its heading line joins the next one (which names it: a bare
    chapter heading followed by its first subsection is one part, under the subsection)."""
    text = doc.text
    bounds = list(doc.sections)
    if bounds[0].start > 0:
        bounds.insert(0, Section(0))
    spans: list[tuple[int, int, Section]] = []
    carry: int | None = None  # start of heading-only sections joining the next one
    for i, section in enumerate(bounds):
        last = i + 1 == len(bounds)
        end = len(text) if last else max(bounds[i + 1].start, section.start)
        if end <= section.start:
            continue
        if not last and not text[section.body_start : end].strip():
            carry = section.start if carry is None else carry
            continue
        spans.append((section.start if carry is None else carry, end, section))
        carry = None
    return spans


def _windows(
    text: str, counter: TokenCounter, settings: ChunkSettings, budget: int
) -> Iterator[tuple[int, int, str, int]]:
    """``(char_start, char_end, text, token_count)`` of each chunk of ``text``."""
    # the common case: the whole text fits in one chunk; counting is cheaper than spans
    total = (
        count_tokens(counter, text)
        if len(text) <= settings.max_tokens * _FIT_CHARS_PER_TOKEN
        else settings.max_tokens + 1
    )
    if total <= settings.max_tokens:
        edges = _extent(counter, text)
        if edges is None:
            return
        start, end = edges
        yield start, end, text[start:end], total
        return
    pos = 0
    seg_chars = _SEGMENT_CHARS
    n = len(text)
    while pos < n:
        seg_end = min(n, pos + seg_chars)
        if seg_end < n:
            # end the segment on white space so no token is cut in two
            cut = text.rfind(" ", pos + seg_chars // 2, seg_end)
            seg_end = cut if cut > pos else seg_end
        final = seg_end >= n
        starts, ends = _bounds(counter, text[pos:seg_end], pos)
        if not starts:
            return
        if not final and len(starts) <= budget + settings.overlap:
            seg_chars *= 2  # too few tokens for one full chunk: read more at once
            continue
        i = 0
        while i < len(starts):
            j = min(i + budget, len(starts))
            if not final and j == len(starts):
                break  # this window needs text beyond the segment
            if j < len(starts):
                j = _prefer_boundary(text, starts, ends, i, j)
            start, end = starts[i], ends[j - 1]
            piece = text[start:end]
            # the whole text in one chunk was measured as it is; any other slice is
            # measured again on its own (a cut can tokenize differently at its edges)
            whole = pos == 0 and final and i == 0 and j == len(starts)
            tokens = j - i + counter.special_tokens if whole else count_tokens(counter, piece)
            # re-measure on the chunk's own text: never exceed the limit
            while tokens > settings.max_tokens and j - i > 1:
                j -= 1
                end = ends[j - 1]
                piece = text[start:end]
                tokens = count_tokens(counter, piece)
            yield start, end, piece, tokens
            if j >= len(starts):
                i = len(starts)
                break
            i = max(i + 1, j - settings.overlap)
        if final or i >= len(starts):
            return
        pos = starts[i]
        seg_chars = _SEGMENT_CHARS
