"""Raw documents in object storage: listing with metadata, and reading one object.

OCI Object Storage (``oci://bucket@namespace/prefix``) is listed natively with the SDK
client under the ocifs filesystem (``ListObjects`` with ``fields=name,size,etag,md5,
timeModified``, paged by ``nextStartWith``, no delimiter unless the glob stays in one
level) as a generator: the caller filters each object as it comes (glob, hidden names,
the modified window), so what stays in memory is what the plan keeps, not the bucket's
listing. An object is read with one ``GetObject`` whose body is streamed; the response's
etag and time modified are what the document records.

Other object stores (``s3://`` through pyarrow, any fsspec filesystem) are listed with
their own listing: size and time modified, and the etag where fsspec gives one.

Errors: a bucket or namespace that does not exist (404) is a :class:`SourceError` naming
the bucket; refused credentials (401, 403) an :class:`AuthError` naming the auth mode.
Both stop a run at its plan, before any model call. An object deleted between the listing
and its read is :class:`ObjectGone`, which the reader turns into one failure row.
"""

from __future__ import annotations

import io
import itertools
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import IO, Any

import pyarrow.fs as pafs

from pipeline import storage
from pipeline.errors import AuthError, SourceError
from pipeline.sources.location import FoundFile, compile_glob, relative, utc

#: What the listing asks for each object (by default ListObjects returns names only).
LIST_FIELDS = "name,size,etag,md5,timeModified"
#: Objects per ListObjects page (the service's maximum).
PAGE_SIZE = 1000
# Characters that start a glob (see location.compile_glob)
_GLOB_SPECIALS = "*?["


@dataclass(frozen=True)
class ObjectPath:
    """``bucket@namespace/name`` as the ocifs filesystem sees an object or a prefix."""

    bucket: str
    namespace: str
    name: str  # object name or prefix, without a leading "/"; "" for the whole bucket

    @classmethod
    def parse(cls, path: str, uri: str) -> ObjectPath:
        head, _, name = path.lstrip("/").partition("/")
        bucket, at, namespace = head.partition("@")
        if not bucket or not at or not namespace:
            raise SourceError(
                f"source {uri}: an OCI Object Storage URI is oci://bucket@namespace/prefix"
            )
        return cls(bucket, namespace, name)

    def path_of(self, name: str) -> str:
        return f"{self.bucket}@{self.namespace}/{name}"

    def uri(self) -> str:
        return f"oci://{self.path_of(self.name)}"


class ObjectGone(Exception):
    """The object was listed but is not there any more (404 on GetObject).

    ``error_class`` names its failure row: ``ObjectNotFound`` (permanent: a re-run will
    not list it either), or ``ReadError`` for a local file that vanished (as before)."""

    def __init__(self, message: str, error_class: str = "ObjectNotFound") -> None:
        super().__init__(message)
        self.error_class = error_class


@dataclass
class Opened:
    """An object opened for reading: its body and what the store says of it."""

    stream: IO[bytes]
    size: int
    mtime: datetime | None
    etag: str | None
    md5: str | None


def oci_client_of(fs: pafs.FileSystem) -> Any | None:
    """The SDK ObjectStorageClient of an ocifs filesystem (wrapped for pyarrow), else None."""
    inner = storage.fsspec_of(fs)
    if inner is None or type(inner).__module__.split(".")[0] != "ocifs":
        return None
    return getattr(inner, "oci_client", None)


# --------------------------------------------------------------------------- errors


def _auth_mode() -> str:
    settings = storage.current_settings()
    if settings.auth in ("api_key", "security_token"):
        where = settings.oci_config or "~/.oci/config"
        return f"auth {settings.auth} (profile {settings.oci_profile} of {where})"
    return f"auth {settings.auth}"


def _endpoint() -> str:
    endpoint = storage.current_settings().os_endpoint
    return f" at {endpoint}" if endpoint else ""


