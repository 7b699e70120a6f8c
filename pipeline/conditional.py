"""Conditional writes on object stores: the four requests a commit record and a lease need.

============================  =====================================================
``get(path)``                 GET; the version is the object's ETag
``create(path, data)``        PUT with ``If-None-Match: *`` (412: it exists)
``replace(path, data, etag)`` PUT with ``If-Match: <etag>`` (412: it changed)
``delete(path, etag)``        DELETE with ``If-Match: <etag>``
============================  =====================================================

OCI Object Storage (``oci://``) sends them through the ``oci`` SDK client that ``ocifs``
already holds (same signer, same endpoint); S3 (``s3://``, OCI's S3 compatibility
endpoint too) through ``boto3`` when it is installed, with the standard AWS settings
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...) that pyarrow's S3 filesystem reads.
Any other store has none (:func:`conditional_for` returns None) and callers fall back to
check-then-write.

A write whose answer was lost and that the client retried meets its own object and gets
412. So on a 412 the object is read back: when it holds exactly the bytes we sent, the
write was ours. Every caller's bytes are unique to it (a lease token and a heartbeat, a
commit record's writer and time), so this never mistakes another writer's object for ours.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from pipeline.storage import OCI_SCHEMES, Resolved, fsspec_of

log = logging.getLogger(__name__)
T = TypeVar("T")


class Conditional(Protocol):
    """Conditional requests on ``bucket/key`` paths of one store (the filesystem's own
    path form: ``bucket@namespace/key`` for OCI)."""

    #: names the store and how it settles races, for logs and messages
    kind: str

    def get(self, path: str) -> tuple[bytes, str] | None:
        """(content, ETag), or None when there is no such object."""

    def create(self, path: str, data: bytes) -> str | None:
        """Write ``data`` if ``path`` does not exist: the new ETag, or None if it does."""

    def replace(self, path: str, data: bytes, etag: str) -> str | None:
        """Write ``data`` if ``path`` is still at ``etag``: the new ETag, or None."""

    def delete(self, path: str, etag: str) -> bool:
        """Delete ``path`` if it is still at ``etag``."""


def _split(path: str) -> tuple[str, str]:
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket or not key:
        raise ValueError(f"{path}: not a bucket/key path")
    return bucket, key


# ---------------------------------------------------------------------- OCI


class OciConditional:
    """Through the ``oci`` SDK's ObjectStorageClient (the one ``ocifs`` signs with)."""

    kind = "OCI Object Storage (if-none-match / if-match)"

    def __init__(self, client: Any) -> None:
        self.client = client

    @staticmethod
    def _where(path: str) -> tuple[str, str, str]:
        bucket, key = _split(path)
        name, _, namespace = bucket.partition("@")
        if not namespace:
            raise ValueError(f"{path}: an oci:// path is bucket@namespace/key")
        return namespace, name, key

    @staticmethod
    def _error(exc: Any, what: str, path: str) -> OSError:
        return OSError(f"{what} oci://{path}: {exc.status} {exc.code}: {exc.message}")

    def get(self, path: str) -> tuple[bytes, str] | None:
        from oci.exceptions import ServiceError

        namespace, bucket, key = self._where(path)
        try:
            resp = self.client.get_object(namespace, bucket, key)
        except ServiceError as exc:
            if exc.status == 404:
                return None
            raise self._error(exc, "GET", path) from None
        return resp.data.content, resp.headers["etag"]

    def _put(self, path: str, data: bytes, **cond: str) -> str | None:
        from oci.exceptions import ServiceError

        namespace, bucket, key = self._where(path)
        try:
            resp = self.client.put_object(namespace, bucket, key, data, **cond)
        except ServiceError as exc:
            if exc.status not in (409, 412):  # 409: a concurrent write of the same name
                raise self._error(exc, "PUT", path) from None
            return _ours(self.get(path), data)
        return str(resp.headers["etag"])

    def create(self, path: str, data: bytes) -> str | None:
        return self._put(path, data, if_none_match="*")

    def replace(self, path: str, data: bytes, etag: str) -> str | None:
        return self._put(path, data, if_match=etag)

    def delete(self, path: str, etag: str) -> bool:
        from oci.exceptions import ServiceError

        namespace, bucket, key = self._where(path)
        try:
            self.client.delete_object(namespace, bucket, key, if_match=etag)
        except ServiceError as exc:
            if exc.status in (404, 409, 412):
                return False
            raise self._error(exc, "DELETE", path) from None
        return True


# ---------------------------------------------------------------------- S3


_AWS_ENV = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
)


