"""Speed of the embedded local models on this machine (a script, not a test).

    .venv/bin/python bench/bench_local.py [N_CHUNKS] [--tokens 200] [--batch-size 32]

Chunks of about ``--tokens`` word pieces are cut from the docstrings of stdlib modules
(real English, no downloads) and repeated up to N_CHUNKS. Prints the raw model speed
(``LocalEmbedder.embed`` called directly, chunks/s) and the summarizer speed (docs/s of
``LocalSummarizer.summarize_many``).
"""

from __future__ import annotations

import argparse
import importlib
import time

from pipeline.genai.base import SummarySettings
from pipeline.genai.local import LocalEmbedder, LocalSummarizer, MiniLMTokenCounter

# fmt: off
_MODULES = (
    "argparse", "asyncio", "collections", "contextlib", "csv", "dataclasses", "datetime",
    "decimal", "doctest", "email", "functools", "heapq", "http", "inspect", "io", "itertools",
    "json", "logging", "os", "pathlib", "pickle", "queue", "random", "re", "shlex", "shutil",
    "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "typing", "unittest", "zipfile",
)
# fmt: on


def stdlib_docs() -> list[str]:
    """Docstrings of a few dozen stdlib modules: real prose with some code in it."""
    docs = [importlib.import_module(name).__doc__ for name in _MODULES]
    return [d for d in docs if d and len(d.split()) > 20]


def make_chunks(n: int, tokens: int = 200) -> list[str]:
    """``n`` chunks of about ``tokens`` word pieces (specials excluded), cut from
    :func:`stdlib_docs` and repeated as needed."""
    text = "\n\n".join(stdlib_docs())
    spans = MiniLMTokenCounter().spans(text)
    base = [
        text[spans[i][0] : spans[min(i + tokens, len(spans)) - 1][1]]
        for i in range(0, len(spans) - tokens + 1, tokens)
    ]
    return [base[i % len(base)] for i in range(n)]


def raw_embed_speed(
    texts: list[str], embedder: LocalEmbedder | None = None, *, batch_size: int | None = None
) -> float:
    """Chunks per second of ``LocalEmbedder.embed`` on ``texts`` (model loaded and warmed
    up first, so only inference and tokenization are timed)."""
    embedder = embedder or LocalEmbedder()
    if batch_size is not None:
        embedder.batch_size = batch_size
    embedder.embed(texts[:8])
    start = time.perf_counter()
    embedder.embed(texts)
    return len(texts) / (time.perf_counter() - start)


def summarizer_speed(
    docs: list[str], embedder: LocalEmbedder | None = None, settings: SummarySettings | None = None
) -> float:
    """Documents per second of ``LocalSummarizer.summarize_many`` over ``docs``."""
    summarizer = LocalSummarizer(embedder)
    summarizer.summarize_many(docs[:2], settings or SummarySettings())
    start = time.perf_counter()
    summarizer.summarize_many(docs, settings or SummarySettings())
    return len(docs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", nargs="?", type=int, default=256, help="chunks to embed")
    parser.add_argument("--tokens", type=int, default=200, help="word pieces per chunk")
    parser.add_argument("--batch-size", type=int, default=None, help="embedder batch size")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op")
    args = parser.parse_args()

    embedder = LocalEmbedder(intra_op_threads=args.threads)
    chunks = make_chunks(args.n, args.tokens)
    speed = raw_embed_speed(chunks, embedder, batch_size=args.batch_size)
    print(
        f"embed: {len(chunks)} chunks of ~{args.tokens} tokens, batch {embedder.batch_size},"
        f" {embedder.intra_op_threads} threads: {speed:.1f} chunks/s"
    )
    docs = stdlib_docs()
    print(
        f"summarize: {len(docs)} stdlib docstrings: {summarizer_speed(docs, embedder):.1f} docs/s"
    )


if __name__ == "__main__":
    main()
