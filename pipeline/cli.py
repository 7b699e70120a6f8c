"""The ``oci-genai-batch`` command.

    oci-genai-batch run --source URI --output URI [--backend local|oci|hash] [...]
    oci-genai-batch compact --output URI [--part-rows N]

``compact`` exits 0 when done, 2 when the output is held by a live run (or bad settings),
74 on an output I/O error, 130 / 143 when interrupted (run it again: it finishes first
what the interrupted one left).

Exit status of ``run`` (what a scheduler may rely on; the README has the same table):

    0    every document is done or permanently dead-lettered (rows that failed for good
         are in OUTPUT/failures/ and counted in the summary)
    1    a bug: anything unexpected (the traceback is printed)
    2    bad input or configuration: a setting, the source, credentials, or the output is
         held by another live run; reported before any model call where possible
    74   (EX_IOERR) the output cannot be written: permission, disk full, a vanished
         directory; the preflight probe finds most of these before any model call
    75   (EX_TEMPFAIL) documents are still pending on retryable errors, or the service
         failed every recent call (an outage): committed parts are kept, run again later
    130  interrupted by SIGINT (Ctrl-C); committed parts are kept, a re-run resumes
    143  stopped by SIGTERM (what Airflow sends); the same as SIGINT

An expected failure prints one line, ``oci-genai-batch: error: ...``, and no traceback;
``-v`` logs the traceback at DEBUG as well.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
import time
from types import FrameType
from typing import Any

from pipeline import errors
from pipeline.config import AUTH_MODES, BACKENDS, JobConfig
from pipeline.errors import OutageError, PipelineError, StorageError

log = logging.getLogger("oci_genai_batch")

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_IOERR = 74  # sysexits.h EX_IOERR
EXIT_TEMPFAIL = 75  # sysexits.h EX_TEMPFAIL: try again later
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM

# New objects between the GC's young collections in a run (Python's default: 700)
_GC_YOUNG = 2_000

# Libraries that log one line per HTTP request at INFO: quiet unless -v.
_CHATTY_LOGGERS = ("httpx", "httpcore", "oci", "urllib3", "pipeline.genai.oci_client")


def _run_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="embed and summarize a corpus")
    p.add_argument("--source", help="path or URI of the documents (Parquet or a directory)")
    p.add_argument("--output", help="path or URI for embeddings/, summaries/, failures/")
    p.add_argument("--config", help="a YAML file of settings (flags override it)")
    p.add_argument("--backend", choices=BACKENDS)
    p.add_argument("--embed-model")
    p.add_argument("--summary-model")
    p.add_argument("--no-summaries", dest="summaries", action="store_const", const=False)
    p.add_argument("--summary-length", choices=("SHORT", "MEDIUM", "LONG", "AUTO"))
    p.add_argument("--summary-format", choices=("PARAGRAPH", "BULLETS", "AUTO"))
    p.add_argument("--summary-input-tokens", type=int, help="longer documents: map-reduce")
    p.add_argument("--chunk-tokens", type=int, help="tokens per chunk (default: model limit)")
    p.add_argument("--chunk-overlap", type=int, help="tokens shared by neighbouring chunks")
    p.add_argument("--id-column")
    p.add_argument("--text-column")
    p.add_argument("--passthrough", help="comma-separated source columns to copy")
    p.add_argument("--json-text-field")
    p.add_argument("--glob", help="directory sources: only files matching this pattern")
    p.add_argument("--follow-links", action="store_true", default=None, help="follow outside links")
    p.add_argument(
        "--modified-since",
        metavar="WHEN",
        help="only files / objects modified at or after WHEN (ISO 8601 date or date-time,"
        " UTC when no zone)",
    )
    p.add_argument(
        "--modified-until",
        metavar="WHEN",
        help="only files / objects modified before WHEN (ISO 8601; UTC when no zone)",
    )
    p.add_argument("--batch-docs", type=int, help="documents per source read batch")
    p.add_argument("--part-rows", type=int, help="chunk rows per committed part (at most)")
    p.add_argument("--part-bytes", type=int, help="estimated output bytes per part (at most)")
    p.add_argument("--shards", type=int)
    p.add_argument("--max-rpm", type=int, help="requests per minute ceiling")
    p.add_argument("--max-tpm", type=int, help="tokens per minute ceiling")
    p.add_argument("--max-in-flight", type=int, help="most requests at once")
    p.add_argument(
        "--redis-url",
        help="one rate budget shared by every process using it (redis://host:port/db)",
    )
    p.add_argument(
        "--concurrent-shards",
        type=int,
        help="without Redis: shard processes running at once, each takes 1/N of the limits",
    )
    p.add_argument("--max-attempts", type=int, help="tries per request, first included")
    p.add_argument("--dim", type=int, help="vector size of the hash backend")
    p.add_argument("--dry-run", action="store_const", const=True, default=None)
    p.add_argument("--retry-failed", action="store_const", const=True, default=None)
    p.add_argument("--run-id")
    p.add_argument("--price-per-million-chars", type=float, help="of the embedding model")
    p.add_argument(
        "--prices",
        help="price per million characters by model: MODEL=PRICE,MODEL=PRICE (or JSON)",
    )
    p.add_argument("--currency", help="of the prices, for display (USD)")
    p.add_argument("--max-cost", type=float, help="refuse to start above this estimated cost")
    p.add_argument("--progress", dest="progress", action="store_const", const=True)
    p.add_argument("--no-progress", dest="progress", action="store_const", const=False)
    p.add_argument("--oci-config")
    p.add_argument("--oci-profile")
    p.add_argument("--auth", choices=AUTH_MODES)
    p.add_argument("--compartment")
    p.add_argument("--genai-endpoint")
    p.add_argument("--os-endpoint")
    p.add_argument("--region")
    p.add_argument(
        "--input-type", choices=("SEARCH_DOCUMENT", "SEARCH_QUERY", "CLASSIFICATION", "CLUSTERING")
    )
    p.add_argument("--truncate", choices=("NONE", "START", "END"))
    p.add_argument("--output-dimensions", type=int, choices=(256, 512, 1024, 1536))
    p.add_argument("--summary-api", choices=("chat", "summarize_text"))
    p.add_argument("--chat-format", choices=("COHERE", "GENERIC"))
    p.add_argument("--timeout-s", type=float, help="seconds before a request times out")
    p.add_argument("-v", "--verbose", action="store_true")


def _emulator_parser(sub: Any) -> None:
    p = sub.add_parser(
        "emulator",
        help="serve a local emulator of the OCI Generative AI inference API "
        "(and of Object Storage with --os-root)",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: pick a free port (printed)")
    p.add_argument("--oci-config", help="verify signatures against this OCI config file")
    p.add_argument("--oci-profile", default="DEFAULT")
    p.add_argument(
        "--write-dev-config",
        metavar="DIR",
        help="write a new API key and OCI config profile for development into DIR, and exit",
    )
    p.add_argument(
        "--os-root",
        metavar="DIR",
        help="also serve Object Storage: each subdirectory of DIR is a bucket, its files objects",
    )
    p.add_argument(
        "--os-namespace", default="emulator", help="the Object Storage namespace (emulator)"
    )
    p.add_argument("--embedder", choices=("local", "hash"), default="local")
    p.add_argument("--dim", type=int, help="embedding size instead of the model's default")
    p.add_argument("--rpm", type=int, help="requests per minute (a leaky bucket)")
    p.add_argument("--burst-s", type=float, help="seconds of rpm/tpm a bucket holds (2)")
    p.add_argument("--tpm", type=int, help="estimated tokens per minute")
    p.add_argument("--retry-after", type=float, help="seconds sent in retry-after on 429")
    p.add_argument("--latency-ms", type=float, help="mean added latency per request")
    for kind in ("fault", "timeout", "reset", "malformed", "wrong-count", "wrong-dim"):
        p.add_argument(f"--{kind}-rate", type=float, help="probability per request, 0..1")
    p.add_argument("--timeout-s", type=float, help="how long a timeout fault stalls")
    p.add_argument("--reject-substring", help="refuse embed inputs containing this (400)")
    p.add_argument("--context-tokens", type=int, help="every model's context (0: per model)")
    p.add_argument("--seed", type=int)
    p.add_argument("-v", "--verbose", action="store_true")


def _compact_parser(sub: Any) -> None:
    p = sub.add_parser(
        "compact",
        help="rewrite an output's datasets to the current rows only (newest version of each"
        " document, nothing of deleted ones, only outstanding failures)",
    )
    p.add_argument("--output", required=True, help="path or URI of the output to compact")
    p.add_argument("--part-rows", type=int, help="rows per rewritten part (100000)")
    p.add_argument("--oci-config")
    p.add_argument("--oci-profile")
    p.add_argument("--auth", choices=AUTH_MODES)
    p.add_argument("--os-endpoint")
    p.add_argument("--region")
    p.add_argument("-v", "--verbose", action="store_true")


def _cmd_compact(args: argparse.Namespace) -> int:
    from pipeline import storage
    from pipeline.compact import DEFAULT_PART_ROWS, compact

    flags = {
        k: getattr(args, k)
        for k in ("oci_config", "oci_profile", "auth", "os_endpoint", "region")
        if getattr(args, k) is not None
    }
    # storage settings as a run would have them (the source is not read)
    config = JobConfig.from_mapping(
        {"source": args.output, "output": args.output, **flags}, origin="command line"
    )
    storage.configure(config)
    part_rows = args.part_rows or DEFAULT_PART_ROWS
    if part_rows < 1:
        raise errors.ConfigError(f"--part-rows: must be at least 1, got {part_rows}")
    try:
        report = compact(config.output, part_rows=part_rows)
    except OSError as exc:
        raise StorageError(f"output {config.output}: {_io_message(exc)}") from exc
    before, after = report.rows_before, report.rows_after
    print(
        f"compacted {config.output}: {report.records_before} -> {report.records_after} parts"
        f" ({report.rewritten} rewritten, {report.superseded} removed);"
        + "".join(
            f" {name} {before.get(name, 0)} -> {after.get(name, 0)} rows;"
            for name in ("embeddings", "summaries", "failures")
        )
        + f" {report.deleted_documents} deleted document(s) dropped; {report.seconds:.1f} s"
    )
    return EXIT_OK


def _config_from_args(args: argparse.Namespace) -> JobConfig:
    skip = {"command", "config", "verbose"}
    flags = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    if args.config:
        return JobConfig.from_yaml(args.config, flags)
    return JobConfig.from_mapping(flags, origin="command line")


class _Progress:
    """A tqdm bar (documents, docs/s, ETA) on a terminal; plain log lines otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.done = 0
        self.total = 0
        self.started = time.monotonic()
        self.last_line = self.started

    def start(self, total: int) -> None:
        self.total = total
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="doc", dynamic_ncols=True, smoothing=0.1)

    def update(self, docs: int, chunks: int) -> None:
        self.done += docs
        if self.bar is not None:
            self.bar.update(docs)
            self.bar.set_postfix(chunks=chunks, refresh=False)
            return
        now = time.monotonic()
        if now - self.last_line >= 10 or self.done >= self.total:
            rate = self.done / max(now - self.started, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            log.info(
                "progress: %d/%d documents, %.1f docs/s, %d chunks, ETA %.0f s",
                self.done,
                self.total,
                rate,
                chunks,
                max(eta, 0.0),
            )
            self.last_line = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _summary_table(report: dict[str, Any], seconds: float, output: str, pending: int = 0) -> str:
    c = report["counts"]
    calls = report["calls"]
    rows = [
        ("documents read", c.get("documents_read", 0)),
        ("documents skipped (already done)", c.get("documents_skipped", 0)),
        ("documents completed", c.get("documents_completed", 0)),
        ("chunks embedded", c.get("chunks_embedded", 0)),
        ("summaries", c.get("summaries", 0)),
        ("failures (dead letter)", c.get("failures", 0)),
        ("documents pending (re-run)", pending),
        ("model calls", calls["calls"]),
        ("retries / throttled", f"{calls['retries']} / {calls['throttled']}"),
        ("time", f"{seconds:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k:<{width}}  {v}" for k, v in rows]
    lines.append(f"  outputs: {output}/embeddings/ summaries/ failures/ report.json")
    return "\n".join(lines)


def _pending_documents(report: dict[str, Any]) -> int:
    """Documents a re-run would still work on: those with pending embeddings (counted by
    the shard) or a summary that failed with a retryable error (its failure class says
    so). One document can be both, so the larger count is a lower bound of the union."""
    embeds = int(report.get("counts", {}).get("documents_pending", 0))
    summaries = 0
    for key, n in report.get("failures_by_class", {}).items():
        stage, _, name = key.partition(":")
        cls = getattr(errors, name, None)
        if (
            stage == "summarize"
            and isinstance(cls, type)
            and issubclass(cls, errors.RetryableError)
        ):
            summaries += int(n)
    return max(embeds, summaries)


class _Signals:
    """SIGTERM behaves like SIGINT (asyncio cancels the run; committed parts stay), and
    remembers that it came so the exit status can tell them apart."""

    terminated = False

    @classmethod
    def install(cls) -> None:
        signal.signal(signal.SIGTERM, cls._on_sigterm)

    @classmethod
    def _on_sigterm(cls, signum: int, frame: FrameType | None) -> None:
        cls.terminated = True
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            # asyncio.run's handler cancels the main task (a second signal raises at once);
            # outside an event loop this is default_int_handler, which raises
            handler(signal.SIGINT, frame)
            return
        raise KeyboardInterrupt


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline import runner

    config = _config_from_args(args)
    if config.dry_run:
        from pipeline.preview import preview

        print(preview(config).text())
        return EXIT_OK
    progress = _Progress(config.progress if config.progress is not None else sys.stderr.isatty())
    _freeze_start_up(config.backend)

    def on_plan(specs: list[runner.ShardSpec]) -> None:
        total = sum(s.est_docs for s in specs)
        log.info("run %s: %d shard(s), about %d documents", config.run_id, len(specs), total)
        progress.start(total)

    try:
        result = runner.run(config, on_plan=on_plan, on_progress=progress.update)
    except OSError as exc:
        # past the preflight probe, an OSError is the output failing mid-run (disk full,
        # a vanished directory): name the output, whatever path the error names
        raise StorageError(f"output {config.output}: {_io_message(exc)}") from exc
    finally:
        progress.close()
    if _Signals.terminated:  # the run swallowed the cancellation: still a stop, not a finish
        raise KeyboardInterrupt
    pending = _pending_documents(result.report)
    print(_summary_table(result.report, result.seconds, config.output, pending))
    if pending:
        _error(
            f"{pending} document(s) still pending on retryable errors (see"
            f" {config.output}/failures/); committed parts are kept, run again to resume"
        )
        return EXIT_TEMPFAIL
    return EXIT_OK


def _freeze_start_up(backend: str) -> None:
    """Tune the cyclic GC for a batch run. What start-up made (modules, the libraries'
    tables) is frozen, so the full collections a run's allocations trigger do not walk
    it again each time; the backend's modules are imported first, as they are the bulk
    (the oci SDK). Start-up leaves no cyclic garbage (``gc.collect()`` finds none here),
    so freezing keeps nothing alive that would otherwise be freed. A young collection
    waits for 2,000 new objects instead of 700 (Python 3.12's default): fewer collections
    walk a run's objects in flight. Higher is cheaper still but costs memory: at 20,000
    the peak RSS of a 100,000-document first run grew from 436 to 677 MB (bench/
    bench_index.py), at 2,000 it is 442 MB."""
    if backend == "oci":
        import oci.signer  # noqa: F401

        import pipeline.genai.oci_backend  # noqa: F401
    gc.freeze()
    gc.set_threshold(_GC_YOUNG, *gc.get_threshold()[1:])


def _error(message: str) -> None:
    one_line = " ".join(message.split())
    print(f"oci-genai-batch: error: {one_line}", file=sys.stderr)


def _io_message(exc: OSError) -> str:
    if exc.filename and exc.strerror:
        return f"I/O error on {exc.filename}: {exc.strerror} (errno {exc.errno})"
    return f"I/O error: {exc}"


def _exit_code(exc: BaseException) -> int | None:
    """The status for an expected failure (its one-line message is printed); None: a bug."""
    if isinstance(exc, KeyboardInterrupt):
        _error("interrupted; committed parts are kept, run again to resume")
        return EXIT_SIGTERM if _Signals.terminated else EXIT_SIGINT
    if isinstance(exc, StorageError):
        code = EXIT_IOERR
    elif isinstance(exc, OutageError):
        code = EXIT_TEMPFAIL
    elif isinstance(exc, PipelineError):  # ConfigError, SourceError, LockedError, AuthError
        code = EXIT_USAGE
    elif isinstance(exc, OSError):
        _error(_io_message(exc))
        log.debug("I/O error", exc_info=exc)
        return EXIT_IOERR
    else:
        return None
    message = str(exc)
    if code == EXIT_TEMPFAIL and "run again" not in message:
        message += "; committed parts are kept, run again later to resume"
    _error(message)
    log.debug("%s", type(exc).__name__, exc_info=exc)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="oci-genai-batch", description="Batch embeddings and summaries with OCI GenAI."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    _emulator_parser(sub)
    _compact_parser(sub)
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        if args.command == "run":
            _Signals.install()
            return _cmd_run(args)
        if args.command == "compact":
            _Signals.install()
            return _cmd_compact(args)
        if args.command == "emulator" and args.write_dev_config:
            from pipeline.genai.emulator.devconfig import write_dev_config

            config_path, _ = write_dev_config(args.write_dev_config, args.oci_profile)
            print(f"wrote {config_path} (profile {args.oci_profile}) and its key; then:")
            print(f"  oci-genai-batch emulator --port 8431 --oci-config {config_path}")
            print(
                "  oci-genai-batch run --backend oci --genai-endpoint http://127.0.0.1:8431"
                f" --oci-config {config_path} --compartment ocid1.compartment.oc1..dev ..."
            )
            return EXIT_OK
        if args.command == "emulator":
            from pipeline.genai.emulator.server import run_from_args

            return run_from_args(args)
    except (Exception, KeyboardInterrupt) as exc:
        code = _exit_code(exc)
        if code is None:
            log.critical("unexpected error (a bug: please report it)", exc_info=exc)
            _error(f"unexpected {type(exc).__name__}: {exc}")
            return EXIT_BUG
        return code
    return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
