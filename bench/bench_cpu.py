"""CPU per 1,000 inputs: the whole pipeline beside a bare async oci SDK client, one run.

    .venv/bin/python bench/bench_cpu.py [--docs 20000] [--repeats 3] [--profile PATH]

One emulator (a separate process: hash embedder, 0 ms latency, signatures verified against
a dev config) serves both clients, and each client runs in a fresh process, so start-up
(imports, config, signer) is counted as a user pays it. Measured: the child's user + sys
CPU (``getrusage(RUSAGE_CHILDREN)`` before and after waiting for it; the emulator is not
waited for until the end, so its CPU is never counted).

1. ``pipeline``: ``oci-genai-batch run --backend oci --no-summaries --output-dimensions
   1024`` over a Parquet file of ``--docs`` single-chunk documents, into a new output.
2. ``bare async SDK``: the oci SDK's ``AsyncGenerativeAiInferenceClient`` with
   ``skip_deserialization=True`` (raw dicts, as langchain-oci's async path uses it): the
   same texts read from the same Parquet file, batches of 96, the same number of requests
   in flight, the vectors kept as the lists the JSON gives.

Each client runs ``--repeats`` times, alternating; medians are printed with the ratio
pipeline / bare client (aim <= 0.6) and saved to ``bench/results/bench_cpu.txt``. Each run
is checked: every input embedded once (emulator count), and the pipeline's output holds one
row per document. ``--profile PATH`` also runs the pipeline once under cProfile and prints
its top functions (the pipeline's CPU, where it goes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import CLI, emulator, run_args, work_dir  # noqa: E402

COMPARTMENT = "ocid1.compartment.oc1..benchcpu"
MODEL = "cohere.embed-v4.0"
DIM = 1024
BATCH = 96
IN_FLIGHT = 8  # the pipeline's default --max-in-flight; the bare client gets the same
RESULTS = os.path.join(ROOT, "bench", "results", "bench_cpu.txt")


# --------------------------------------------------------------------------- the bare client


def bare_client(
    corpus: str, url: str, config_path: str, in_flight: int = IN_FLIGHT, dim: int = DIM
) -> None:
    """Child mode: embed every text of ``corpus`` with the async SDK, ``in_flight``
    requests at once, ``dim``-d; print the count."""
    import oci
    import pyarrow.parquet as pq
    from oci.generative_ai_inference import AsyncGenerativeAiInferenceClient
    from oci.generative_ai_inference import models as m

    texts = pq.read_table(corpus, columns=["text"]).column("text").to_pylist()
    cfg = oci.config.from_file(config_path)
    mode = m.OnDemandServingMode(model_id=MODEL)

    async def main() -> list[list[float]]:
        vectors: list[list[float]] = []
        gate = asyncio.Semaphore(in_flight)
        async with AsyncGenerativeAiInferenceClient(
            cfg,
            service_endpoint=url,
            skip_deserialization=True,
            retry_strategy=oci.retry.NoneRetryStrategy(),
            circuit_breaker_strategy=oci.circuit_breaker.NoCircuitBreakerStrategy(),
        ) as client:

            async def one(batch: list[str]) -> list[list[float]]:
                details = m.EmbedTextDetails(
                    inputs=batch,
                    compartment_id=COMPARTMENT,
                    serving_mode=mode,
                    output_dimensions=dim,
                    truncate="END",
                )
                async with gate:
                    response = await client.embed_text(details)
                return response.data["embeddings"]

            batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
            for rows in await asyncio.gather(*(one(b) for b in batches)):
                vectors.extend(rows)
        return vectors

    vectors = asyncio.run(main())
    assert len(vectors) == len(texts) and len(vectors[0]) == dim
    print(len(vectors))


# --------------------------------------------------------------------------- the harness


def make_corpus(path: str, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    topics = ["rivers", "lakes", "hills", "forests", "deserts", "oceans", "valleys", "plains"]
    ids = [f"doc-{i:07d}" for i in range(n)]
    texts = [
        f"Document {i} is about {topics[i % 8]} and {topics[(i // 8) % 8]}: a short note"
        f" of one sentence, well under one chunk, as most records of a table are."
        for i in range(n)
    ]
    pq.write_table(pa.table({"doc_id": ids, "text": texts}), path)


def child_cpu(cmd: list[str]) -> tuple[float, str]:
    """Run ``cmd`` to completion; its user + sys CPU seconds and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(cmd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{cmd[:3]} exited {done.returncode}:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, done.stdout


def embedded(url: str) -> int:
    import httpx

    return int(httpx.get(f"{url}/_emulator/stats", timeout=30).json()["inputs_embedded"])


def output_rows(out: str) -> int:
    import pyarrow.dataset as ds

    return ds.dataset(os.path.join(out, "embeddings"), format="parquet").count_rows()


def pipeline_cmd(corpus: str, out: str, url: str, config: str) -> list[str]:
    extra = ["--embed-model", MODEL, "--max-in-flight", str(IN_FLIGHT)]
    return run_args(corpus, out, url, config, *extra, compartment=COMPARTMENT, dimensions=DIM)


def profile(args: list[str], path: str) -> str:
    """Run the CLI once under cProfile, timed by CPU (not wall) time; its top functions by
    own and by cumulative CPU."""
    import pstats
    from io import StringIO

    code = (
        "import cProfile, sys, time\n"
        "from pipeline.cli import main\n"
        "prof = cProfile.Profile(time.process_time)\n"
        f"sys.argv = ['oci-genai-batch', *{args!r}]\n"
        "try:\n"
        "    prof.runcall(main)\n"
        "except SystemExit:\n"
        "    pass\n"
        f"prof.dump_stats({path!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    text = StringIO()
    stats = pstats.Stats(path, stream=text).strip_dirs()
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)
    return text.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", help="also profile one pipeline run into this file")
    ap.add_argument(
        "--bare-client", nargs=3, metavar=("CORPUS", "URL", "CONFIG"), help=argparse.SUPPRESS
    )  # child mode
    ap.add_argument("--bare-in-flight", type=int, default=IN_FLIGHT, help=argparse.SUPPRESS)
    ap.add_argument("--bare-dim", type=int, default=DIM, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_client:
        bare_client(*args.bare_client, in_flight=args.bare_in_flight, dim=args.bare_dim)
        return

    work, config = work_dir("bench-cpu", fresh=True)
    corpus = os.path.join(work, "corpus.parquet")
    make_corpus(corpus, args.docs)
    cpu: dict[str, list[float]] = {"pipeline": [], "bare": []}
    with emulator(config, 0) as (_, url):
        for r in range(args.repeats):
            for name in ("pipeline", "bare"):
                seen = embedded(url)
                if name == "pipeline":
                    out = os.path.join(work, f"out-{r}")
                    seconds, _ = child_cpu([CLI, *pipeline_cmd(corpus, out, url, config)])
                    assert output_rows(out) == args.docs, "the pipeline lost rows"
                    shutil.rmtree(out)
                else:
                    me = os.path.abspath(__file__)
                    cmd = [sys.executable, me, "--bare-client", corpus, url, config]
                    seconds, stdout = child_cpu(cmd)
                    assert int(stdout.split()[-1]) == args.docs, stdout
                assert embedded(url) - seen == args.docs, f"{name}: inputs embedded"
                cpu[name].append(seconds)
                print(
                    f"run {r + 1} {name:<8} {seconds * 1000 / args.docs * 1000:8.1f} ms CPU"
                    " per 1,000 inputs",
                    flush=True,
                )
        prof = None
        if args.profile:
            out = os.path.join(work, "out-profile")
            prof = profile(pipeline_cmd(corpus, out, url, config), args.profile)

    per_k = {k: statistics.median(v) * 1000 / args.docs * 1000 for k, v in cpu.items()}
    lines = [
        f"{args.docs:,} single-chunk documents, {DIM}-d, {BATCH} inputs per request,"
        f" {IN_FLIGHT} in flight; emulator: hash embedder, 0 ms latency, signatures"
        f" verified; median of {args.repeats} runs; CPU = user + sys of a fresh process,"
        " start-up included",
        "",
        f"{'client':<58} {'CPU ms / 1,000 inputs':>22}",
        f"{'pipeline (oci-genai-batch run --backend oci --no-summaries)':<58}"
        f" {per_k['pipeline']:>22.1f}",
        f"{'bare async oci SDK client (skip_deserialization)':<58} {per_k['bare']:>22.1f}",
        f"{'ratio pipeline / bare client (aim <= 0.6)':<58}"
        f" {per_k['pipeline'] / per_k['bare']:>22.2f}",
        "",
        "single runs (ms per 1,000): "
        + "; ".join(
            f"{k} " + ", ".join(f"{s * 1e6 / args.docs:.0f}" for s in v) for k, v in cpu.items()
        ),
    ]
    report = "\n".join(lines)
    print(report)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as fh:
        fh.write(report + "\n")
    if prof:
        print(prof)


if __name__ == "__main__":
    main()