def _service_error(exc: Any, uri: str, where: ObjectPath) -> Exception:
    """A SourceError / AuthError for a ServiceError that no other object would escape."""
    status, code = exc.status, exc.code
    kw = {"status": status, "code": code, "request_id": getattr(exc, "request_id", None)}
    if status in (401, 403):
        what = "refused the credentials" if status == 401 else "did not authorize the request"
        return AuthError(
            f"source {uri}: Object Storage{_endpoint()} {what} of {_auth_mode()}"
            f" for bucket {where.bucket} in namespace {where.namespace} ({status} {code});"
            " check the key, its fingerprint, the profile and the policies",
            **kw,
        )
    if status == 404:
        return SourceError(
            f"source {uri}: bucket {where.bucket} in namespace {where.namespace} does not"
            f" exist, or {_auth_mode()} may not read it ({status} {code}"
            f"{_request_id(exc)})"
        )
    return SourceError(
        f"source {uri}: listing bucket {where.bucket} failed ({status} {code}:"
        f" {_short(getattr(exc, 'message', '') or '')}{_request_id(exc)})"
    )


def _request_id(exc: Any) -> str:
    rid = getattr(exc, "request_id", None)
    return f", opc-request-id {rid}" if rid else ""


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_service_error(exc: BaseException) -> bool:
    import oci

    return isinstance(exc, oci.exceptions.ServiceError)


# --------------------------------------------------------------------------- listing


def _literal_head(pattern: str) -> str:
    """The part of a glob before its first special character (a listing prefix)."""
    cut = min((i for i in (pattern.find(c) for c in _GLOB_SPECIALS) if i >= 0), default=-1)
    return pattern if cut < 0 else pattern[:cut]


def _list_pages(
    client: Any, uri: str, where: ObjectPath, prefix: str, delimiter: str | None
) -> Iterator[Any]:
    """Every ObjectSummary under ``prefix``, page after page (one page held at a time)."""
    start: str | None = None
    while True:
        kwargs: dict[str, Any] = {"prefix": prefix, "fields": LIST_FIELDS, "limit": PAGE_SIZE}
        if start is not None:
            kwargs["start"] = start
        if delimiter is not None:
            kwargs["delimiter"] = delimiter
        try:
            response = client.list_objects(where.namespace, where.bucket, **kwargs)
        except Exception as exc:
            if _is_service_error(exc):
                raise _service_error(exc, uri, where) from None
            raise SourceError(
                f"source {uri}: Object Storage{_endpoint()} cannot be reached to list bucket"
                f" {where.bucket} ({type(exc).__name__}: {_short(str(exc))})"
            ) from None
        yield from response.data.objects or ()
        start = response.data.next_start_with
        if not start:
            return


def _found(where: ObjectPath, obj: Any, root: str) -> FoundFile:
    name = obj.name
    return FoundFile(
        where.path_of(name),
        relative(name, root),
        int(obj.size or 0),
        mtime=utc(obj.time_modified),
        etag=obj.etag,
        md5=obj.md5,
    )


def find_oci(
    client: Any, uri: str, path: str, pattern: str | None, *, deep: bool
) -> tuple[Iterator[FoundFile], str, bool]:
    """``(files, root, single)`` of an ``oci://`` source, as ``sources._find`` returns them;
    ``files`` is a generator, so list errors surface while it is consumed.

    Without a glob, ``bucket@ns/name`` is the objects under ``name/`` (a "directory"),
    or else the object ``name`` itself. With one, the objects under the base whose names
    start with the glob's literal head (``docs/2026-01-*`` lists ``docs/2026-01-`` only);
    a glob without ``/`` or ``**`` lists one level (delimiter ``/``)."""
    where = ObjectPath.parse(path, uri)
    base = where.name.strip("/")
    dir_prefix = f"{base}/" if base else ""
    if pattern is not None:
        prefix = dir_prefix + _literal_head(pattern)
        delimiter = None if deep else "/"
        regex = compile_glob(pattern)
        files = (
            found
            for found in (
                _found(where, o, base)
                for o in _list_pages(client, uri, where, prefix, delimiter)
                if not o.name.endswith("/")
            )
            if regex.match(found.rel)
        )
        return files, where.path_of(base), False
    pages = _list_pages(client, uri, where, dir_prefix, None)
    first = next(pages, None)  # a missing bucket or refused credentials raise here
    if first is None and base and not uri.endswith("/"):
        single = _head(client, uri, where, base)
        if single is not None:
            return iter([single]), where.path_of(posixpath.dirname(base)), True
    if first is None:
        raise SourceError(
            f"source {uri} does not exist: no object {base!r} and no object under"
            f" {dir_prefix!r} in bucket {where.bucket}"
            if base
            else f"source {uri}: bucket {where.bucket} is empty"
        )

    files = (
        _found(where, o, base)
        for o in itertools.chain([first], pages)
        if not o.name.endswith("/")  # a console "folder" marker
    )
    return files, where.path_of(base), False


