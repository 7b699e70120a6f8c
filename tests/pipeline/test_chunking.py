from __future__ import annotations

import itertools
import json

import pytest

from pipeline.chunking import ChunkSettings, chunk_document
from pipeline.genai.hashembed import RegexTokenCounter
from pipeline.genai.local import MiniLMTokenCounter
from pipeline.models import Document

PROSE = (json.__doc__ or "") * 3 + "\n\n" + (pytest.__doc__ or "A second paragraph of text.")


@pytest.fixture(scope="module")
def minilm() -> MiniLMTokenCounter:
    return MiniLMTokenCounter()


def _check(doc: Document, chunks: list, counter, settings: ChunkSettings) -> None:
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert doc.text[c.char_start : c.char_end] == c.text
        # the limit holds by the counter's own measure of the chunk text
        measured = len(counter.spans(c.text)) + counter.special_tokens
        assert measured == c.token_count <= settings.max_tokens
    # consecutive chunks overlap or touch: no text between them is lost
    for a, b in itertools.pairwise(chunks):
        assert b.char_start <= a.char_end
        assert b.char_start > a.char_start


def test_short_document_is_one_chunk(minilm: MiniLMTokenCounter) -> None:
    doc = Document("d1", "A short note.")
    chunks = list(chunk_document(doc, minilm, ChunkSettings(64, 8)))
    assert len(chunks) == 1
    assert chunks[0].text == "A short note."
    assert chunks[0].token_count == len(minilm.spans("A short note.")) + 2


def test_long_document_chunks_fit_and_cover(minilm: MiniLMTokenCounter) -> None:
    doc = Document("d2", PROSE)
    settings = ChunkSettings(max_tokens=64, overlap=8)
    chunks = list(chunk_document(doc, minilm, settings))
    assert len(chunks) > 5
    _check(doc, chunks, minilm, settings)
    assert chunks[0].char_start == 0
    assert doc.text[chunks[-1].char_end :].strip() == ""


def test_chunk_ids_are_stable_and_depend_on_text_and_settings(minilm: MiniLMTokenCounter) -> None:
    doc = Document("d3", PROSE)
    a = [c.chunk_id for c in chunk_document(doc, minilm, ChunkSettings(64, 8))]
    b = [c.chunk_id for c in chunk_document(doc, minilm, ChunkSettings(64, 8))]
    c = [c.chunk_id for c in chunk_document(doc, minilm, ChunkSettings(96, 8))]
    d = [
        c.chunk_id
        for c in chunk_document(Document("d3", PROSE + " More."), minilm, ChunkSettings(64, 8))
    ]
    assert a == b
    assert len(set(a)) == len(a)
    assert not set(a) & set(c)
    assert not set(a) & set(d)


def test_overlap_repeats_tokens(minilm: MiniLMTokenCounter) -> None:
    doc = Document("d4", " ".join(f"word{i}" for i in range(400)))
    with_overlap = list(chunk_document(doc, minilm, ChunkSettings(64, 16)))
    without = list(chunk_document(doc, minilm, ChunkSettings(64, 0)))
    assert len(with_overlap) > len(without)
    assert all(b.char_start < a.char_end for a, b in itertools.pairwise(with_overlap))


def test_one_long_line_and_segments(minilm: MiniLMTokenCounter) -> None:
    # 100,000 characters on one line, longer than one tokenizer segment
    text = ("lorem ipsum dolor sit amet " * 4000)[:100_000]
    doc = Document("line", text)
    settings = ChunkSettings(256, 32)
    chunks = list(chunk_document(doc, minilm, settings))
    _check(doc, chunks, minilm, settings)
    assert chunks[-1].char_end >= len(text.rstrip()) - 1


def test_regex_counter_document_of_2mb() -> None:
    counter = RegexTokenCounter()
    text = "The quick brown fox jumps over the lazy dog. " * 50_000
    doc = Document("big", text)
    settings = ChunkSettings(256, 16)
    chunks = list(chunk_document(doc, counter, settings))
    _check(doc, chunks, counter, settings)
    assert len(chunks) > 2000


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="overlap"):
        ChunkSettings(64, 40)
    with pytest.raises(ValueError, match="max_tokens"):
        ChunkSettings(4, 0)


