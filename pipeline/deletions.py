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
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from pipeline.checkpoint import Checkpoint, record_order
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


def write_ids(store: OutputStore, rel: str, ids: pa.Array | Iterable[pa.Array]) -> int:
    """Write ``ids`` (strings, one array or several written one after another) as an
    Arrow IPC file (not a reader path: not ``.parquet``): locally a temporary name then a
    rename, on object storage one upload (atomic). Returns how many were written."""
    count = 0
    chunks = [ids] if isinstance(ids, pa.Array) else ids
    target = store.path(rel)
    if store.local:
        os.makedirs(posixpath.dirname(target), exist_ok=True)
        target = f"{target}.{store.writer}.tmp"
    with store.fs.open_output_stream(target) as sink:
        options = ipc.IpcWriteOptions(compression="zstd")
        with ipc.new_file(sink, _IDS_SCHEMA, options=options) as writer:
            for chunk in chunks:
                writer.write_table(pa.table({"doc_id": chunk.cast(pa.string())}, _IDS_SCHEMA))
                count += len(chunk)
    if store.local:
        os.replace(target, store.path(rel))
    return count


def read_ids(store: OutputStore, rel: str) -> pa.Array:
    with store.fs.open_input_file(store.path(rel)) as src:
        table = ipc.open_file(src).read_all()
    return table.column("doc_id").combine_chunks()


def iter_ids(store: OutputStore, rel: str) -> Iterator[pa.Array]:
    """The ids of an id file one written batch at a time (bounded memory)."""
    with store.fs.open_input_file(store.path(rel)) as src:
        reader = ipc.open_file(src)
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i).column(0)


def _count_ids(store: OutputStore, rel: str) -> int:
    return sum(len(batch) for batch in iter_ids(store, rel))


#: Above this many ids (the run's, with duplicates, plus the snapshot's)
#: :func:`record_deletions` compares them in a temporary SQLite file, not in memory.
DELETIONS_IN_MEMORY = 200_000


class _DiskIds:
    """A set of ids in a private temporary SQLite file (removed at :meth:`close`), for
    :func:`record_deletions` once they are too many to compare in memory."""

    def __init__(self) -> None:
        self.db = sqlite3.connect("")  # "": a temporary database on disk
        self.db.execute("PRAGMA cache_size = -16000")  # KiB: 16 MB, bounded
        self.db.execute("PRAGMA journal_mode = OFF")
        self.db.execute("PRAGMA synchronous = OFF")
        for table in ("now", "before"):
            self.db.execute(f"CREATE TABLE {table} (doc_id TEXT PRIMARY KEY) WITHOUT ROWID")

    def add(self, table: str, batches: Iterable[pa.Array]) -> None:
        with self.db:
            for batch in batches:
                rows = ((doc_id,) for doc_id in batch.to_pylist())
                self.db.executemany(f"INSERT OR IGNORE INTO {table} VALUES (?)", rows)

    def gone(self) -> pa.Array:
        """The ids in ``before`` and not in ``now``."""
        rows = self.db.execute("SELECT doc_id FROM before EXCEPT SELECT doc_id FROM now")
        return pa.array([r[0] for r in rows], pa.string())

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM now").fetchone()[0])

    def now(self, batch_size: int = 100_000) -> Iterator[pa.Array]:
        """The distinct ids of ``now``, sorted, a batch at a time."""
        cursor = self.db.execute("SELECT doc_id FROM now ORDER BY doc_id")
        while rows := cursor.fetchmany(batch_size):
            yield pa.array([r[0] for r in rows], pa.string())

    def close(self) -> None:
        self.db.close()


def write_seen(store: OutputStore, run_id: str, shard_id: str, seen: Seen) -> None:
    """A finished shard's ids (see the module docstring)."""
    folder = seen_dir(run_id)
    try:
        count = write_ids(store, f"{folder}/{shard_id}.arrow", seen.batches())
    finally:
        seen.close()
    store.write_json(
        f"{folder}/{shard_id}.json",
        {"complete": not seen.unnamed, "unnamed": sorted(seen.unnamed)[:20], "ids": count},
    )


#: How many distinct ids :class:`Seen` holds in memory before it writes them, sorted, to
#: its temporary file (about 12 MB of set at this size).
SEEN_IN_MEMORY = 100_000


