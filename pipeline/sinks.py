"""Where outputs go: a local directory or any pyarrow / fsspec filesystem URI.

Every write is atomic for readers. Locally a file is written under a hidden temporary
name (``.NAME.<writer>.tmp``, which never matches ``*.parquet``) and renamed; on object
storage a single PUT (or a multipart upload completed on close) makes the object appear
whole. ``<writer>`` is a random token per ``OutputStore``: two writers never share a
temporary file. Versions before it staged under ``.NAME.tmp`` (``writer=""`` below).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import uuid
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.errors import ConfigError
from pipeline.storage import resolve


def resolve_filesystem(uri: str) -> tuple[pafs.FileSystem, str, bool]:
    """(filesystem, base path inside it, is_local) for a path or URI."""
    try:
        where = resolve(uri)
    except ConfigError as exc:
        raise ConfigError(f"output {exc}") from None
    return where.fs, where.path, where.local


class OutputStore:
    """Relative paths under one output root, with atomic writes."""

    def __init__(self, uri: str, filesystem: pafs.FileSystem | None = None) -> None:
        self.uri = uri
        if filesystem is not None:
            self.fs, self.root = filesystem, uri.split("://", 1)[-1].rstrip("/")
            self.local = isinstance(filesystem, pafs.LocalFileSystem)
        else:
            self.fs, self.root, self.local = resolve_filesystem(uri)
        #: names this writer's temporary files; commit records carry it (``writer``)
        self.writer = secrets.token_hex(6)

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def display(self, rel: str) -> str:
        return posixpath.join(self.uri.rstrip("/"), rel)

    # ------------------------------------------------------------------ writes

    def _ensure_dir(self, rel: str) -> None:
        if self.local:
            os.makedirs(self.path(posixpath.dirname(rel)), exist_ok=True)

    def temp_name(self, rel: str, *, writer: str | None = None) -> str:
        """The hidden name a file is staged under before it is committed (local only):
        ``.NAME.<writer>.tmp``, this store's writer by default; ``writer=""`` gives the
        ``.NAME.tmp`` of earlier versions."""
        if not self.local:
            return rel
        head, tail = posixpath.split(rel)
        token = self.writer if writer is None else writer
        return posixpath.join(head, f".{tail}.{token}.tmp" if token else f".{tail}.tmp")

    def stage_parquet(self, rel: str, table: pa.Table, metadata: dict[str, str]) -> int:
        """Write ``table`` so that it can be committed with ``publish``; returns bytes written.

        Locally the file lands under its hidden temporary name; on object storage it is
        written to its final key in one upload (object stores have no cheap rename).
        """
        self._ensure_dir(rel)
        schema_meta = dict(table.schema.metadata or {})
        schema_meta.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(schema_meta)
        target = self.path(self.temp_name(rel))
        with self.fs.open_output_stream(target) as sink:
            pq.write_table(table, sink, compression="zstd")
        if self.local:
            with open(target, "rb+") as fh:
                os.fsync(fh.fileno())
        info = self.fs.get_file_info(target)
        return int(info.size or 0)

    def publish(self, rel: str, *, writer: str | None = None) -> None:
        """Make a file staged by ``writer`` (default: this store) visible under its final
        name (idempotent)."""
        if not self.local:
            return
        tmp = self.path(self.temp_name(rel, writer=writer))
        if os.path.exists(tmp):
            os.replace(tmp, self.path(rel))

    def write_json(self, rel: str, obj: Any, *, exclusive: bool = False) -> None:
        """Write ``obj`` atomically. ``exclusive``: raise FileExistsError if ``rel`` exists
        (locally a hard link, which fails on an existing name; on object storage this will
        be a PUT with ``if-none-match: *`` — until then it is not checked there)."""
        data = orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        self._ensure_dir(rel)
        if self.local:
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
        else:
            with self.fs.open_output_stream(self.path(rel)) as sink:
                sink.write(data)

    # ------------------------------------------------------------------ reads

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
