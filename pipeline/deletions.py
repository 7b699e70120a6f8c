"""Deletions: documents that left the source since the last complete run.

**Which ids are present.** Every shard notes the id of every document it reads, valid or
not (a row whose text is empty, a duplicate, a document that failed for good are all
present: they are in the source), and writes them when it finishes, to
``_state/runs/<run_id>/seen/<shard>.arrow`` (Arrow IPC, so no ``*.parquet`` reader glob
sees it). A shard reads all of its documents on every run, committed or not, so the
union over the run's shards is the source's id set — for Parquet, directory and
Object Storage sources alike, ids of JSON records and Parquet id columns included.

**The snapshot.** ``_state/presence.json`` names the id set of the last complete run
(``_state/presence/<run_id>.arrow``) and the listing it came from (source, glob, id
column, follow_links). :func:`record_deletions` compares the run's ids with it: an id in
the snapshot and not in the run is a deletion, one row in ``OUTPUT/deletions/`` (doc_id,
content_hash last committed for it or null, run_id, detected_at). Then the run's ids
become the snapshot. So a disappearance is recorded once; a document that comes back is
in the next snapshot, and disappearing again is recorded again.

**Never from a partial listing** (nothing is recorded and the snapshot is kept):

- a modified window (``modified_since`` / ``modified_until``): the run does not read the
  unchanged documents;
- a shard of the run that did not finish (its ids are missing);
- a read failure that names no document (an unreadable file or row group, a link loop, a
  JSON line that does not parse): the ids it hides are unknown. Fix or remove that input
  and deletions are tracked again from the next run;
- a different listing (source URI, glob, id column, follow_links) than the snapshot's:
  the run's ids become the new snapshot (a baseline) and nothing is recorded;
- no snapshot yet (the first run, or an output written before this existed): a baseline.

**Commit.** The deletion rows are staged like a part (``OutputStore.stage_parquet``), the
run's ids written, then ``_state/presence.json`` replaced — the commit point — naming the
run, the ids and the deletions file with its writer; then the file is published. A kill
before the commit point leaves the old snapshot (the re-run records the same rows once);
after it, :func:`finish_presence` (called first by every recording and by ``compact``)
publishes the file. Callers hold the output's run lease.
"""

from __future__ import annotations

import logging
import os
import posixpath
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from pipeline.checkpoint import Checkpoint
from pipeline.config import JobConfig
from pipeline.sinks import OutputStore, is_temp_name

log = logging.getLogger(__name__)

PRESENCE = "_state/presence.json"
PRESENCE_DIR = "_state/presence"
DELETIONS = "deletions"

