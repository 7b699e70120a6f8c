"""The emulator's Object Storage, driven by the real ``oci`` SDK (ObjectStorageClient,
pagination, UploadManager), ocifs and pyarrow through ocifs: objects are the files under
``--os-root``, requests are signed and verified as for GenAI."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import selectors
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import oci
import pytest
from oci.object_storage import ObjectStorageClient
from oci.object_storage import models as osm

from pipeline.genai.emulator import Emulator, EmulatorConfig
from pipeline.genai.emulator.devconfig import COMPARTMENT
from tests.conftest import CLI
from tests.oci_fixtures import make_oci_config, wrong_key_config

NS = "emulator"


def os_client(config_path: str, url: str, **kw: Any) -> ObjectStorageClient:
    """The real client for the emulator, without SDK retries or circuit breaker."""
    cfg = oci.config.from_file(config_path)
    return ObjectStorageClient(
        cfg,
        service_endpoint=url,
        timeout=(5, 60),
        retry_strategy=oci.retry.NoneRetryStrategy(),
        circuit_breaker_strategy=oci.circuit_breaker.NoCircuitBreakerStrategy(),
        **kw,
    )


class Env:
    def __init__(self, emu: Emulator, config_path: str, root: Path) -> None:
        self.emu = emu
        self.config_path = config_path
        self.root = root
        self.client = os_client(config_path, emu.url)

    def bucket(self) -> str:
        """A new empty bucket, made through CreateBucket."""
        name = f"b-{uuid.uuid4().hex[:10]}"
        self.client.create_bucket(
            NS, osm.CreateBucketDetails(name=name, compartment_id=COMPARTMENT)
        )
        return name


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    oci_dir = tmp_path_factory.mktemp("oci")
    root = tmp_path_factory.mktemp("os-root")
    config_path, _ = make_oci_config(oci_dir)
    with Emulator(EmulatorConfig(embedder="hash"), oci_config=config_path, os_root=root) as emu:
        yield Env(emu, config_path, root)


def error_of(call: Any, *args: Any, **kwargs: Any) -> oci.exceptions.ServiceError:
    with pytest.raises(oci.exceptions.ServiceError) as info:
        call(*args, **kwargs)
    return info.value


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


# ---------------------------------------------------------------------- basics


def test_namespace_and_metadata(env: Env) -> None:
    assert env.client.get_namespace().data == NS
    meta = env.client.get_namespace_metadata(NS).data
    assert meta.namespace == NS
    assert meta.default_s3_compartment_id.startswith("ocid1.tenancy.")
    err = error_of(env.client.get_namespace_metadata, "other")
    assert (err.status, err.code) == (404, "NamespaceNotFound")


def test_put_head_get_names_with_slashes_spaces_and_unicode(env: Env) -> None:
    bucket = env.bucket()
    name = "in/dir one/ünï cødé 📄.txt"
    body = b"hello object storage\n" * 100
    put = env.client.put_object(NS, bucket, name, body)
    assert put.status == 200
    etag = put.headers["etag"]
    assert put.headers["opc-content-md5"] == md5_b64(body)
    # the object is the file at its name, relative to the bucket's directory
    assert (env.root / bucket / "in" / "dir one" / "ünï cødé 📄.txt").read_bytes() == body

    head = env.client.head_object(NS, bucket, name)
    h = head.headers
    assert head.status == 200
    assert int(h["content-length"]) == len(body)
    assert h["etag"] == etag
    assert h["content-md5"] == h["opc-content-md5"] == md5_b64(body)
    assert h["accept-ranges"] == "bytes"
    assert h["storage-tier"] == "Standard"
    assert h["version-id"]
    assert h["opc-request-id"]
    # an RFC 1123 date within a minute of now
    modified = time.mktime(time.strptime(h["last-modified"], "%a, %d %b %Y %H:%M:%S GMT"))
    assert abs(modified - time.mktime(time.gmtime())) < 60

    got = env.client.get_object(NS, bucket, name)
    assert got.status == 200
    assert got.data.content == body
    assert got.headers["etag"] == etag


def test_put_with_content_headers_and_metadata(env: Env) -> None:
    bucket = env.bucket()
    env.client.put_object(
        NS,
        bucket,
        "doc.csv",
        b"a,b\n1,2\n",
        content_type="text/csv",
        content_md5=md5_b64(b"a,b\n1,2\n"),
        opc_meta={"source": "unit-test"},
    )
    h = env.client.head_object(NS, bucket, "doc.csv").headers
    assert h["content-type"] == "text/csv"
    assert h["opc-meta-source"] == "unit-test"
    err = error_of(
        env.client.put_object, NS, bucket, "doc.csv", b"other", content_md5=md5_b64(b"x")
    )
    assert (err.status, err.code) == (400, "UnmatchedContentMD5")
    assert env.client.get_object(NS, bucket, "doc.csv").data.content == b"a,b\n1,2\n"


def test_ranged_get(env: Env) -> None:
    bucket = env.bucket()
    body = bytes(range(256)) * 40  # 10,240 bytes
    env.client.put_object(NS, bucket, "r.bin", body)
    cases = {
        "bytes=2-4": (2, 4),
        "bytes=10000-": (10000, len(body) - 1),
        "bytes=-16": (len(body) - 16, len(body) - 1),
        "bytes=10200-99999": (10200, len(body) - 1),  # clamped to the end
    }
    for spec, (first, last) in cases.items():
        got = env.client.get_object(NS, bucket, "r.bin", range=spec)
        assert got.status == 206, spec
        assert got.data.content == body[first : last + 1], spec
        assert got.headers["content-range"] == f"bytes {first}-{last}/{len(body)}", spec
    err = error_of(env.client.get_object, NS, bucket, "r.bin", range=f"bytes={len(body)}-")
    assert (err.status, err.code) == (416, "InvalidRange")


def test_delete_and_not_found(env: Env) -> None:
    bucket = env.bucket()
    env.client.put_object(NS, bucket, "deep/er/x.txt", b"x")
    env.client.put_object(NS, bucket, "deep/y.txt", b"y")
    assert env.client.delete_object(NS, bucket, "deep/er/x.txt").status == 204
    err = error_of(env.client.get_object, NS, bucket, "deep/er/x.txt")
    assert (err.status, err.code) == (404, "ObjectNotFound")
    err = error_of(env.client.head_object, NS, bucket, "deep/er/x.txt")
    assert err.status == 404
    err = error_of(env.client.delete_object, NS, bucket, "deep/er/x.txt")
    assert (err.status, err.code) == (404, "ObjectNotFound")
    # the folder left empty is gone, the other object stays
    assert not (env.root / bucket / "deep" / "er").exists()
    assert [o.name for o in env.client.list_objects(NS, bucket).data.objects] == ["deep/y.txt"]


def test_rename(env: Env) -> None:
    bucket = env.bucket()
    etag = env.client.put_object(NS, bucket, "a/src.txt", b"content").headers["etag"]
    env.client.put_object(NS, bucket, "taken.txt", b"t")
    details = osm.RenameObjectDetails(source_name="a/src.txt", new_name="b/c/dst.txt")

    wrong = osm.RenameObjectDetails(
        source_name="a/src.txt", new_name="b/c/dst.txt", src_obj_if_match_e_tag="nope"
    )
    assert error_of(env.client.rename_object, NS, bucket, wrong).status == 412
    exists = osm.RenameObjectDetails(
        source_name="a/src.txt", new_name="taken.txt", new_obj_if_none_match_e_tag="*"
    )
    err = error_of(env.client.rename_object, NS, bucket, exists)
    assert (err.status, err.code) == (412, "IfNoneMatchFailed")

    assert env.client.rename_object(NS, bucket, details).status == 200
    assert env.client.get_object(NS, bucket, "b/c/dst.txt").data.content == b"content"
    assert env.client.head_object(NS, bucket, "b/c/dst.txt").headers["etag"] == etag
    assert error_of(env.client.head_object, NS, bucket, "a/src.txt").status == 404
    assert not (env.root / bucket / "a").exists()
    missing = osm.RenameObjectDetails(source_name="a/src.txt", new_name="z.txt")
    err = error_of(env.client.rename_object, NS, bucket, missing)
    assert (err.status, err.code) == (404, "ObjectNotFound")


# ---------------------------------------------------------------------- listing


def test_list_2500_objects_pages_at_1000(env: Env) -> None:
    bucket = env.bucket()
    # files put in the bucket's directory by hand are objects too
    names = [f"in/part-{i:05d}.json" for i in range(2500)]
    for i, name in enumerate(names):
        path = env.root / bucket / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * (i % 7))
    before = env.emu.stats()["object_storage"].get("ListObjects", 0)
    started = time.perf_counter()
    result = oci.pagination.list_call_get_all_results(
        env.client.list_objects, NS, bucket, prefix="in/", fields="name,size"
    )
    elapsed = time.perf_counter() - started
    calls = env.emu.stats()["object_storage"]["ListObjects"] - before
    objects = result.data.objects
    assert [o.name for o in objects] == names
    assert [o.size for o in objects] == [i % 7 for i in range(2500)]
    assert calls == 3  # 1000 + 1000 + 500
    print(f"listed 2,500 objects in {elapsed:.3f} s ({2500 / elapsed:,.0f} objects/s)")

    page = env.client.list_objects(NS, bucket, limit=10, start="in/part-00100").data
    assert [o.name for o in page.objects] == names[100:110]
    assert page.next_start_with == names[110]
    page = env.client.list_objects(NS, bucket, start_after=names[100], end=names[103]).data
    assert [o.name for o in page.objects] == names[101:103]
    assert page.next_start_with is None


def test_list_fields(env: Env) -> None:
    bucket = env.bucket()
    etag = env.client.put_object(NS, bucket, "f.txt", b"12345").headers["etag"]
    bare = env.client.list_objects(NS, bucket).data.objects[0]
    assert bare.name == "f.txt"
    assert (bare.size, bare.etag, bare.md5, bare.time_modified) == (None, None, None, None)
    full = env.client.list_objects(
        NS,
        bucket,
        fields="name,size,etag,timeCreated,md5,timeModified,storageTier,archivalState",
    ).data.objects[0]
    assert full.size == 5
    assert full.etag == etag
    assert full.md5 == md5_b64(b"12345")
    assert full.storage_tier == "Standard"
    assert abs(full.time_modified.timestamp() - time.time()) < 60
    assert full.time_created is not None
    err = error_of(env.client.list_objects, NS, bucket, fields="name,colour")
    assert (err.status, err.code) == (400, "InvalidParameter")


def test_list_prefix_and_delimiter(env: Env) -> None:
    bucket = env.bucket()
    for name in ["top.txt", "a/1.txt", "a/2.txt", "a/sub/3.txt", "a-b/4.txt", "b/5.txt", "bz.txt"]:
        env.client.put_object(NS, bucket, name, b".")
    (env.root / bucket / "empty" / "dir").mkdir(parents=True)  # no objects: no prefix

    def level(prefix: str, **kw: Any) -> tuple[list[str], list[str]]:
        data = oci.pagination.list_call_get_all_results(
            env.client.list_objects, NS, bucket, prefix=prefix, delimiter="/", **kw
        ).data
        # the SDK gathers the prefixes of all pages in a set: their order is lost
        return [o.name for o in data.objects], sorted(data.prefixes)

    assert level("") == (["bz.txt", "top.txt"], ["a-b/", "a/", "b/"])
    assert level("a/") == (["a/1.txt", "a/2.txt"], ["a/sub/"])
    assert level("a") == ([], ["a-b/", "a/"])
    assert level("b") == (["bz.txt"], ["b/"])
    assert level("nothing/") == ([], [])
    # paging counts prefixes and objects together
    first = env.client.list_objects(NS, bucket, delimiter="/", limit=2).data
    assert (first.prefixes, first.next_start_with) == (["a-b/", "a/"], "b/")
    rest = env.client.list_objects(NS, bucket, delimiter="/", start=first.next_start_with).data
    assert (rest.prefixes, [o.name for o in rest.objects]) == (["b/"], ["bz.txt", "top.txt"])
    # the whole tree without a delimiter, in name order
    everything = env.client.list_objects(NS, bucket, prefix="a").data.objects
    assert [o.name for o in everything] == ["a-b/4.txt", "a/1.txt", "a/2.txt", "a/sub/3.txt"]


def test_bookkeeping_is_not_listed(env: Env) -> None:
    bucket = env.bucket()
    env.client.put_object(NS, bucket, "only.txt", b"1")
    names = [o.name for o in env.client.list_objects(NS, bucket).data.objects]
    assert names == ["only.txt"]
    buckets = oci.pagination.list_call_get_all_results(
        env.client.list_buckets, NS, COMPARTMENT
    ).data
    assert bucket in [b.name for b in buckets]
    assert not [b.name for b in buckets if b.name.startswith(".")]
    assert (env.root / ".oci-emulator").is_dir()


# ---------------------------------------------------------------------- conditions


def test_conditional_put_get_delete(env: Env) -> None:
    bucket = env.bucket()
    first = env.client.put_object(NS, bucket, "lease.json", b"1", if_none_match="*")
    etag1 = first.headers["etag"]
    err = error_of(env.client.put_object, NS, bucket, "lease.json", b"2", if_none_match="*")
    assert (err.status, err.code) == (412, "IfNoneMatchFailed")
    err = error_of(env.client.put_object, NS, bucket, "lease.json", b"2", if_match="stale")
    assert (err.status, err.code) == (412, "IfMatchFailed")
    second = env.client.put_object(NS, bucket, "lease.json", b"2", if_match=etag1)
    etag2 = second.headers["etag"]
    assert etag2 != etag1
    assert env.client.get_object(NS, bucket, "lease.json").data.content == b"2"
    # if-match on an object that does not exist fails too
    err = error_of(env.client.put_object, NS, bucket, "absent.json", b"x", if_match=etag2)
    assert err.status == 412
    assert error_of(env.client.get_object, NS, bucket, "lease.json", if_match=etag1).status == 412
    assert env.client.get_object(NS, bucket, "lease.json", if_match=etag2).status == 200
    err = error_of(env.client.delete_object, NS, bucket, "lease.json", if_match=etag1)
    assert (err.status, err.code) == (412, "IfMatchFailed")
    assert env.client.delete_object(NS, bucket, "lease.json", if_match=etag2).status == 204


def test_etag_survives_a_restart(env: Env, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "bkt").mkdir(parents=True)
    (root / "bkt" / "by-hand.txt").write_bytes(b"placed")
    with Emulator(oci_config=env.config_path, os_root=root) as emu:
        client = os_client(env.config_path, emu.url)
        put = client.put_object(NS, "bkt", "put.txt", b"put").headers["etag"]
        hand = client.head_object(NS, "bkt", "by-hand.txt").headers
        assert hand["content-md5"] == md5_b64(b"placed")
    with Emulator(oci_config=env.config_path, os_root=root) as emu:
        client = os_client(env.config_path, emu.url)
        assert client.head_object(NS, "bkt", "put.txt").headers["etag"] == put
        assert client.head_object(NS, "bkt", "by-hand.txt").headers["etag"] == hand["etag"]
        # a file changed behind the emulator's back gets a new ETag and MD5
        (root / "bkt" / "by-hand.txt").write_bytes(b"changed!")
        again = client.head_object(NS, "bkt", "by-hand.txt").headers
        assert again["etag"] != hand["etag"]
        assert again["content-md5"] == md5_b64(b"changed!")


# ---------------------------------------------------------------------- buckets


def test_buckets(env: Env) -> None:
    bucket = env.bucket()
    err = error_of(
        env.client.create_bucket,
        NS,
        osm.CreateBucketDetails(name=bucket, compartment_id=COMPARTMENT),
    )
    assert (err.status, err.code) == (409, "BucketAlreadyExists")
    info = env.client.get_bucket(NS, bucket)
    assert (info.data.name, info.data.namespace) == (bucket, NS)
    assert info.data.compartment_id == COMPARTMENT
    assert env.client.head_bucket(NS, bucket).headers["etag"] == info.data.etag
    env.client.put_object(NS, bucket, "x", b"x")
    err = error_of(env.client.delete_bucket, NS, bucket)
    assert (err.status, err.code) == (409, "BucketNotEmpty")
    env.client.delete_object(NS, bucket, "x")
    assert env.client.delete_bucket(NS, bucket).status == 204
    assert not (env.root / bucket).exists()
    err = error_of(
        env.client.create_bucket,
        NS,
        osm.CreateBucketDetails(name=".hidden", compartment_id=COMPARTMENT),
    )
    assert (err.status, err.code) == (400, "InvalidBucketName")


def test_unknown_bucket_and_wrong_namespace(env: Env) -> None:
    err = error_of(env.client.get_object, NS, "no-such-bucket", "x")
    assert (err.status, err.code) == (404, "BucketNotFound")
    assert err.request_id
    err = error_of(env.client.list_objects, NS, "no-such-bucket")
    assert (err.status, err.code) == (404, "BucketNotFound")
    bucket = env.bucket()
    err = error_of(env.client.list_objects, "other-namespace", bucket)
    assert (err.status, err.code) == (404, "NamespaceNotFound")


def test_bad_signature_is_refused(env: Env, tmp_path: Path) -> None:
    bucket = env.bucket()
    env.client.put_object(NS, bucket, "secret.txt", b"s")
    wrong, _ = wrong_key_config(tmp_path, good_config=env.config_path)
    bad = os_client(wrong, env.emu.url)
    before = env.emu.stats()["unauthenticated"]
    for call, args in [
        (bad.get_object, (NS, bucket, "secret.txt")),
        (bad.list_objects, (NS, bucket)),
        (bad.put_object, (NS, bucket, "planted.txt", b"p")),
        (bad.get_namespace, ()),
    ]:
        err = error_of(call, *args)
        assert (err.status, err.code) == (401, "NotAuthenticated"), call
    assert env.emu.stats()["unauthenticated"] == before + 4
    assert not (env.root / bucket / "planted.txt").exists()


def test_names_the_store_cannot_keep_are_refused(env: Env) -> None:
    bucket = env.bucket()
    for name in ["..", "a/../../escape", "a//b", "./x", "trailing/"]:
        err = error_of(env.client.put_object, NS, bucket, name, b"x")
        assert (err.status, err.code) == (400, "InvalidObjectName"), name
    assert not list((env.root / bucket).iterdir())
    assert not (env.root / "escape").exists()
    env.client.put_object(NS, bucket, "a", b"file")
    err = error_of(env.client.put_object, NS, bucket, "a/b", b"nested")
    assert (err.status, err.code) == (409, "Conflict")
    assert "'a'" in err.message


def test_denied_bucket_answers_403(env: Env) -> None:
    bucket = env.bucket()
    env.emu.denied_buckets.add(bucket)
    try:
        err = error_of(env.client.list_objects, NS, bucket)
        assert (err.status, err.code) == (403, "NotAuthorized")
    finally:
        env.emu.denied_buckets.discard(bucket)
    assert env.client.list_objects(NS, bucket).status == 200


def test_without_os_root_object_storage_is_404(tmp_path: Path) -> None:
    config_path, _ = make_oci_config(tmp_path)
    with Emulator(EmulatorConfig(embedder="hash"), oci_config=config_path) as emu:
        err = error_of(os_client(config_path, emu.url).get_namespace)
    assert err.status == 404
    assert "--os-root" in err.message


def test_os_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        Emulator(os_root=tmp_path / "missing")
    assert os.path.exists(tmp_path)


def test_cli_serves_a_directory(tmp_path: Path) -> None:
    config_path, _ = make_oci_config(tmp_path / "oci")
    (tmp_path / "data" / "inputs" / "2024").mkdir(parents=True)
    (tmp_path / "data" / "inputs" / "2024" / "docs.jsonl").write_bytes(b'{"id": 1}\n')
    proc = subprocess.Popen(
        [
            CLI,
            "emulator",
            "--port",
            "0",
            "--embedder",
            "hash",
            "--oci-config",
            config_path,
            "--os-root",
            str(tmp_path / "data"),
            "--os-namespace",
            "devns",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(30), "the emulator printed nothing"
        line = proc.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+) .*namespace devns", line)
        assert match, line
        client = os_client(config_path, match.group(1))
        assert client.get_namespace().data == "devns"
        listed = client.list_objects("devns", "inputs", fields="name,size").data.objects
        assert [(o.name, o.size) for o in listed] == [("2024/docs.jsonl", 10)]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def test_cli_refuses_a_missing_root(tmp_path: Path) -> None:
    done = subprocess.run(
        [CLI, "emulator", "--port", "0", "--os-root", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--os-root" in done.stderr and "not a directory" in done.stderr