class Seen:
    """The ids a shard read, and the places of read failures that name no document.

    Memory does not grow with the shard: once ``in_memory`` distinct ids are held they
    are appended, sorted, as one batch to a temporary Arrow IPC stream file (unnamed,
    under ``TMPDIR``, gone at :meth:`close`), and :meth:`batches` gives them back one batch
    at a time. An id read again after its batch left memory (a duplicate id, whose failure
    row names it) may then be written twice; :func:`record_deletions` takes the unique ids
    of all the files. A shard of fewer ids never touches the disk and writes them as one
    sorted batch without repeats.
    """

    def __init__(self, in_memory: int | None = None) -> None:
        self.ids: set[str] = set()
        self.unnamed: set[str] = set()
        self.in_memory = SEEN_IN_MEMORY if in_memory is None else in_memory
        self._spill: IO[bytes] | None = None
        self._writer: ipc.RecordBatchStreamWriter | None = None

    def add(self, batch: Any) -> None:
        self.ids.update(d.doc_id for d in batch.documents)
        for f in batch.failures:
            if f.doc_id is not None:
                self.ids.add(f.doc_id)
            elif f.stage == "read":
                self.unnamed.add(f.source or "?")
        if len(self.ids) >= self.in_memory:
            self._flush()

    def _flush(self) -> None:
        if self._writer is None:
            # Kept open across calls, closed by close(); unnamed: gone with the process.
            self._spill = tempfile.TemporaryFile(prefix="seen-ids-")  # noqa: SIM115
            self._writer = ipc.new_stream(self._spill, _IDS_SCHEMA)
        self._writer.write_batch(
            pa.record_batch([pa.array(sorted(self.ids), pa.string())], schema=_IDS_SCHEMA)
        )
        self.ids = set()

    def batches(self) -> Iterator[pa.Array]:
        """Every id read, a batch at a time (each sorted; all of them if none spilled)."""
        if self._writer is not None and self._spill is not None:
            self._writer.close()
            self._writer = None
            self._spill.seek(0)
            for batch in ipc.open_stream(self._spill):
                yield batch.column(0)
        yield pa.array(sorted(self.ids), pa.string())

    def close(self) -> None:
        """Remove the temporary file, if any."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._spill is not None:
            self._spill.close()
            self._spill = None


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


def _deletion_files(store: OutputStore) -> list[str]:
    return [
        n for n in store.list_files(DELETIONS) if n.endswith(".parquet") and not is_temp_name(n)
    ]


def deleted_ids(store: OutputStore) -> pa.Array:
    """Ids recorded as deleted and not present again since: what ``compact`` drops.
    :func:`deletion_log_ids`, distinct, minus the present ids, held in memory
    (``compact`` takes the two streams instead)."""
    logged = list(deletion_log_ids(store))
    if not logged:
        return pa.array([], pa.string())
    ids = pc.unique(pa.concat_arrays(logged))
    present = current_ids(store)
    if present is not None and len(ids):
        ids = ids.filter(pc.invert(pc.is_in(ids, value_set=present)))
    return ids


def deletion_log_ids(store: OutputStore) -> Iterator[pa.Array]:
    """The ids of every deletions file, repeats included, one record batch at a time."""
    import pyarrow.parquet as pq

    for name in _deletion_files(store):
        with store.fs.open_input_file(store.path(f"{DELETIONS}/{name}")) as src:
            for batch in pq.ParquetFile(src).iter_batches(columns=["doc_id"]):
                yield batch.column(0)


def present_ids(store: OutputStore) -> Iterator[pa.Array] | None:
    """The ids of the source at the last complete run, one written batch at a time; None
    before any (then no recorded deletion is undone)."""
    state = presence(store)
    if state is None:
        return None
    return iter_ids(store, state["ids"])


def _last_hashes(store: OutputStore, ids: set[str]) -> dict[str, str]:
    """The content hash of each of ``ids`` in the newest record that lists it. Records
    are read one at a time (not all of them held at once, as ``records()`` would): memory
    is one record plus the answer for ``ids``."""
    newest: dict[str, tuple[tuple[str, str, int], str]] = {}
    for rec in Checkpoint(store).iter_records():
        order = record_order(rec)
        for doc_id, chash, _e, _s in rec.docs:
            if doc_id in ids and chash is not None:
                held = newest.get(doc_id)
                # >=: within one record the later entry wins, as when reading oldest first
                if held is None or order >= held[0]:
                    newest[doc_id] = (order, chash)
    return {doc_id: chash for doc_id, (_, chash) in newest.items()}


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
    metas: list[dict[str, Any]] = []
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
        metas.append(meta)
    rels = [f"{folder}/{shard}.arrow" for shard in shard_ids]
    key = listing_key(config)
    status = "recorded"
    reason = None
    if state is None:
        status, reason = "baseline", "no earlier complete run to compare with"
    elif state.get("key") != key:
        status = "baseline"
        reason = f"the listing changed ({state.get('key')} -> {key})"
    before_rel = state["ids"] if state is not None and status == "recorded" else None
    total = sum(
        int(meta["ids"]) if "ids" in meta else _count_ids(store, rel)
        for meta, rel in zip(metas, rels, strict=True)
    )
    if before_rel is not None:
        total += int(state.get("count", 0)) if state is not None else 0
    on_disk = _DiskIds() if total > DELETIONS_IN_MEMORY else None
    try:
        if on_disk is None:
            parts = [read_ids(store, rel) for rel in rels]
            now_ids = pc.unique(pa.concat_arrays(parts)) if parts else pa.array([], pa.string())
            gone = pa.array([], pa.string())
            if before_rel is not None:
                before = read_ids(store, before_rel)
                gone = before.filter(pc.invert(pc.is_in(before, value_set=now_ids)))
            present = len(now_ids)
            now_batches: Iterable[pa.Array] = [now_ids]
        else:
            for rel in rels:
                on_disk.add("now", iter_ids(store, rel))
            if before_rel is not None:
                on_disk.add("before", iter_ids(store, before_rel))
            gone = on_disk.gone()
            present = on_disk.count()
            now_batches = on_disk.now()
        return _record(store, run_id, key, status, reason, gone, present, now_batches)
    finally:
        if on_disk is not None:
            on_disk.close()


def _record(
    store: OutputStore,
    run_id: str,
    key: dict[str, Any],
    status: str,
    reason: str | None,
    gone: pa.Array,
    present: int,
    now_batches: Iterable[pa.Array],
) -> dict[str, Any]:
    """Stage the deletion rows, write the run's ids, then commit (see the module docstring)."""
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
    write_ids(store, ids_rel, now_batches)
    store.write_json(
        PRESENCE,
        {
            "run_id": run_id,
            "ids": ids_rel,
            "count": present,
            "key": key,
            "deletions": deletions_rel,
            "deleted": len(gone),
            "writer": store.writer,
            "recorded_at": datetime.now(UTC).isoformat(),
        },
    )  # the commit point
    finish_presence(store)
    summary: dict[str, Any] = {"status": status, "deleted": len(gone), "present": present}
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
    "deletion_log_ids",
    "finish_presence",
    "listing_key",
    "present_ids",
    "record_deletions",
    "write_seen",
]
