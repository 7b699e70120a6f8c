"""Raw documents from OCI Object Storage (``oci://bucket@namespace/prefix``): the real
``oci`` SDK and ocifs against the project's emulator over loopback, signatures verified.

Listing is paged ListObjects with name, size, etag, md5 and time modified; the glob and
the modified window filter as it goes; each object is one streamed GetObject and its
documents record the object's URI, etag and time modified. Bad objects are failure rows;
a missing bucket or refused credentials stop the run at its plan with one message."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from pipeline import storage
from pipeline.errors import AuthError, SourceError
from pipeline.genai.emulator import Emulator, EmulatorConfig
from pipeline.models import Document, Failure
from pipeline.sources import SourceOptions, list_units, objects, read_units
from pipeline.sources.options import SourceUnit
from pipeline.storage import StorageSettings
from tests.conftest import CLI
from tests.oci_fixtures import make_oci_config, wrong_key_config

NS = "emulator"
JAN = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
FEB = datetime(2026, 2, 15, 12, 0, tzinfo=UTC)
MAR = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
BINARY = bytes(range(256)) * 8
LATIN1 = "Caf\xe9 cr\xe8me br\xfbl\xe9e, \xe0 la fran\xe7aise. ".encode("latin-1") * 20


class Env:
    def __init__(self, emu: Emulator, config_path: str, root: Path, oci_dir: Path) -> None:
        self.emu = emu
        self.config_path = config_path
        self.root = root
        self.oci_dir = oci_dir
        self.settings = StorageSettings(oci_config=config_path, os_endpoint=emu.url)

    def bucket(self, objects: dict[str, bytes | tuple[bytes, datetime]]) -> str:
        """A new bucket holding ``objects`` (name -> body, or (body, time modified))."""
        name = f"b-{uuid.uuid4().hex[:10]}"
        for key, value in objects.items():
            body, when = value if isinstance(value, tuple) else (value, None)
            path = self.root / name / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
            if when is not None:
                os.utime(path, (when.timestamp(), when.timestamp()))
        (self.root / name).mkdir(exist_ok=True)
        return name

    def ops(self) -> dict[str, int]:
        return dict(self.emu.stats().get("object_storage", {}))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    oci_dir = tmp_path_factory.mktemp("oci")
    root = tmp_path_factory.mktemp("os-root")
    config_path, _ = make_oci_config(oci_dir)
    with Emulator(EmulatorConfig(embedder="hash"), oci_config=config_path, os_root=root) as emu:
        yield Env(emu, config_path, root, oci_dir)


@pytest.fixture
def oci(env: Env) -> Iterator[Env]:
    """This process's storage signed with the emulator's dev profile."""
    storage.configure(env.settings)
    try:
        yield env
    finally:
        storage.configure(StorageSettings())


def _read(units: list[SourceUnit], options: SourceOptions) -> tuple[list[Document], list[Failure]]:
    docs: list[Document] = []
    fails: list[Failure] = []
    for batch in read_units(units, options):
        docs.extend(batch.documents)
        fails.extend(batch.failures)
    return docs, fails


def _head(env: Env, bucket: str, name: str) -> Any:
    fs = storage.resolve(f"oci://{bucket}@{NS}/{name}", env.settings).fs
    client = objects.oci_client_of(fs)
    return client.head_object(NS, bucket, name).headers


# ----------------------------------------------------------------------------- listing


def test_listing_pages_and_records_size_etag_md5_and_time_modified(
    oci: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = oci.bucket(
        {
            **{f"docs/d{i}.txt": (f"document number {i}".encode(), JAN) for i in range(7)},
            "docs/sub/deep.md": (b"# deeper", FEB),
            "docs/image.png": BINARY,  # not a document type: left out
            "docs/.hidden.txt": b"hidden",
            "other/x.txt": b"outside the prefix",
        }
    )
    monkeypatch.setattr(objects, "PAGE_SIZE", 3)
    before = oci.ops().get("ListObjects", 0)
    units = list_units(f"oci://{bucket}@{NS}/docs", SourceOptions())
    # 10 objects under docs/ in pages of 3: four calls, no delimiter
    assert oci.ops().get("ListObjects", 0) - before == 4
    assert [u.path for u in units] == [
        *(f"oci://{bucket}@{NS}/docs/d{i}.txt" for i in range(7)),
        f"oci://{bucket}@{NS}/docs/sub/deep.md",
    ]
    deep = units[-1]
    headers = _head(oci, bucket, "docs/sub/deep.md")
    assert (deep.kind, deep.size, deep.root) == ("file", 8, f"oci://{bucket}@{NS}/docs")
    assert deep.etag == headers["etag"]
    assert deep.md5 == headers["content-md5"]
    assert deep.mtime is not None and datetime.fromisoformat(deep.mtime) == FEB


def test_listing_is_a_stream_of_pages_fetched_as_consumed(
    oci: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing never holds more than one page: the next page is asked for only when
    the caller has taken every object of the previous one."""
    bucket = oci.bucket({f"p/{i:02d}.txt": b"x" for i in range(10)})
    monkeypatch.setattr(objects, "PAGE_SIZE", 2)
    fs = storage.resolve(f"oci://{bucket}@{NS}/p", oci.settings).fs
    client = objects.oci_client_of(fs)
    before = oci.ops().get("ListObjects", 0)
    files, root, single = objects.find_oci(
        client, f"oci://{bucket}@{NS}/p", f"{bucket}@{NS}/p", None, deep=True
    )
    assert (root, single) == (f"{bucket}@{NS}/p", False)
    assert oci.ops().get("ListObjects", 0) - before == 1  # the first page: errors surface now
    taken = [next(files).rel for _ in range(3)]
    assert taken == ["00.txt", "01.txt", "02.txt"]
    assert oci.ops().get("ListObjects", 0) - before == 2
    assert len(list(files)) == 7
    assert oci.ops().get("ListObjects", 0) - before == 5


