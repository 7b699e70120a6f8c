"""The compare-and-swap a lease needs, on a local directory or any ``OutputStore``.

- ``LocalCAS``: ``flock`` around a read-modify-write of a local file;
- ``ObjectCAS``: the store's conditional requests (``pipeline.conditional``):
  ``If-None-Match: *`` to create, ``If-Match: <etag>`` to replace or delete. OCI Object
  Storage always; S3 when ``boto3`` is installed;
- ``BestEffortCAS``: check, then write, for a store without them (another fsspec store,
  S3 without ``boto3``): it detects a live holder but cannot settle two writers racing in
  the same instant.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
from collections.abc import Iterator
from typing import Any, Protocol

import orjson

from pipeline.conditional import Conditional
from pipeline.sinks import OutputStore

log = logging.getLogger(__name__)


class CAS(Protocol):
    """Compare-and-swap on small JSON objects. ``version`` is opaque (an ETag locally too)."""

    def read(self, key: str) -> tuple[dict[str, Any] | None, str | None]: ...

    def create(self, key: str, data: dict[str, Any]) -> str | None:
        """Write ``data`` if ``key`` does not exist; the new version, or None if it does."""

    def replace(self, key: str, data: dict[str, Any], version: str) -> str | None:
        """Write ``data`` if ``key`` is still at ``version``; the new version, or None."""

    def delete(self, key: str, version: str) -> bool:
        """Delete ``key`` if it is still at ``version``."""


def _dumps(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


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


class ObjectCAS:
    """CAS on an object store through its conditional requests: each operation is one
    request, and a 412 Precondition Failed means another writer got there first."""

    def __init__(self, store: OutputStore, conditional: Conditional) -> None:
        self.store = store
        self.conditional = conditional

    def read(self, key: str) -> tuple[dict[str, Any] | None, str | None]:
        got = self.conditional.get(self.store.path(key))
        return (None, None) if got is None else (orjson.loads(got[0]), got[1])

    def create(self, key: str, data: dict[str, Any]) -> str | None:
        return self.conditional.create(self.store.path(key), _dumps(data))

    def replace(self, key: str, data: dict[str, Any], version: str) -> str | None:
        return self.conditional.replace(self.store.path(key), _dumps(data), version)

    def delete(self, key: str, version: str) -> bool:
        return self.conditional.delete(self.store.path(key), version)


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


_warned: set[str] = set()


def cas_for(store: OutputStore) -> CAS:
    if store.local:
        return LocalCAS(store.root)
    conditional = store.conditional
    if conditional is not None:
        return ObjectCAS(store, conditional)
    if store.uri not in _warned:
        _warned.add(store.uri)
        log.warning(
            "output %s: this store has no conditional writes here (S3 needs boto3); its"
            " leases detect a live holder but cannot settle two runs started in the same"
            " instant",
            store.uri,
        )
    return BestEffortCAS(store)


__all__ = ["CAS", "BestEffortCAS", "LocalCAS", "ObjectCAS", "cas_for"]
