"""Where a source lives: from a URI (or path, or glob) to a pyarrow filesystem and the files
under it.

Everything goes through ``pyarrow.fs`` so that object storage plugs in by passing a
filesystem (pyarrow's own, or any fsspec one) instead of changing the readers.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow.fs as pafs

from pipeline import storage
from pipeline.errors import ConfigError, SourceError

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class Location:
    """A resolved source URI.

    ``path`` is the base path as ``fs`` sees it (without any glob part); ``pattern`` the
    glob relative to it, if the URI had one; ``prefix`` is prepended to the filesystem's
    paths to build unit paths (``"s3://"`` for a URI-derived object store, ``""`` when
    the filesystem is local or was passed in explicitly).
    """

    fs: pafs.FileSystem
    path: str
    pattern: str | None
    prefix: str


@dataclass(frozen=True)
class FoundFile:
    """A file found under a location: its path as the filesystem sees it, its path
    relative to the listing root (POSIX separators) and its size in bytes."""

    path: str
    rel: str
    size: int
    #: Set when the entry cannot be read (a link outside the source, a loop, a name that
    #: is not UTF-8): it becomes one failure row instead of documents.
    error_class: str | None = None
    error: str | None = None
    #: Whether the problem is about a directory (kept whatever the file filters say).
    is_dir: bool = False
    #: Time modified (aware, UTC) when the listing gives it; etag and md5 (base64) of an
    #: object when the store gives them.
    mtime: datetime | None = None
    etag: str | None = None
    md5: str | None = None


def as_pyarrow_fs(filesystem: object) -> pafs.FileSystem:
    """Accept a pyarrow filesystem as is, wrap an fsspec one; reject anything else."""
    if isinstance(filesystem, pafs.FileSystem):
        return filesystem
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec is optional
        fsspec = None
    if fsspec is not None and isinstance(filesystem, fsspec.AbstractFileSystem):
        return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem))
    raise TypeError(
        f"filesystem must be a pyarrow.fs.FileSystem or an fsspec filesystem, "
        f"not {type(filesystem).__name__}"
    )


def _strip_scheme(uri: str) -> str:
    match = _SCHEME.match(uri)
    return uri[match.end() :] if match else uri


def _local_path(path: str) -> str:
    # Absolute, so that units handed to another process do not depend on its cwd.
    return os.path.abspath(os.path.expanduser(path or "."))


def _split_glob(uri: str, *, has_scheme: bool) -> tuple[str, str | None]:
    """Split ``uri`` into a base directory and a glob relative to it.

    In URIs ``?`` starts a query string, so only ``*`` and ``[`` mark a glob there.
    """
    start = _SCHEME.match(uri).end() if has_scheme else 0  # type: ignore[union-attr]
    specials = "*[" if has_scheme else "*?["
    first = min((i for i in (uri.find(c, start) for c in specials) if i >= 0), default=-1)
    if first < 0:
        return uri, None
    cut = uri.rfind("/", start, first)
    if cut < 0:
        return uri[:start], uri[start:]
    return uri[: cut + 1], uri[cut + 1 :]


def resolve(uri: str, filesystem: object | None = None) -> Location:
    """Resolve ``uri`` to a filesystem, a base path and an optional glob.

    Raises :class:`SourceError` naming the URI when no filesystem can be made for it
    (unknown scheme, missing client library or credentials).
    """
    if not uri:
        raise SourceError("source URI is empty")
    has_scheme = bool(_SCHEME.match(uri))
    base, pattern = _split_glob(uri, has_scheme=has_scheme)
    if filesystem is not None:
        fs = as_pyarrow_fs(filesystem)
        path = _strip_scheme(base)
        if isinstance(fs, pafs.LocalFileSystem):
            path = _local_path(path)
        return Location(fs, _trim(path), pattern, "")
    if not has_scheme:
        return Location(pafs.LocalFileSystem(), _trim(_local_path(base)), pattern, "")
    try:
        where = storage.resolve(base)
    except ConfigError as exc:
        raise SourceError(f"source {uri}: cannot open its filesystem: {exc}") from None
    return Location(where.fs, where.path, pattern, where.prefix)


def fs_for_unit(path: str, filesystem: object | None = None) -> tuple[pafs.FileSystem, str]:
    """The filesystem and filesystem path of a unit path made by :func:`resolve`."""
    if filesystem is not None:
        return as_pyarrow_fs(filesystem), path
    if _SCHEME.match(path):
        try:
            where = storage.resolve(path)
        except ConfigError as exc:
            raise SourceError(f"cannot open the filesystem of {path}: {exc}") from None
        return where.fs, where.path
    return pafs.LocalFileSystem(), path


def _trim(path: str) -> str:
    return path.rstrip("/") or path[:1]


def join(prefix: str, path: str) -> str:
    """A unit path from a location prefix and a filesystem path."""
    return prefix + path


def relative(path: str, root: str) -> str:
    """``path`` relative to ``root`` with POSIX separators; the base name if outside.

    Leading slashes are ignored: some filesystems (fsspec's memory one) list
    ``/bucket/x`` under a root given as ``bucket``.
    """
    path = path.replace(os.sep, "/").lstrip("/")
    root = root.replace(os.sep, "/").strip("/")
    if not root:
        return path
    if path.startswith(root + "/"):
        return path[len(root) + 1 :]
    return posixpath.basename(path)


@functools.lru_cache(maxsize=64)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """A regex for a glob over POSIX relative paths: ``*`` and ``?`` stay inside one path
    segment, ``**`` crosses segments (``**/`` also matches no directory), ``[...]`` and
    ``[!...]`` are character classes."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if i < n and pattern[i] == "/":
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            end = pattern.find("]", j)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def matches(pattern: str, rel: str) -> bool:
    """Whether ``rel`` matches ``pattern``. A pattern without ``/`` matches the file name
    at any depth (``*.md``); one with ``/`` matches the whole relative path."""
    target = rel if "/" in pattern else posixpath.basename(rel)
    return compile_glob(pattern).match(target) is not None


def list_files(fs: pafs.FileSystem, root: str, *, recursive: bool = True) -> list[FoundFile]:
    """Every file under the directory ``root``, sorted by relative path."""
    selector = pafs.FileSelector(root, recursive=recursive, allow_not_found=False)
    found = [
        FoundFile(info.path, relative(info.path, root), info.size or 0, mtime=utc(info.mtime))
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File
    ]
    found.sort(key=lambda f: f.rel)
    return found


def utc(moment: datetime | None) -> datetime | None:
    """``moment`` as an aware UTC datetime (a naive one is taken to be UTC)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def is_hidden(rel: str, markers: str) -> bool:
    """Whether any segment of ``rel`` starts with one of ``markers`` (e.g. ``"._"``)."""
    return any(part[:1] in markers for part in rel.split("/") if part)
