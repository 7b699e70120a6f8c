"""What writing the output to object storage costs: one run to a local directory, to S3
(moto in server mode, in this process) and to OCI Object Storage (the emulator, signatures
verified, in this process), each from the same local corpus on the hash backend.

    .venv/bin/python bench/bench_object_output.py [--docs 20000] [--part-rows 1000]

Every document is one short chunk, so the model costs nothing and the figures are the
pipeline's and the store's. Prints, per store: seconds, documents/s, parts, requests per
part (S3: every request the server saw; OCI: every Object Storage operation), and the
publishing requests (CopyObject on S3, RenameObject on OCI). Both stores run on this
machine beside the pipeline: the figures show the protocol's request count and local
overhead, not a real service's latency.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline import storage  # noqa: E402
from pipeline.config import JobConfig  # noqa: E402
from pipeline.genai.emulator import Emulator, EmulatorConfig  # noqa: E402
from pipeline.genai.emulator.devconfig import write_dev_config  # noqa: E402
from pipeline.runner import run  # noqa: E402


def _corpus(path: Path, n: int) -> str:
    rows = [{"doc_id": f"d{i:07d}", "text": f"Document {i} is short."} for i in range(n)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _job(src: str, out: str, part_rows: int, **extra: Any) -> JobConfig:
    return JobConfig(
        source=src,
        output=out,
        backend="hash",
        dim=8,
        summaries=False,
        batch_docs=part_rows,
        part_rows=part_rows,
        progress=False,
        **extra,
    )


def _timed(config: JobConfig) -> tuple[float, int]:
    started = time.perf_counter()
    result = run(config)
    return time.perf_counter() - started, int(result.report["counts"]["parts_committed"])


def _moto() -> tuple[str, Counter[str], Any]:
    import logging

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    counts: Counter[str] = Counter()
    app = DomainDispatcherApplication(create_backend_app)

    def logged(environ: dict[str, Any], start_response: Any) -> Any:
        counts["requests"] += 1
        if environ["REQUEST_METHOD"] == "PUT" and "HTTP_X_AMZ_COPY_SOURCE" in environ:
            counts["publish"] += 1
        return app(environ, start_response)

    httpd = make_server("127.0.0.1", 0, logged, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}", counts, httpd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--part-rows", type=int, default=1000)
    args = parser.parse_args()
    rows: list[tuple[str, float, int, float, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        src = _corpus(Path(tmp) / "docs.parquet", args.docs)

        seconds, parts = _timed(_job(src, str(Path(tmp) / "out"), args.part_rows))
        rows.append(("local directory", seconds, parts, 0.0, 0))

        url, counts, httpd = _moto()
        os.environ.update(
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_REGION="us-east-1",
            AWS_EC2_METADATA_DISABLED="true",
            AWS_ENDPOINT_URL=url,
        )
        import boto3

        bucket = f"bench-{secrets.token_hex(4)}"
        boto3.session.Session().client("s3", endpoint_url=url).create_bucket(Bucket=bucket)
        counts.clear()
        seconds, parts = _timed(_job(src, f"s3://{bucket}/out", args.part_rows))
        rows.append(("S3 (moto)", seconds, parts, counts["requests"] / parts, counts["publish"]))
        httpd.shutdown()

        config_path, _ = write_dev_config(Path(tmp) / "oci")
        root = Path(tmp) / "os-root"
        (root / "bench").mkdir(parents=True)
        with Emulator(EmulatorConfig(embedder="hash"), oci_config=config_path, os_root=root) as emu:
            job = _job(
                src,
                "oci://bench@emulator/out",
                args.part_rows,
                oci_config=config_path,
                os_endpoint=emu.url,
            )
            seconds, parts = _timed(job)
            ops = emu.stats()["object_storage"]
        storage.configure(storage.StorageSettings())
        per_part = sum(ops.values()) / parts
        rows.append(("OCI (emulator)", seconds, parts, per_part, ops.get("RenameObject", 0)))

    print(f"{args.docs} single-chunk documents, {args.part_rows} per part, hash backend")
    print("| output | seconds | documents/s | parts | requests/part | publishing requests |")
    print("|---|---|---|---|---|---|")
    for name, seconds, parts, per_part, published in rows:
        rate = args.docs / seconds
        extra = f"{per_part:.1f} | {published}" if per_part else "- | -"
        print(f"| {name} | {seconds:.1f} | {rate:,.0f} | {parts} | {extra} |")


if __name__ == "__main__":
    main()