class _Recording:
    """Wraps a counter and records the length of every text it is asked for spans of."""

    def __init__(self, inner, with_count: bool = True) -> None:
        self.inner, self.name, self.special_tokens = inner, inner.name, inner.special_tokens
        self.span_lengths: list[int] = []
        if with_count:
            self.count = inner.count

    def spans(self, text: str) -> list[tuple[int, int]]:
        self.span_lengths.append(len(text))
        return self.inner.spans(text)


def test_a_document_that_fits_is_counted_not_spanned() -> None:
    from pipeline.genai.oci_backend import Utf8ByteCounter

    text = "  Ünïcödé prose. " + "word " * 300 + "end.\n "
    doc = Document("fit", text)
    counting = _Recording(Utf8ByteCounter())
    (chunk,) = chunk_document(doc, counting, ChunkSettings(2048, 0))
    assert max(counting.span_lengths) <= 64  # only the edges were tokenized
    # the same chunk as a counter without ``count`` gives (spans of the whole text)
    spanning = _Recording(Utf8ByteCounter(), with_count=False)
    assert list(chunk_document(doc, spanning, ChunkSettings(2048, 0))) == [chunk]
    assert max(spanning.span_lengths) == len(text)
    assert chunk.text == text and chunk.token_count == len(text.encode())
    # with a word tokenizer the chunk runs from the first token to the last
    (words,) = chunk_document(doc, RegexTokenCounter(), ChunkSettings(2048, 0))
    assert words.text == text.strip() and words.char_start == 2
    assert words.token_count == len(RegexTokenCounter().spans(text))


# ------------------------------------------------------------------ sections (structure)


def _sectioned(text: str, headings: list[str]) -> Document:
    """``text`` with a section at each heading line (as a reader of a format gives)."""
    from pipeline.models import Section

    sections = []
    for n, heading in enumerate(headings):
        start = text.index(heading)
        sections.append(Section(start, f"Top > {heading}", n + 1, start + len(heading)))
    return Document("sec", text, sections=tuple(sections))


def test_chunks_break_at_sections_and_carry_path_and_page(minilm: MiniLMTokenCounter) -> None:
    long_part = (json.__doc__ or "") * 2
    text = f"Preface line.\nAlpha\n{long_part}\nBeta\nA short section.\nGamma\nDelta\n{PROSE}"
    doc = _sectioned(text, ["Alpha", "Beta", "Gamma", "Delta"])
    settings = ChunkSettings(max_tokens=64, overlap=8)
    chunks = list(chunk_document(doc, minilm, settings))
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    # the boundaries of Alpha, Beta, Gamma (Delta's is not one: Gamma joins Delta)
    bounds = [s.start for s in doc.sections[:3]]
    for c in chunks:
        assert doc.text[c.char_start : c.char_end] == c.text
        assert len(minilm.spans(c.text)) + 2 == c.token_count <= 64
        # no chunk runs across a section boundary
        assert not any(c.char_start < b < c.char_end for b in bounds)
    assert (chunks[0].text, chunks[0].section, chunks[0].page) == ("Preface line.", None, None)
    by_section = {}
    for c in chunks:
        by_section.setdefault(c.section, []).append(c)
    # Gamma has nothing after its heading line: it joins Delta, which names the part
    assert list(by_section) == [None, "Top > Alpha", "Top > Beta", "Top > Delta"]
    assert by_section["Top > Delta"][0].text.startswith("Gamma\nDelta")
    assert {c.page for c in by_section["Top > Delta"]} == {4}
    assert [c.text for c in by_section["Top > Beta"]] == ["Beta\nA short section."]
    # inside a long section the overlap still holds
    alpha = by_section["Top > Alpha"]
    assert len(alpha) > 3
    assert all(b.char_start < a.char_end for a, b in itertools.pairwise(alpha))


def test_sections_change_chunk_ids_plain_documents_keep_theirs(minilm: MiniLMTokenCounter) -> None:
    from pipeline.chunking import _settings_key, chunk_id

    settings = ChunkSettings(64, 8)
    plain = Document("d", PROSE)
    ids = [c.chunk_id for c in chunk_document(plain, minilm, settings)]
    # a document without sections: the ids the chunker always gave (no sections marker)
    key = _settings_key(settings, minilm.name)
    assert ids == [chunk_id("d", plain.content_hash, key, i) for i in range(len(ids))]
    sectioned = _sectioned(PROSE, [PROSE.split()[0]])
    other = [c.chunk_id for c in chunk_document(sectioned, minilm, settings)]
    assert not set(ids) & set(other)
