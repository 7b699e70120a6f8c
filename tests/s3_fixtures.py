"""A real S3 for tests: moto in server mode on a free loopback port, with a log of the
requests it served (to count uploads, copies and conditional writes, and to show that no
bucket is ever created by the pipeline).

Fixtures (import ``moto_s3_fixture`` and ``s3_fixture`` into a test module to use them):
``moto_s3`` (session): the server. ``s3`` (per test): a fresh bucket, the AWS settings in
the environment (``AWS_ENDPOINT_URL`` and fake keys; pyarrow and boto3 both read them),
a boto3 client and the request log from the test's start.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pytest

ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask 169.254.169.254 for credentials
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-decoded, without the query
    query: str
    headers: dict[str, str]

    @property
    def bucket_and_key(self) -> tuple[str, str]:
        bucket, _, key = self.path.lstrip("/").partition("/")
        return bucket, key


@dataclass
class MotoS3:
    url: str
    log: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def env(self) -> dict[str, str]:
        return {**ENV, "AWS_ENDPOINT_URL": self.url}


def _start(server: MotoS3) -> Any:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    app = DomainDispatcherApplication(create_backend_app)

    def logged(environ: dict[str, Any], start_response: Any) -> Any:
        headers = {
            k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
        }
        req = Request(
            environ["REQUEST_METHOD"],
            unquote(environ.get("PATH_INFO", "")),
            environ.get("QUERY_STRING", ""),
            headers,
        )
        with server.lock:
            server.log.append(req)
        return app(environ, start_response)

    httpd = make_server("127.0.0.1", 0, logged, threaded=True, request_handler=MotoRequestHandler)
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, name="moto-s3", daemon=True)
    thread.start()
    return httpd


@pytest.fixture(scope="session", name="moto_s3")
def moto_s3_fixture() -> Iterator[MotoS3]:
    server = MotoS3(url="")
    httpd = _start(server)
    try:
        yield server
    finally:
        httpd.shutdown()


@dataclass
class S3:
    server: MotoS3
    bucket: str
    client: Any
    start: int

    @property
    def url(self) -> str:
        return self.server.url

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.server.env()}

    def requests(self) -> list[Request]:
        """What the server was sent since this test started."""
        with self.server.lock:
            return list(self.server.log[self.start :])

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture(name="s3")
def s3_fixture(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    import boto3

    for key, value in moto_s3.env().items():
        monkeypatch.setenv(key, value)
    client = boto3.session.Session().client("s3", endpoint_url=moto_s3.url)
    bucket = f"bkt-{secrets.token_hex(4)}"
    client.create_bucket(Bucket=bucket)
    with moto_s3.lock:
        start = len(moto_s3.log)
    yield S3(moto_s3, bucket, client, start)


def creates_bucket(req: Request) -> bool:
    """A CreateBucket request: PUT on a bare bucket path."""
    bucket, key = req.bucket_and_key
    return req.method == "PUT" and bool(bucket) and not key and not req.query
