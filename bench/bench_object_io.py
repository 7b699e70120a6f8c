"""Object Storage through the pipeline's own code, beside a local directory in the same run:
objects listed per second (the source's paged listing), MB/s read (the source reading
and decoding text objects) and MB/s written (an output part staged and published).

    .venv/bin/python bench/bench_object_io.py [--objects 10000] [--read-mb 64] [--part-mb 64]

OCI Object Storage is the emulator (``--os-root``, signatures verified), in this process
on loopback: the figures are the client side's cost plus a local server's, not a real
service's latency. Each figure is printed beside the same operation on a local directory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from pipeline import storage  # noqa: E402
from pipeline.config import JobConfig  # noqa: E402
from pipeline.genai.emulator import Emulator, EmulatorConfig  # noqa: E402
from pipeline.genai.emulator.devconfig import write_dev_config  # noqa: E402
from pipeline.runner import source_options  # noqa: E402
from pipeline.sinks import OutputStore  # noqa: E402
from pipeline.sources import list_units, read_units  # noqa: E402

MB = 1_000_000


def _fill(folder: Path, n: int, size: int, seed: int) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    words = np.array(
        ["river", "lake", "hill", "bridge", "valley", "forest", "stone", "field", "road", "town"]
    )
    total = 0
    for i in range(n):
        count = max(1, size // 6)
        text = " ".join(words[rng.integers(0, len(words), count)]) + "\n"
        data = f"Object {i}.\n{text}".encode()
        (folder / f"doc-{i:06d}.txt").write_bytes(data)
        total += len(data)
    return total


def _best(fn: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def _read_all(uri: str, config: JobConfig) -> int:
    options = source_options(config)
    units = list_units(uri, options)
    docs = 0
    for batch in read_units(units, options):
        docs += len(batch.documents)
    return docs


def _part(mb: int) -> pa.Table:
    dim = 1024
    rows = mb * MB // (dim * 4)
    flat = np.random.default_rng(1).random(rows * dim, dtype=np.float32)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat), dim)
    ids = pa.array([f"d{i:08d}" for i in range(rows)])
    return pa.table({"doc_id": ids, "embedding": vectors})


def _write(store: OutputStore, table: pa.Table, i: int) -> int:
    rel = f"embeddings/part-{i:04d}.parquet"
    size = store.stage_parquet(rel, table, {"bench": "1"})
    store.publish(rel)
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--read-mb", type=int, default=64)
    parser.add_argument("--part-mb", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        config_path, _ = write_dev_config(base / "oci")
        os_root = base / "os-root"
        local = base / "local"
        # the same files served as objects (bucket "docs") and read from a directory
        _fill(os_root / "docs" / "many", args.objects, 40, seed=1)
        _fill(local / "many", args.objects, 40, seed=1)
        n_big = 64
        read_bytes = _fill(os_root / "docs" / "big", n_big, args.read_mb * MB // n_big, 2)
        _fill(local / "big", n_big, args.read_mb * MB // n_big, 2)
        (os_root / "out").mkdir()
        table = _part(args.part_mb)

        with Emulator(
            EmulatorConfig(embedder="hash"), oci_config=config_path, os_root=os_root
        ) as emu:
            config = JobConfig(
                source="-",
                output="-",
                backend="hash",
                oci_config=config_path,
                os_endpoint=emu.url,
                batch_docs=500,
            )
            storage.configure(config)
            oci_many = "oci://docs@emulator/many/"
            options = source_options(config)
            list_units(oci_many, options)  # first listing: the emulator hashes hand-made files
            rows: list[tuple[str, float, float, str]] = []

            def listed(uri: str) -> Callable[[], object]:
                return lambda: list_units(uri, options)

            t_local = _best(listed(str(local / "many")))
            t_oci = _best(listed(oci_many))
            rows.append(
                ("objects listed per second", args.objects / t_oci, args.objects / t_local, "")
            )

            t_local = _best(lambda: _read_all(str(local / "big"), config), repeat=2)
            t_oci = _best(lambda: _read_all("oci://docs@emulator/big/", config), repeat=2)
            rows.append(
                (
                    "MB/s read (text objects, decoded)",
                    read_bytes / MB / t_oci,
                    read_bytes / MB / t_local,
                    f"{n_big} objects of {read_bytes / n_big / MB:.1f} MB",
                )
            )

            local_store = OutputStore(str(base / "out-local"))
            oci_store = OutputStore("oci://out@emulator/run")
            sizes: list[int] = []
            counter = iter(range(1000))
            t_local = _best(lambda: sizes.append(_write(local_store, table, next(counter))), 2)
            t_oci = _best(lambda: sizes.append(_write(oci_store, table, next(counter))), 2)
            size = sizes[-1]
            rows.append(
                (
                    "MB/s written (a part staged and published)",
                    size / MB / t_oci,
                    size / MB / t_local,
                    f"one {size / MB:.0f} MB Parquet part (zstd)",
                )
            )
            ops = emu.stats()["object_storage"]
        storage.configure(storage.StorageSettings())

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"# {time.strftime('%Y-%m-%d')} load average: {load}")
    print("| measure | OCI (emulator) | local directory | OCI / local | what |")
    print("|---|---|---|---|---|")
    for name, oci, loc, what in rows:
        print(f"| {name} | {oci:,.1f} | {loc:,.1f} | {oci / loc:.2f} | {what} |")
    multipart = ops.get("UploadPart", 0)
    print(f"Object Storage operations seen: {dict(sorted(ops.items()))} (UploadPart: {multipart})")


if __name__ == "__main__":
    main()