def test_an_object_over_the_size_limit_is_refused_from_its_length(oci: Env) -> None:
    bucket = oci.bucket({"big/large.txt": b"word " * 1000, "big/small.txt": b"short"})
    units = list_units(f"oci://{bucket}@{NS}/big", SourceOptions())
    docs, fails = _read(units, SourceOptions(max_doc_chars=100))
    assert [d.doc_id for d in docs] == ["small.txt"]
    (failure,) = fails
    assert failure.error_class == "DocumentTooLarge"
    assert failure.source == f"oci://{bucket}@{NS}/big/large.txt"
    assert "5,000 bytes" in failure.message


def test_documents_record_object_uri_etag_and_time_modified(oci: Env) -> None:
    bucket = oci.bucket(
        {
            "in/a.txt": (b"plain text object", JAN),
            "in/b.html.gz": (gzip.compress(b"<title>B</title><p>html in gzip</p>"), FEB),
            "in/c.jsonl": (b'{"text": "line one"}\n{"text": "line two"}\n', MAR),
            "in/d.json": (json.dumps({"text": "a json object", "title": "D"}).encode(), MAR),
        }
    )
    units = list_units(f"oci://{bucket}@{NS}/in/", SourceOptions())
    docs, fails = _read(units, SourceOptions())
    assert fails == []
    got = {d.doc_id: (d.text, d.title, d.uri, d.updated_at) for d in docs}
    base = f"oci://{bucket}@{NS}/in"
    assert got == {
        "a.txt": ("plain text object", "a.txt", f"{base}/a.txt", JAN),
        "b.html.gz": ("html in gzip", "B", f"{base}/b.html.gz", FEB),
        "c.jsonl#1": ("line one", None, f"{base}/c.jsonl", MAR),
        "c.jsonl#2": ("line two", None, f"{base}/c.jsonl", MAR),
        "d.json": ("a json object", "D", f"{base}/d.json", MAR),
    }
    a = next(d for d in docs if d.doc_id == "a.txt")
    headers = _head(oci, bucket, "in/a.txt")
    assert a.extra == {
        "uri": f"{base}/a.txt",
        "updated_at": JAN,
        "size": len(b"plain text object"),
        "etag": headers["etag"],
        "md5": headers["content-md5"],
    }


