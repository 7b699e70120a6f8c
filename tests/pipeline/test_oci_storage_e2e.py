"""oci:// to oci:// end to end, through the emulator's Object Storage and GenAI API.

2,600 text objects (ListObjects pages at 1,000) are read from one bucket and the vectors
written to another, by the CLI in a subprocess, signed with a dev key. The run is
SIGKILLed partway several times; whatever each kill leaves, a reader of
``embeddings/*.parquet`` sees only committed parts. The re-run pays only for what no
commit holds. A nightly-style run after 1% of the objects changed sends only those.

The results are read back with pyarrow through ocifs, as a consumer would: this module
imports nothing of ``pipeline`` but the emulator it runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import oci
import ocifs
import orjson
import pyarrow.dataset as ds
import pytest
from oci.object_storage import ObjectStorageClient
from oci.object_storage import models as osm

from pipeline.genai.emulator import Emulator, EmulatorConfig
from tests.conftest import CLI
from tests.oci_fixtures import make_oci_config

NS = "emulator"
COMPARTMENT = "ocid1.compartment.oc1..e2e"
N_DOCS = 2600  # > 2 pages of ListObjects
PART_ROWS = 25


class World:
    def __init__(self, emu: Emulator, config_path: str) -> None:
        self.emu = emu
        self.config_path = config_path
        cfg = oci.config.from_file(config_path)
        self.client = ObjectStorageClient(
            cfg,
            service_endpoint=emu.url,
            retry_strategy=oci.retry.NoneRetryStrategy(),
            circuit_breaker_strategy=oci.circuit_breaker.NoCircuitBreakerStrategy(),
        )
        self.fs = ocifs.OCIFileSystem(
            config=config_path,
            config_kwargs={"service_endpoint": emu.url},
            skip_instance_cache=True,
        )

    def bucket(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        details = osm.CreateBucketDetails(name=name, compartment_id=COMPARTMENT)
        self.client.create_bucket(NS, details)
        return name

    def put_many(self, bucket: str, objects: dict[str, bytes]) -> None:
        def put(item: tuple[str, bytes]) -> None:
            self.client.put_object(NS, bucket, item[0], item[1])

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, objects.items()))

    def embedded(self) -> int:
        return int(self.emu.stats()["inputs_embedded"])

    # --------------------------------------------------------------- reader side

    def files(self, bucket: str, prefix: str) -> list[str]:
        self.fs.invalidate_cache()
        try:
            return [p for p in self.fs.find(f"{bucket}@{NS}/{prefix}")]
        except FileNotFoundError:
            return []

    def visible_parts(self, bucket: str, out: str) -> set[str]:
        """Dataset files a reader of embeddings/*.parquet would pick up."""
        root = f"{bucket}@{NS}/{out}/"
        return {
            p[len(root) :]
            for p in self.files(bucket, f"{out}/embeddings")
            if p.endswith(".parquet") and not os.path.basename(p).startswith((".", "_"))
        }

    def committed(self, bucket: str, out: str) -> tuple[int, int, set[str]]:
        """(commit records, embedding rows they hold, files they name)."""
        records = rows = 0
        files: set[str] = set()
        for p in self.files(bucket, f"{out}/_state/commits"):
            if not p.endswith(".json"):
                continue
            with self.fs.open(p, "rb") as fh:
                rec = orjson.loads(fh.read())
            records += 1
            rows += rec["counts"]["embeddings"]
            files.update(rec["files"].values())
        return records, rows, files

    def rows(self, bucket: str, out: str) -> list[tuple[str, str, int]]:
        self.fs.invalidate_cache()
        table = ds.dataset(
            f"{bucket}@{NS}/{out}/embeddings", format="parquet", filesystem=self.fs
        ).to_table(columns=["doc_id", "chunk_id", "chunk_index"])
        cols = [table.column(c).to_pylist() for c in table.column_names]
        return sorted(zip(*cols, strict=True))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    config_path, _ = make_oci_config(tmp_path_factory.mktemp("oci"))
    root = tmp_path_factory.mktemp("os-root")
    with Emulator(EmulatorConfig(embedder="hash"), oci_config=config_path, os_root=root) as emu:
        yield World(emu, config_path)


def _text(i: int, version: int = 0) -> bytes:
    return (
        f"Object {i} (version {version}). It tells of river number {i}, the hills around"
        f" it and the {i % 17} bridges that cross it.\n"
    ).encode()


def _cmd(world: World, source: str, output: str, run_id: str) -> list[str]:
    return [
        CLI,
        "run",
        "--source",
        source,
        "--output",
        output,
        "--backend",
        "oci",
        "--genai-endpoint",
        world.emu.url,
        "--os-endpoint",
        world.emu.url,
        "--oci-config",
        world.config_path,
        "--compartment",
        COMPARTMENT,
        "--output-dimensions",
        "256",
        "--no-summaries",
        "--batch-docs",
        str(PART_ROWS),
        "--part-rows",
        str(PART_ROWS),
        "--no-progress",
        "--run-id",
        run_id,
    ]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _report(world: World, bucket: str, out: str) -> Any:
    world.fs.invalidate_cache()
    with world.fs.open(f"{bucket}@{NS}/{out}/report.json", "rb") as fh:
        return orjson.loads(fh.read())


def test_oci_to_oci_exactly_once_through_kills_and_a_nightly_change(world: World) -> None:
    src_bucket = world.bucket("docs")
    out_bucket = world.bucket("vectors")
    world.put_many(src_bucket, {f"in/doc-{i:05d}.txt": _text(i) for i in range(N_DOCS)})
    source = f"oci://{src_bucket}@{NS}/in/"
    out = "runs/main"
    output = f"oci://{out_bucket}@{NS}/{out}"

    kills = 0
    for target, delay in ((1, 0.0), (30, 0.011), (70, 0.023)):
        proc = subprocess.Popen(
            _cmd(world, source, output, "nightly-1"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 300
        while proc.poll() is None and world.committed(out_bucket, out)[0] < target:
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.05)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        # whatever the kill left, a reader sees committed parts only
        _, _, named = world.committed(out_bucket, out)
        assert world.visible_parts(out_bucket, out) <= named
    assert kills >= 2, "the run finished before it could be killed; make the corpus larger"

    _, rows_before, _ = world.committed(out_bucket, out)
    assert 0 < rows_before < N_DOCS
    before = world.embedded()
    _run(_cmd(world, source, output, "nightly-1"))
    report = _report(world, out_bucket, out)
    # the final run paid only for what no commit held
    assert report["counts"]["chunks_sent"] == N_DOCS - rows_before
    assert world.embedded() - before == N_DOCS - rows_before
    assert report["counts"]["documents_skipped"] == rows_before

    rows = world.rows(out_bucket, out)
    per_doc = Counter(doc for doc, _, _ in rows)
    assert len(per_doc) == N_DOCS and set(per_doc.values()) == {1}
    assert not world.files(out_bucket, f"{out}/_state/staging")

    # nightly: 1% of the objects change; only they are sent
    changed = {f"in/doc-{i:05d}.txt": _text(i, 1) for i in range(0, N_DOCS, 100)}
    world.put_many(src_bucket, changed)
    before = world.embedded()
    _run(_cmd(world, source, output, "nightly-2"))
    assert world.embedded() - before == len(changed)
    report = _report(world, out_bucket, out)
    assert report["counts"]["chunks_sent"] == len(changed)
    assert report["counts"]["documents_skipped"] == N_DOCS - len(changed)
