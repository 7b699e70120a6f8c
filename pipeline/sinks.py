"""Where outputs go: a local directory or an object store (any pyarrow / fsspec URI).

One interface, :class:`OutputStore`, with two implementations chosen from the URI:
``OutputStore(uri)`` gives a :class:`LocalStore` for a path and an :class:`ObjectStore`
for ``oci://``, ``s3://`` and the rest. A part is written in two steps, so that a reader
never sees it before its commit record exists (see ``pipeline.checkpoint``):

``stage_parquet(rel, ...)``
    LocalStore: a hidden temporary name beside the target, ``DIR/.NAME.<writer>.tmp``,
    fsynced. ObjectStore: ``_state/staging/DIR/.NAME.<writer>.tmp``, outside the dataset
    folders (and not ending in ``.parquet``), so no reader of ``OUTPUT/embeddings/`` or of
    ``**/*.parquet`` sees it. Large objects go up as multipart uploads (the filesystem's
    own: ocifs above its 5 MiB block size, pyarrow's S3 always).
``publish(rel)``
    LocalStore: ``os.replace``. ObjectStore: OCI ``RenameObject`` (atomic, no copy); on
    other stores the filesystem's move, which on S3 is CopyObject then DeleteObject.
    Idempotent: once the staged object is gone there is nothing to do.

``<writer>`` is a random token per store object: two writers never share a staged name.
Versions before it staged locally under ``.NAME.tmp`` and wrote object-store parts
straight to their final keys (``writer=""`` below).

``write_json(rel, obj, exclusive=True)`` creates a file only if it does not exist: a hard
link locally, a conditional PUT (``If-None-Match: *``) on OCI and on S3 with ``boto3``
(``pipeline.conditional``); elsewhere a check then a write. Nothing here creates a bucket
or a directory on an object store (many principals may not create buckets).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import uuid
from functools import cached_property
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.conditional import Conditional, conditional_for
from pipeline.errors import ConfigError
from pipeline.storage import (
    OCI_SCHEMES,
    Resolved,
    StorageSettings,
    fsspec_of,
    resolve,
    scheme_of,
)

#: where an ObjectStore stages parts before their commit
STAGING = "_state/staging"


def resolve_filesystem(uri: str) -> tuple[pafs.FileSystem, str, bool]:
    """(filesystem, base path inside it, is_local) for a path or URI."""
    where = _resolve_output(uri)
    return where.fs, where.path, where.local


def _resolve_output(uri: str, settings: StorageSettings | None = None) -> Resolved:
    try:
        return resolve(uri, settings)
    except ConfigError as exc:
        raise ConfigError(f"output {exc}") from None


def is_temp_name(name: str) -> bool:
    """Whether a file name is a staged (temporary) one: ``.NAME[.<writer>].tmp``."""
    return name.startswith(".") and name.endswith(".tmp")


def final_name(name: str) -> str:
    """``part-S-000001.parquet`` for itself and for its temporary names
    ``.part-S-000001.parquet.<writer>.tmp`` and (earlier versions) ``.part-…parquet.tmp``."""
    if not is_temp_name(name):
        return name
    inner = name[1:-4]
    if inner.endswith(".parquet"):
        return inner
    head, _, _token = inner.rpartition(".")
    return head


def _temp_base(rel: str, token: str) -> str:
    head, tail = posixpath.split(rel)
    return posixpath.join(head, f".{tail}.{token}.tmp" if token else f".{tail}.tmp")


def _json_bytes(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


class OutputStore:
    """Relative paths under one output root, with atomic writes: the store interface.

    ``OutputStore(uri)`` returns the implementation the URI needs (``LocalStore`` or
    ``ObjectStore``); ``filesystem`` overrides the filesystem the URI would resolve to,
    ``settings`` the process's storage settings (``pipeline.storage.configure``).
    The staging methods (``temp_name``, ``staged_files``, ``publish``, ``write_json``)
    are each implementation's own."""

    local: bool
    _resolved: Resolved | None

    def __new__(
        cls,
        uri: str,
        filesystem: pafs.FileSystem | None = None,
        settings: StorageSettings | None = None,
    ) -> OutputStore:
        where = None
        if cls is OutputStore:
            if filesystem is not None:
                local = isinstance(filesystem, pafs.LocalFileSystem)
            else:
                where = _resolve_output(uri, settings)
                local = where.local
            cls = LocalStore if local else ObjectStore
        store = super().__new__(cls)
        store._resolved = where  # resolved once: __init__ takes it
        return store

    def __init__(
        self,
        uri: str,
        filesystem: pafs.FileSystem | None = None,
        settings: StorageSettings | None = None,
    ) -> None:
        self.uri = uri
        if filesystem is not None:
            self.fs, self.root = filesystem, uri.split("://", 1)[-1].rstrip("/")
            self.scheme = scheme_of(uri)
        else:
            where = self.__dict__.pop("_resolved", None) or _resolve_output(uri, settings)
            self.fs, self.root, self.scheme = where.fs, where.path, where.scheme
        #: names this writer's staged files; commit records carry it (``writer``)
        self.writer = secrets.token_hex(6)

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def display(self, rel: str) -> str:
        return posixpath.join(self.uri.rstrip("/"), rel)

    # ------------------------------------------------------------------ writes

    def temp_name(self, rel: str, *, writer: str | None = None) -> str:
        """The relative path a file is staged under before it is committed, by ``writer``
        (this store's by default; ``""``: what versions before writer tokens used)."""
        raise NotImplementedError

    def staged_files(self, rel_dir: str) -> list[str]:
        """Relative paths of every writer's staged files bound for ``rel_dir``."""
        raise NotImplementedError

    def publish(self, rel: str, *, writer: str | None = None) -> None:
        """Make a file staged by ``writer`` (default: this store) visible under its final
        name. Idempotent: nothing to do once the staged file is gone."""
        raise NotImplementedError

    def write_json(self, rel: str, obj: Any, *, exclusive: bool = False) -> None:
        """Write ``obj`` atomically. ``exclusive``: raise FileExistsError if ``rel``
        exists (settled by the store itself where it can, see the module docstring)."""
        raise NotImplementedError

    def _write_stream(self, target: str, table: pa.Table) -> None:
        with self.fs.open_output_stream(target) as sink:
            pq.write_table(table, sink, compression="zstd")

    def write_parquet(self, rel: str, table: pa.Table) -> None:
        """Write ``table`` to ``rel`` whole or not at all (one upload on object storage;
        locally a temporary name, fsync, rename). For state files that nothing names
        until a later, exclusive write does (the compacted index)."""
        self._write_stream(self.path(rel), table)

    def stage_parquet(self, rel: str, table: pa.Table, metadata: dict[str, str]) -> int:
        """Write ``table`` so that it can be committed with ``publish``; returns bytes
        written."""
        schema_meta = dict(table.schema.metadata or {})
        schema_meta.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(schema_meta)
        target = self.path(self.temp_name(rel))
        self._write_stream(target, table)
        info = self.fs.get_file_info(target)
        return int(info.size or 0)

    # ------------------------------------------------------------------ reads

    @property
    def conditional(self) -> Conditional | None:
        """The store's conditional requests (compare-and-swap), if it has any."""
        return None

    def read_json(self, rel: str) -> Any:
        with self.fs.open_input_stream(self.path(rel)) as src:
            return orjson.loads(src.read())

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def list_files(self, rel_dir: str) -> list[str]:
        """Names (not paths) of the files directly in ``rel_dir``; [] if it does not exist."""
        selector = pafs.FileSelector(self.path(rel_dir), allow_not_found=True)
        return sorted(
            posixpath.basename(i.path)
            for i in self.fs.get_file_info(selector)
            if i.type == pafs.FileType.File
        )

    def list_tree(self, rel_dir: str) -> list[str]:
        """Paths relative to ``rel_dir`` of every file under it, at any depth, sorted; []
        if it does not exist (one recursive listing: a few requests on object storage)."""
        base = self.path(rel_dir)
        selector = pafs.FileSelector(base, allow_not_found=True, recursive=True)
        return sorted(
            posixpath.relpath(i.path, base)
            for i in self.fs.get_file_info(selector)
            if i.type == pafs.FileType.File
        )

    def list_dirs(self, rel_dir: str) -> list[str]:
        selector = pafs.FileSelector(self.path(rel_dir), allow_not_found=True)
        return sorted(
            posixpath.basename(i.path)
            for i in self.fs.get_file_info(selector)
            if i.type == pafs.FileType.Directory
        )

    def delete(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path(rel))


