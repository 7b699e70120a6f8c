"""Raw documents in an object store: listing with metadata, the modified window, and bad
objects. ``s3://`` against moto in server mode on loopback (pyarrow's own S3 client,
no mocks in the process)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from pipeline.errors import SourceError
from pipeline.models import Document, Failure
from pipeline.sources import SourceOptions, list_units, read_unit, read_units
from tests.conftest import CLI

BINARY = bytes(range(256)) * 8
LATIN1 = "Caf\xe9 cr\xe8me br\xfbl\xe9e, \xe0 la fran\xe7aise. ".encode("latin-1") * 20


@pytest.fixture(scope="module")
def moto_env() -> Iterator[dict[str, str]]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture
def s3(moto_env: dict[str, str], request: pytest.FixtureRequest) -> Any:
    """A boto3 client and a fresh bucket named after the test."""
    import boto3

    client = boto3.client("s3", endpoint_url=moto_env["AWS_ENDPOINT_URL"])
    bucket = "t-" + request.node.name.replace("_", "-").lower()[:50].rstrip("-")
    client.create_bucket(Bucket=bucket)
    client.bucket = bucket
    return client


def _put(s3: Any, key: str, body: bytes) -> None:
    s3.put_object(Bucket=s3.bucket, Key=key, Body=body)


def _read(units: list, options: SourceOptions) -> tuple[list[Document], list[Failure]]:
    docs: list[Document] = []
    fails: list[Failure] = []
    for batch in read_units(units, options):
        docs.extend(batch.documents)
        fails.extend(batch.failures)
    return docs, fails


def test_s3_listing_keeps_the_scheme_size_and_time_modified(s3: Any) -> None:
    _put(s3, "docs/a.txt", b"alpha text")
    _put(s3, "docs/sub/b.html", b"<title>B</title><p>beta</p>")
    _put(s3, "docs/c.json.gz", gzip.compress(json.dumps({"text": "gamma"}).encode()))
    _put(s3, "docs/skip.bin", b"not a document type")
    _put(s3, "other/d.txt", b"outside the prefix")
    before = datetime.now(UTC) - timedelta(minutes=5)
    units = list_units(f"s3://{s3.bucket}/docs", SourceOptions())
    assert [u.path for u in units] == [
        f"s3://{s3.bucket}/docs/a.txt",
        f"s3://{s3.bucket}/docs/c.json.gz",
        f"s3://{s3.bucket}/docs/sub/b.html",
    ]
    assert [u.size for u in units] == [10, units[1].size, 27]
    for unit in units:
        assert unit.mtime is not None and datetime.fromisoformat(unit.mtime) > before
    docs, fails = _read(units, SourceOptions())
    assert fails == []
    assert [(d.doc_id, d.text, d.uri) for d in docs] == [
        ("a.txt", "alpha text", f"s3://{s3.bucket}/docs/a.txt"),
        ("c.json.gz", "gamma", f"s3://{s3.bucket}/docs/c.json.gz"),
        ("sub/b.html", "beta", f"s3://{s3.bucket}/docs/sub/b.html"),
    ]
    assert all(d.updated_at is not None and d.updated_at > before for d in docs)


def test_s3_modified_window_and_glob(s3: Any) -> None:
    _put(s3, "docs/a.txt", b"alpha")
    _put(s3, "docs/b.md", b"beta")
    now = datetime.now(UTC)
    uri = f"s3://{s3.bucket}/docs"
    past, future = now - timedelta(hours=1), now + timedelta(hours=1)
    assert len(list_units(uri, SourceOptions(modified_since=past))) == 2
    assert list_units(uri, SourceOptions(modified_since=future)) == []
    assert list_units(uri, SourceOptions(modified_until=past)) == []
    units = list_units(uri, SourceOptions(glob="*.md", modified_until=future))
    assert [u.path.rsplit("/", 1)[1] for u in units] == ["b.md"]
    assert [u.path.rsplit("/", 1)[1] for u in list_units(f"{uri}/*.txt", SourceOptions())] == [
        "a.txt"
    ]


def test_bad_s3_objects_are_failure_rows_and_the_rest_is_read(s3: Any) -> None:
    _put(s3, "in/good.txt", b"a good document")
    _put(s3, "in/binary.txt", BINARY)
    _put(s3, "in/empty.txt", b"")
    _put(s3, "in/latin1.txt", LATIN1)
    _put(s3, "in/vanishing.txt", b"deleted after the listing")
    _put(s3, "in/zz-last.txt", b"the last good one")
    units = list_units(f"s3://{s3.bucket}/in", SourceOptions())
    assert len(units) == 6
    s3.delete_object(Bucket=s3.bucket, Key="in/vanishing.txt")
    docs, fails = _read(units, SourceOptions())
    assert [d.doc_id for d in docs] == ["good.txt", "zz-last.txt"]
    by_class = {f.error_class: f for f in fails}
    assert sorted(by_class) == ["BinaryFile", "EmptyText", "InvalidUtf8", "ObjectNotFound"]
    for name, error_class in (
        ("binary.txt", "BinaryFile"),
        ("empty.txt", "EmptyText"),
        ("latin1.txt", "InvalidUtf8"),
        ("vanishing.txt", "ObjectNotFound"),
    ):
        failure = by_class[error_class]
        uri = f"s3://{s3.bucket}/in/{name}"
        assert failure.source == uri, error_class
        assert uri in failure.message, failure.message
        assert failure.permanent
    assert by_class["ObjectNotFound"].message == (
        f"object s3://{s3.bucket}/in/vanishing.txt was listed but is gone (not found)"
    )


def test_a_missing_s3_bucket_is_refused_naming_it(moto_env: dict[str, str]) -> None:
    for uri in ("s3://no-such-bucket-here/docs", "s3://no-such-bucket-here/docs/*.txt"):
        with pytest.raises(SourceError) as caught:
            list_units(uri, SourceOptions())
        assert str(caught.value) == (
            f"source {uri}: bucket no-such-bucket-here does not exist, or these credentials"
            " may not see it"
        )


def test_a_unit_reopens_from_its_path_alone(s3: Any) -> None:
    """A shard (maybe another process) has only the unit: its path keeps the scheme."""
    _put(s3, "one/x.md", b"# reopened")
    (unit,) = list_units(f"s3://{s3.bucket}/one", SourceOptions())
    from pipeline.sources.options import SourceUnit

    again = SourceUnit(**json.loads(json.dumps(unit.__dict__)))
    docs = [d for b in read_unit(again, SourceOptions()) for d in b.documents]
    assert [(d.doc_id, d.text) for d in docs] == [("x.md", "# reopened")]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


def test_cli_run_over_s3_records_objects_and_dead_letters_bad_ones(
    s3: Any, moto_env: dict[str, str], tmp_path: Path
) -> None:
    _put(s3, "c/one.txt", b"the first document of the bucket")
    _put(s3, "c/two.md", b"the second document of the bucket")
    _put(s3, "c/bad.txt", BINARY)
    out = tmp_path / "out"
    res = _cli(
        moto_env, "run", "--source", f"s3://{s3.bucket}/c", "--output", str(out),
        "--backend", "hash", "--no-progress", "--passthrough", "uri,updated_at,size",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = ds.dataset(str(out / "summaries"), format="parquet").to_table().to_pylist()
    assert sorted((r["doc_id"], r["uri"], r["size"]) for r in rows) == [
        ("one.txt", f"s3://{s3.bucket}/c/one.txt", 32),
        ("two.md", f"s3://{s3.bucket}/c/two.md", 33),
    ]
    assert all(isinstance(r["updated_at"], datetime) for r in rows)
    failures = ds.dataset(str(out / "failures"), format="parquet").to_table().to_pylist()
    assert [(f["error_class"], f["source"]) for f in failures] == [
        ("BinaryFile", f"s3://{s3.bucket}/c/bad.txt")
    ]
    res = _cli(
        moto_env, "run", "--source", "s3://no-such-bucket-here/c", "--output",
        str(tmp_path / "out2"), "--backend", "hash", "--no-progress",
    )  # fmt: skip
    assert res.returncode == 2
    errors = [x for x in res.stderr.splitlines() if x.startswith("oci-genai-batch: error:")]
    assert len(errors) == 1 and "no-such-bucket-here" in errors[0], res.stderr