DELETIONS_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("content_hash", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("detected_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
_IDS_SCHEMA = pa.schema([pa.field("doc_id", pa.string(), nullable=False)])


def seen_dir(run_id: str) -> str:
    return f"_state/runs/{run_id}/seen"


def summary_path(run_id: str) -> str:
    """Where :func:`record_deletions` leaves what it did for the run report."""
    return f"_state/runs/{run_id}/deletions.json"


# ---------------------------------------------------------------------- id files


def write_ids(store: OutputStore, rel: str, ids: pa.Array) -> None:
    """Write ``ids`` (strings) as an Arrow IPC file (not a reader path: not ``.parquet``):
    locally a temporary name then a rename, on object storage one upload (atomic)."""
    table = pa.table({"doc_id": ids.cast(pa.string())}, schema=_IDS_SCHEMA)
    target = store.path(rel)
    if store.local:
        os.makedirs(posixpath.dirname(target), exist_ok=True)
        target = f"{target}.{store.writer}.tmp"
    with store.fs.open_output_stream(target) as sink:
        options = ipc.IpcWriteOptions(compression="zstd")
        with ipc.new_file(sink, _IDS_SCHEMA, options=options) as writer:
            writer.write_table(table)
    if store.local:
        os.replace(target, store.path(rel))


def read_ids(store: OutputStore, rel: str) -> pa.Array:
    with store.fs.open_input_file(store.path(rel)) as src:
        table = ipc.open_file(src).read_all()
    return table.column("doc_id").combine_chunks()


def write_seen(store: OutputStore, run_id: str, shard_id: str, seen: Seen) -> None:
    """A finished shard's ids (see the module docstring)."""
    folder = seen_dir(run_id)
    write_ids(store, f"{folder}/{shard_id}.arrow", pa.array(sorted(seen.ids), pa.string()))
    store.write_json(
        f"{folder}/{shard_id}.json",
        {"complete": not seen.unnamed, "unnamed": sorted(seen.unnamed)[:20]},
    )


class Seen:
    """The ids a shard read, and the places of read failures that name no document."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.unnamed: set[str] = set()

    def add(self, batch: Any) -> None:
        self.ids.update(d.doc_id for d in batch.documents)
        for f in batch.failures:
            if f.doc_id is not None:
                self.ids.add(f.doc_id)
            elif f.stage == "read":
                self.unnamed.add(f.source or "?")


# ---------------------------------------------------------------------- snapshot


def listing_key(config: JobConfig) -> dict[str, Any]:
    """What makes two runs' id sets comparable."""
    return {
        "source": config.source.rstrip("/"),
        "glob": config.glob,
        "id_column": config.id_column,
        "follow_links": config.follow_links,
    }


def presence(store: OutputStore) -> dict[str, Any] | None:
    return store.read_json(PRESENCE) if store.exists(PRESENCE) else None


def current_ids(store: OutputStore) -> pa.Array | None:
    """The ids of the source at the last complete run, None before any."""
    state = presence(store)
    if state is None:
        return None
    return read_ids(store, state["ids"])


def finish_presence(store: OutputStore) -> None:
    """Roll the last recording forward after a kill: publish its deletions file, remove
    staged deletions files of dead writers and id files no snapshot names. The caller
    holds the run lease (no live writer)."""
    state = presence(store)
    if state is not None and state.get("deletions"):
        store.publish(state["deletions"], writer=state.get("writer") or "")
    for staged in store.staged_files(DELETIONS):
        store.delete(staged)
    keep = {posixpath.basename(state["ids"])} if state else set()
    for name in store.list_files(PRESENCE_DIR):
        if name not in keep:
            store.delete(f"{PRESENCE_DIR}/{name}")


def deleted_ids(store: OutputStore) -> pa.Array:
    """Ids recorded as deleted and not present again since: what ``compact`` drops."""
    names = [
        n for n in store.list_files(DELETIONS) if n.endswith(".parquet") and not is_temp_name(n)
    ]
    if not names:
        return pa.array([], pa.string())
    import pyarrow.parquet as pq

    tables = [
        pq.read_table(store.path(f"{DELETIONS}/{n}"), columns=["doc_id"], filesystem=store.fs)
        for n in names
    ]
    ids = pc.unique(pa.concat_tables(tables).column("doc_id").combine_chunks())
    present = current_ids(store)
    if present is not None and len(ids):
        ids = ids.filter(pc.invert(pc.is_in(ids, value_set=present)))
    return ids


def _last_hashes(store: OutputStore, ids: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for rec in Checkpoint(store).records():  # oldest first: the newest wins
        for doc_id, chash, _e, _s in rec.docs:
            if doc_id in ids and chash is not None:
                out[doc_id] = chash
    return out


def _skipped(store: OutputStore, run_id: str, status: str, reason: str) -> dict[str, Any]:
    log.info("deletions not recorded for run %s: %s", run_id, reason)
    summary = {"status": status, "reason": reason, "deleted": 0}
    store.write_json(summary_path(run_id), summary)
    return summary


def record_deletions(store: OutputStore, config: JobConfig, shard_ids: list[str]) -> dict[str, Any]:
    """Compare the ids the run's shards read with the snapshot; record what left.

    Returns ``{"status", "deleted", ...}``: ``recorded``, ``baseline`` or ``skipped``
    (with a ``reason``). Safe to call again for the same run: it records once."""
    run_id = config.run_id
    finish_presence(store)
    state = presence(store)
    if state is not None and state.get("run_id") == run_id:
        return {"status": "recorded", "deleted": int(state.get("deleted", 0)), "again": True}
    if config.modified_since or config.modified_until:
        return _skipped(store, run_id, "skipped", "a modified window reads only part of the source")
    folder = seen_dir(run_id)
    parts: list[pa.Array] = []
    for shard in shard_ids:
        meta_rel = f"{folder}/{shard}.json"
        if not store.exists(meta_rel):
            return _skipped(store, run_id, "skipped", f"shard {shard} did not finish")
        meta = store.read_json(meta_rel)
        if not meta.get("complete", False):
            where = ", ".join(meta.get("unnamed", [])[:3])
            return _skipped(
                store,
                run_id,
                "skipped",
                f"shard {shard} had read failures that name no document ({where})",
            )
        parts.append(read_ids(store, f"{folder}/{shard}.arrow"))
    now_ids = pc.unique(pa.concat_arrays(parts)) if parts else pa.array([], pa.string())
    key = listing_key(config)
    gone = pa.array([], pa.string())
    status = "recorded"
    reason = None
    if state is None:
        status, reason = "baseline", "no earlier complete run to compare with"
    elif state.get("key") != key:
        status = "baseline"
        reason = f"the listing changed ({state.get('key')} -> {key})"
    else:
        before = read_ids(store, state["ids"])
        gone = before.filter(pc.invert(pc.is_in(before, value_set=now_ids)))
    deletions_rel = None
    if len(gone):
        ids = sorted(gone.to_pylist())
        hashes = _last_hashes(store, set(ids))
        now = datetime.now(UTC)
        table = pa.Table.from_pydict(
            {
                "doc_id": ids,
                "content_hash": [hashes.get(i) for i in ids],
                "run_id": [run_id] * len(ids),
                "detected_at": [now] * len(ids),
            },
            schema=DELETIONS_SCHEMA,
        )
        deletions_rel = f"{DELETIONS}/deletions-{run_id}.parquet"
        store.stage_parquet(deletions_rel, table, {"oci_genai_batch.run_id": run_id})
    ids_rel = f"{PRESENCE_DIR}/{run_id}.arrow"
    write_ids(store, ids_rel, now_ids)
    store.write_json(
        PRESENCE,
        {
            "run_id": run_id,
            "ids": ids_rel,
            "count": len(now_ids),
            "key": key,
            "deletions": deletions_rel,
            "deleted": len(gone),
            "writer": store.writer,
            "recorded_at": datetime.now(UTC).isoformat(),
        },
    )  # the commit point
    finish_presence(store)
    summary: dict[str, Any] = {"status": status, "deleted": len(gone), "present": len(now_ids)}
    if reason:
        summary["reason"] = reason
        log.info("deletions: run %s is a baseline: %s", run_id, reason)
    else:
        log.info("deletions: run %s recorded %d deleted document(s)", run_id, len(gone))
    store.write_json(summary_path(run_id), summary)
    return summary


__all__ = [
    "DELETIONS_SCHEMA",
    "Seen",
    "current_ids",
    "deleted_ids",
    "finish_presence",
    "listing_key",
    "record_deletions",
    "write_seen",
]
