"""Checks made before any paid call: a run that cannot write its output should fail in a
second, not after hundreds of model calls.

``preflight(config)`` is public so that an orchestrator's plan task (Airflow) can call it
before fanning out; ``runner.run`` calls it after planning and before the first shard.
"""

from __future__ import annotations

import logging
import secrets

import pyarrow.fs as pafs

from pipeline.config import JobConfig
from pipeline.errors import StorageError
from pipeline.sinks import ObjectStore, OutputStore

log = logging.getLogger(__name__)

# Probes live under _state/ (never read as output) with a random name, so that concurrent
# runs on one output never delete each other's probe.
PROBE_DIR = "_state"


def check_bucket(store: ObjectStore) -> None:
    """The output's bucket exists and this principal sees it. Buckets are never created
    (many principals may not), so a missing one is named here, before any model call."""
    try:
        found = store.fs.get_file_info(store.bucket).type != pafs.FileType.NotFound
    except Exception:  # refused or unreachable: the probe write names the reason
        log.debug("output %s: bucket look-up failed", store.uri, exc_info=True)
        return
    if not found:
        raise StorageError(
            f"output {store.uri}: bucket {store.bucket} does not exist, or these"
            " credentials cannot see it (create it first: runs never create buckets)"
        )


def check_output_writable(store: OutputStore) -> None:
    """Write and delete a small probe object under the output root.

    Raises ``StorageError`` naming the output and the reason (permission, disk full, a path
    whose parent is a file, a missing bucket, an unsupported filesystem ...)."""
    if isinstance(store, ObjectStore):
        check_bucket(store)
    rel = f"{PROBE_DIR}/.probe-{secrets.token_hex(6)}"
    try:
        store.write_json(rel, {"probe": "oci-genai-batch checks the output is writable"})
        store.delete(rel)
    except Exception as exc:  # any failure of the filesystem layer: OSError, ArrowException
        log.debug("output probe %s failed", store.display(rel), exc_info=True)
        where = f"bucket {store.bucket}: " if isinstance(store, ObjectStore) else ""
        raise StorageError(f"output {store.uri}: not writable ({where}{_reason(exc)})") from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__


def preflight(config: JobConfig, store: OutputStore | None = None) -> None:
    """Every check that needs no model call. Raises ``StorageError`` on the first failure."""
    check_output_writable(store or OutputStore(config.output))


__all__ = ["check_bucket", "check_output_writable", "preflight"]