def test_an_object_changed_after_the_listing_records_what_was_read(oci: Env) -> None:
    bucket = oci.bucket({"v/doc.txt": (b"first version", JAN)})
    (unit,) = list_units(f"oci://{bucket}@{NS}/v", SourceOptions())
    path = oci.root / bucket / "v" / "doc.txt"
    path.write_bytes(b"second version, longer")
    os.utime(path, (FEB.timestamp(), FEB.timestamp()))
    (doc,), _ = _read([unit], SourceOptions())
    assert doc.text == "second version, longer"
    assert doc.extra["etag"] == _head(oci, bucket, "v/doc.txt")["etag"] != unit.etag
    assert doc.updated_at == FEB and doc.extra["size"] == len(b"second version, longer")


def test_single_object_glob_and_glob_option(oci: Env) -> None:
    bucket = oci.bucket(
        {
            "logs/2026-01-01.jsonl": b'{"text": "day one"}\n',
            "logs/2026-01-02.jsonl": b'{"text": "day two"}\n',
            "logs/2026-02-01.jsonl": b'{"text": "february"}\n',
            "logs/old/2026-01-03.jsonl": b'{"text": "nested"}\n',
            "logs/readme.txt": b"about the logs",
        }
    )
    base = f"oci://{bucket}@{NS}/logs"
    (one,) = list_units(f"{base}/readme.txt", SourceOptions())
    assert (one.path, one.root) == (f"{base}/readme.txt", base)
    docs, _ = _read([one], SourceOptions())
    assert [(d.doc_id, d.text) for d in docs] == [("readme.txt", "about the logs")]
    # a glob of one level lists only the glob's literal head under the base, one level
    names = [u.path.rsplit("/", 1)[1] for u in list_units(f"{base}/2026-01-*", SourceOptions())]
    assert names == ["2026-01-01.jsonl", "2026-01-02.jsonl"]
    deep = list_units(f"{base}/**/2026-01-*.jsonl", SourceOptions())
    assert [u.path.removeprefix(base + "/") for u in deep] == [
        "2026-01-01.jsonl",
        "2026-01-02.jsonl",
        "old/2026-01-03.jsonl",
    ]
    only_txt = list_units(base, SourceOptions(glob="*.txt"))
    assert [u.path for u in only_txt] == [f"{base}/readme.txt"]


def test_modified_window_over_objects(oci: Env) -> None:
    bucket = oci.bucket(
        {
            "w/jan.txt": (b"january", JAN),
            "w/feb.txt": (b"february", FEB),
            "w/mar.txt": (b"march", MAR),
        }
    )
    uri = f"oci://{bucket}@{NS}/w"

    def names(**window: datetime) -> list[str]:
        return [u.path.rsplit("/", 1)[1] for u in list_units(uri, SourceOptions(**window))]

    assert names(modified_since=FEB) == ["feb.txt", "mar.txt"]
    assert names(modified_until=FEB) == ["jan.txt"]
    assert names(modified_since=FEB, modified_until=MAR) == ["feb.txt"]
    assert names(modified_since=datetime(2027, 1, 1, tzinfo=UTC)) == []