def _head(client: Any, uri: str, where: ObjectPath, name: str) -> FoundFile | None:
    try:
        response = client.head_object(where.namespace, where.bucket, name)
    except Exception as exc:
        if _is_service_error(exc):
            if exc.status == 404:  # type: ignore[attr-defined]
                return None
            raise _service_error(exc, uri, where) from None
        raise SourceError(
            f"source {uri}: Object Storage{_endpoint()} cannot be reached"
            f" ({type(exc).__name__}: {_short(str(exc))})"
        ) from None
    headers = response.headers
    return FoundFile(
        where.path_of(name),
        posixpath.basename(name),
        int(headers.get("content-length") or 0),
        mtime=_http_date(headers.get("last-modified")),
        etag=headers.get("etag"),
        md5=headers.get("content-md5"),
    )


def find_fsspec(ffs: Any, root: str, *, recursive: bool) -> list[FoundFile]:
    """Every file under ``root`` of an fsspec filesystem with its size, time modified and
    etag when the filesystem gives them; sorted by relative path."""
    infos = ffs.find(root, maxdepth=None if recursive else 1, withdirs=False, detail=True)
    found = []
    for path, info in infos.items():
        if info.get("type", "file") != "file":
            continue
        etag = info.get("ETag") or info.get("etag")
        found.append(
            FoundFile(
                path,
                relative(path, root),
                int(info.get("size") or 0),
                mtime=_any_time(
                    info.get("mtime") or info.get("LastModified") or info.get("last_modified")
                ),
                etag=etag.strip('"') if isinstance(etag, str) else None,
                md5=info.get("md5") if isinstance(info.get("md5"), str) else None,
            )
        )
    found.sort(key=lambda f: f.rel)
    return found


def _any_time(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            return utc(datetime.fromisoformat(value))
        except ValueError:
            return _http_date(value)
    return None


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return utc(parsedate_to_datetime(value))
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- reading


class _Body(io.RawIOBase):
    """A GetObject body as a plain binary stream: the SDK's transport errors become
    OSError, which the reader reports as a (retryable) ReadError row."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._raw.read(len(buffer))
        except Exception as exc:
            raise OSError(f"reading the object failed: {type(exc).__name__}: {exc}") from exc
        n = len(data)
        buffer[:n] = data
        return n


@contextmanager
def open_oci(
    client: Any,
    fs_path: str,
    uri: str,
    unit_etag: str | None = None,
    unit_mtime: datetime | None = None,
) -> Iterator[Opened]:
    """One GetObject of ``fs_path`` (``bucket@ns/name``), its body streamed.

    Raises :class:`ObjectGone` for a 404 on the object, :class:`AuthError` for 401/403,
    :class:`SourceError` for a bucket that is gone, OSError for anything else (retryable).
    ``unit_etag`` / ``unit_mtime`` (from the listing) give the millisecond time modified
    when the object is still the version listed; otherwise the response's (seconds)."""
    where = ObjectPath.parse(fs_path, uri)
    try:
        response = client.get_object(where.namespace, where.bucket, where.name)
    except Exception as exc:
        if not _is_service_error(exc):
            raise OSError(f"{type(exc).__name__}: {_short(str(exc))}") from None
        status, code = exc.status, exc.code  # type: ignore[attr-defined]
        if status in (401, 403) or (status == 404 and code == "BucketNotFound"):
            raise _service_error(exc, uri, where) from None
        if status == 404:
            raise ObjectGone(
                f"object {uri} was listed but is gone ({status} {code}{_request_id(exc)})"
            ) from None
        raise OSError(f"{status} {code}{_request_id(exc)}") from None
    body = response.data
    headers = response.headers
    etag = headers.get("etag")
    mtime = (
        unit_mtime
        if unit_mtime is not None and etag is not None and etag == unit_etag
        else _http_date(headers.get("last-modified"))
    )
    try:
        yield Opened(
            stream=io.BufferedReader(_Body(body.raw), 1 << 16),
            size=int(headers.get("content-length") or 0),
            mtime=mtime,
            etag=etag,
            md5=headers.get("content-md5") or headers.get("opc-multipart-md5"),
        )
    finally:
        body.close()


__all__ = [
    "LIST_FIELDS",
    "ObjectGone",
    "ObjectPath",
    "Opened",
    "find_fsspec",
    "find_oci",
    "oci_client_of",
    "open_oci",
]
