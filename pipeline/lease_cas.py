"""The compare-and-swap a lease needs, on a local directory or any ``OutputStore``.

``pipeline.lease`` documents how each operation maps onto object-storage conditional
writes (``if-none-match: *`` to create, ``if-match: <etag>`` to replace or delete).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
from collections.abc import Iterator
from typing import Any, Protocol

import orjson

from pipeline.sinks import OutputStore


class CAS(Protocol):
    """Compare-and-swap on small JSON objects. ``version`` is opaque (an ETag locally too)."""

    def read(self, key: str) -> tuple[dict[str, Any] | None, str | None]: ...

    def create(self, key: str, data: dict[str, Any]) -> str | None:
        """Write ``data`` if ``key`` does not exist; the new version, or None if it does."""

    def replace(self, key: str, data: dict[str, Any], version: str) -> str | None:
        """Write ``data`` if ``key`` is still at ``version``; the new version, or None."""

    def delete(self, key: str, version: str) -> bool:
        """Delete ``key`` if it is still at ``version``."""


def _etag(raw: bytes) -> str:
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


class LocalCAS:
    """CAS on a local directory: ``flock`` on ``.KEY.lock`` around each read-modify-write.

    ``flock`` is per host (and unreliable on some network filesystems): it settles races
    between processes of one machine, which is where a local output is written from."""

    def __init__(self, root: str) -> None:
        self.root = root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, key)

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[str]:
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lock = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield path
        finally:
            os.close(fd)  # closing drops the flock

    @staticmethod
    def _raw(path: str) -> bytes | None:
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    @staticmethod
    def _write(path: str, data: dict[str, Any]) -> str:
        raw = orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        tmp = f"{path}.{secrets.token_hex(4)}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return _etag(raw)

    def read(self, key: str) -> tuple[dict[str, Any] | None, str | None]:
        with self._locked(key) as path:
            raw = self._raw(path)
        return (None, None) if raw is None else (orjson.loads(raw), _etag(raw))

    def create(self, key: str, data: dict[str, Any]) -> str | None:
        with self._locked(key) as path:
            return None if os.path.exists(path) else self._write(path, data)

    def replace(self, key: str, data: dict[str, Any], version: str) -> str | None:
        with self._locked(key) as path:
            raw = self._raw(path)
            if raw is None or _etag(raw) != version:
                return None
            return self._write(path, data)

    def delete(self, key: str, version: str) -> bool:
        with self._locked(key) as path:
            raw = self._raw(path)
            if raw is None or _etag(raw) != version:
                return False
            os.remove(path)
            return True


class BestEffortCAS:
    """The same interface over any ``OutputStore`` without conditional writes (see above)."""

    def __init__(self, store: OutputStore) -> None:
        self.store = store

    def read(self, key: str) -> tuple[dict[str, Any] | None, str | None]:
        if not self.store.exists(key):
            return None, None
        data = self.store.read_json(key)
        return data, _etag(orjson.dumps(data, option=orjson.OPT_SORT_KEYS))

    def create(self, key: str, data: dict[str, Any]) -> str | None:
        if self.store.exists(key):
            return None
        self.store.write_json(key, data)
        return _etag(orjson.dumps(data, option=orjson.OPT_SORT_KEYS))

    def replace(self, key: str, data: dict[str, Any], version: str) -> str | None:
        if self.read(key)[1] != version:
            return None
        self.store.write_json(key, data)
        return _etag(orjson.dumps(data, option=orjson.OPT_SORT_KEYS))

    def delete(self, key: str, version: str) -> bool:
        if self.read(key)[1] != version:
            return False
        self.store.delete(key)
        return True


def cas_for(store: OutputStore) -> CAS:
    return LocalCAS(store.root) if store.local else BestEffortCAS(store)


__all__ = ["CAS", "BestEffortCAS", "LocalCAS", "cas_for"]
