"""The local backend on the demo corpus: pipeline speed beside the raw model speed.

    .venv/bin/python bench/bench_demo.py

1. the pipeline embeds the demo corpus (``--no-summaries``), timed end to end in this
   process (model load, reading, chunking, writing and committing included);
2. the same chunk texts (read back from the output) go straight to
   ``LocalEmbedder.embed`` — the model called directly, no pipeline;
3. the whole demo job (embeddings and summaries) for documents/s.
Prints the figures and the ratio pipeline / raw (our overhead).
"""

from __future__ import annotations

import os
import shutil
import sys
import time

import pyarrow.dataset as ds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.bench_local import raw_embed_speed  # noqa: E402
from pipeline import demo  # noqa: E402
from pipeline.config import JobConfig  # noqa: E402
from pipeline.runner import run  # noqa: E402


def main() -> None:
    work = os.path.join(ROOT, "out", "bench-demo")
    corpus = os.path.join(work, "stdlib-docs.parquet")
    os.makedirs(work, exist_ok=True)
    n_docs = demo.build(corpus)

    out = os.path.join(work, "embed-only")
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    result = run(
        JobConfig(source=corpus, output=out, backend="local", summaries=False, progress=False)
    )
    embed_seconds = time.perf_counter() - started
    chunks = result.report["counts"]["chunks_embedded"]

    texts = ds.dataset(os.path.join(out, "embeddings")).to_table(columns=["text"])
    raw = raw_embed_speed(texts.column("text").to_pylist())

    full = os.path.join(work, "full")
    shutil.rmtree(full, ignore_errors=True)
    started = time.perf_counter()
    run(JobConfig(source=corpus, output=full, backend="local", progress=False))
    full_seconds = time.perf_counter() - started

    pipe = chunks / embed_seconds
    cores = os.cpu_count()
    print(f"demo corpus: {n_docs} documents, {chunks} chunks (local backend, {cores} cores)")
    print(f"{'measure':<44} {'value':>10}")
    print(f"{'pipeline embed only: chunks/s':<44} {pipe:>10.1f}")
    print(f"{'pipeline embed only: documents/s':<44} {n_docs / embed_seconds:>10.1f}")
    print(f"{'raw model (LocalEmbedder.embed): chunks/s':<44} {raw:>10.1f}")
    print(f"{'ratio pipeline / raw':<44} {pipe / raw:>10.2f}")
    print(f"{'full job (embed + summaries): seconds':<44} {full_seconds:>10.1f}")
    print(f"{'full job: documents/s':<44} {n_docs / full_seconds:>10.1f}")


if __name__ == "__main__":
    main()
