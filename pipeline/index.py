"""The compacted index of what is done, and the disk-backed lookup a shard asks.

Commit records (``_state/commits/<shard>/<seq>.json``, see ``pipeline.checkpoint``) stay
the commit point. Reading all of them on every start-up made a shard's start-up grow with
the output's age, and holding every committed document in a dict made every shard's
memory grow with the corpus. This module folds the records into an index and answers a
shard's questions from local disk.

Layout (every file written through the :class:`~pipeline.sinks.OutputStore`)::

    _state/index/manifests/<generation>.json        one per compaction, created exclusively
    _state/index/g<generation>-<writer>/<table>/part-<p>.idx   (Parquet)

Index files are Parquet named ``.idx``, so that a reader of ``OUTPUT/**/*.parquet`` sees
only the datasets. A *table* is one task under one fingerprint: ``embed-<fp>`` or
``summary-<fp>``; a changed model writes a new table and leaves the old one (a switch
back finds it). Each table is split into :data:`PARTITIONS` files by ``key``, a 64-bit
hash of ``doc_id`` (the top bits, so partitions follow key order), never by shard: a
document keeps its place when ``--shards`` changes or files are added. Rows: ``doc_id``,
``key``, ``chash`` (64-bit hash of the content hash), ``state`` (1 ok, 2 failed), ``rank``
(the record's ``committed_at`` in microseconds), sorted by ``key``, one row per key (the
latest).

The manifest is the index's commit point: it names the partition files of every table and
``folded``, the commit records already folded in (per shard, ranges of sequence numbers).
It is created only if absent (``write_json(exclusive=True)``: a hard link locally, a
conditional PUT on object storage), so a reader that sees a manifest sees both the files
and the records they cover; partition files are written first, under a directory of
their own that no manifest names yet. A kill at any instant of a compaction leaves either
no new manifest (the old one and the records still hold everything; the unreferenced
files are removed by a later compaction) or a complete one. Two compactions racing for
the same generation: one creates the manifest, the other deletes its files and stops.

A reader (:func:`load_index`) takes the newest manifest, loads the partitions of the
tables it needs, then reads only the commit records the manifest has not folded: a
shard's start-up reads at most ``1 + 16 × tables`` index files plus the records
committed since the last compaction, however many runs came before. Records of outputs
written before the index existed are all "not folded": they are read as before, and the
next compaction folds them. Compaction runs at the run's commit step
(``runner.commit``; the Airflow commit task), after every shard of the run is done.
It also publishes each record's files (idempotent), so a folded record never needs its
roll-forward again and ``Checkpoint.recover`` reads only unfolded ones. Dataset
compaction (``pipeline.compact``) deletes superseded records: a manifest one of whose
folded records is gone is stale (see :func:`unfolded`), readers then read every record,
and the next compaction rebuilds the index from them.

The lookup (:class:`Index`) is an SQLite file in a temporary directory, one table per
role (embed, embed under the pre-sections fingerprint, summary), keyed by ``key``: the
shard asks it a source batch at a time (:meth:`Index.prefetch`), so its memory is a few
MB of SQLite page cache plus one batch, whatever the corpus size; the file takes about
35 bytes per committed document. Keys and content hashes are compared as 64-bit hashes:
a document is wrongly skipped only if its id's hash equals another committed document's
*and* their texts' hashes agree too, or a changed text's hash equals the old one in 64
bits (odds of about 2^-64 per pair).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sqlite3
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.sinks import OutputStore

log = logging.getLogger(__name__)

COMMITS = "_state/commits"
INDEX = "_state/index"
MANIFESTS = f"{INDEX}/manifests"
#: partition files per table (by the top 4 bits of the key)
PARTITIONS = 16
_SHIFT = 60
#: manifests kept (with their files) after a compaction: a reader that loaded one of
#: them a moment ago still finds its files; an older one retries with the newest
KEEP_MANIFESTS = 3
#: rows read from a partition file per step while loading the lookup
_LOAD_BATCH = 65_536
_QUERY_CHUNK = 500

OK = "ok"
FAILED = "failed"  # permanently failed: skipped by re-runs unless retry_failed
_STATE_CODE = {OK: 1, FAILED: 2}
_FAILED_CODE = _STATE_CODE[FAILED]

ROLES = ("embed", "embed_plain", "summary")

SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("key", pa.int64(), nullable=False),
        pa.field("chash", pa.int64(), nullable=False),
        pa.field("state", pa.int8(), nullable=False),
        pa.field("rank", pa.int64(), nullable=False),
    ]
)


def hash64(text: str) -> int:
    """A signed 64-bit hash of ``text`` (stable across processes and machines)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def partition_of(key: int) -> int:
    return (key >> _SHIFT) + PARTITIONS // 2