class LocalStore(OutputStore):
    """A local directory: temporary name, fsync, ``os.replace``; exclusive by hard link."""

    local = True

    def _ensure_dir(self, rel: str) -> None:
        os.makedirs(self.path(posixpath.dirname(rel)), exist_ok=True)

    def temp_name(self, rel: str, *, writer: str | None = None) -> str:
        """``DIR/.NAME.<writer>.tmp`` (``writer=""``: ``DIR/.NAME.tmp``)."""
        return _temp_base(rel, self.writer if writer is None else writer)

    def staged_files(self, rel_dir: str) -> list[str]:
        return [posixpath.join(rel_dir, n) for n in self.list_files(rel_dir) if is_temp_name(n)]

    def stage_parquet(self, rel: str, table: pa.Table, metadata: dict[str, str]) -> int:
        self._ensure_dir(rel)
        size = super().stage_parquet(rel, table, metadata)
        with open(self.path(self.temp_name(rel)), "rb+") as fh:
            os.fsync(fh.fileno())
        return size

    def write_parquet(self, rel: str, table: pa.Table) -> None:
        self._ensure_dir(rel)
        final = self.path(rel)
        tmp = f"{final}.{uuid.uuid4().hex[:8]}.tmp"
        self._write_stream(tmp, table)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)

    def publish(self, rel: str, *, writer: str | None = None) -> None:
        tmp = self.path(self.temp_name(rel, writer=writer))
        if os.path.exists(tmp):
            os.replace(tmp, self.path(rel))

    def write_json(self, rel: str, obj: Any, *, exclusive: bool = False) -> None:
        data = _json_bytes(obj)
        self._ensure_dir(rel)
        final = self.path(rel)
        tmp = f"{final}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            try:
                os.link(tmp, final)
            finally:
                os.remove(tmp)
        else:
            os.replace(tmp, final)