def _s3_client() -> Any | None:
    """A boto3 S3 client from the standard AWS settings, or None without boto3.

    With a custom endpoint (``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3``: OCI's S3
    compatibility endpoint, MinIO, moto) it addresses buckets by path, as pyarrow does.
    One client per set of those settings (clients are thread-safe and slow to make)."""
    return _cached_s3_client(tuple(os.environ.get(k) for k in _AWS_ENV))


@functools.lru_cache(maxsize=4)
def _cached_s3_client(env: tuple[str | None, ...]) -> Any | None:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        return None
    custom = env[0] or env[1]
    config = Config(s3={"addressing_style": "path"}) if custom else None
    return boto3.session.Session().client("s3", config=config)


def _transport_errors(method: Callable[..., T]) -> Callable[..., T]:
    """botocore's own errors (no connection, a timeout, no credentials) as OSError, the
    one kind of storage error the callers handle (an OCI SDK's are OSError already)."""

    @functools.wraps(method)
    def call(self: Any, path: str, *args: Any) -> T:
        from botocore.exceptions import BotoCoreError

        try:
            return method(self, path, *args)
        except BotoCoreError as exc:
            raise OSError(f"{method.__name__} s3://{path}: {exc}") from None

    return call


class S3Conditional:
    """Through ``boto3``: ``IfNoneMatch`` / ``IfMatch`` on PutObject and DeleteObject."""

    kind = "S3 (If-None-Match / If-Match)"

    def __init__(self, client: Any) -> None:
        self.client = client
        #: set when the store rejected a conditional DELETE (not every S3 offers one)
        self.plain_delete = False

    @staticmethod
    def _status(exc: Any) -> tuple[int, str]:
        resp = getattr(exc, "response", {}) or {}
        status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return status, str(resp.get("Error", {}).get("Code", ""))

    def _error(self, exc: Any, what: str, path: str) -> OSError:
        status, code = self._status(exc)
        return OSError(f"{what} s3://{path}: {status} {code}: {exc}")

    @_transport_errors
    def get(self, path: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        bucket, key = _split(path)
        try:
            resp = self.client.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if self._status(exc)[0] == 404:
                return None
            raise self._error(exc, "GET", path) from None
        return resp["Body"].read(), str(resp["ETag"])

    def _put(self, path: str, data: bytes, **cond: str) -> str | None:
        from botocore.exceptions import ClientError

        bucket, key = _split(path)
        try:
            resp = self.client.put_object(Bucket=bucket, Key=key, Body=data, **cond)
        except ClientError as exc:
            if self._status(exc)[0] not in (409, 412):  # 409: ConditionalRequestConflict
                raise self._error(exc, "PUT", path) from None
            return _ours(self.get(path), data)
        return str(resp["ETag"])

    @_transport_errors
    def create(self, path: str, data: bytes) -> str | None:
        return self._put(path, data, IfNoneMatch="*")

    @_transport_errors
    def replace(self, path: str, data: bytes, etag: str) -> str | None:
        return self._put(path, data, IfMatch=etag)

    @_transport_errors
    def delete(self, path: str, etag: str) -> bool:
        from botocore.exceptions import ClientError

        bucket, key = _split(path)
        if not self.plain_delete:
            try:
                self.client.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
                return True
            except ClientError as exc:
                status, code = self._status(exc)
                if status in (404, 409, 412):
                    return False
                if status not in (400, 501):
                    raise self._error(exc, "DELETE", path) from None
                # a store without conditional DELETE: compare, then delete
                log.warning(
                    "s3://%s: the store refused a conditional DELETE (%s %s); releasing"
                    " leases by compare-then-delete from now on",
                    bucket,
                    status,
                    code,
                )
                self.plain_delete = True
        current = self.get(path)
        if current is None or current[1] != etag:
            return False
        try:
            self.client.delete_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            raise self._error(exc, "DELETE", path) from None
        return True


# ---------------------------------------------------------------------- choice


def _ours(current: tuple[bytes, str] | None, data: bytes) -> str | None:
    """After a 412: the ETag when the object holds exactly ``data`` (our own retried
    write), else None (another writer's)."""
    if current is not None and current[0] == data:
        return current[1]
    return None


def conditional_for(where: Resolved) -> Conditional | None:
    """The conditional requests of ``where``'s store; None locally and for stores that
    have none here (an ``s3://`` output without ``boto3`` installed, ``gs://``, ...)."""
    if where.local:
        return None
    if where.scheme in OCI_SCHEMES:
        ocifs = fsspec_of(where.fs)
        client = getattr(ocifs, "oci_client", None)
        return OciConditional(client) if client is not None else None
    if where.scheme == "s3":
        client = _s3_client()
        return S3Conditional(client) if client is not None else None
    return None


__all__ = ["Conditional", "OciConditional", "S3Conditional", "conditional_for"]
