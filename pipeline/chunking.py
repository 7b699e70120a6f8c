"""Token-aware splitting of documents into overlapping chunks.

Counting method: the chunker measures every chunk with the backend's ``TokenCounter``
(for the local backend, the model's own WordPiece tokenizer, so counts are exact) and
adds the model's special tokens. After cutting, each chunk is measured again on its own
text and shrunk until it fits, so a chunk never holds more tokens than ``max_tokens``
by the counter's measure — the counter may over-count, never under-count.

Long documents are tokenized in segments, so a 20 MB document needs memory for one
segment's tokens, not the whole text's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from pipeline.genai.base import TokenCounter
from pipeline.models import Chunk, Document

# Characters tokenized at once; grown when one segment holds less than one chunk.
_SEGMENT_CHARS = 64_000
_SENTENCE_END = frozenset(".!?;:")


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
        return {"max_tokens": self.max_tokens, "overlap": self.overlap, "counter": counter.name}


def chunk_id(doc_id: str, content_hash: str, settings_key: str, index: int) -> str:
    raw = f"{doc_id}\x1f{content_hash}\x1f{settings_key}\x1f{index}".encode()
    return hashlib.blake2b(raw, digest_size=12).hexdigest()


def _count(counter: TokenCounter, text: str) -> int:
    return len(counter.spans(text)) + counter.special_tokens


def _prefer_boundary(text: str, spans: list[tuple[int, int]], i: int, j: int) -> int:
    """Pull the end ``j`` back to a sentence or line end in the last quarter of the window."""
    floor = i + max(1, (j - i) * 3 // 4)
    for k in range(j, floor, -1):
        end = spans[k - 1][1]
        nxt = spans[k][0] if k < len(spans) else len(text)
        if text[end - 1] in _SENTENCE_END or "\n" in text[end:nxt]:
            return k
    return j


def chunk_document(
    doc: Document, counter: TokenCounter, settings: ChunkSettings
) -> Iterator[Chunk]:
    """Split one document into chunks of at most ``settings.max_tokens`` tokens."""
    text = doc.text
    chash = doc.content_hash
    key = hashlib.blake2b(
        repr(sorted(settings.fingerprint(counter).items())).encode(), digest_size=6
    ).hexdigest()
    budget = settings.max_tokens - counter.special_tokens
    if budget < 4:
        raise ValueError(f"max_tokens {settings.max_tokens} leaves no room after special tokens")
    index = 0
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
        spans = [(pos + a, pos + b) for a, b in counter.spans(text[pos:seg_end])]
        if not spans:
            return
        if not final and len(spans) <= budget + settings.overlap:
            seg_chars *= 2  # too few tokens for one full chunk: read more at once
            continue
        i = 0
        while i < len(spans):
            j = min(i + budget, len(spans))
            if not final and j == len(spans):
                break  # this window needs text beyond the segment
            if j < len(spans):
                j = _prefer_boundary(text, spans, i, j)
            start, end = spans[i][0], spans[j - 1][1]
            piece = text[start:end]
            # the whole text in one chunk was measured as it is; any other slice is
            # measured again on its own (a cut can tokenize differently at its edges)
            whole = pos == 0 and final and i == 0 and j == len(spans)
            tokens = j - i + counter.special_tokens if whole else _count(counter, piece)
            # re-measure on the chunk's own text: never exceed the limit
            while tokens > settings.max_tokens and j - i > 1:
                j -= 1
                end = spans[j - 1][1]
                piece = text[start:end]
                tokens = _count(counter, piece)
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
            index += 1
            if j >= len(spans):
                i = len(spans)
                break
            i = max(i + 1, j - settings.overlap)
        if final or i >= len(spans):
            return
        pos = spans[i][0]
        seg_chars = _SEGMENT_CHARS
