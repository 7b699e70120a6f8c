"""``--backend hash``: fast, deterministic stand-in vectors for load tests.

The vectors are NOT semantic: two paraphrases are as far apart as any two texts. They
only let the pipeline's reading, chunking, batching, checkpointing and writing be run and
measured at full speed without a model. Never use them for search.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from pipeline.genai.base import (
    AsyncClosing,
    EmbedResult,
    SummaryResult,
    SummarySettings,
    TokenCounter,
)

_TOKEN = re.compile(r"\w+|[^\w\s]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LEAD_CHARS = 300


class RegexTokenCounter:
    """Tokens are runs of word characters and single punctuation characters; no special
    tokens. A rough stand-in for a subword tokenizer (it under-counts long rare words)."""

    name = "regex-words"
    special_tokens = 0

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _TOKEN.finditer(text)]

    def count(self, text: str) -> int:
        return sum(1 for _ in _TOKEN.finditer(text))


def _seed(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def hash_vectors(texts: list[str], dim: int = 384) -> np.ndarray:
    """Unit float32 vectors ``(len(texts), dim)``: row ``i`` is a float32 normal draw from
    numpy's default_rng seeded with the 8-byte blake2b digest of ``texts[i]`` (UTF-8),
    L2-normalised. Same text, same vector, on any machine."""
    out = np.empty((len(texts), dim), dtype=np.float32)
    # Generator(PCG64(seed)) is what default_rng(seed) builds, at 2/3 of the cost
    gen, pcg = np.random.Generator, np.random.PCG64
    for i, text in enumerate(texts):
        out[i] = gen(pcg(_seed(text))).standard_normal(dim, dtype=np.float32)
    # normalised in one vectorised pass: per-row numpy calls would dominate the cost
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))
    return out


def lead_summary(text: str) -> str:
    """The first sentence(s) of ``text``, white space collapsed, at most ~300 characters
    (a first sentence longer than that is cut at a word boundary)."""
    head = " ".join(text[: _LEAD_CHARS * 4].split())
    out = ""
    for sentence in _SENTENCE_END.split(head):
        candidate = f"{out} {sentence}" if out else sentence
        if len(candidate) > _LEAD_CHARS:
            break
        out = candidate
    if not out:
        cut = head[:_LEAD_CHARS]
        space = cut.rfind(" ")
        out = cut[:space] if space > _LEAD_CHARS // 2 else cut
    return out


class HashBackend(AsyncClosing):
    """A :class:`~pipeline.genai.base.Backend` with hash vectors (see the module doc: fast,
    deterministic, NOT semantic; for load tests only) and lead-sentence summaries.
    Inputs are never truncated. Work is done inline: it is cheaper than a thread hop."""

    name = "hash"
    summary_model_id = "hash/lead"
    max_batch_tokens: int | None = None

    def __init__(
        self,
        *,
        dim: int = 384,
        max_input_tokens: int = 256,
        max_batch_inputs: int = 96,
        summary_input_tokens: int | None = None,
    ) -> None:
        if dim < 1:
            raise ValueError(f"dim must be at least 1, got {dim}")
        self.dim = dim
        self.embed_model_id = "hash/blake2b"
        self.max_input_tokens = max_input_tokens
        self.max_batch_inputs = max_batch_inputs
        self.token_counter: TokenCounter = RegexTokenCounter()
        # None by default: a lead summary reads only the head, whatever the length; a
        # budget makes load tests exercise map-reduce without a model
        self.summary_input_tokens = summary_input_tokens

    def fingerprint(self) -> dict[str, object]:
        return {
            "backend": "hash",
            "model_id": self.embed_model_id,
            "dim": self.dim,
            "normalize": True,
        }

    def summary_fingerprint(self, settings: SummarySettings) -> dict[str, object]:
        return {"summarizer": f"lead-{_LEAD_CHARS}"}

    def embed_sync(self, texts: list[str]) -> np.ndarray:
        return hash_vectors(texts, self.dim)

    async def embed(self, texts: list[str]) -> EmbedResult:
        return EmbedResult(
            vectors=self.embed_sync(texts),
            truncated=[False] * len(texts),
            model_id=self.embed_model_id,
        )

    async def summarize(self, text: str, settings: SummarySettings) -> SummaryResult:
        return SummaryResult(summary=lead_summary(text), model_id=self.summary_model_id)

    async def summarize_many(
        self, texts: list[str], settings: SummarySettings
    ) -> list[SummaryResult]:
        return [SummaryResult(lead_summary(t), self.summary_model_id) for t in texts]
