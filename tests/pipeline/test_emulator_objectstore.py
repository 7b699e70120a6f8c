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
    result = oci.pagination.list_call_get_all_results(
        env.client.list_objects, NS, bucket, prefix="in/", fields="name,size"
    )
    calls = env.emu.stats()["object_storage"]["ListObjects"] - before
    objects = result.data.objects
    assert [o.name for o in objects] == names
    assert [o.size for o in objects] == [i % 7 for i in range(2500)]
    assert calls == 3  # 1000 + 1000 + 500

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
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        Emulator(os_root=tmp_path / "file")


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


# ---------------------------------------------------------------------- multipart

MiB = 1 << 20


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that differ from part to part (cheap to make)."""
    block = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
    return b"".join(block[i % 7 :] + block[: i % 7] for i in range(size // MiB + 1))[:size]


def test_upload_manager_multipart_file(env: Env, tmp_path: Path) -> None:
    bucket = env.bucket()
    data = pattern(3 * MiB + MiB // 2)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    before = dict(env.emu.stats()["object_storage"])
    manager = oci.object_storage.UploadManager(
        env.client, allow_parallel_uploads=True, parallel_process_count=3
    )
    response = manager.upload_file(NS, bucket, "out/big.bin", str(path), part_size=MiB)
    ops = env.emu.stats()["object_storage"]
    assert ops["UploadPart"] - before.get("UploadPart", 0) == 4
    assert ops["CommitMultipartUpload"] - before.get("CommitMultipartUpload", 0) == 1
    multipart_md5 = response.headers["opc-multipart-md5"]
    parts = [hashlib.md5(data[i : i + MiB]).digest() for i in range(0, len(data), MiB)]
    expected = base64.b64encode(hashlib.md5(b"".join(parts)).digest()).decode() + "-4"
    assert multipart_md5 == expected
    assert (env.root / bucket / "out" / "big.bin").read_bytes() == data
    head = env.client.head_object(NS, bucket, "out/big.bin").headers
    assert head["opc-multipart-md5"] == expected
    assert int(head["content-length"]) == len(data)
    assert head["etag"] == response.headers["etag"]
    listed = env.client.list_objects(NS, bucket, fields="name,md5,size").data.objects
    assert [(o.name, o.md5, o.size) for o in listed] == [("out/big.bin", expected, len(data))]
    # no upload is left behind
    assert env.client.list_multipart_uploads(NS, bucket).data == []


def test_upload_manager_stream_and_small_file(env: Env, tmp_path: Path) -> None:
    import io

    bucket = env.bucket()
    data = pattern(2 * MiB + 123, seed=1)
    manager = oci.object_storage.UploadManager(env.client)
    manager.upload_stream(NS, bucket, "stream.bin", io.BytesIO(data), part_size=MiB)
    assert env.client.get_object(NS, bucket, "stream.bin").data.content == data
    small = tmp_path / "small.txt"
    small.write_bytes(b"one shot")
    manager.upload_file(NS, bucket, "small.txt", str(small), part_size=MiB)
    head = env.client.head_object(NS, bucket, "small.txt").headers
    assert head["content-md5"] == md5_b64(b"one shot")
    assert "opc-multipart-md5" not in head


def test_multipart_resume_list_and_abort(env: Env, tmp_path: Path) -> None:
    bucket = env.bucket()
    data = pattern(3 * MiB, seed=2)
    path = tmp_path / "resume.bin"
    path.write_bytes(data)
    c = env.client
    upload = c.create_multipart_upload(
        NS, bucket, osm.CreateMultipartUploadDetails(object="resume.bin")
    ).data
    assert (upload.bucket, upload.object, upload.namespace) == (bucket, "resume.bin", NS)
    c.upload_part(NS, bucket, "resume.bin", upload.upload_id, 1, data[:MiB])
    listed = c.list_multipart_uploads(NS, bucket).data
    assert [u.upload_id for u in listed] == [upload.upload_id]
    parts = c.list_multipart_upload_parts(NS, bucket, "resume.bin", upload.upload_id).data
    assert [(p.part_number, p.size, p.md5) for p in parts] == [(1, MiB, md5_b64(data[:MiB]))]
    # the UploadManager finds part 1 there and sends only parts 2 and 3
    before = env.emu.stats()["object_storage"].get("UploadPart", 0)
    manager = oci.object_storage.UploadManager(c)
    manager.resume_upload_file(NS, bucket, "resume.bin", str(path), upload.upload_id, part_size=MiB)
    assert env.emu.stats()["object_storage"]["UploadPart"] - before == 2
    assert c.get_object(NS, bucket, "resume.bin").data.content == data

    # an aborted upload is gone with its parts; nothing becomes an object
    other = c.create_multipart_upload(
        NS, bucket, osm.CreateMultipartUploadDetails(object="aborted.bin")
    ).data
    part = c.upload_part(NS, bucket, "aborted.bin", other.upload_id, 1, b"abc")
    assert c.abort_multipart_upload(NS, bucket, "aborted.bin", other.upload_id).status == 204
    assert c.list_multipart_uploads(NS, bucket).data == []
    commit = osm.CommitMultipartUploadDetails(
        parts_to_commit=[
            osm.CommitMultipartUploadPartDetails(part_num=1, etag=part.headers["etag"])
        ]
    )
    err = error_of(c.commit_multipart_upload, NS, bucket, "aborted.bin", other.upload_id, commit)
    assert (err.status, err.code) == (404, "UploadNotFound")
    assert error_of(c.head_object, NS, bucket, "aborted.bin").status == 404
    assert not list((env.root / ".oci-emulator" / "uploads").glob(f"{other.upload_id}*"))


def test_multipart_commit_checks(env: Env) -> None:
    bucket = env.bucket()
    c = env.client
    env.client.put_object(NS, bucket, "exists.bin", b"old")
    upload = c.create_multipart_upload(
        NS, bucket, osm.CreateMultipartUploadDetails(object="exists.bin", content_type="text/x")
    ).data
    e1 = c.upload_part(NS, bucket, "exists.bin", upload.upload_id, 1, b"a" * 10).headers["etag"]
    e2 = c.upload_part(NS, bucket, "exists.bin", upload.upload_id, 2, b"b" * 5).headers["etag"]

    def details(*parts: tuple[int, str], exclude: list[int] | None = None) -> Any:
        return osm.CommitMultipartUploadDetails(
            parts_to_commit=[
                osm.CommitMultipartUploadPartDetails(part_num=n, etag=e) for n, e in parts
            ],
            parts_to_exclude=exclude,
        )

    commit = c.commit_multipart_upload
    err = error_of(commit, NS, bucket, "exists.bin", upload.upload_id, details((1, "bad"), (2, e2)))
    assert (err.status, err.code) == (400, "InvalidUploadPart")
    err = error_of(commit, NS, bucket, "exists.bin", upload.upload_id, details((1, e1)))
    assert (err.status, err.code) == (400, "InvalidUploadPart")  # part 2 neither kept nor left
    err = error_of(
        commit,
        NS,
        bucket,
        "exists.bin",
        upload.upload_id,
        details((1, e1), (2, e2)),
        if_none_match="*",
    )
    assert (err.status, err.code) == (412, "IfNoneMatchFailed")
    err = error_of(c.upload_part, NS, bucket, "exists.bin", upload.upload_id, 10001, b"x")
    assert (err.status, err.code) == (400, "InvalidUploadPartNumber")
    # part 1 alone, part 2 excluded; the content type given at creation is kept
    assert (
        commit(NS, bucket, "exists.bin", upload.upload_id, details((1, e1), exclude=[2])).status
        == 200
    )
    got = c.get_object(NS, bucket, "exists.bin")
    assert got.data.content == b"a" * 10
    assert got.headers["content-type"] == "text/x"


def test_put_larger_than_the_json_body_limit_streams_to_disk(env: Env, tmp_path: Path) -> None:
    bucket = env.bucket()
    size = 80 * MiB  # above the 64 MiB bound on JSON request bodies
    path = tmp_path / "large.bin"
    with path.open("wb") as fh:
        chunk = pattern(8 * MiB, seed=3)
        for _ in range(size // len(chunk)):
            fh.write(chunk)
    with path.open("rb") as fh:
        put = env.client.put_object(NS, bucket, "large.bin", fh)
    digest = hashlib.md5()
    with path.open("rb") as fh:
        while block := fh.read(MiB):
            digest.update(block)
    assert put.headers["opc-content-md5"] == base64.b64encode(digest.digest()).decode()
    assert (env.root / bucket / "large.bin").stat().st_size == size
    tail = env.client.get_object(NS, bucket, "large.bin", range=f"bytes={size - 10}-")
    assert tail.data.content == path.read_bytes()[-10:]
    # no temporary file is left behind
    assert not list((env.root / ".oci-emulator" / "tmp").glob("body-*"))


# ---------------------------------------------------------------------- ocifs, pyarrow


@pytest.fixture
def ocifs_env(env: Env) -> Iterator[tuple[Any, str]]:
    """An ocifs filesystem on the emulator and a fresh bucket in it."""
    import ocifs

    fs = ocifs.OCIFileSystem(
        config=env.config_path,
        config_kwargs={"service_endpoint": env.emu.url},
        oci_additional_kwargs={"retry_strategy": oci.retry.NoneRetryStrategy()},
        skip_instance_cache=True,
    )
    yield fs, env.bucket()


def test_ocifs_ls_find_info_read_write(env: Env, ocifs_env: tuple[Any, str]) -> None:
    fs, bucket = ocifs_env
    base = f"oci://{bucket}@{NS}"
    fs.pipe(f"{base}/in/a.txt", b"hello ocifs")
    fs.pipe(f"{base}/in/sub/b.txt", b"b")
    big = pattern(12 * MiB, seed=4)  # over ocifs's 5 MiB block: a multipart upload
    before = env.emu.stats()["object_storage"].get("CommitMultipartUpload", 0)
    with fs.open(f"{base}/in/big.bin", "wb") as fh:
        fh.write(big)
    assert env.emu.stats()["object_storage"]["CommitMultipartUpload"] == before + 1
    assert (env.root / bucket / "in" / "big.bin").read_bytes() == big

    assert fs.ls(base) == [f"{bucket}@{NS}/in"]
    listed = {e["name"]: e for e in fs.ls(f"{base}/in", detail=True)}
    assert set(listed) == {f"{bucket}@{NS}/in/{n}" for n in ("a.txt", "big.bin", "sub")}
    assert listed[f"{bucket}@{NS}/in/sub"]["type"] == "directory"
    assert listed[f"{bucket}@{NS}/in/a.txt"]["size"] == 11
    assert fs.find(base) == [f"{bucket}@{NS}/in/{n}" for n in ("a.txt", "big.bin", "sub/b.txt")]

    info = fs.info(f"{base}/in/a.txt")
    assert (info["type"], info["size"], info["storageTier"]) == ("file", 11, "Standard")
    assert info["etag"] and info["versionId"] and info["acceptRanges"] == "bytes"
    assert fs.info(f"{base}/in/sub")["type"] == "directory"
    assert not fs.exists(f"{base}/in/missing.txt")

    assert fs.cat_file(f"{base}/in/a.txt", start=6, end=11) == b"ocifs"
    with fs.open(f"{base}/in/big.bin", "rb", block_size=MiB) as fh:
        fh.seek(7 * MiB + 5)
        assert fh.read(100) == big[7 * MiB + 5 : 7 * MiB + 105]

    fs.mv(f"{base}/in/a.txt", f"{base}/out/a.txt")  # CopyObject, then DeleteObject
    fs.rename(f"{base}/in/sub/b.txt", f"{base}/out/b.txt")  # RenameObject
    fs.rm(f"{base}/in/big.bin")
    fs.invalidate_cache()
    assert fs.find(base) == [f"{bucket}@{NS}/out/a.txt", f"{bucket}@{NS}/out/b.txt"]
    assert fs.cat(f"{base}/out/a.txt") == b"hello ocifs"


def test_pyarrow_through_ocifs(env: Env, ocifs_env: tuple[Any, str]) -> None:
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, bucket = ocifs_env
    pfs = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    table = pa.table({"id": list(range(2000)), "text": [f"doc {i}" for i in range(2000)]})
    pq.write_table(table.slice(0, 1000), f"{bucket}@{NS}/in/part-0.parquet", filesystem=pfs)
    pq.write_table(table.slice(1000), f"{bucket}@{NS}/in/part-1.parquet", filesystem=pfs)
    read = ds.dataset(f"{bucket}@{NS}/in", format="parquet", filesystem=pfs).to_table()
    assert read.sort_by("id").equals(table)

    creates = env.emu.stats()["object_storage"].get("CreateBucket", 0)
    ds.write_dataset(
        table,
        f"{bucket}@{NS}/out",
        format="parquet",
        filesystem=pfs,
        create_dir=False,
        max_rows_per_file=800,
        max_rows_per_group=800,
    )
    assert env.emu.stats()["object_storage"].get("CreateBucket", 0) == creates
    files = sorted(p.name for p in (env.root / bucket / "out").iterdir())
    assert files == ["part-0.parquet", "part-1.parquet", "part-2.parquet"]
    back = ds.dataset(f"{bucket}@{NS}/out", format="parquet", filesystem=pfs).to_table()
    assert back.sort_by("id").equals(table)
    # the files are real Parquet on disk
    assert pq.read_table(env.root / bucket / "out" / "part-0.parquet").num_rows == 800


def test_storage_seam_resolves_oci_uris_to_the_emulator(env: Env) -> None:
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from pipeline.storage import StorageSettings, resolve

    bucket = env.bucket()
    settings = StorageSettings(oci_config=env.config_path, os_endpoint=env.emu.url)
    resolved = resolve(f"oci://{bucket}@{NS}/prefix", settings)
    assert resolved.is_oci and resolved.path == f"{bucket}@{NS}/prefix"
    table = pa.table({"id": [1, 2, 3]})
    pq.write_table(table, f"{resolved.path}/t.parquet", filesystem=resolved.fs)
    assert (env.root / bucket / "prefix" / "t.parquet").exists()
    back = ds.dataset(resolved.path, format="parquet", filesystem=resolved.fs).to_table()
    assert back.equals(table)
    infos = resolved.fs.get_file_info([f"{resolved.path}/t.parquet"])
    assert infos[0].size == (env.root / bucket / "prefix" / "t.parquet").stat().st_size


def test_denied_buckets_through_the_control_api(env: Env) -> None:
    import httpx

    bucket = env.bucket()
    control = f"{env.emu.url}/_emulator/objectstore"
    assert httpx.post(control, json={"denied_buckets": [bucket]}).json() == {
        "denied_buckets": [bucket]
    }
    try:
        err = error_of(env.client.get_bucket, NS, bucket)
        assert (err.status, err.code) == (403, "NotAuthorized")
    finally:
        assert httpx.post(control, json={"denied_buckets": []}).status_code == 200
    assert httpx.get(control).json() == {"denied_buckets": []}
    assert httpx.post(control, json={"denied_buckets": "x"}).status_code == 400


def test_concurrent_create_if_absent_has_one_winner(env: Env) -> None:
    from concurrent.futures import ThreadPoolExecutor

    bucket = env.bucket()
    # bodies of a few MiB, so the requests' bodies stream in side by side and the check
    # made before a body is read cannot settle it alone: the one at commit must
    body = pattern(4 * MiB, seed=5)

    def claim(i: int) -> int:
        client = os_client(env.config_path, env.emu.url)
        try:
            client.put_object(NS, bucket, "lease", body + str(i).encode(), if_none_match="*")
        except oci.exceptions.ServiceError as exc:
            assert (exc.status, exc.code) == (412, "IfNoneMatchFailed")
            return 0
        return 1

    for _ in range(3):
        with ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(claim, range(8))) == 1
        env.client.delete_object(NS, bucket, "lease")


def test_a_stale_look_at_a_replaced_object_keeps_its_new_etag(tmp_path: Path) -> None:
    """A listing (a worker thread) that stat'ed a hand-made file just before a PUT
    replaced it must not record metadata of the old file over the new object's."""
    from pipeline.genai.emulator.objectstore import ObjectStore, Staged

    (tmp_path / "bkt").mkdir()
    path = tmp_path / "bkt" / "obj"
    path.write_bytes(b"by hand")
    store = ObjectStore(tmp_path)
    stale = path.stat()  # the listing's look
    fd, tmp = store.new_temp()
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"put")
    put = store.commit("bkt", "obj", Staged(tmp, 3, hashlib.md5(b"put").digest()), {})
    store.meta("bkt", "obj", stale, path)  # the listing goes on with its stale stat
    assert store.meta("bkt", "obj", path.stat(), path).etag == put.etag
    assert ObjectStore(tmp_path).meta("bkt", "obj", path.stat(), path).etag == put.etag