def rank_of(committed_at: str) -> int:
    """Microseconds since the epoch of a record's ``committed_at`` (naive: UTC)."""
    when = datetime.fromisoformat(committed_at)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def table_name(task: str, fingerprint: str) -> str:
    return f"{task}-{fingerprint}"


def record_path(shard: str, seq: int) -> str:
    return f"{COMMITS}/{shard}/{seq:06d}.json"


# ---------------------------------------------------------------------- watermark


@dataclass
class Folded:
    """Which commit records an index holds: per shard, sorted inclusive seq ranges."""

    ranges: dict[str, list[list[int]]] = field(default_factory=dict)

    def __contains__(self, item: tuple[str, int]) -> bool:
        shard, seq = item
        return any(lo <= seq <= hi for lo, hi in self.ranges.get(shard, ()))

    def seqs(self, shard: str) -> Iterator[int]:
        for lo, hi in self.ranges.get(shard, ()):
            yield from range(lo, hi + 1)

    def add(self, shard: str, seq: int) -> None:
        spans = self.ranges.setdefault(shard, [])
        spans.append([seq, seq])
        spans.sort()
        merged: list[list[int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.ranges[shard] = merged


@dataclass
class Manifest:
    generation: int
    tables: dict[str, dict[str, Any]]  # table -> {"rows": n, "parts": {"p": {"path", "rows"}}}
    folded: Folded

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        return cls(int(data["generation"]), data["tables"], Folded(data["folded"]))


def manifest_path(generation: int) -> str:
    return f"{MANIFESTS}/{generation:08d}.json"


def _generations(store: OutputStore) -> list[int]:
    gens = []
    for name in store.list_files(MANIFESTS):
        stem = name.removesuffix(".json")
        if name.endswith(".json") and stem.isdigit():
            gens.append(int(stem))
    return sorted(gens)


def latest_manifest(store: OutputStore) -> Manifest | None:
    """The newest index manifest, or None (an output written before the index existed)."""
    gens = _generations(store)
    if not gens:
        return None
    return Manifest.from_json(store.read_json(manifest_path(gens[-1])))


def commit_names(store: OutputStore, shard: str | None = None) -> dict[str, list[int]]:
    """Sequence numbers of the commit records present, per shard: one listing."""
    out: dict[str, list[int]] = {}
    if shard is not None:
        paths = [f"{shard}/{n}" for n in store.list_files(f"{COMMITS}/{shard}")]
    else:
        paths = store.list_tree(COMMITS)
    for rel in paths:
        s, _, name = rel.rpartition("/")
        stem = name.removesuffix(".json")
        if s and "/" not in s and name.endswith(".json") and stem.isdigit():
            out.setdefault(s, []).append(int(stem))
    for seqs in out.values():
        seqs.sort()
    return out


def unfolded(store: OutputStore, shard: str | None = None) -> tuple[Manifest | None, list[str]]:
    """The newest manifest, if it still holds, and the paths of the commit records it does
    not hold, in (shard, seq) order (of ``shard`` only, when given).

    A manifest no longer holds when a record it folded is gone: dataset compaction
    (``pipeline.compact``) deletes superseded records, and the entries they carried (a
    deleted document, a superseded text or fingerprint) must stop counting as done. Then
    the manifest is ignored (None) and every record is read, as before the index; the
    next compaction builds the index again from the records."""
    manifest = latest_manifest(store)
    names = commit_names(store, shard)
    if manifest is not None:
        shards = [shard] if shard is not None else list(manifest.folded.ranges)
        for s in shards:
            present = set(names.get(s, ()))
            if any(q not in present for q in manifest.folded.seqs(s)):
                log.info(
                    "index generation %d folds commit records of shard %s that are gone;"
                    " reading the records instead",
                    manifest.generation,
                    s,
                )
                manifest = None
                break
    folded = manifest.folded if manifest else Folded()
    paths = [
        record_path(s, q) for s, seqs in sorted(names.items()) for q in seqs if (s, q) not in folded
    ]
    return manifest, paths


def _rows(record: dict[str, Any]) -> Iterator[tuple[str, str, str, str]]:
    """(table, doc_id, content hash, state) of every entry a commit record holds."""
    embed = table_name("embed", record["embed_fp"])
    summary_fp = record.get("summary_fp")
    summary = table_name("summary", summary_fp) if summary_fp else None
    for doc_id, chash, e_state, s_state in record["docs"]:
        if e_state:
            yield embed, doc_id, chash, e_state
        if s_state and summary:
            yield summary, doc_id, chash, s_state


# ---------------------------------------------------------------------- lookup


def _close(db: sqlite3.Connection, directory: str) -> None:
    with contextlib.suppress(Exception):
        db.close()
    shutil.rmtree(directory, ignore_errors=True)


class Index:
    """What is committed, for one shard's questions: per role, doc key -> (content hash,
    state), in an SQLite file under the temporary directory (``TMPDIR``).

    Roles: ``embed`` (the job's embed fingerprint), ``embed_plain`` (the embed fingerprint
    of the chunker before sections existed: those rows stand for documents without
    sections, chunked the same way by both, not for documents with sections) and
    ``summary``. Ask a batch at a time: :meth:`prefetch` the batch's ids (one query per
    role), then :meth:`needs_embedding` / :meth:`needs_summary` per document. ``close()``
    removes the file (also done when the object is collected)."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="oci-genai-index-")
        self._db = sqlite3.connect(
            os.path.join(self._dir, "index.db"), isolation_level=None, check_same_thread=False
        )
        for pragma in (
            "journal_mode=OFF",
            "synchronous=OFF",
            "cache_size=-8192",  # 8 MiB of page cache: the lookup's memory
            "temp_store=FILE",
        ):
            self._db.execute(f"PRAGMA {pragma}")
        for role in ROLES:
            self._db.execute(
                f"CREATE TABLE {role} (key INTEGER PRIMARY KEY, chash INTEGER NOT NULL,"
                " state INTEGER NOT NULL, rank INTEGER NOT NULL)"
            )
        self._finalizer = weakref.finalize(self, _close, self._db, self._dir)
        self.rows = dict.fromkeys(ROLES, 0)  # rows loaded per role (0: the role is empty)
        self._cache: dict[str, tuple[tuple[int, int] | None, ...]] = {}

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        """Documents with an embedding state under the job's fingerprint."""
        return int(self._db.execute("SELECT count(*) FROM embed").fetchone()[0])

    # ------------------------------------------------------------------ loading

    def load_sorted(self, role: str, batches: Iterable[pa.RecordBatch]) -> None:
        """Append compacted rows (sorted by key, one per key, none loaded yet)."""
        sql = f"INSERT INTO {role} (key, chash, state, rank) VALUES (?, ?, ?, ?)"
        self._db.execute("BEGIN")
        try:
            for batch in batches:
                cols = [batch.column(n).to_pylist() for n in ("key", "chash", "state", "rank")]
                self._db.executemany(sql, zip(*cols, strict=True))
                self.rows[role] += batch.num_rows
        finally:
            self._db.execute("COMMIT")

    def upsert(self, role: str, rows: list[tuple[int, int, int, int]]) -> None:
        """Apply (key, chash, state, rank) rows from commit records: the latest rank wins
        (on a tie, the row applied last)."""
        if not rows:
            return
        self._db.execute("BEGIN")
        try:
            self._db.executemany(
                f"INSERT INTO {role} (key, chash, state, rank) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET chash = excluded.chash,"
                f" state = excluded.state, rank = excluded.rank WHERE excluded.rank >= {role}.rank",
                rows,
            )
        finally:
            self._db.execute("COMMIT")
        self.rows[role] += len(rows)

    # ------------------------------------------------------------------ asking

    def _query(self, role: str, keys: list[int]) -> dict[int, tuple[int, int]]:
        found: dict[int, tuple[int, int]] = {}
        if not self.rows[role]:
            return found
        for i in range(0, len(keys), _QUERY_CHUNK):
            part = keys[i : i + _QUERY_CHUNK]
            marks = ",".join("?" * len(part))
            for key, chash, state in self._db.execute(
                f"SELECT key, chash, state FROM {role} WHERE key IN ({marks})", part
            ):
                found[key] = (chash, state)
        return found

    def prefetch(self, doc_ids: Iterable[str]) -> None:
        """Look up a batch of documents at once; later ``needs_*`` of these ids use it."""
        ids = list(doc_ids)
        keys = [hash64(d) for d in ids]
        found = [self._query(role, keys) for role in ROLES]
        self._cache = {d: tuple(f.get(k) for f in found) for d, k in zip(ids, keys, strict=True)}

    def _entries(self, doc_id: str) -> tuple[tuple[int, int] | None, ...]:
        entries = self._cache.get(doc_id)
        if entries is None:
            key = hash64(doc_id)
            entries = tuple(self._query(role, [key]).get(key) for role in ROLES)
        return entries

    @staticmethod
    def _needs(entry: tuple[int, int] | None, chash: int, retry: bool) -> bool:
        if entry is None or entry[0] != chash:
            return True
        return retry and entry[1] == _FAILED_CODE

    def needs_embedding(
        self, doc_id: str, chash: str, retry_failed: bool = False, sectioned: bool = False
    ) -> bool:
        """Whether ``doc_id`` with this text still needs embedding; ``sectioned``: the
        document has sections (rows from before sections existed do not stand for it)."""
        embed, plain, _ = self._entries(doc_id)
        h = hash64(chash)
        if not self._needs(embed, h, retry_failed):
            return False
        if sectioned or plain is None:
            return True
        if embed is not None and embed[0] == h:
            return True  # committed (failed) under the current fingerprint: that decides
        return self._needs(plain, h, retry_failed)

    def needs_summary(self, doc_id: str, chash: str, retry_failed: bool = False) -> bool:
        return self._needs(self._entries(doc_id)[2], hash64(chash), retry_failed)


def _read_parquet(store: OutputStore, rel: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    with store.fs.open_input_file(store.path(rel)) as src:
        yield from pq.ParquetFile(src).iter_batches(batch_size=_LOAD_BATCH, columns=columns)


def load_index(
    store: OutputStore,
    embed_fp: str,
    summary_fp: str | None,
    plain_embed_fp: str | None = None,
    *,
    attempts: int = 3,
) -> Index:
    """The lookup of what is committed under these fingerprints: the newest manifest's
    partitions of the tables asked for, then the commit records it has not folded.

    A compaction that removes the files of a manifest this reader had just opened makes
    it start over from the newest one (``attempts`` times)."""
    roles = {
        "embed": table_name("embed", embed_fp),
        "embed_plain": table_name("embed", plain_embed_fp) if plain_embed_fp else None,
        "summary": table_name("summary", summary_fp) if summary_fp else None,
    }
    by_table = {t: r for r, t in roles.items() if t}
    for attempt in range(attempts):
        index = Index()
        try:
            manifest, todo = unfolded(store)
            if manifest is not None:
                for role, table in roles.items():
                    parts = manifest.tables.get(table, {}).get("parts", {}) if table else {}
                    for p in sorted(parts, key=int):
                        index.load_sorted(
                            role,
                            _read_parquet(
                                store, parts[p]["path"], ["key", "chash", "state", "rank"]
                            ),
                        )
            for rel in todo:
                record = store.read_json(rel)
                rank = rank_of(record["committed_at"])
                rows: dict[str, list[tuple[int, int, int, int]]] = {}
                for table, doc_id, chash, state in _rows(record):
                    wanted = by_table.get(table)
                    if wanted is not None:
                        row = (hash64(doc_id), hash64(chash), _STATE_CODE[state], rank)
                        rows.setdefault(wanted, []).append(row)
                for wanted, batch in rows.items():
                    index.upsert(wanted, batch)
            return index
        except FileNotFoundError:
            index.close()
            if attempt + 1 >= attempts:
                raise
            log.info("index files changed while loading; loading the newest manifest")
        except BaseException:
            index.close()
            raise
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------- compaction


class _Spill:
    """New index rows, split by (table, partition) into local Arrow stream files, so a
    compaction holds one commit record and one partition at a time."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="oci-genai-compact-")
        self._writers: dict[tuple[str, int], pa.ipc.RecordBatchStreamWriter] = {}
        self.tables: dict[str, set[int]] = {}

    def _path(self, table: str, p: int) -> str:
        return os.path.join(self.dir, f"{table}.{p:02d}.arrow")

    def add(self, record: dict[str, Any]) -> int:
        rank = rank_of(record["committed_at"])
        cols: dict[str, tuple[list[str], list[int], list[int], list[int]]] = {}
        for table, doc_id, chash, state in _rows(record):
            ids, keys, hashes, states = cols.setdefault(table, ([], [], [], []))
            ids.append(doc_id)
            keys.append(hash64(doc_id))
            hashes.append(hash64(chash))
            states.append(_STATE_CODE[state])
        n = 0
        for table, (ids, keys, hashes, states) in cols.items():
            karr = np.asarray(keys, dtype=np.int64)
            batch = pa.record_batch(
                [
                    pa.array(ids, pa.string()),
                    pa.array(karr),
                    pa.array(hashes, pa.int64()),
                    pa.array(states, pa.int8()),
                    pa.array(np.full(len(ids), rank, dtype=np.int64)),
                ],
                schema=SCHEMA,
            )
            parts = (karr >> _SHIFT) + PARTITIONS // 2
            for p in np.unique(parts).tolist():
                writer = self._writers.get((table, p))
                if writer is None:
                    writer = pa.ipc.new_stream(self._path(table, p), SCHEMA)
                    self._writers[(table, p)] = writer
                    self.tables.setdefault(table, set()).add(p)
                writer.write_batch(batch.filter(pa.array(parts == p)))
            n += len(ids)
        return n

    def read(self, table: str, p: int) -> pa.Table:
        self._writers.pop((table, p)).close()
        with pa.ipc.open_stream(self._path(table, p)) as reader:
            return reader.read_all()

    def close(self) -> None:
        for writer in self._writers.values():
            with contextlib.suppress(Exception):
                writer.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _merge(old: pa.Table | None, new: pa.Table) -> pa.Table:
    """One row per key: the highest rank; on a tie, the later row (new after old, and
    records in (shard, seq) order, as the records' own order breaks ties)."""
    table = pa.concat_tables([old, new]) if old is not None else new
    table = table.append_column("pos", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    table = table.sort_by([("key", "ascending"), ("rank", "ascending"), ("pos", "ascending")])
    keys = table.column("key").to_numpy()
    keep = np.ones(len(keys), dtype=bool)
    keep[:-1] = keys[1:] != keys[:-1]
    return table.filter(pa.array(keep)).drop_columns(["pos"])


@dataclass
class Compaction:
    """What a compaction did: the manifest's generation, records folded, rows written."""

    generation: int
    records: int
    rows: int
    files_written: int
    files_removed: int = 0


def compact(store: OutputStore) -> Compaction | None:
    """Fold every commit record the newest manifest does not hold into a new generation.

    Returns None when there was nothing to fold, or another compaction created the same
    generation first (its files are removed; the records stay for the next one)."""
    newest = latest_manifest(store)
    manifest, todo = unfolded(store)  # None when stale: everything is folded afresh
    if not todo:
        return None
    generation = (newest.generation if newest else 0) + 1
    folded = Folded(
        {s: [list(r) for r in rs] for s, rs in (manifest.folded.ranges if manifest else {}).items()}
    )
    tables = {
        t: {"rows": e["rows"], "parts": dict(e["parts"])}
        for t, e in (manifest.tables if manifest else {}).items()
    }
    out_dir = f"{INDEX}/g{generation:08d}-{store.writer}"
    spill = _Spill()
    written: list[str] = []
    rows = 0
    try:
        for rel in todo:
            record = store.read_json(rel)
            for part in record.get("files", {}).values():
                # a record folded here is never rolled forward by recover() again
                with contextlib.suppress(FileNotFoundError):
                    store.publish(part, writer=record.get("writer") or "")
            rows += spill.add(record)
            folded.add(record["shard"], int(record["seq"]))
        for table, parts in sorted(spill.tables.items()):
            entry = tables.setdefault(table, {"rows": 0, "parts": {}})
            for p in sorted(parts):
                old_ref = entry["parts"].get(str(p))
                old = None
                if old_ref is not None:
                    with store.fs.open_input_file(store.path(old_ref["path"])) as src:
                        old = pq.read_table(src, schema=SCHEMA)
                merged = _merge(old, spill.read(table, p))
                rel = f"{out_dir}/{table}/part-{p:02d}.idx"
                store.write_parquet(rel, merged)
                written.append(rel)
                entry["parts"][str(p)] = {"path": rel, "rows": merged.num_rows}
            entry["rows"] = sum(v["rows"] for v in entry["parts"].values())
    finally:
        spill.close()
    data = {
        "generation": generation,
        "created_at": datetime.now(UTC).isoformat(),
        "writer": store.writer,
        "partitions": PARTITIONS,
        "tables": tables,
        "folded": folded.ranges,
    }
    try:
        store.write_json(manifest_path(generation), data, exclusive=True)
    except FileExistsError:
        log.info("index generation %d was written by another compaction first", generation)
        for rel in written:
            store.delete(rel)
        return None
    result = Compaction(generation, len(todo), rows, len(written))
    result.files_removed = collect_garbage(store, generation)
    return result


def collect_garbage(store: OutputStore, generation: int) -> int:
    """Remove manifests older than the newest :data:`KEEP_MANIFESTS` and every index file
    of a generation up to ``generation`` that no kept manifest names (old generations,
    and the files of compactions killed or beaten before their manifest)."""
    gens = _generations(store)
    keep = [g for g in gens if g <= generation][-KEEP_MANIFESTS:]
    referenced: set[str] = set()
    for g in keep:
        with contextlib.suppress(FileNotFoundError):
            data = store.read_json(manifest_path(g))
            for entry in data["tables"].values():
                referenced.update(v["path"] for v in entry["parts"].values())
    removed = 0
    for g in gens:
        if g < keep[0]:
            store.delete(manifest_path(g))
    for rel in store.list_tree(INDEX):
        path = f"{INDEX}/{rel}"
        top = rel.split("/", 1)[0]
        if not top.startswith("g") or path in referenced:
            continue
        gen = top[1:].split("-", 1)[0]
        if gen.isdigit() and int(gen) <= generation:
            store.delete(path)
            removed += 1
    return removed


__all__ = [
    "FAILED",
    "INDEX",
    "OK",
    "PARTITIONS",
    "Compaction",
    "Folded",
    "Index",
    "Manifest",
    "collect_garbage",
    "commit_names",
    "compact",
    "hash64",
    "latest_manifest",
    "load_index",
    "unfolded",
]
