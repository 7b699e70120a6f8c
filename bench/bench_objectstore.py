"""The emulator's Object Storage through the real SDK: listing, put and get speed.

    .venv/bin/python bench/bench_objectstore.py [--objects 10000]

Starts an emulator verifying signatures, with ``--os-root`` a temporary directory holding
one bucket of N small files (made on disk), then times, each with a fresh
``ObjectStorageClient``:
1. ``oci.pagination.list_call_get_all_results(list_objects, fields="name,size")`` over
   all N (pages of 1000), and again with ``fields`` as ocifs asks (etag, md5, times:
   the first such listing computes and records each hand-made file's MD5);
2. 200 PutObject of 64 KiB from one thread, then 200 GetObject of them;
3. one 256 MiB PutObject from a file and its GetObject, streamed.
Prints objects/s, requests/s and MiB/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import oci  # noqa: E402

from pipeline.genai.emulator import Emulator, EmulatorConfig  # noqa: E402
from pipeline.genai.emulator.devconfig import write_dev_config  # noqa: E402

NS = "emulator"
FULL = "name,size,etag,timeCreated,md5,timeModified,storageTier,archivalState"


def client(config_path: str, url: str) -> oci.object_storage.ObjectStorageClient:
    return oci.object_storage.ObjectStorageClient(
        oci.config.from_file(config_path),
        service_endpoint=url,
        retry_strategy=oci.retry.NoneRetryStrategy(),
        circuit_breaker_strategy=oci.circuit_breaker.NoCircuitBreakerStrategy(),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config_path, _ = write_dev_config(Path(tmp) / "oci")
        root = Path(tmp) / "root"
        for i in range(args.objects):
            path = root / "bench" / f"in/{i // 1000:03d}/part-{i:06d}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"{}" * (i % 50))
        with Emulator(EmulatorConfig(embedder="hash"), oci_config=config_path, os_root=root) as emu:
            for fields in ("name,size", FULL, FULL):
                c = client(config_path, emu.url)
                started = time.perf_counter()
                objects = oci.pagination.list_call_get_all_results(
                    c.list_objects, NS, "bench", fields=fields
                ).data.objects
                elapsed = time.perf_counter() - started
                assert len(objects) == args.objects
                print(
                    f"list {args.objects:,} objects, fields={fields}: {elapsed:.2f} s, "
                    f"{args.objects / elapsed:,.0f} objects/s"
                )
            c = client(config_path, emu.url)
            body = os.urandom(64 * 1024)
            started = time.perf_counter()
            for i in range(200):
                c.put_object(NS, "bench", f"small/{i:04d}", body)
            put = time.perf_counter() - started
            started = time.perf_counter()
            for i in range(200):
                assert len(c.get_object(NS, "bench", f"small/{i:04d}").data.content) == len(body)
            get = time.perf_counter() - started
            print(f"200 PutObject of 64 KiB: {200 / put:,.0f}/s; 200 GetObject: {200 / get:,.0f}/s")
            big = Path(tmp) / "big.bin"
            block = os.urandom(1 << 20)
            with big.open("wb") as fh:
                for _ in range(256):
                    fh.write(block)
            started = time.perf_counter()
            with big.open("rb") as fh:
                c.put_object(NS, "bench", "big.bin", fh)
            put = time.perf_counter() - started
            started = time.perf_counter()
            got = 0
            for chunk in c.get_object(NS, "bench", "big.bin").data.raw.stream(1 << 20):
                got += len(chunk)
            get = time.perf_counter() - started
            assert got == 256 << 20
            print(f"256 MiB PutObject: {256 / put:,.0f} MiB/s; GetObject: {256 / get:,.0f} MiB/s")


if __name__ == "__main__":
    main()