class ObjectStore(OutputStore):
    """An object store: parts staged under ``_state/staging/``, then renamed (OCI) or
    copied and deleted (S3 and the rest) into place; every write is one object upload.

    Never creates a bucket or a directory: the bucket must exist."""

    local = False

    @property
    def bucket(self) -> str:
        """The bucket part of the root (``name@namespace`` on OCI)."""
        return self.root.lstrip("/").split("/", 1)[0]

    @cached_property
    def _conditional(self) -> Conditional | None:
        return conditional_for(Resolved(self.fs, self.root, "", False, self.scheme))

    @property
    def conditional(self) -> Conditional | None:
        return self._conditional

    def temp_name(self, rel: str, *, writer: str | None = None) -> str:
        """``_state/staging/DIR/.NAME.<writer>.tmp``; ``writer=""`` (earlier versions
        wrote parts straight to their final key): ``rel`` itself."""
        token = self.writer if writer is None else writer
        return posixpath.join(STAGING, _temp_base(rel, token)) if token else rel

    def staged_files(self, rel_dir: str) -> list[str]:
        where = posixpath.join(STAGING, rel_dir)
        return [posixpath.join(where, n) for n in self.list_files(where) if is_temp_name(n)]

    def publish(self, rel: str, *, writer: str | None = None) -> None:
        staged = self.temp_name(rel, writer=writer)
        if staged == rel:
            return  # written in place by an earlier version
        src, dst = self.path(staged), self.path(rel)
        if self.fs.get_file_info(src).type == pafs.FileType.NotFound:
            return  # published already (or never staged: nothing to publish)
        ocifs = fsspec_of(self.fs) if self.scheme in OCI_SCHEMES else None
        if ocifs is not None:
            ocifs.rename(src, dst)  # RenameObject: atomic, replaces dst
        else:
            self.fs.move(src, dst)  # S3: CopyObject, then DeleteObject of src

    def write_json(self, rel: str, obj: Any, *, exclusive: bool = False) -> None:
        data = _json_bytes(obj)
        target = self.path(rel)
        if exclusive:
            cond = self.conditional
            if cond is not None:
                if cond.create(target, data) is None:
                    raise FileExistsError(self.display(rel))
                return
            if self.exists(rel):  # no conditional PUT here: check, then write
                raise FileExistsError(self.display(rel))
        with self.fs.open_output_stream(target) as sink:
            sink.write(data)


__all__ = [
    "STAGING",
    "LocalStore",
    "ObjectStore",
    "OutputStore",
    "final_name",
    "is_temp_name",
    "resolve_filesystem",
]
