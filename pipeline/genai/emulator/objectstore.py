"""OCI Object Storage (API 20160918) served by the emulator from a directory on disk.

Each subdirectory of the root is a bucket of one namespace; the files under it are its
objects, the path relative to the bucket (with ``/``) being the object name. The real
``ObjectStorageClient``, ``UploadManager`` and ``ocifs`` run against it. Served calls:
GetNamespace, GetNamespaceMetadata, CreateBucket, ListBuckets, GetBucket, HeadBucket,
DeleteBucket, ListObjects (prefix, start, end, startAfter, limit, ``/`` delimiter, fields),
HeadObject, GetObject (one byte range), PutObject, DeleteObject, RenameObject, CopyObject
within the namespace (done at once; its work request reads COMPLETED), each with
if-match / if-none-match, and multipart uploads (create, upload part, commit, abort, list
parts, list uploads).

Bookkeeping lives under ``<root>/.oci-emulator/`` (never a bucket): per-object metadata
(ETag, MD5, content headers, ``opc-meta-*``) keyed by a hash of the name, temporary
files of writes in progress and the parts of multipart uploads. Every write goes to a
temporary file first and is renamed into place, so a reader sees the old or the new
object, never half of one. A file put under the root by hand is served too: its ETag is
derived from its inode, size and modification time and its MD5 is computed on first use.

Limits of keeping objects as files: an object ``a`` and an object ``a/b`` cannot both
exist (409 ``Conflict``), and names with empty, ``.`` or ``..`` segments, a trailing
``/`` or a segment longer than 255 bytes are refused (400 ``InvalidObjectName``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson
from aiohttp import web

from pipeline.genai.emulator.actions import ApiError
from pipeline.genai.emulator.auth import AuthError, SignatureVerifier, check_streamed_body
from pipeline.genai.emulator.devconfig import TENANCY

DEFAULT_NAMESPACE = "emulator"
META_DIR = ".oci-emulator"
MAX_LIST = 1000
#: the request key under which the server keeps the opc-request-id of the answer
REQUEST_ID = web.RequestKey("opc-request-id", str)
_CHUNK = 1 << 20
_BUCKET_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,255}$")
_FIELDS = (
    "name",
    "size",
    "etag",
    "md5",
    "timeCreated",
    "timeModified",
    "storageTier",
    "archivalState",
)
# content headers stored with an object and sent back on GET/HEAD
_CONTENT_HEADERS = (
    "content-type",
    "content-language",
    "content-encoding",
    "content-disposition",
    "cache-control",
)
_MAX_PARTS = 10000
_JSON = "application/json"


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _json(
    payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(payload), content_type=_JSON, headers=headers
    )


def _etag_matches(condition: str, etag: str | None) -> bool:
    """Whether an if-match / if-none-match value names ``etag`` (``*``: any object)."""
    if etag is None:
        return False
    for value in condition.split(","):
        value = value.strip()
        if value.startswith("W/"):
            value = value[2:]
        if value == "*" or value.strip('"') == etag:
            return True
    return False


@dataclass
class ObjectMeta:
    """What the store knows of one object beyond its bytes."""

    etag: str
    md5: str  # base64 MD5 of the content
    time_created: float
    multipart_md5: str | None = None  # "<base64>-<parts>" for an object made of parts
    headers: dict[str, str] = field(default_factory=dict)  # content-* and opc-meta-*
    stamp: tuple[int, int, int] | None = None  # (inode, size, mtime_ns) it describes

    def as_json(self) -> dict[str, Any]:
        return {
            "etag": self.etag,
            "md5": self.md5,
            "timeCreated": self.time_created,
            "multipartMd5": self.multipart_md5,
            "headers": self.headers,
            "stamp": list(self.stamp) if self.stamp else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ObjectMeta:
        stamp = data.get("stamp")
        return cls(
            etag=data["etag"],
            md5=data["md5"],
            time_created=float(data["timeCreated"]),
            multipart_md5=data.get("multipartMd5"),
            headers=dict(data.get("headers") or {}),
            stamp=(int(stamp[0]), int(stamp[1]), int(stamp[2])) if stamp else None,
        )


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class Staged:
    """A body written to a temporary file, ready to be renamed into place."""

    path: str
    size: int
    md5: bytes
    multipart_md5: str | None = None

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class ObjectStore:
    """The disk side: buckets are directories of ``root``, objects are files.

    Methods are synchronous. The ones that check a condition and then change an object
    (``commit``, ``delete``, ``rename``) hold one lock throughout, so each is atomic with
    respect to other requests and to listings running in worker threads.
    """

    def __init__(self, root: str | os.PathLike[str], namespace: str = DEFAULT_NAMESPACE) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise ValueError(f"--os-root {root}: not a directory")
        if not namespace or "/" in namespace:
            raise ValueError(f"--os-namespace {namespace!r}: not a valid namespace name")
        self.namespace = namespace
        self.meta_root = self.root / META_DIR
        self.tmp_dir = self.meta_root / "tmp"
        self.uploads_dir = self.meta_root / "uploads"
        self.objects_meta_dir = self.meta_root / "objects"
        self.buckets_meta_dir = self.meta_root / "buckets"
        for d in (self.tmp_dir, self.uploads_dir, self.objects_meta_dir, self.buckets_meta_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._meta_cache: dict[tuple[str, str], ObjectMeta] = {}
        # held while an object is checked and changed, and while metadata derived from a
        # file is recorded (listings run in worker threads)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ names

    def bucket_dir(self, bucket: str) -> Path:
        """The directory of an existing bucket; 404 BucketNotFound otherwise."""
        if _BUCKET_NAME.match(bucket):
            path = self.root / bucket
            if path.is_dir():
                return path
        raise ApiError(
            404,
            "BucketNotFound",
            f"Either the bucket named '{bucket}' does not exist in the namespace "
            f"'{self.namespace}' or you are not authorized to access it",
        )

    @staticmethod
    def check_object_name(name: str) -> list[str]:
        """The path segments of an object name; 400 InvalidObjectName if the emulator
        cannot keep it as a file under its bucket."""
        if not name:
            raise ApiError(400, "InvalidObjectName", "the object name is empty")
        if len(name.encode("utf-8", "surrogatepass")) > 1024:
            raise ApiError(400, "InvalidObjectName", "the object name is over 1024 bytes")
        if "\x00" in name:
            raise ApiError(400, "InvalidObjectName", "the object name contains a NUL character")
        parts = name.split("/")
        for part in parts:
            if part in ("", ".", ".."):
                raise ApiError(
                    400,
                    "InvalidObjectName",
                    f"object name {name!r}: the emulator keeps objects as files, so a name "
                    "may not have empty, '.' or '..' segments, nor start or end with '/'",
                )
            if len(part.encode("utf-8", "surrogatepass")) > 255:
                raise ApiError(
                    400,
                    "InvalidObjectName",
                    f"object name {name!r}: a segment between '/' is over 255 bytes, "
                    "more than a file name on disk may hold",
                )
        return parts

    def object_path(self, bucket: str, name: str) -> Path:
        return self.bucket_dir(bucket).joinpath(*self.check_object_name(name))

    def _meta_path(self, bucket: str, name: str) -> Path:
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
        return self.objects_meta_dir / bucket / digest[:2] / f"{digest}.json"

    # ------------------------------------------------------------------ metadata

    def meta(
        self, bucket: str, name: str, st: os.stat_result, path: Path | None = None
    ) -> ObjectMeta:
        """The metadata of the object whose file has the stat ``st``: the recorded one
        if it still describes that file, else one derived from the file itself."""
        stamp = _stamp(st)
        key = (bucket, name)
        cached = self._meta_cache.get(key)
        if cached is not None and cached.stamp == stamp:
            return cached
        try:
            recorded = ObjectMeta.from_json(json.loads(self._meta_path(bucket, name).read_bytes()))
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            recorded = None
        if recorded is not None and recorded.stamp == stamp:
            self._meta_cache[key] = recorded
            return recorded
        return self._derive(bucket, name, path or self.object_path(bucket, name), st)

    def _derive(self, bucket: str, name: str, path: Path, st: os.stat_result) -> ObjectMeta:
        """Metadata for a file put there by hand or changed behind the emulator's back:
        an ETag derived from its stat, its MD5 read from it. Recorded only if the file is
        still the one that was read (a listing thread may race a write of the object)."""
        stamp = _stamp(st)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed by the with below
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self.not_found(bucket, name) from None
        with fh:
            now = os.fstat(fh.fileno())
            if _stamp(now) != stamp:  # replaced since it was looked at: describe it now
                return self.meta(bucket, name, now, path)
            md5 = hashlib.md5(usedforsecurity=False)
            while chunk := fh.read(_CHUNK):
                md5.update(chunk)
        seed = f"{bucket}\0{name}\0{stamp}".encode("utf-8", "surrogatepass")
        meta = ObjectMeta(
            etag=str(uuid.UUID(bytes=hashlib.md5(seed, usedforsecurity=False).digest())),
            md5=_b64(md5.digest()),
            time_created=st.st_mtime,
            stamp=stamp,
        )
        with self._lock:
            try:
                unchanged = _stamp(path.stat()) == stamp
            except OSError:
                unchanged = False
            if unchanged:
                self._write_meta(bucket, name, meta)
        return meta

    def _write_meta(self, bucket: str, name: str, meta: ObjectMeta) -> None:
        path = self._meta_path(bucket, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, prefix="meta-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(orjson.dumps(meta.as_json()))
        os.replace(tmp, path)
        self._meta_cache[(bucket, name)] = meta

    def _drop_meta(self, bucket: str, name: str) -> None:
        self._meta_cache.pop((bucket, name), None)
        with contextlib.suppress(OSError):
            self._meta_path(bucket, name).unlink()

    def stat_object(self, bucket: str, name: str) -> tuple[Path, os.stat_result] | None:
        """The file and stat of an object, or None if there is no such object."""
        path = self.object_path(bucket, name)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not os.path.isfile(path):
            return None
        return path, st

    def current_etag(self, bucket: str, name: str) -> str | None:
        found = self.stat_object(bucket, name)
        if found is None:
            return None
        return self.meta(bucket, name, found[1], found[0]).etag

    def not_found(self, bucket: str, name: str) -> ApiError:
        return ApiError(
            404, "ObjectNotFound", f"The object '{name}' was not found in the bucket '{bucket}'"
        )

    @staticmethod
    def check_conditions(
        etag: str | None, if_match: str | None, if_none_match: str | None, what: str
    ) -> None:
        """412 unless the current ETag (None: no object) meets the conditions."""
        if if_match is not None and not _etag_matches(if_match, etag):
            raise ApiError(
                412,
                "IfMatchFailed",
                f"The If-Match header '{if_match}' does not match the ETag of {what}"
                + ("" if etag else " (there is no such object)"),
            )
        if if_none_match is not None and _etag_matches(if_none_match, etag):
            raise ApiError(
                412,
                "IfNoneMatchFailed",
                f"The If-None-Match header '{if_none_match}' matches the ETag of {what}",
            )

    # ------------------------------------------------------------------ writes

    def new_temp(self) -> tuple[int, str]:
        return tempfile.mkstemp(dir=self.tmp_dir, prefix="body-")

    def commit(
        self,
        bucket: str,
        name: str,
        staged: Staged,
        headers: dict[str, str],
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> ObjectMeta:
        """Rename a staged body into place as object ``name`` (checking the conditions
        against the object there now); returns its new metadata."""
        with self._lock:
            try:
                path = self.object_path(bucket, name)
                self.check_conditions(
                    self.current_etag(bucket, name), if_match, if_none_match, f"object '{name}'"
                )
                self._place(bucket, name, path, staged.path)
            except BaseException:
                staged.discard()
                raise
            st = path.stat()
            meta = ObjectMeta(
                etag=str(uuid.uuid4()),
                md5=_b64(staged.md5),
                time_created=st.st_mtime,
                multipart_md5=staged.multipart_md5,
                headers=headers,
                stamp=_stamp(st),
            )
            self._write_meta(bucket, name, meta)
            return meta

    def _place(self, bucket: str, name: str, path: Path, source: str) -> None:
        """``os.replace`` a file to an object's path, making its folders; 409 when the
        name collides with an object that is a folder on disk or vice versa."""
        bucket_dir = self.bucket_dir(bucket)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise self._conflict(name, bucket_dir, path) from None
        if path.is_dir():
            try:
                path.rmdir()  # an empty folder left over: an object may take its place
            except OSError:
                raise ApiError(
                    409,
                    "Conflict",
                    f"object '{name}': objects named '{name}/...' exist, and the emulator "
                    "keeps objects as files, so '{name}' cannot be one too",
                ) from None
        os.replace(source, path)

    @staticmethod
    def _conflict(name: str, bucket_dir: Path, path: Path) -> ApiError:
        parent = path.parent
        while parent != bucket_dir and not parent.is_file():
            parent = parent.parent
        blocker = parent.relative_to(bucket_dir).as_posix()
        return ApiError(
            409,
            "Conflict",
            f"object '{name}': the object '{blocker}' exists, and the emulator keeps objects "
            f"as files, so it cannot also hold objects named '{blocker}/...'",
        )

    def _prune(self, bucket_dir: Path, path: Path) -> None:
        """Remove the folders above a removed object that are left empty."""
        parent = path.parent
        while parent != bucket_dir:
            try:
                parent.rmdir()
            except OSError:
                return
            parent = parent.parent

    def delete(self, bucket: str, name: str, if_match: str | None = None) -> None:
        with self._lock:
            self._delete(bucket, name, if_match)

    def _delete(self, bucket: str, name: str, if_match: str | None) -> None:
        found = self.stat_object(bucket, name)
        if found is None:
            raise self.not_found(bucket, name)
        path, st = found
        self.check_conditions(
            self.meta(bucket, name, st, path).etag, if_match, None, f"object '{name}'"
        )
        path.unlink()
        self._drop_meta(bucket, name)
        self._prune(self.bucket_dir(bucket), path)

    def rename(self, bucket: str, details: dict[str, Any]) -> ObjectMeta:
        with self._lock:
            return self._rename(bucket, details)

    def _rename(self, bucket: str, details: dict[str, Any]) -> ObjectMeta:
        source = details.get("sourceName")
        new = details.get("newName")
        if not isinstance(source, str) or not isinstance(new, str) or not source or not new:
            raise ApiError(400, "InvalidParameter", "sourceName and newName are required strings")
        if source == new:
            raise ApiError(400, "SourceNameSameAsNewName", "sourceName and newName are the same")
        found = self.stat_object(bucket, source)
        if found is None:
            raise self.not_found(bucket, source)
        src_path, st = found
        meta = self.meta(bucket, source, st, src_path)
        self.check_conditions(
            meta.etag, details.get("srcObjIfMatchETag"), None, f"object '{source}'"
        )
        self.check_conditions(
            self.current_etag(bucket, new),
            details.get("newObjIfMatchETag"),
            details.get("newObjIfNoneMatchETag"),
            f"object '{new}'",
        )
        dst_path = self.object_path(bucket, new)
        self._place(bucket, new, dst_path, str(src_path))
        self._drop_meta(bucket, source)
        meta.stamp = _stamp(dst_path.stat())
        self._write_meta(bucket, new, meta)
        self._prune(self.bucket_dir(bucket), src_path)
        return meta

    def stage_copy(self, bucket: str, name: str, if_match: str | None) -> tuple[Staged, ObjectMeta]:
        """A copy of an object's bytes in a temporary file, with the metadata it had
        (blocking: run it in a thread)."""
        path = self.object_path(bucket, name)
        try:
            src = open(path, "rb")  # noqa: SIM115 - closed by the with below
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self.not_found(bucket, name) from None
        with src:
            meta = self.meta(bucket, name, os.fstat(src.fileno()), path)
            self.check_conditions(meta.etag, if_match, None, f"object '{name}'")
            fd, tmp = self.new_temp()
            try:
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
                    size = out.tell()
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        staged = Staged(tmp, size, base64.b64decode(meta.md5), meta.multipart_md5)
        return staged, meta

    # ------------------------------------------------------------------ listing

    def list_objects(
        self,
        bucket: str,
        *,
        prefix: str = "",
        start: str = "",
        end: str | None = None,
        start_after: str | None = None,
        limit: int = MAX_LIST,
        delimiter: str | None = None,
        fields: tuple[str, ...] = ("name",),
    ) -> dict[str, Any]:
        """A ListObjects page: ``{"objects": [...], "prefixes": [...],
        "nextStartWith": ...}`` in name order, objects and prefixes counting
        towards ``limit`` together."""
        bucket_dir = self.bucket_dir(bucket)
        lower = start
        if start_after is not None:
            lower = max(lower, start_after + "\x00")
        objects: list[dict[str, Any]] = []
        prefixes: list[str] = []
        next_start: str | None = None
        if delimiter:
            entries: Iterator[tuple[str, os.DirEntry[str] | None]] = self._level(
                bucket_dir, prefix, lower
            )
        else:
            entries = self._walk(bucket_dir, "", prefix, lower)
        for key, entry in entries:
            if end is not None and key >= end:
                break
            if len(objects) + len(prefixes) == limit:
                next_start = key
                break
            if entry is None:
                prefixes.append(key)
            else:
                objects.append(self._summary(bucket, key, entry, fields))
        page: dict[str, Any] = {"objects": objects}
        if delimiter:
            page["prefixes"] = prefixes
        if next_start is not None:
            page["nextStartWith"] = next_start
        return page

    def _summary(
        self, bucket: str, name: str, entry: os.DirEntry[str], fields: tuple[str, ...]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name}
        if len(fields) == 1:
            return out
        st = entry.stat()
        meta = None
        if {"etag", "md5", "timeCreated"} & set(fields):
            meta = self.meta(bucket, name, st, Path(entry.path))
        for f in fields:
            if f == "size":
                out["size"] = st.st_size
            elif f == "timeModified":
                out["timeModified"] = _rfc3339(st.st_mtime)
            elif f == "storageTier":
                out["storageTier"] = "Standard"
            elif meta is not None and f == "etag":
                out["etag"] = meta.etag
            elif meta is not None and f == "md5":
                out["md5"] = meta.multipart_md5 or meta.md5
            elif meta is not None and f == "timeCreated":
                out["timeCreated"] = _rfc3339(meta.time_created)
        return out

    @staticmethod
    def _entries(directory: Path | str, base: str) -> list[tuple[str, os.DirEntry[str], bool]]:
        """The entries of a folder keyed as names sort: ``base + name`` for a file,
        ``base + name + "/"`` for a folder (which makes a depth-first walk come out in
        the order of the full names)."""
        try:
            with os.scandir(directory) as it:
                found = list(it)
        except (FileNotFoundError, NotADirectoryError):
            return []
        keyed = []
        for e in found:
            try:
                e.name.encode("utf-8")
            except UnicodeEncodeError:  # not a UTF-8 name: cannot be an object name
                continue
            if e.is_dir(follow_symlinks=False):
                keyed.append((base + e.name + "/", e, True))
            elif e.is_file():
                keyed.append((base + e.name, e, False))
        keyed.sort(key=lambda t: t[0])
        return keyed

    def _walk(
        self, directory: Path | str, base: str, prefix: str, lower: str
    ) -> Iterator[tuple[str, os.DirEntry[str] | None]]:
        """Files under ``directory`` in name order, from ``lower`` on, within ``prefix``."""
        for key, entry, is_dir in self._entries(directory, base):
            if is_dir:
                if key < lower and not lower.startswith(key):
                    continue  # everything in it sorts before lower
                if not (key.startswith(prefix) or prefix.startswith(key)):
                    continue
                yield from self._walk(entry.path, key, prefix, lower)
            elif key >= lower and key.startswith(prefix):
                yield key, entry

    def _level(
        self, bucket_dir: Path, prefix: str, lower: str
    ) -> Iterator[tuple[str, os.DirEntry[str] | None]]:
        """With the delimiter ``/``: the objects and (non-empty) folders right under
        ``prefix``, folders as ``(prefix, None)``."""
        folder, _, _ = prefix.rpartition("/")
        directory: Path = bucket_dir
        if folder:
            parts = folder.split("/")
            if any(p in ("", ".", "..") for p in parts):
                return
            directory = bucket_dir.joinpath(*parts)
        base = folder + "/" if folder else ""
        for key, entry, is_dir in self._entries(directory, base):
            if not key.startswith(prefix) or key < lower:
                continue
            if is_dir:
                if self._has_file(entry.path):
                    yield key, None
            else:
                yield key, entry

    @staticmethod
    def _has_file(directory: str) -> bool:
        return any(files for _, _, files in os.walk(directory))

    # ------------------------------------------------------------------ buckets

    def bucket_names(self) -> list[str]:
        with os.scandir(self.root) as it:
            return sorted(e.name for e in it if e.is_dir() and _BUCKET_NAME.match(e.name))

    def bucket_info(self, bucket: str) -> dict[str, Any]:
        path = self.bucket_dir(bucket)
        recorded: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            recorded = json.loads((self.buckets_meta_dir / f"{bucket}.json").read_bytes())
        st = path.stat()
        seed = f"{bucket}\0{st.st_ino}".encode()
        return {
            "namespace": self.namespace,
            "name": bucket,
            "compartmentId": recorded.get("compartmentId", TENANCY),
            "metadata": recorded.get("metadata") or {},
            "createdBy": recorded.get("createdBy", "ocid1.user.oc1..aaaaemulatoruser"),
            "timeCreated": recorded.get("timeCreated", _rfc3339(st.st_mtime)),
            "etag": recorded.get(
                "etag", str(uuid.UUID(bytes=hashlib.md5(seed, usedforsecurity=False).digest()))
            ),
            "publicAccessType": "NoPublicAccess",
            "storageTier": "Standard",
            "objectEventsEnabled": False,
            "freeformTags": recorded.get("freeformTags") or {},
            "definedTags": recorded.get("definedTags") or {},
            "replicationEnabled": False,
            "isReadOnly": False,
            "versioning": "Disabled",
            "autoTiering": "Disabled",
        }

    def create_bucket(self, details: dict[str, Any], created_by: str) -> dict[str, Any]:
        name = details.get("name")
        if not isinstance(name, str) or not _BUCKET_NAME.match(name):
            raise ApiError(
                400,
                "InvalidBucketName",
                f"bucket name {name!r}: use 1-256 letters, digits, '-', '_' or '.', "
                "not starting with '.'",
            )
        compartment = details.get("compartmentId")
        if not isinstance(compartment, str) or not compartment:
            raise ApiError(400, "MissingCompartmentId", "compartmentId is required")
        try:
            (self.root / name).mkdir()
        except FileExistsError:
            raise ApiError(
                409,
                "BucketAlreadyExists",
                f"Either the bucket '{name}' in namespace '{self.namespace}' already exists "
                "or you are not authorized to create it",
            ) from None
        record = {
            "compartmentId": compartment,
            "metadata": details.get("metadata") or {},
            "createdBy": created_by,
            "timeCreated": _rfc3339(time.time()),
            "etag": str(uuid.uuid4()),
            "freeformTags": details.get("freeformTags") or {},
            "definedTags": details.get("definedTags") or {},
        }
        (self.buckets_meta_dir / f"{name}.json").write_bytes(orjson.dumps(record))
        return self.bucket_info(name)

    def delete_bucket(self, bucket: str) -> None:
        path = self.bucket_dir(bucket)
        if self._has_file(str(path)):
            raise ApiError(409, "BucketNotEmpty", f"Bucket named '{bucket}' is not empty")
        if any(u.get("bucket") == bucket for u in self.uploads()):
            raise ApiError(
                409, "BucketNotEmpty", f"Bucket named '{bucket}' has multipart uploads in progress"
            )
        shutil.rmtree(path)
        with contextlib.suppress(OSError):
            (self.buckets_meta_dir / f"{bucket}.json").unlink()
        shutil.rmtree(self.objects_meta_dir / bucket, ignore_errors=True)
        for key in [k for k in list(self._meta_cache) if k[0] == bucket]:
            self._meta_cache.pop(key, None)

    # ------------------------------------------------------------------ multipart

    def _upload_dir(self, upload_id: str) -> Path:
        if not re.fullmatch(r"[0-9a-f-]{36}", upload_id):
            raise ApiError(404, "UploadNotFound", f"no multipart upload with id '{upload_id}'")
        return self.uploads_dir / upload_id

    def create_upload(self, bucket: str, details: dict[str, Any]) -> dict[str, Any]:
        self.bucket_dir(bucket)
        name = details.get("object")
        if not isinstance(name, str):
            raise ApiError(400, "MissingObjectName", "object (the object name) is required")
        self.check_object_name(name)
        upload_id = str(uuid.uuid4())
        headers = {
            h: str(details[k])
            for h, k in zip(
                _CONTENT_HEADERS,
                (
                    "contentType",
                    "contentLanguage",
                    "contentEncoding",
                    "contentDisposition",
                    "cacheControl",
                ),
                strict=True,
            )
            if details.get(k)
        }
        for k, v in (details.get("metadata") or {}).items():
            key = k.lower()
            headers[key if key.startswith("opc-meta-") else f"opc-meta-{key}"] = str(v)
        record = {
            "namespace": self.namespace,
            "bucket": bucket,
            "object": name,
            "uploadId": upload_id,
            "timeCreated": _rfc3339(time.time()),
            "storageTier": "Standard",
            "headers": headers,
        }
        directory = self._upload_dir(upload_id)
        directory.mkdir()
        (directory / "upload.json").write_bytes(orjson.dumps(record))
        return {k: v for k, v in record.items() if k != "headers"}

    def upload(self, bucket: str, name: str, upload_id: str) -> tuple[Path, dict[str, Any]]:
        """The folder and record of an upload of ``name`` in ``bucket``; 404 otherwise."""
        self.bucket_dir(bucket)
        directory = self._upload_dir(upload_id)
        try:
            record = json.loads((directory / "upload.json").read_bytes())
        except (OSError, ValueError):
            record = None
        if not record or record.get("bucket") != bucket or record.get("object") != name:
            raise ApiError(
                404,
                "UploadNotFound",
                f"No multipart upload '{upload_id}' of object '{name}' in bucket '{bucket}'",
            )
        return directory, record

    def uploads(self) -> list[dict[str, Any]]:
        out = []
        with os.scandir(self.uploads_dir) as it:
            for e in it:
                with contextlib.suppress(OSError, ValueError):
                    out.append(json.loads(Path(e.path, "upload.json").read_bytes()))
        return out

    @staticmethod
    def parts(directory: Path) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        with os.scandir(directory) as it:
            for e in it:
                m = re.fullmatch(r"part-(\d+)\.json", e.name)
                if m:
                    with contextlib.suppress(OSError, ValueError):
                        found[int(m.group(1))] = json.loads(Path(e.path).read_bytes())
        return found

    def put_part(self, directory: Path, number: int, staged: Staged) -> dict[str, Any]:
        info = {
            "partNumber": number,
            "etag": str(uuid.uuid4()),
            "md5": _b64(staged.md5),
            "size": staged.size,
        }
        try:
            os.replace(staged.path, directory / f"part-{number:05d}")
        except FileNotFoundError:  # aborted meanwhile
            staged.discard()
            raise ApiError(404, "UploadNotFound", "the multipart upload was aborted") from None
        (directory / f"part-{number:05d}.json").write_bytes(orjson.dumps(info))
        return info

    def assemble(self, directory: Path, details: dict[str, Any]) -> Staged:
        """Concatenate the parts named by a CommitMultipartUploadDetails into a staged
        body (blocking: run it in a thread)."""
        commit = details.get("partsToCommit")
        if not isinstance(commit, list) or not commit:
            raise ApiError(400, "InvalidParameter", "partsToCommit must list at least one part")
        exclude = details.get("partsToExclude") or []
        have = self.parts(directory)
        chosen: list[tuple[int, dict[str, Any]]] = []
        for item in commit:
            if not isinstance(item, dict) or not isinstance(item.get("partNum"), int):
                raise ApiError(400, "InvalidParameter", "each partsToCommit item needs partNum")
            number = item["partNum"]
            part = have.get(number)
            if part is None:
                raise ApiError(400, "InvalidUploadPart", f"part {number} was not uploaded")
            if item.get("etag") is not None and item["etag"] != part["etag"]:
                raise ApiError(
                    400, "InvalidUploadPart", f"part {number}: the etag is not the part's etag"
                )
            chosen.append((number, part))
        named = {n for n, _ in chosen} | {int(n) for n in exclude}
        if len(named) != len(chosen) + len(exclude):
            raise ApiError(
                400, "InvalidUploadPart", "a part is listed twice (or to commit and to exclude)"
            )
        missing = sorted(set(have) - named)
        if missing:
            raise ApiError(
                400,
                "InvalidUploadPart",
                f"parts {missing} were uploaded but are neither in partsToCommit nor in "
                "partsToExclude",
            )
        chosen.sort()
        fd, tmp = self.new_temp()
        md5 = hashlib.md5(usedforsecurity=False)
        digests = hashlib.md5(usedforsecurity=False)
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for number, part in chosen:
                    with open(directory / f"part-{number:05d}", "rb") as src:
                        while chunk := src.read(_CHUNK):
                            out.write(chunk)
                            md5.update(chunk)
                            size += len(chunk)
                    digests.update(base64.b64decode(part["md5"]))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return Staged(tmp, size, md5.digest(), f"{_b64(digests.digest())}-{len(chosen)}")

    @staticmethod
    def drop_upload(directory: Path) -> None:
        shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------------- HTTP side


def _split_target(raw_path: str) -> tuple[list[str], dict[str, str]]:
    """The percent-decoded segments after ``/n`` and the query of a raw request path;
    an object name (which the SDK sends as one segment with ``%2F``, or as several) is
    rejoined by the caller."""
    path, _, query = raw_path.partition("?")
    segments = path.split("/")[2:]  # "", "n", ...
    params = dict(parse_qsl(query, keep_blank_values=True))
    return segments, params


def _decode(segment: str) -> str:
    try:
        return unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise ApiError(400, "InvalidObjectName", "the name is not valid UTF-8") from None


def _int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ApiError(400, "InvalidParameter", f"{name}={value!r} is not an integer") from None
    if number < low:
        raise ApiError(400, "InvalidParameter", f"{name}={number} is below {low}")
    return min(number, high)


class ObjectStorageApi:
    """The ``/n/...`` routes of the emulator over an :class:`ObjectStore` (or, with
    ``store=None``, 404 answers saying the emulator was started without ``--os-root``).

    ``verifier`` checks signatures as for GenAI (None: any authorization header);
    ``denied_buckets`` (shared and mutable) answer 403 ``NotAuthorized``, for tests of
    a principal without access; ``count`` records each operation by name.
    """

    def __init__(
        self,
        store: ObjectStore | None,
        verifier: SignatureVerifier | None,
        *,
        denied_buckets: set[str] | None = None,
        count: Callable[[str, str | int | None], None] | None = None,
        tenancy: str = TENANCY,
    ) -> None:
        self.store = store
        self.verifier = verifier
        self.denied_buckets = denied_buckets if denied_buckets is not None else set()
        self._count = count or (lambda key, label: None)
        self.tenancy = tenancy
        self._work_requests: dict[str, dict[str, Any]] = {}
        self.user = (
            verifier.key_id.split("/")[1] if verifier else "ocid1.user.oc1..aaaaemulatoruser"
        )

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/n", self.handle)
        app.router.add_route("*", "/n/{tail:.*}", self.handle)
        app.router.add_get("/workRequests/{id}", self._work_request)

    # ------------------------------------------------------------------ plumbing

    def _authenticate(self, request: web.Request, body: bytes | None) -> None:
        headers = request.headers
        try:
            if self.verifier is not None:
                self.verifier.verify(request.method, request.raw_path, headers, body)
            elif not headers.get("authorization"):
                raise AuthError("the request has no authorization header")
        except AuthError as exc:
            self._count("unauthenticated", None)
            raise ApiError(401, "NotAuthenticated", str(exc)) from None

    async def _read_json(self, request: web.Request) -> dict[str, Any]:
        body = await request.read()
        self._authenticate(request, body)
        try:
            details = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            raise ApiError(400, "InvalidJSON", "the request body is not valid JSON") from None
        if not isinstance(details, dict):
            raise ApiError(400, "InvalidJSON", "the request body is not a JSON object")
        return details

    def _op(self, name: str) -> None:
        self._count("object_storage", name)

    def _namespace(self, ns: str) -> None:
        assert self.store is not None
        if ns != self.store.namespace:
            raise ApiError(
                404,
                "NamespaceNotFound",
                f"You do not have authorization to perform this request, or the requested "
                f"namespace '{ns}' does not exist (the emulator serves '{self.store.namespace}')",
            )

    def _bucket_allowed(self, bucket: str) -> None:
        if bucket in self.denied_buckets:
            raise ApiError(
                403,
                "NotAuthorized",
                f"You are not authorized to access the bucket '{bucket}' (denied by the emulator)",
            )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.store is None:
            raise ApiError(
                404,
                "NotFound",
                "this emulator does not serve Object Storage: start it with --os-root DIR",
            )
        segments, params = _split_target(request.raw_path)
        method = request.method
        if not segments or segments == [""]:
            if method == "GET":
                self._authenticate(request, b"")
                self._op("GetNamespace")
                return _json(self.store.namespace)
            raise ApiError(405, "MethodNotAllowed", f"{method} /n/ is not supported")
        ns = _decode(segments[0])
        rest = segments[1:]
        if rest and rest[-1] == "" and len(rest) <= 3:
            rest = rest[:-1]  # "/n/ns/b/" as "/n/ns/b"
        if not rest:
            if method == "GET":
                self._authenticate(request, b"")
                self._namespace(ns)
                self._op("GetNamespaceMetadata")
                return _json(
                    {
                        "namespace": ns,
                        "defaultS3CompartmentId": self.tenancy,
                        "defaultSwiftCompartmentId": self.tenancy,
                    }
                )
            raise ApiError(405, "MethodNotAllowed", f"{method} /n/{{namespace}} is not supported")
        if rest[0] != "b":
            raise ApiError(404, "NotFound", f"the emulator does not serve {request.path}")
        if len(rest) == 1:
            return await self._buckets(request, ns, params)
        bucket = _decode(rest[1])
        if len(rest) == 2:
            return await self._bucket(request, ns, bucket)
        kind, tail = rest[2], rest[3:]
        if kind == "o":
            if not tail or tail == [""]:
                if method != "GET":
                    raise ApiError(405, "MethodNotAllowed", f"{method} on the object list")
                return await self._list(request, ns, bucket, params)
            name = _decode("/".join(tail))
            return await self._object(request, ns, bucket, name, params)
        if kind == "u":
            if not tail or tail == [""]:
                return await self._uploads(request, ns, bucket, params)
            name = _decode("/".join(tail))
            return await self._upload(request, ns, bucket, name, params)
        if kind == "actions" and tail == ["renameObject"] and method == "POST":
            return await self._rename(request, ns, bucket)
        if kind == "actions" and tail == ["copyObject"] and method == "POST":
            return await self._copy(request, ns, bucket)
        what = "/".join([kind, *tail])
        raise ApiError(
            501,
            "NotImplemented",
            f"the emulator does not implement {method} .../b/{{bucket}}/{what}",
        )

    def _prelude(self, ns: str, bucket: str) -> ObjectStore:
        store = self.store
        assert store is not None
        self._namespace(ns)
        self._bucket_allowed(bucket)
        return store

    # ------------------------------------------------------------------ buckets

    async def _buckets(
        self, request: web.Request, ns: str, params: Mapping[str, str]
    ) -> web.StreamResponse:
        store = self.store
        assert store is not None
        if request.method == "POST":
            details = await self._read_json(request)
            self._namespace(ns)
            self._op("CreateBucket")
            info = store.create_bucket(details, self.user)
            return _json(
                info, headers={"etag": info["etag"], "location": f"/n/{ns}/b/{info['name']}"}
            )
        if request.method != "GET":
            raise ApiError(405, "MethodNotAllowed", f"{request.method} on the bucket list")
        self._authenticate(request, b"")
        self._namespace(ns)
        self._op("ListBuckets")
        if not params.get("compartmentId"):
            raise ApiError(400, "MissingCompartmentId", "compartmentId is required")
        limit = _int_param(params, "limit", MAX_LIST, 1, MAX_LIST)
        page = params.get("page") or ""
        names = [n for n in store.bucket_names() if n >= page]
        headers = {}
        if len(names) > limit:
            headers["opc-next-page"] = names[limit]
            names = names[:limit]
        out = []
        for n in names:
            info = store.bucket_info(n)
            out.append(
                {
                    k: info[k]
                    for k in (
                        "namespace",
                        "name",
                        "compartmentId",
                        "createdBy",
                        "timeCreated",
                        "etag",
                        "freeformTags",
                        "definedTags",
                    )
                }
            )
        return _json(out, headers=headers)

    async def _bucket(self, request: web.Request, ns: str, bucket: str) -> web.StreamResponse:
        self._authenticate(request, b"" if request.method != "POST" else await request.read())
        store = self._prelude(ns, bucket)
        method = request.method
        if method in ("GET", "HEAD"):
            self._op("GetBucket" if method == "GET" else "HeadBucket")
            info = store.bucket_info(bucket)
            headers = {"etag": info["etag"]}
            if method == "HEAD":
                return web.Response(status=200, headers=headers)
            return _json(info, headers=headers)
        if method == "DELETE":
            self._op("DeleteBucket")
            store.delete_bucket(bucket)
            return web.Response(status=204)
        raise ApiError(
            501, "NotImplemented", f"the emulator does not implement {method} on a bucket"
        )

    # ------------------------------------------------------------------ objects

    async def _list(
        self, request: web.Request, ns: str, bucket: str, params: Mapping[str, str]
    ) -> web.StreamResponse:
        self._authenticate(request, b"")
        store = self._prelude(ns, bucket)
        self._op("ListObjects")
        fields = tuple(f.strip() for f in (params.get("fields") or "name").split(",") if f.strip())
        unknown = [f for f in fields if f not in _FIELDS]
        if unknown:
            raise ApiError(
                400, "InvalidParameter", f"fields: unknown {unknown} (known: {', '.join(_FIELDS)})"
            )
        if "name" not in fields:
            fields = ("name", *fields)
        delimiter = params.get("delimiter") or None
        if delimiter not in (None, "/"):
            raise ApiError(
                400, "InvalidParameter", f"delimiter {delimiter!r}: only '/' is supported"
            )
        limit = _int_param(params, "limit", MAX_LIST, 1, MAX_LIST)
        page = await asyncio.to_thread(
            store.list_objects,
            bucket,
            prefix=params.get("prefix") or "",
            start=params.get("start") or "",
            end=params.get("end") or None,
            start_after=params.get("startAfter") or None,
            limit=limit,
            delimiter=delimiter,
            fields=fields,
        )
        return _json(page)

    def _object_headers(self, meta: ObjectMeta, st: os.stat_result, whole: bool) -> dict[str, str]:
        headers = {
            "etag": meta.etag,
            "last-modified": _http_date(st.st_mtime),
            "accept-ranges": "bytes",
            "version-id": meta.etag,
            "storage-tier": "Standard",
            "content-type": "application/octet-stream",
        }
        headers.update(meta.headers)
        if whole:
            if meta.multipart_md5:
                headers["opc-multipart-md5"] = meta.multipart_md5
            else:
                headers["content-md5"] = meta.md5
                headers["opc-content-md5"] = meta.md5
        return headers

    async def _object(
        self,
        request: web.Request,
        ns: str,
        bucket: str,
        name: str,
        params: Mapping[str, str],
    ) -> web.StreamResponse:
        method = request.method
        if method == "PUT":
            self._authenticate(request, None)
            self._prelude(ns, bucket)
            self._op("PutObject")
            return await self._put(request, bucket, name)
        self._authenticate(request, b"" if method != "POST" else await request.read())
        store = self._prelude(ns, bucket)
        if method in ("GET", "HEAD"):
            self._op("GetObject" if method == "GET" else "HeadObject")
            return await self._get(request, store, bucket, name, head=method == "HEAD")
        if method == "DELETE":
            self._op("DeleteObject")
            store.delete(bucket, name, request.headers.get("if-match"))
            return web.Response(status=204)
        raise ApiError(405, "MethodNotAllowed", f"{method} on an object")

    async def _get(
        self, request: web.Request, store: ObjectStore, bucket: str, name: str, head: bool
    ) -> web.StreamResponse:
        path = store.object_path(bucket, name)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below, after streaming
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise store.not_found(bucket, name) from None
        with fh:
            st = os.fstat(fh.fileno())
            meta = store.meta(bucket, name, st, path)
            store.check_conditions(
                meta.etag, request.headers.get("if-match"), None, f"object '{name}'"
            )
            if_none = request.headers.get("if-none-match")
            if if_none is not None and _etag_matches(if_none, meta.etag):
                return web.Response(status=304, headers={"etag": meta.etag})
            size = st.st_size
            first, last = 0, size - 1
            ranged = request.headers.get("range")
            status = 200
            if ranged is not None:
                first, last = _parse_range(ranged, size)
                status = 206
            headers = self._object_headers(meta, st, whole=status == 200)
            if status == 206:
                headers["content-range"] = f"bytes {first}-{last}/{size}"
            headers["opc-request-id"] = request.get(REQUEST_ID) or uuid.uuid4().hex.upper()
            response = web.StreamResponse(status=status, headers=headers)
            response.content_length = last - first + 1 if size else 0
            await response.prepare(request)
            if not head and size:
                fh.seek(first)
                remaining = last - first + 1
                while remaining > 0:
                    chunk = fh.read(min(_CHUNK, remaining))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                    await response.write(chunk)
            await response.write_eof()
            return response

    async def _stage(self, request: web.Request) -> Staged:
        """Stream a request body to a temporary file, hashing it on the way; checks
        Content-MD5 (400) and a body digest in x-content-sha256 (401)."""
        store = self.store
        assert store is not None
        fd, tmp = store.new_temp()
        md5 = hashlib.md5(usedforsecurity=False)
        sha = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.content.iter_chunked(_CHUNK):
                    out.write(chunk)
                    md5.update(chunk)
                    sha.update(chunk)
                    size += len(chunk)
            staged = Staged(tmp, size, md5.digest())
            try:
                check_streamed_body(request.headers, sha.digest(), size)
            except AuthError as exc:
                self._count("unauthenticated", None)
                raise ApiError(401, "NotAuthenticated", str(exc)) from None
            declared = request.headers.get("content-md5")
            if declared is not None:
                try:
                    expected = base64.b64decode(declared, validate=True)
                except (binascii.Error, ValueError):
                    raise ApiError(
                        400, "InvalidContentMD5", f"Content-MD5 '{declared}' is not base64"
                    ) from None
                if expected != staged.md5:
                    raise ApiError(
                        400,
                        "UnmatchedContentMD5",
                        f"The value of the Content-MD5 header '{declared}' does not match the "
                        f"MD5 of the body ('{_b64(staged.md5)}')",
                    )
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return staged

    async def _put(self, request: web.Request, bucket: str, name: str) -> web.StreamResponse:
        store = self.store
        assert store is not None
        store.check_object_name(name)
        if_match = request.headers.get("if-match")
        if_none = request.headers.get("if-none-match")
        if if_none is not None and if_none.strip() != "*":
            raise ApiError(
                400, "InvalidConditionalHeaders", "PutObject takes If-None-Match: * only"
            )
        # fail before taking the body when the condition already fails; checked again,
        # atomically, when the object is put in place
        store.check_conditions(
            store.current_etag(bucket, name), if_match, if_none, f"object '{name}'"
        )
        staged = await self._stage(request)
        headers = {h: request.headers[h] for h in _CONTENT_HEADERS if h in request.headers}
        headers.update(
            {k.lower(): v for k, v in request.headers.items() if k.lower().startswith("opc-meta-")}
        )
        meta = store.commit(bucket, name, staged, headers, if_match, if_none)
        st_mtime = meta.time_created
        return web.Response(
            status=200,
            headers={
                "etag": meta.etag,
                "opc-content-md5": meta.md5,
                "last-modified": _http_date(st_mtime),
                "version-id": meta.etag,
            },
        )

    async def _rename(self, request: web.Request, ns: str, bucket: str) -> web.StreamResponse:
        details = await self._read_json(request)
        store = self._prelude(ns, bucket)
        self._op("RenameObject")
        meta = store.rename(bucket, details)
        return web.Response(status=200, headers={"etag": meta.etag})

    async def _copy(self, request: web.Request, ns: str, bucket: str) -> web.StreamResponse:
        """CopyObject within the emulator's namespace (any destinationRegion): done
        before the answer, which is 202 with the id of a work request already COMPLETED."""
        details = await self._read_json(request)
        store = self._prelude(ns, bucket)
        self._op("CopyObject")
        source = details.get("sourceObjectName")
        dest_bucket = details.get("destinationBucket")
        dest_name = details.get("destinationObjectName")
        if not isinstance(source, str) or not source:
            raise ApiError(400, "InvalidParameter", "sourceObjectName is required")
        if not isinstance(dest_bucket, str) or not dest_bucket:
            raise ApiError(400, "InvalidParameter", "destinationBucket is required")
        if not isinstance(dest_name, str) or not dest_name:
            raise ApiError(400, "InvalidParameter", "destinationObjectName is required")
        self._namespace(str(details.get("destinationNamespace") or ns))
        self._bucket_allowed(dest_bucket)
        store.bucket_dir(dest_bucket)
        store.check_object_name(dest_name)
        staged, meta = await asyncio.to_thread(
            store.stage_copy, bucket, source, details.get("sourceObjectIfMatchETag")
        )
        headers = dict(meta.headers)
        given = details.get("destinationObjectMetadata")
        if isinstance(given, dict) and given:
            headers = {k: v for k, v in headers.items() if not k.startswith("opc-meta-")}
            for k, v in given.items():
                key = k.lower()
                headers[key if key.startswith("opc-meta-") else f"opc-meta-{key}"] = str(v)
        store.commit(
            dest_bucket,
            dest_name,
            staged,
            headers,
            details.get("destinationObjectIfMatchETag"),
            details.get("destinationObjectIfNoneMatchETag"),
        )
        work_id = f"ocid1.objectstorageworkrequest.oc1..emulator{uuid.uuid4().hex}"
        now = _rfc3339(time.time())
        self._work_requests[work_id] = {
            "operationType": "COPY_OBJECT",
            "status": "COMPLETED",
            "id": work_id,
            "compartmentId": store.bucket_info(bucket)["compartmentId"],
            "resources": [
                {
                    "actionType": "WRITTEN",
                    "entityType": "object",
                    "identifier": dest_name,
                    "entityUri": f"/n/{store.namespace}/b/{dest_bucket}/o/{dest_name}",
                }
            ],
            "percentComplete": 100.0,
            "timeAccepted": now,
            "timeStarted": now,
            "timeFinished": now,
        }
        return web.Response(status=202, headers={"opc-work-request-id": work_id})

    async def _work_request(self, request: web.Request) -> web.StreamResponse:
        if self.store is None:
            raise ApiError(404, "NotFound", "this emulator does not serve Object Storage")
        self._authenticate(request, b"")
        self._op("GetWorkRequest")
        record = self._work_requests.get(request.match_info["id"])
        if record is None:
            raise ApiError(404, "NotFound", "no such work request")
        return _json(record)

    # ------------------------------------------------------------------ multipart

    async def _uploads(
        self, request: web.Request, ns: str, bucket: str, params: Mapping[str, str]
    ) -> web.StreamResponse:
        store = self.store
        assert store is not None
        if request.method == "POST":
            details = await self._read_json(request)
            self._prelude(ns, bucket)
            self._op("CreateMultipartUpload")
            name = details.get("object")
            if isinstance(name, str) and name:
                store.check_object_name(name)
                store.check_conditions(
                    store.current_etag(bucket, name),
                    request.headers.get("if-match"),
                    request.headers.get("if-none-match"),
                    f"object '{name}'",
                )
            return _json(store.create_upload(bucket, details))
        if request.method != "GET":
            raise ApiError(405, "MethodNotAllowed", f"{request.method} on the upload list")
        self._authenticate(request, b"")
        self._prelude(ns, bucket)
        store.bucket_dir(bucket)
        self._op("ListMultipartUploads")
        limit = _int_param(params, "limit", MAX_LIST, 1, MAX_LIST)
        records = sorted(
            (u for u in store.uploads() if u.get("bucket") == bucket),
            key=lambda u: (u["object"], u["timeCreated"], u["uploadId"]),
        )
        page = params.get("page")
        if page:
            ids = [u["uploadId"] for u in records]
            records = records[ids.index(page) :] if page in ids else []
        headers = {}
        if len(records) > limit:
            headers["opc-next-page"] = records[limit]["uploadId"]
            records = records[:limit]
        return _json(
            [{k: v for k, v in u.items() if k != "headers"} for u in records], headers=headers
        )

    async def _upload(
        self,
        request: web.Request,
        ns: str,
        bucket: str,
        name: str,
        params: Mapping[str, str],
    ) -> web.StreamResponse:
        store = self.store
        assert store is not None
        method = request.method
        upload_id = params.get("uploadId")
        if not upload_id:
            raise ApiError(400, "MissingUploadId", "the uploadId query parameter is required")
        if method == "PUT":
            self._authenticate(request, None)
            self._prelude(ns, bucket)
            self._op("UploadPart")
            directory, _ = store.upload(bucket, name, upload_id)
            number = _int_param(params, "uploadPartNum", 0, 1, _MAX_PARTS)
            if number == 0 or int(params["uploadPartNum"]) > _MAX_PARTS:
                raise ApiError(
                    400, "InvalidUploadPartNumber", f"uploadPartNum must be 1..{_MAX_PARTS}"
                )
            staged = await self._stage(request)
            info = store.put_part(directory, number, staged)
            return web.Response(
                status=200, headers={"etag": info["etag"], "opc-content-md5": info["md5"]}
            )
        if method == "POST":
            details = await self._read_json(request)
            self._prelude(ns, bucket)
            self._op("CommitMultipartUpload")
            directory, record = store.upload(bucket, name, upload_id)
            staged = await asyncio.to_thread(store.assemble, directory, details)
            meta = store.commit(
                bucket,
                name,
                staged,
                dict(record.get("headers") or {}),
                request.headers.get("if-match"),
                request.headers.get("if-none-match"),
            )
            store.drop_upload(directory)
            return web.Response(
                status=200,
                headers={
                    "etag": meta.etag,
                    "opc-multipart-md5": meta.multipart_md5 or "",
                    "last-modified": _http_date(meta.time_created),
                },
            )
        self._authenticate(request, b"")
        self._prelude(ns, bucket)
        if method == "DELETE":
            self._op("AbortMultipartUpload")
            directory, _ = store.upload(bucket, name, upload_id)
            store.drop_upload(directory)
            return web.Response(status=204)
        if method == "GET":
            self._op("ListMultipartUploadParts")
            directory, _ = store.upload(bucket, name, upload_id)
            limit = _int_param(params, "limit", MAX_LIST, 1, MAX_LIST)
            first = _int_param(params, "page", 1, 1, _MAX_PARTS)
            parts = [p for n, p in sorted(store.parts(directory).items()) if n >= first]
            headers = {}
            if len(parts) > limit:
                headers["opc-next-page"] = str(parts[limit]["partNumber"])
                parts = parts[:limit]
            return _json(parts, headers=headers)
        raise ApiError(405, "MethodNotAllowed", f"{method} on a multipart upload")


def _parse_range(value: str, size: int) -> tuple[int, int]:
    """``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` as the first and last byte offsets;
    416 InvalidRange if it cannot be served."""
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if not m or (not m.group(1) and not m.group(2)):
        raise ApiError(416, "InvalidRange", f"range {value!r}: expected bytes=FIRST-LAST")
    if m.group(1):
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else size - 1
        if last < first:
            raise ApiError(
                416, "InvalidRange", f"range {value!r}: the last byte is before the first"
            )
    else:
        first, last = max(size - int(m.group(2)), 0), size - 1
    if first >= size:
        raise ApiError(416, "InvalidRange", f"range {value!r}: the object has {size} bytes")
    return first, min(last, size - 1)


__all__ = ["DEFAULT_NAMESPACE", "REQUEST_ID", "ObjectStorageApi", "ObjectStore"]
