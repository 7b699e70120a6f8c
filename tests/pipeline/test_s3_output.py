"""Outputs on S3, exactly once: the pipeline end to end against moto in server mode (a real
S3 implementation on loopback), kills between each step of the commit protocol, the
leases' conditional writes, multipart uploads, and a missing bucket named before any call.

Every document is one chunk, so "inputs the model was sent" is exact: a re-run must send
only what no commit record holds.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.checkpoint import Checkpoint, part_name
from pipeline.config import JobConfig
from pipeline.errors import LockedError, StorageError
from pipeline.genai.base import EmbedResult
from pipeline.genai.hashembed import HashBackend
from pipeline.lease import RUN_LEASE, Lease, ObjectCAS, RunLease
from pipeline.lease_cas import cas_for
from pipeline.runner import commit, prepare, run_shard
from pipeline.sinks import STAGING, ObjectStore, OutputStore
from tests.conftest import CLI, write_corpus
from tests.s3_fixtures import S3, creates_bucket, moto_s3_fixture, s3_fixture  # noqa: F401

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


def _docs(n: int = N_DOCS) -> list[dict[str, str]]:
    return [{"doc_id": f"d{i:05d}", "text": f"Document {i} is short."} for i in range(n)]


def _config(source: str, output: str) -> JobConfig:
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
    )


def _run(config: JobConfig, backend: Counting) -> dict[str, Any]:
    reports = [run_shard(s, config, backend=backend) for s in prepare(config)]
    return commit(config, reports)


def _ids(s3: S3, prefix: str) -> Counter[str]:
    fs, path = pafs.FileSystem.from_uri(f"s3://{s3.bucket}/{prefix}/embeddings")
    table = ds.dataset(path, filesystem=fs, format="parquet").to_table(columns=["doc_id"])
    return Counter(table.column("doc_id").to_pylist())


def _records(s3: S3, prefix: str) -> list[dict[str, Any]]:
    out = []
    for key in s3.keys(f"{prefix}/_state/commits/"):
        if key.endswith(".json"):
            body = s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
            out.append(orjson.loads(body))
    return out


def _visible_parts(s3: S3, prefix: str) -> set[str]:
    """Every object a reader of ``**/*.parquet`` under the output sees."""
    return {k[len(prefix) + 1 :] for k in s3.keys(f"{prefix}/") if k.endswith(".parquet")}


def _staged(s3: S3, prefix: str) -> list[str]:
    return [k for k in s3.keys(f"{prefix}/{STAGING}/") if not k.endswith("/")]


def _committed_files(records: list[dict[str, Any]]) -> set[str]:
    return {f for r in records for f in r["files"].values()}


def _no_bucket_created(s3: S3) -> None:
    assert not [r for r in s3.requests() if creates_bucket(r)]


# ---------------------------------------------------------------------- end to end


@pytest.mark.parametrize("source_on_s3", [False, True], ids=["local-source", "s3-source"])
def test_run_to_s3_every_document_exactly_once(tmp_path, s3: S3, source_on_s3: bool) -> None:
    src = write_corpus(str(tmp_path / "docs.parquet"), _docs())
    if source_on_s3:
        s3.client.upload_file(src, s3.bucket, "in/docs.parquet")
        src = f"s3://{s3.bucket}/in/docs.parquet"
    out = f"s3://{s3.bucket}/out"
    backend = Counting()
    report = _run(_config(src, out), backend)

    assert report["counts"]["chunks_embedded"] == N_DOCS
    assert len(backend.inputs) == N_DOCS
    assert _ids(s3, "out") == Counter({f"d{i:05d}": 1 for i in range(N_DOCS)})
    records = _records(s3, "out")
    assert len(records) == N_DOCS // PART_ROWS
    assert _visible_parts(s3, "out") == _committed_files(records)
    assert _staged(s3, "out") == []  # every staged part was moved into place
    assert OutputStore(out).read_json("report.json")["run_id"] == "r1"

    reqs = s3.requests()
    _no_bucket_created(s3)
    # the commit point is a conditional PUT; parts are moved by copy, then delete
    commits = [r for r in reqs if r.method == "PUT" and "/_state/commits/" in r.path]
    assert len(commits) == len(records)
    assert all(r.headers.get("if-none-match") == "*" for r in commits)
    copies = [r for r in reqs if r.method == "PUT" and "x-amz-copy-source" in r.headers]
    assert {r.bucket_and_key[1] for r in copies} == {f"out/{f}" for f in _committed_files(records)}
    assert all(f"/{STAGING}/" in r.headers["x-amz-copy-source"] for r in copies)

    # a second run is a resume: nothing left to send, nothing written twice
    again = Counting()
    _run(_config(src, out), again)
    assert again.inputs == []
    assert _ids(s3, "out") == Counter({f"d{i:05d}": 1 for i in range(N_DOCS)})


@pytest.mark.parametrize("kill_at", ["before-commit-record", "before-publish"])
def test_a_kill_between_the_steps_is_finished_or_discarded_by_the_rerun(
    tmp_path, s3: S3, monkeypatch: pytest.MonkeyPatch, kill_at: str
) -> None:
    src = write_corpus(str(tmp_path / "docs.parquet"), _docs())
    out = f"s3://{s3.bucket}/out"
    config = _config(src, out)
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
    monkeypatch.undo()
    for key, value in s3.server.env().items():  # undo() dropped the fixture's settings too
        monkeypatch.setenv(key, value)

    records = _records(s3, "out")
    committed_rows = sum(r["counts"]["embeddings"] for r in records)
    visible = _visible_parts(s3, "out")
    # whatever the kill left, no uncommitted part is visible
    assert visible <= _committed_files(records)
    staged = _staged(s3, "out")
    if kill_at == "before-commit-record":
        assert len(records) == kill_part
        assert visible == _committed_files(records)
        # the killed part is staged, invisible, and no record names it
        assert len(staged) == 1
        name = staged[0].rsplit("/", 1)[-1]
        assert name.startswith(f".{part_name(records[0]['shard'], kill_part)}.")
        assert name.endswith(".tmp")
    else:
        assert len(records) == kill_part + 1
        # committed but not yet in place: its rows are not visible yet, its staged copy is
        assert _committed_files(records) - visible == {
            f"embeddings/{part_name(records[0]['shard'], kill_part)}"
        }
        assert len(staged) == 1
    assert len(first.inputs) > committed_rows or kill_at == "before-publish"

    again = Counting()
    report = _run(config, again)
    # the re-run sent exactly the inputs no commit record held: no committed work paid twice
    assert len(again.inputs) == N_DOCS - committed_rows
    assert report["counts"]["documents_skipped"] == committed_rows
    assert _ids(s3, "out") == Counter({f"d{i:05d}": 1 for i in range(N_DOCS)})
    records = _records(s3, "out")
    assert _visible_parts(s3, "out") == _committed_files(records)
    assert _staged(s3, "out") == []
    _no_bucket_created(s3)


def _cli_cmd(src: str, out: str) -> list[str]:
    return [
        *(CLI, "run", "--source", src, "--output", out, "--backend", "hash", "--dim", "8"),
        "--no-summaries",
        "--batch-docs",
        str(PART_ROWS),
        "--part-rows",
        str(PART_ROWS),
        "--no-progress",
        "--run-id",
        "r",
    ]


def test_sigkill_at_any_instant_then_resume_on_s3(tmp_path, s3: S3) -> None:
    n = 2000
    src = write_corpus(str(tmp_path / "docs.parquet"), _docs(n))
    out = f"s3://{s3.bucket}/out"
    kills = 0
    for target, delay in ((1, 0.0), (12, 0.011), (30, 0.023)):
        proc = subprocess.Popen(
            _cli_cmd(src, out),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=s3.env(),
        )
        deadline = time.monotonic() + 120
        while len(s3.keys("out/_state/commits/")) < target and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        assert _visible_parts(s3, "out") <= _committed_files(_records(s3, "out"))
    assert kills >= 2, "the run finished before it could be killed; make the corpus larger"

    rows_before = sum(r["counts"]["embeddings"] for r in _records(s3, "out"))
    assert 0 < rows_before < n
    done = subprocess.run(_cli_cmd(src, out), capture_output=True, env=s3.env(), timeout=300)
    assert done.returncode == 0, done.stderr
    report = OutputStore(out).read_json("report.json")
    assert report["counts"]["chunks_sent"] == n - rows_before
    assert _ids(s3, "out") == Counter({f"d{i:05d}": 1 for i in range(n)})
    assert _staged(s3, "out") == []
    _no_bucket_created(s3)


# ---------------------------------------------------------------------- the store


def test_a_large_part_goes_up_in_several_parts_and_is_moved_whole(s3: S3) -> None:
    store = OutputStore(f"s3://{s3.bucket}/out")
    rel = f"embeddings/{part_name('s1', 0)}"
    noise = np.random.default_rng(7).bytes(12 * 2**20)  # incompressible: 12 MiB on the wire
    mib = 2**20
    table = pa.table({"blob": pa.array([noise[i : i + mib] for i in range(0, len(noise), mib)])})
    size = store.stage_parquet(rel, table, {"k": "v"})
    assert size > 12 * 2**20
    staged_key = f"out/{store.temp_name(rel)}"
    uploads = [
        r
        for r in s3.requests()
        if r.bucket_and_key[1] == staged_key and r.method == "PUT" and "partNumber=" in r.query
    ]
    assert len(uploads) >= 2  # a multipart upload of two parts or more
    assert s3.keys("out/embeddings/") == []  # staged: not in the dataset folder
    store.publish(rel)
    head = s3.client.head_object(Bucket=s3.bucket, Key=f"out/{rel}")
    assert head["ContentLength"] == size
    assert s3.keys(staged_key) == []
    fs, path = pafs.FileSystem.from_uri(f"s3://{s3.bucket}/out/{rel}")
    blobs = pq.read_table(path, filesystem=fs).column("blob").to_pylist()
    assert blobs[3] == noise[3 * mib : 4 * mib]
    store.publish(rel)  # idempotent: the staged object is gone, the final one stays
    assert s3.client.head_object(Bucket=s3.bucket, Key=f"out/{rel}")["ContentLength"] == size
    _no_bucket_created(s3)


def test_a_commit_record_is_never_overwritten_on_s3(s3: S3) -> None:
    a, b = OutputStore(f"s3://{s3.bucket}/out"), OutputStore(f"s3://{s3.bucket}/out")
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


def test_recovery_on_s3_rolls_committed_parts_forward_and_drops_the_rest(s3: S3) -> None:
    store = OutputStore(f"s3://{s3.bucket}/out")
    ck = Checkpoint(store)
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
    store.write_json("_state/commits/s1/000000.json", record, exclusive=True)
    assert _visible_parts(s3, "out") == set()

    restarted = OutputStore(f"s3://{s3.bucket}/out")  # another process: another writer
    next_seq, removed = Checkpoint(restarted).recover("s1")
    assert next_seq == 1
    assert removed == [store.temp_name(orphan)]
    assert _visible_parts(s3, "out") == {committed}
    assert _staged(s3, "out") == [f"out/{store.temp_name(other)}"]  # another shard's
    assert Checkpoint(restarted).recover("s1") == (1, [])
    assert ck.records("s1")[0].files == {"embeddings": committed}


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


def test_lease_on_s3_uses_conditional_writes_and_exactly_one_contender_wins(s3: S3) -> None:
    store = OutputStore(f"s3://{s3.bucket}/out")
    cas = cas_for(store)
    assert isinstance(cas, ObjectCAS)
    n = 8
    racing = BarrierCAS(cas, n)
    won, refused = _contend(lambda i: Lease(racing, RUN_LEASE, f"run-{i}", "output x"), n)
    assert len(won) == 1 and len(refused) == n - 1
    data, version = cas.read(RUN_LEASE)
    assert data is not None and data["run_id"] == won[0].run_id
    lease_puts = [r for r in s3.requests() if r.method == "PUT" and r.path.endswith(RUN_LEASE)]
    assert sum(r.headers.get("if-none-match") == "*" for r in lease_puts) == n

    # a stale lease (no member alive) taken over by many at once: exactly one succeeds
    assert version is not None
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


def test_a_second_run_on_an_s3_output_is_refused_naming_the_holder(s3: S3) -> None:
    out = f"s3://{s3.bucket}/out"
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


# ---------------------------------------------------------------------- preflight


def test_a_missing_bucket_is_named_before_any_model_call(tmp_path, s3: S3) -> None:
    src = write_corpus(str(tmp_path / "docs.parquet"), _docs(10))
    out = "s3://no-such-bucket-4711/out"
    backend = Counting()
    with pytest.raises(StorageError, match="bucket no-such-bucket-4711 does not exist"):
        _run(_config(src, out), backend)
    assert backend.inputs == []
    res = subprocess.run(_cli_cmd(src, out), capture_output=True, text=True, env=s3.env())
    assert res.returncode == 74, res.stderr
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "bucket no-such-bucket-4711 does not exist" in errors[0]
    assert "Traceback" not in res.stderr
    _no_bucket_created(s3)