def test_a_parquet_dataset_in_a_bucket_is_listed_natively_and_read_through_ocifs(
    oci: Env,
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    bucket = oci.bucket({})
    for name, when in (("part-0.parquet", JAN), ("part-1.parquet", MAR)):
        path = oci.root / bucket / "ds" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        ids = [f"{name}-{i}" for i in range(3)]
        pq.write_table(pa.table({"doc_id": ids, "text": [f"text of {i}" for i in ids]}), path)
        os.utime(path, (when.timestamp(), when.timestamp()))
    (oci.root / bucket / "ds" / "_SUCCESS").write_bytes(b"")
    uri = f"oci://{bucket}@{NS}/ds"
    units = list_units(uri, SourceOptions())
    assert [(u.kind, u.path) for u in units] == [
        ("parquet", f"{uri}/part-0.parquet"),
        ("parquet", f"{uri}/part-1.parquet"),
    ]
    docs, fails = _read(units, SourceOptions())
    assert fails == [] and len(docs) == 6
    (late,) = list_units(uri, SourceOptions(modified_since=FEB))
    assert late.path == f"{uri}/part-1.parquet"


# ----------------------------------------------------------------------------- bad objects


def test_bad_objects_are_failure_rows_naming_the_object_and_the_rest_is_read(oci: Env) -> None:
    bucket = oci.bucket(
        {
            "in/good.txt": b"a good document",
            "in/binary.txt": BINARY,
            "in/empty.txt": b"",
            "in/latin1.txt": LATIN1,
            "in/vanishing.txt": b"deleted after the listing",
            "in/zz-last.md": b"the last good one",
        }
    )
    units = list_units(f"oci://{bucket}@{NS}/in", SourceOptions())
    assert len(units) == 6
    (oci.root / bucket / "in" / "vanishing.txt").unlink()
    docs, fails = _read(units, SourceOptions())
    assert [d.doc_id for d in docs] == ["good.txt", "zz-last.md"]
    by_class = {f.error_class: f for f in fails}
    assert sorted(by_class) == ["BinaryFile", "EmptyText", "InvalidUtf8", "ObjectNotFound"]
    base = f"oci://{bucket}@{NS}/in"
    for name, error_class in (
        ("binary.txt", "BinaryFile"),
        ("empty.txt", "EmptyText"),
        ("latin1.txt", "InvalidUtf8"),
        ("vanishing.txt", "ObjectNotFound"),
    ):
        failure = by_class[error_class]
        assert failure.source == f"{base}/{name}", error_class
        assert f"{base}/{name}" in failure.message, failure.message
        assert failure.permanent
    gone = by_class["ObjectNotFound"].message
    assert gone.startswith(
        f"object {base}/vanishing.txt was listed but is gone (404 ObjectNotFound"
    )
    assert "opc-request-id" in gone


def test_a_missing_bucket_or_namespace_stops_at_the_plan_naming_it(oci: Env) -> None:
    for uri, bucket, ns in (
        (f"oci://no-such-bucket@{NS}/docs", "no-such-bucket", NS),
        (f"oci://no-such-bucket@{NS}/docs/*.txt", "no-such-bucket", NS),
        (f"oci://no-such-bucket@{NS}/docs/a.txt", "no-such-bucket", NS),
        ("oci://b@other-namespace/docs", "b", "other-namespace"),
    ):
        with pytest.raises(SourceError) as caught:
            list_units(uri, SourceOptions())
        message = str(caught.value)
        assert message.startswith(
            f"source {uri}: bucket {bucket} in namespace {ns} does not exist, or auth api_key"
            f" (profile DEFAULT of {oci.config_path}) may not read it (404 "
        ), message


def test_an_empty_prefix_or_missing_object_is_named(oci: Env) -> None:
    bucket = oci.bucket({"docs/a.txt": b"text"})
    with pytest.raises(SourceError, match=r"does not exist: no object 'nothing' and no object"):
        list_units(f"oci://{bucket}@{NS}/nothing", SourceOptions())
    with pytest.raises(SourceError, match="has no usable files"):
        list_units(f"oci://{bucket}@{NS}/docs/*.md", SourceOptions())
    with pytest.raises(SourceError, match="an OCI Object Storage URI is oci://bucket@namespace"):
        list_units("oci://bucket-without-namespace/docs", SourceOptions())


def test_refused_credentials_stop_at_the_plan_naming_the_auth_mode(oci: Env) -> None:
    bucket = oci.bucket({"docs/a.txt": b"text"})
    wrong, _ = wrong_key_config(oci.oci_dir / f"wrong-{bucket}")
    storage.configure(StorageSettings(oci_config=wrong, os_endpoint=oci.emu.url))
    with pytest.raises(AuthError) as caught:
        list_units(f"oci://{bucket}@{NS}/docs", SourceOptions())
    assert str(caught.value).startswith(
        f"source oci://{bucket}@{NS}/docs: Object Storage at {oci.emu.url} refused the"
        f" credentials of auth api_key (profile DEFAULT of {wrong}) for bucket {bucket} in"
        f" namespace {NS} (401 NotAuthenticated)"
    )
    assert caught.value.status == 401


def test_a_denied_bucket_stops_at_the_plan_and_mid_run(oci: Env) -> None:
    bucket = oci.bucket({"docs/a.txt": b"text", "docs/b.txt": b"more text"})
    uri = f"oci://{bucket}@{NS}/docs"
    units = list_units(uri, SourceOptions())
    oci.emu.denied_buckets.add(bucket)
    try:
        with pytest.raises(AuthError, match=r"did not authorize the request of auth api_key"):
            list_units(uri, SourceOptions())
        # access withdrawn after the plan: the shard stops rather than dead-letter every object
        with pytest.raises(AuthError, match=f"bucket {bucket} in namespace {NS} \\(403"):
            _read(units, SourceOptions())
    finally:
        oci.emu.denied_buckets.discard(bucket)


# ----------------------------------------------------------------------------- processes


def test_a_shard_reopens_its_units_in_another_process_from_the_spec_alone(
    oci: Env, tmp_path: Path
) -> None:
    bucket = oci.bucket({"s/one.txt": b"first object", "s/two.md": b"second object"})
    from pipeline.config import JobConfig
    from pipeline.runner import plan

    config = JobConfig(
        source=f"oci://{bucket}@{NS}/s",
        output=str(tmp_path / "out"),
        backend="hash",
        oci_config=oci.config_path,
        os_endpoint=oci.emu.url,
    )
    (spec,) = plan(config)
    script = (
        "import json, sys\n"
        "from pipeline import storage\n"
        "from pipeline.config import JobConfig\n"
        "from pipeline.runner import ShardSpec, source_options\n"
        "from pipeline.sources import read_units\n"
        "job = json.loads(sys.argv[1])\n"
        "config = JobConfig.from_json(job['config'])\n"
        "storage.configure(config)\n"
        "spec = ShardSpec.from_json(job['spec'])\n"
        "docs = [d for b in read_units(spec.units, source_options(config)) for d in b.documents]\n"
        "print(json.dumps([[d.doc_id, d.text, d.uri, d.extra['etag']] for d in docs]))\n"
    )
    job = json.dumps({"config": config.to_json(), "spec": spec.to_json()})
    res = subprocess.run(
        [sys.executable, "-c", script, job], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    base = f"oci://{bucket}@{NS}/s"
    assert json.loads(res.stdout) == [
        ["one.txt", "first object", f"{base}/one.txt", _head(oci, bucket, "s/one.txt")["etag"]],
        ["two.md", "second object", f"{base}/two.md", _head(oci, bucket, "s/two.md")["etag"]],
    ]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)


def _errors(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if x.startswith("oci-genai-batch: error:")]


def test_cli_run_over_a_bucket_with_the_window_and_passthrough(env: Env, tmp_path: Path) -> None:
    bucket = env.bucket(
        {
            "c/old.txt": (b"an old document, before the window", JAN),
            "c/new.txt": (b"a new document inside the window", FEB),
            "c/bad.txt": (BINARY, FEB),
        }
    )
    out = tmp_path / "out"
    oci_args = ["--oci-config", env.config_path, "--os-endpoint", env.emu.url]
    res = _cli(
        "run", "--source", f"oci://{bucket}@{NS}/c", "--output", str(out), "--backend", "hash",
        "--no-progress", "--modified-since", "2026-02-01", "--passthrough", "uri,updated_at,etag",
        *oci_args,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    storage.configure(env.settings)
    try:
        etag = _head(env, bucket, "c/new.txt")["etag"]
    finally:
        storage.configure(StorageSettings())
    rows = ds.dataset(str(out / "summaries"), format="parquet").to_table().to_pylist()
    assert [(r["doc_id"], r["uri"], r["updated_at"], r["etag"]) for r in rows] == [
        ("new.txt", f"oci://{bucket}@{NS}/c/new.txt", FEB, etag)
    ]
    failures = ds.dataset(str(out / "failures"), format="parquet").to_table().to_pylist()
    assert [(f["error_class"], f["source"]) for f in failures] == [
        ("BinaryFile", f"oci://{bucket}@{NS}/c/bad.txt")
    ]


def test_cli_bad_bucket_and_bad_credentials_exit_2_before_any_model_call(
    env: Env, tmp_path: Path
) -> None:
    bucket = env.bucket({"c/a.txt": b"text"})
    wrong, _ = wrong_key_config(env.oci_dir / f"wrong-cli-{bucket}")
    actions = env.emu.stats()["actions"]
    common = [
        "--backend", "oci", "--genai-endpoint", env.emu.url, "--os-endpoint", env.emu.url,
        "--compartment", "ocid1.compartment.oc1..test", "--no-progress",
    ]  # fmt: skip
    res = _cli(
        "run", "--source", f"oci://missing-bucket@{NS}/c", "--output", str(tmp_path / "o1"),
        "--oci-config", env.config_path, *common,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert _errors(res.stderr) == [
        f"oci-genai-batch: error: source oci://missing-bucket@{NS}/c: bucket missing-bucket in"
        f" namespace {NS} does not exist, or auth api_key (profile DEFAULT of"
        f" {env.config_path}) may not read it (404 BucketNotFound, opc-request-id"
        + _errors(res.stderr)[0].split("opc-request-id", 1)[1]
    ]
    res = _cli(
        "run", "--source", f"oci://{bucket}@{NS}/c", "--output", str(tmp_path / "o2"),
        "--oci-config", wrong, *common,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    (line,) = _errors(res.stderr)
    assert "refused the credentials of auth api_key" in line and wrong in line, line
    assert "Traceback" not in res.stderr
    # no model call: the GenAI actions were never reached
    assert env.emu.stats()["actions"] == actions


def test_access_withdrawn_between_plan_and_shard_stops_the_shard(oci: Env, tmp_path: Path) -> None:
    """As an Airflow shard task would see it: the plan listed the bucket, then the policy
    changed. The shard raises AuthError (permanent: no retries) and commits nothing."""
    from pipeline.config import JobConfig
    from pipeline.runner import plan, run_shard
    from pipeline.tasks import is_permanent

    bucket = oci.bucket({"s/a.txt": b"first object", "s/b.txt": b"second object"})
    config = JobConfig(
        source=f"oci://{bucket}@{NS}/s",
        output=str(tmp_path / "out"),
        backend="hash",
        oci_config=oci.config_path,
        os_endpoint=oci.emu.url,
    )
    (spec,) = plan(config)
    oci.emu.denied_buckets.add(bucket)
    try:
        with pytest.raises(AuthError, match=f"bucket {bucket} in namespace {NS} \\(403") as caught:
            run_shard(spec, config)
    finally:
        oci.emu.denied_buckets.discard(bucket)
    assert is_permanent(caught.value)
    assert not (tmp_path / "out" / "embeddings").exists() or not any(
        (tmp_path / "out" / "embeddings").glob("*.parquet")
    )


def test_the_pass_phrase_of_a_key_never_reaches_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ocifs logs the config it is given at DEBUG (``-v``): only the identity goes in."""
    import logging

    from cryptography.hazmat.primitives import serialization

    from pipeline.genai.emulator.devconfig import fingerprint, new_key, write_profile

    phrase = "correct-horse-battery-staple-" + uuid.uuid4().hex
    key = new_key()
    key_path = tmp_path / "key.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.BestAvailableEncryption(phrase.encode()),
        )
    )
    config_path = tmp_path / "oci_config"
    write_profile(
        config_path,
        "DEFAULT",
        {
            "user": "ocid1.user.oc1..aaaatest",
            "tenancy": "ocid1.tenancy.oc1..aaaatest",
            "fingerprint": fingerprint(key),
            "key_file": str(key_path),
            "pass_phrase": phrase,
            "region": "us-chicago-1",
        },
    )
    settings = StorageSettings(oci_config=str(config_path), os_endpoint="http://127.0.0.1:9")
    with caplog.at_level(logging.DEBUG):
        resolved = storage.resolve("oci://b@ns/docs", settings)
    assert objects.oci_client_of(resolved.fs) is not None
    assert "ocid1.user.oc1..aaaatest" in caplog.text  # ocifs did log its config
    assert phrase not in caplog.text
