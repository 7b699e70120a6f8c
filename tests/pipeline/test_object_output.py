"""Outputs on object storage, exactly once, on both kinds the project writes to: S3 (moto
in server mode, a real S3 implementation on loopback) and OCI Object Storage (the
project's emulator, driven by the real ``oci`` SDK and ``ocifs``, signatures verified).

The pipeline end to end, kills between each step of the commit protocol, SIGKILLed CLI
runs, recovery, the leases' conditional writes, multipart uploads, and a missing or
forbidden bucket named before any model call. Every document is one chunk, so "inputs
the model was sent" is exact: a re-run must send only what no commit record holds.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import oci
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from oci.object_storage import models as osm

from pipeline import storage
from pipeline.checkpoint import Checkpoint, part_name
from pipeline.config import JobConfig
from pipeline.errors import LockedError, StorageError
from pipeline.genai.base import EmbedResult
from pipeline.genai.emulator import Emulator, EmulatorConfig
from pipeline.genai.emulator.devconfig import COMPARTMENT
from pipeline.genai.hashembed import HashBackend
from pipeline.lease import RUN_LEASE, Lease, ObjectCAS, RunLease
from pipeline.lease_cas import cas_for
from pipeline.runner import commit, prepare, run_shard
from pipeline.sinks import STAGING, ObjectStore, OutputStore
from pipeline.storage import StorageSettings
from tests.conftest import CLI, write_corpus
from tests.oci_fixtures import make_oci_config
from tests.s3_fixtures import S3, creates_bucket, moto_s3_fixture, s3_fixture  # noqa: F401

NS = "emulator"

N_DOCS = 600
PART_ROWS = 25


class Counting(HashBackend):
    """The hash backend, keeping every input it was really sent."""

    def __init__(self) -> None:
        super().__init__(dim=8)
        self.inputs: list[str] = []

    async def embed(self, texts: list[str]) -> EmbedResult:
        self.inputs.extend(texts)
        return await super().embed(texts)


class SimulatedKill(Exception):
    """Raised where a kill is simulated: the run stops there, with what it wrote so far."""


# ---------------------------------------------------------------------- the two stores


@dataclass
class Bucket:
    """One fresh bucket of either store, and what the tests need to look into it."""

    kind: str  # "s3" | "oci"
    name: str
    base: str  # s3://NAME or oci://NAME@NAMESPACE
    keys: Callable[[str], list[str]]  # object names under a prefix
    read: Callable[[str], bytes]
    ops: Callable[[], Counter[str]]  # requests since the test started, by operation
    env: dict[str, str] = field(default_factory=dict)  # for a CLI subprocess
    cli: list[str] = field(default_factory=list)  # CLI flags reaching the store
    job: dict[str, Any] = field(default_factory=dict)  # JobConfig fields, likewise

    def uri(self, prefix: str) -> str:
        return f"{self.base}/{prefix}"


@dataclass
class OciEnv:
    emu: Emulator
    config_path: str
    client: Any

    @property
    def settings(self) -> StorageSettings:
        return StorageSettings(oci_config=self.config_path, os_endpoint=self.emu.url)


@pytest.fixture(scope="module")
def oci_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OciEnv]:
    config_path, _ = make_oci_config(tmp_path_factory.mktemp("oci"))
    root = tmp_path_factory.mktemp("os-root")
    with Emulator(EmulatorConfig(embedder="hash"), oci_config=config_path, os_root=root) as emu:
        client = oci.object_storage.ObjectStorageClient(
            oci.config.from_file(config_path),
            service_endpoint=emu.url,
            retry_strategy=oci.retry.NoneRetryStrategy(),
            circuit_breaker_strategy=oci.circuit_breaker.NoCircuitBreakerStrategy(),
        )
        yield OciEnv(emu, config_path, client)


def _s3_bucket(s3: S3) -> Bucket:
    def ops() -> Counter[str]:
        counts: Counter[str] = Counter()
        for r in s3.requests():
            if creates_bucket(r):
                counts["CreateBucket"] += 1
            elif r.method == "PUT" and "partNumber=" in r.query:
                counts["UploadPart"] += 1
            elif r.method == "PUT" and "x-amz-copy-source" in r.headers:
                counts["Publish"] += 1  # CopyObject out of the staging prefix
        return counts

    def read(key: str) -> bytes:
        return bytes(s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read())

    return Bucket("s3", s3.bucket, f"s3://{s3.bucket}", s3.keys, read, ops, env=s3.env())


def _oci_bucket(env: OciEnv) -> Bucket:
    name = f"b-{np.random.default_rng().integers(1 << 40):x}"
    env.client.create_bucket(NS, osm.CreateBucketDetails(name=name, compartment_id=COMPARTMENT))
    start = Counter(env.emu.stats()["object_storage"])

    def ops() -> Counter[str]:
        now = Counter(env.emu.stats()["object_storage"])
        now.subtract(start)
        counts = +now
        counts["Publish"] = counts.pop("RenameObject", 0)
        return counts

    def keys(prefix: str) -> list[str]:
        listed = oci.pagination.list_call_get_all_results(
            env.client.list_objects, NS, name, prefix=prefix
        )
        return sorted(o.name for o in listed.data.objects)

    def read(key: str) -> bytes:
        return bytes(env.client.get_object(NS, name, key).data.content)

    return Bucket(
        "oci",
        name,
        f"oci://{name}@{NS}",
        keys,
        read,
        ops,
        cli=["--oci-config", env.config_path, "--os-endpoint", env.emu.url],
        job={"oci_config": env.config_path, "os_endpoint": env.emu.url},
    )


@pytest.fixture(params=["s3", "oci"])
def bucket(request: pytest.FixtureRequest) -> Iterator[Bucket]:
    """A fresh bucket on S3 (moto) or OCI (the emulator); this process's storage is set
    up to reach it (as an entry point's ``storage.configure`` does)."""
    if request.param == "s3":
        yield _s3_bucket(request.getfixturevalue("s3"))
        return
    env: OciEnv = request.getfixturevalue("oci_emulator")
    storage.configure(env.settings)
    try:
        yield _oci_bucket(env)
    finally:
        storage.configure(StorageSettings())


def _docs(n: int = N_DOCS) -> list[dict[str, str]]:
    return [{"doc_id": f"d{i:05d}", "text": f"Document {i} is short."} for i in range(n)]


def _config(source: str, output: str, bucket: Bucket) -> JobConfig:
    return JobConfig(
        source=source,
        output=output,
        backend="hash",
        dim=8,
        summaries=False,
        batch_docs=PART_ROWS,
        part_rows=PART_ROWS,
        run_id="r1",
        progress=False,
        **bucket.job,
    )


def _run(config: JobConfig, backend: Counting) -> dict[str, Any]:
    reports = [run_shard(s, config, backend=backend) for s in prepare(config)]
    return commit(config, reports)


def _ids(bucket: Bucket, prefix: str) -> Counter[str]:
    where = storage.resolve(bucket.uri(f"{prefix}/embeddings"))
    table = ds.dataset(where.path, filesystem=where.fs, format="parquet").to_table(
        columns=["doc_id"]
    )
    return Counter(table.column("doc_id").to_pylist())


def _all_once(n: int = N_DOCS) -> Counter[str]:
    return Counter({f"d{i:05d}": 1 for i in range(n)})


def _records(bucket: Bucket, prefix: str) -> list[dict[str, Any]]:
    keys = bucket.keys(f"{prefix}/_state/commits/")
    return [orjson.loads(bucket.read(k)) for k in keys if k.endswith(".json")]


def _visible_parts(bucket: Bucket, prefix: str) -> set[str]:
    """Every object a reader of ``**/*.parquet`` under the output sees."""
    return {k[len(prefix) + 1 :] for k in bucket.keys(f"{prefix}/") if k.endswith(".parquet")}


def _staged(bucket: Bucket, prefix: str) -> list[str]:
    return [k for k in bucket.keys(f"{prefix}/{STAGING}/") if not k.endswith("/")]


def _committed_files(records: list[dict[str, Any]]) -> set[str]:
    return {f for r in records for f in r["files"].values()}


# ---------------------------------------------------------------------- end to end


@pytest.mark.parametrize("source_in_bucket", [False, True], ids=["local-source", "bucket-source"])
def test_run_to_a_bucket_every_document_exactly_once(
    tmp_path, bucket: Bucket, source_in_bucket: bool
) -> None:
    src = write_corpus(str(tmp_path / "docs.parquet"), _docs())
    if source_in_bucket:
        where = storage.resolve(bucket.uri("in/docs.parquet"))
        pq.write_table(pq.read_table(src), where.path, filesystem=where.fs)
        src = bucket.uri("in/docs.parquet")
    out = bucket.uri("out")
    backend = Counting()
    report = _run(_config(src, out, bucket), backend)

    assert report["counts"]["chunks_embedded"] == N_DOCS
    assert len(backend.inputs) == N_DOCS
    assert _ids(bucket, "out") == _all_once()
    records = _records(bucket, "out")
    parts = N_DOCS // PART_ROWS
    assert len(records) == parts
    assert _visible_parts(bucket, "out") == _committed_files(records)
    assert _staged(bucket, "out") == []  # every staged part was moved into place
    assert OutputStore(out).read_json("report.json")["run_id"] == "r1"
    ops = bucket.ops()
    # each part moved into place once (RenameObject on OCI, CopyObject on S3); no bucket made
    assert ops["Publish"] == parts
    assert ops["CreateBucket"] == 0

    # a second run is a resume: nothing left to send, nothing written twice
    again = Counting()
    _run(_config(src, out, bucket), again)
    assert again.inputs == []
    assert _ids(bucket, "out") == _all_once()


def test_the_index_is_compacted_into_the_bucket(tmp_path, bucket: Bucket) -> None:
    """The run's commit folds its records into ``_state/index/`` through the store (a
    manifest created only if absent, Parquet files named ``.idx``); the next run finds
    its work there and sends only the changed document."""
    docs = _docs()
    src = write_corpus(str(tmp_path / "docs.parquet"), docs)
    out = bucket.uri("out")
    config = _config(src, out, bucket).replace(shards=2)
    _run(config, Counting())
    keys = bucket.keys("out/_state/index/")
    assert "out/_state/index/manifests/00000001.json" in keys
    assert any(k.endswith(".idx") for k in keys)
    docs[7]["text"] += " Changed."
    write_corpus(src, docs)
    again = Counting()
    _run(config.replace(run_id="r2", shards=3), again)
    assert again.inputs == ["Document 7 is short. Changed."]
    assert "out/_state/index/manifests/00000002.json" in bucket.keys("out/_state/index/")
    assert _ids(bucket, "out")["d00007"] == 2  # the earlier version's row stays


def test_on_s3_the_commit_point_is_a_conditional_put_and_parts_move_by_copy(
    tmp_path, s3: S3
) -> None:
    bucket = _s3_bucket(s3)
    src = write_corpus(str(tmp_path / "docs.parquet"), _docs(100))
    _run(_config(src, bucket.uri("out"), bucket), Counting())
    records = _records(bucket, "out")
    reqs = s3.requests()
    commits = [r for r in reqs if r.method == "PUT" and "/_state/commits/" in r.path]
    assert len(commits) == len(records) == 4
    assert all(r.headers.get("if-none-match") == "*" for r in commits)
    copies = [r for r in reqs if r.method == "PUT" and "x-amz-copy-source" in r.headers]
    assert {r.bucket_and_key[1] for r in copies} == {f"out/{f}" for f in _committed_files(records)}
    assert all(f"/{STAGING}/" in r.headers["x-amz-copy-source"] for r in copies)
    assert not [r for r in reqs if creates_bucket(r)]


@pytest.mark.parametrize("kill_at", ["before-commit-record", "before-publish"])
def test_a_kill_between_the_steps_is_finished_or_discarded_by_the_rerun(
    tmp_path, bucket: Bucket, monkeypatch: pytest.MonkeyPatch, kill_at: str
) -> None:
    src = write_corpus(str(tmp_path / "docs.parquet"), _docs())
    config = _config(src, bucket.uri("out"), bucket)
    kill_part = 5  # the sixth part: five are committed whole before it

    calls = {"n": 0}
    if kill_at == "before-commit-record":
        real_write = ObjectStore.write_json

        def write_json(self: ObjectStore, rel: str, obj: Any, *, exclusive: bool = False) -> None:
            if rel.startswith("_state/commits/"):
                if calls["n"] == kill_part:
                    raise SimulatedKill(rel)
                calls["n"] += 1
            real_write(self, rel, obj, exclusive=exclusive)

        monkeypatch.setattr(ObjectStore, "write_json", write_json)
    else:
        real_publish = ObjectStore.publish

        def publish(self: ObjectStore, rel: str, *, writer: str | None = None) -> None:
            if writer == self.writer:  # a commit's own publish, not recovery's
                if calls["n"] == kill_part:
                    raise SimulatedKill(rel)
                calls["n"] += 1
            real_publish(self, rel, writer=writer)

        monkeypatch.setattr(ObjectStore, "publish", publish)

    first = Counting()
    with pytest.raises(SimulatedKill):
        _run(config, first)
    if kill_at == "before-commit-record":
        monkeypatch.setattr(ObjectStore, "write_json", real_write)
    else:
        monkeypatch.setattr(ObjectStore, "publish", real_publish)

    records = _records(bucket, "out")
    committed_rows = sum(r["counts"]["embeddings"] for r in records)
    visible = _visible_parts(bucket, "out")
    # whatever the kill left, no uncommitted part is visible
    assert visible <= _committed_files(records)
    staged = _staged(bucket, "out")
    killed = part_name(records[0]["shard"], kill_part)
    assert len(staged) == 1
    assert staged[0].rsplit("/", 1)[-1].startswith(f".{killed}.")
    if kill_at == "before-commit-record":
        assert len(records) == kill_part
        assert visible == _committed_files(records)  # the killed part: staged, unnamed
        assert len(first.inputs) > committed_rows  # it was paid for, but not committed
    else:
        assert len(records) == kill_part + 1
        # committed but not yet in place: its rows are not visible yet, its staged copy is
        assert _committed_files(records) - visible == {f"embeddings/{killed}"}

    again = Counting()
    report = _run(config, again)
    # the re-run sent exactly the inputs no commit record held: no committed work paid twice
    assert len(again.inputs) == N_DOCS - committed_rows
    assert report["counts"]["documents_skipped"] == committed_rows
    assert _ids(bucket, "out") == _all_once()
    assert _visible_parts(bucket, "out") == _committed_files(_records(bucket, "out"))
    assert _staged(bucket, "out") == []
    assert bucket.ops()["CreateBucket"] == 0


def _cli_cmd(src: str, out: str, bucket: Bucket) -> list[str]:
    return [
        *(CLI, "run", "--source", src, "--output", out, "--backend", "hash", "--dim", "8"),
        *("--no-summaries", "--batch-docs", str(PART_ROWS), "--part-rows", str(PART_ROWS)),
        *("--no-progress", "--run-id", "r", *bucket.cli),
    ]


def test_sigkill_at_any_instant_then_resume(tmp_path, bucket: Bucket) -> None:
    n = 2000
    src = write_corpus(str(tmp_path / "docs.parquet"), _docs(n))
    out = bucket.uri("out")
    env = bucket.env or None
    kills = 0
    for target, delay in ((1, 0.0), (12, 0.011), (30, 0.023)):
        proc = subprocess.Popen(
            _cli_cmd(src, out, bucket),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + 120
        while len(bucket.keys("out/_state/commits/")) < target and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        assert _visible_parts(bucket, "out") <= _committed_files(_records(bucket, "out"))
    assert kills >= 2, "the run finished before it could be killed; make the corpus larger"

    rows_before = sum(r["counts"]["embeddings"] for r in _records(bucket, "out"))
    assert 0 < rows_before < n
    done = subprocess.run(_cli_cmd(src, out, bucket), capture_output=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    report = orjson.loads(bucket.read("out/report.json"))
    assert report["counts"]["chunks_sent"] == n - rows_before
    assert _ids(bucket, "out") == _all_once(n)
    assert _staged(bucket, "out") == []
    assert bucket.ops()["CreateBucket"] == 0


# ---------------------------------------------------------------------- the store


def test_a_large_part_goes_up_in_several_parts_and_is_moved_whole(bucket: Bucket) -> None:
    store = OutputStore(bucket.uri("out"))
    rel = f"embeddings/{part_name('s1', 0)}"
    mib = 2**20
    # incompressible 12 MiB: above ocifs's 5 MiB block size and pyarrow's S3 part size
    noise = np.random.default_rng(7).bytes(12 * mib)
    table = pa.table({"blob": pa.array([noise[i : i + mib] for i in range(0, len(noise), mib)])})
    size = store.stage_parquet(rel, table, {"k": "v"})
    assert size > 12 * mib
    assert bucket.ops()["UploadPart"] >= 2  # a multipart upload of two parts or more
    assert bucket.keys("out/embeddings/") == []  # staged: not in the dataset folder
    store.publish(rel)
    assert bucket.keys("out/embeddings/") == [f"out/{rel}"]
    assert _staged(bucket, "out") == []
    where = storage.resolve(bucket.uri(f"out/{rel}"))
    assert where.fs.get_file_info(where.path).size == size
    blobs = pq.read_table(where.path, filesystem=where.fs).column("blob").to_pylist()
    assert blobs[3] == noise[3 * mib : 4 * mib]
    store.publish(rel)  # idempotent: the staged object is gone, the final one stays
    assert where.fs.get_file_info(where.path).size == size
    assert bucket.ops()["Publish"] == 1
    assert bucket.ops()["CreateBucket"] == 0


def test_a_commit_record_is_never_overwritten(bucket: Bucket) -> None:
    a, b = OutputStore(bucket.uri("out")), OutputStore(bucket.uri("out"))
    a.write_json("_state/commits/s1/000000.json", {"writer": "a"}, exclusive=True)
    with pytest.raises(FileExistsError):
        b.write_json("_state/commits/s1/000000.json", {"writer": "b"}, exclusive=True)
    assert b.read_json("_state/commits/s1/000000.json") == {"writer": "a"}
    # a retried PUT meeting its own object (the answer was lost) is still a success
    assert a.conditional is not None
    body = orjson.dumps({"writer": "a2"})
    path = a.path("_state/commits/s1/000001.json")
    assert a.conditional.create(path, body) is not None
    assert a.conditional.create(path, body) is not None
    assert a.conditional.create(path, orjson.dumps({"writer": "b2"})) is None


def test_recovery_rolls_committed_parts_forward_and_drops_the_rest(bucket: Bucket) -> None:
    store = OutputStore(bucket.uri("out"))
    committed = f"embeddings/{part_name('s1', 0)}"
    orphan = f"embeddings/{part_name('s1', 1)}"
    other = f"embeddings/{part_name('s2', 0)}"
    for rel in (committed, orphan, other):
        store.stage_parquet(rel, pa.table({"x": [1]}), {})
    record = {
        "shard": "s1",
        "seq": 0,
        "run_id": "r1",
        "committed_at": "2026-01-01T00:00:00",
        "embed_fp": "fp",
        "summary_fp": None,
        "files": {"embeddings": committed},
        "docs": [["doc0", "h", "ok", None]],
        "counts": {"embeddings": 1},
        "writer": store.writer,
    }
    # killed after the commit point, before the part was moved into place
    store.write_json("_state/commits/s1/000000.json", record, exclusive=True)
    assert _visible_parts(bucket, "out") == set()

    restarted = OutputStore(bucket.uri("out"))  # another process: another writer
    next_seq, removed = Checkpoint(restarted).recover("s1")
    assert next_seq == 1
    assert removed == [store.temp_name(orphan)]
    assert _visible_parts(bucket, "out") == {committed}
    assert _staged(bucket, "out") == [f"out/{store.temp_name(other)}"]  # another shard's
    assert Checkpoint(restarted).recover("s1") == (1, [])


# ---------------------------------------------------------------------- leases


class BarrierCAS:
    """A real CAS whose first read per thread waits for every contender: all of them
    decide on the same version before anyone writes, so only the store settles the race."""

    def __init__(self, inner: Any, n: int) -> None:
        self.inner = inner
        self.barrier = threading.Barrier(n)
        self.seen: set[int] = set()
        self.lock = threading.Lock()

    def read(self, key: str) -> Any:
        got = self.inner.read(key)
        with self.lock:
            first = threading.get_ident() not in self.seen
            self.seen.add(threading.get_ident())
        if first:
            self.barrier.wait(timeout=30)
        return got

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _contend(make: Any, n: int) -> tuple[list[Lease], list[str]]:
    won: list[Lease] = []
    refused: list[str] = []

    def go(i: int) -> None:
        lease = make(i)
        try:
            lease._try_acquire(False)
            won.append(lease)
        except LockedError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, refused


def test_lease_races_are_settled_by_conditional_writes(bucket: Bucket) -> None:
    store = OutputStore(bucket.uri("out"))
    cas = cas_for(store)
    assert isinstance(cas, ObjectCAS)
    n = 8
    racing = BarrierCAS(cas, n)
    won, refused = _contend(lambda i: Lease(racing, RUN_LEASE, f"run-{i}", "output x"), n)
    assert len(won) == 1 and len(refused) == n - 1
    data, version = cas.read(RUN_LEASE)
    assert data is not None and version is not None and data["run_id"] == won[0].run_id

    # a stale lease (no member alive) taken over by many at once: exactly one succeeds
    dead = {**data, "members": {"x": {"host": "gone", "pid": 1, "heartbeat": 0.0}}}
    version = cas.replace(RUN_LEASE, dead, version)
    assert version is not None
    racing = BarrierCAS(cas, n)
    won, refused = _contend(lambda i: Lease(racing, RUN_LEASE, f"new-{i}", "output x"), n)
    assert len(won) == 1 and len(refused) == n - 1
    # an out-of-date version neither replaces nor deletes
    assert cas.replace(RUN_LEASE, {"run_id": "late"}, version) is None
    assert cas.delete(RUN_LEASE, version) is False
    assert cas.read(RUN_LEASE)[0]["run_id"] == won[0].run_id  # type: ignore[index]
    won[0].cas, won[0]._held = cas, True  # release through the plain CAS: one DELETE If-Match
    won[0].release()
    assert cas.read(RUN_LEASE) == (None, None)


def test_on_s3_lease_writes_carry_the_conditions(s3: S3) -> None:
    store = OutputStore(f"s3://{s3.bucket}/out")
    with RunLease(store, "r1").acquire() as lease:
        lease.renew()
    puts = [r for r in s3.requests() if r.path.endswith(RUN_LEASE) and r.method == "PUT"]
    deletes = [r for r in s3.requests() if r.path.endswith(RUN_LEASE) and r.method == "DELETE"]
    assert puts[0].headers.get("if-none-match") == "*"
    assert len(puts) >= 2 and all("if-match" in r.headers for r in puts[1:])
    assert len(deletes) == 1 and "if-match" in deletes[0].headers


def test_a_second_run_on_the_output_is_refused_naming_the_holder(bucket: Bucket) -> None:
    out = bucket.uri("out")
    with (
        RunLease(OutputStore(out), "nightly-1").acquire(),
        pytest.raises(LockedError, match="held by run nightly-1"),
    ):
        RunLease(OutputStore(out), "backfill-2").acquire()
    RunLease(OutputStore(out), "backfill-2").acquire().release()


def test_without_boto3_s3_falls_back_to_check_then_write(
    s3: S3, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import pipeline.conditional

    monkeypatch.setattr(pipeline.conditional, "_s3_client", lambda: None)
    store = OutputStore(f"s3://{s3.bucket}/out-plain")
    assert store.conditional is None
    store.write_json("_state/commits/s1/000000.json", {"a": 1}, exclusive=True)
    with pytest.raises(FileExistsError):
        store.write_json("_state/commits/s1/000000.json", {"a": 2}, exclusive=True)
    with caplog.at_level("WARNING"):
        assert type(cas_for(store)).__name__ == "BestEffortCAS"
    assert "no conditional writes" in caplog.text


def test_an_unreachable_s3_is_an_os_error_for_the_lease_and_commit_callers(
    s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore's own errors (here: nothing listens) reach the callers as OSError, the
    storage error they handle (a lease heartbeat retries it; the CLI exits 74)."""
    import socket

    import boto3

    from pipeline.conditional import S3Conditional

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    client = boto3.session.Session().client("s3", endpoint_url=f"http://127.0.0.1:{port}")
    cond = S3Conditional(client)
    with pytest.raises(OSError, match=f"create s3://{s3.bucket}/k"):
        cond.create(f"{s3.bucket}/k", b"{}")
    with pytest.raises(OSError, match="get s3://"):
        cond.get(f"{s3.bucket}/k")


# ---------------------------------------------------------------------- preflight


def _missing(bucket: Bucket) -> tuple[str, str]:
    """(output URI in a bucket that does not exist, that bucket as messages name it)."""
    if bucket.kind == "s3":
        return "s3://no-such-bucket-4711/out", "no-such-bucket-4711"
    return f"oci://no-such-bucket-4711@{NS}/out", f"no-such-bucket-4711@{NS}"


def test_a_missing_bucket_is_named_before_any_model_call(tmp_path, bucket: Bucket) -> None:
    src = write_corpus(str(tmp_path / "docs.parquet"), _docs(10))
    out, name = _missing(bucket)
    backend = Counting()
    with pytest.raises(StorageError, match=f"bucket {name}") as info:
        _run(_config(src, out, bucket), backend)
    assert "does not exist" in str(info.value)
    assert backend.inputs == []
    # with several shards the plan writes the ids repeated across them into the output
    # first (here d00000, in both files): that first write names the bucket alike
    (tmp_path / "two").mkdir()
    for i in range(2):
        rows = _docs(10)[:1] + _docs(10)[1 + i * 4 : 5 + i * 4]
        write_corpus(str(tmp_path / "two" / f"p{i}.parquet"), rows)
    sharded = _config(str(tmp_path / "two"), out, bucket).replace(shards=2)
    with pytest.raises(StorageError, match=f"bucket {name}"):
        _run(sharded, backend)
    assert backend.inputs == []
    res = subprocess.run(
        _cli_cmd(src, out, bucket), capture_output=True, text=True, env=bucket.env or None
    )
    assert res.returncode == 74, res.stderr
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"bucket {name}" in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    assert bucket.ops()["CreateBucket"] == 0


def test_a_forbidden_oci_bucket_is_named_before_any_model_call(
    tmp_path, oci_emulator: OciEnv
) -> None:
    storage.configure(oci_emulator.settings)
    try:
        bucket = _oci_bucket(oci_emulator)
        oci_emulator.emu.denied_buckets.add(bucket.name)
        src = write_corpus(str(tmp_path / "docs.parquet"), _docs(10))
        backend = Counting()
        with pytest.raises(StorageError, match=f"bucket {bucket.name}@{NS}.*not authorized"):
            _run(_config(src, bucket.uri("out"), bucket), backend)
        assert backend.inputs == []
        res = subprocess.run(_cli_cmd(src, bucket.uri("out"), bucket), capture_output=True)
        assert res.returncode == 74, res.stderr
        assert b"not authorized" in res.stderr and b"Traceback" not in res.stderr
    finally:
        oci_emulator.emu.denied_buckets.discard(bucket.name)
        storage.configure(StorageSettings())


# ---------------------------------------------------------------------- session tokens


def test_a_session_token_profile_writes_to_oci_and_follows_a_refreshed_token(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auth security_token (``oci session authenticate``): ocifs's SDK client signs with
    the token the file holds at each request (the emulator does not check session
    tokens, so the signature's keyId is read from the client's own signer)."""
    import configparser

    import pipeline.genai.oci_auth
    from pipeline.genai.emulator.devconfig import write_profile

    monkeypatch.setattr(pipeline.genai.oci_auth, "_TOKEN_RECHECK_S", 0.0)
    good, _ = make_oci_config(tmp_path / "oci")
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(good)
    token = tmp_path / "token"
    token.write_text("session-token-1\n")
    profile = {k: v for k, v in parser["DEFAULT"].items() if k != "user"}
    config_path = tmp_path / "session_config"
    write_profile(config_path, "DEFAULT", {**profile, "security_token_file": str(token)})
    root = tmp_path / "os-root"
    (root / "tok").mkdir(parents=True)
    with Emulator(EmulatorConfig(embedder="hash"), os_root=root) as emu:
        settings = StorageSettings(
            auth="security_token", oci_config=str(config_path), os_endpoint=emu.url
        )
        store = OutputStore(f"oci://tok@{NS}/out", settings=settings)
        rel = f"embeddings/{part_name('s1', 0)}"
        store.stage_parquet(rel, pa.table({"x": [1, 2]}), {})  # PutObject: body unsigned
        store.write_json("_state/commits/s1/000000.json", {"a": 1}, exclusive=True)
        store.publish(rel)
        assert (root / "tok" / "out" / rel).exists()
        assert emu.stats()["unauthenticated"] == 0

        signer = storage.fsspec_of(store.fs).oci_client.base_client.signer

        def key_id() -> str:
            request = oci._vendor.requests.Request("GET", f"{emu.url}/n/").prepare()
            signer(request)
            return request.headers["authorization"].split('keyId="', 1)[1].split('"', 1)[0]

        assert key_id() == "ST$session-token-1"
        time.sleep(0.01)
        token.write_text("session-token-2\n")  # `oci session refresh` beside the job
        assert key_id() == "ST$session-token-2"
