"""Compaction: rewrite an output so its datasets hold only the current rows.

**What is current.** Commit records (``pipeline.checkpoint``), oldest first, say per
document which content hash and which fingerprint each part committed. A document's
current content hash is the one of the newest record that lists it; its current
embeddings are the rows of the newest record holding an embed state for it, if that
record has the current hash (older text or an older fingerprint is superseded); the same
for its summary. A document recorded as deleted (``pipeline.deletions.deleted_ids``: in
``OUTPUT/deletions/`` and not in the source since) has nothing current. A failure row is
current while it is still outstanding: it belongs to the newest part holding failures of
that document and task (summarize, or anything else for embeddings), and no newer record
settled that task; a failure that names no document is current in the newest part that
has one for the same source place.

**What is rewritten.** A record all of whose content is current stays as it is (files and
record untouched). A record with nothing current is *superseded*. A record with some
current content, or a small one (fewer than a quarter of ``part_rows`` rows, when there
are two or more of the same fingerprints) is rewritten: its current rows are filtered
into new parts of up to ``part_rows`` rows (or ``PART_BYTES``), read one old part at a
time (memory is one part, not the output), with new records holding exactly its current entries.

**Planning memory.** The records are read one at a time; only their headers (files,
counts, fingerprints) stay in memory. Their entries, each document's current hash and
records, and the deleted ids are in a private temporary SQLite file (``_Plan``), asked
per record; a rewritten record's current entries are fetched when it is rewritten. So
memory does not grow with the number of documents, only with the number of records and
failure rows.

**Commit, the same protocol as a run.** Generation ``g`` writes under the shard name
``compact-<g>``:

1. stage the new parts, and write their commit records (``_state/commits/compact-<g>/``;
   the entries they hold are copies of entries already committed, so the index is the
   same with or without them);
2. write ``_state/compactions/<g>.json`` naming the new records and every superseded
   record (with its identity and files) — **the commit point**;
3. publish the new parts; delete each superseded record's files, then the record;
   mark the manifest done.

Readers see the old rows until step 3 publishes the new ones, and both for the moment
between a publish and the deletions. A kill before step 2 leaves a generation without a
manifest: the next ``compact`` (or ``run``) removes its records and files. After step 2,
it rolls step 3 forward. A superseded record is deleted only if the record at its path is
still the one the manifest names (a run may have reused a sequence number since).

The index a run builds from the records (``Checkpoint.load_index``) after compaction holds
exactly the current entries: an unchanged corpus is skipped as before, a deleted document
that comes back is embedded again, a superseded fingerprint is no longer "done".

Compaction holds the output's run lease: no run writes while it compacts, and it waits
for no run (a live run makes it fail with ``LockedError``).
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.checkpoint import COMMITS, DATASETS, Checkpoint, CommitRecord, record_order
from pipeline.config import new_run_id
from pipeline.deletions import deletion_log_ids, finish_presence, present_ids
from pipeline.errors import ConfigError
from pipeline.lease import run_lease
from pipeline.sinks import OutputStore, final_name
from pipeline.storage import StorageSettings

log = logging.getLogger(__name__)

COMPACTIONS = "_state/compactions"
SHARD_PREFIX = "compact-"
DEFAULT_PART_ROWS = 100_000
#: a rewritten part is also closed at this many bytes of Arrow data (what it holds in
#: memory): 100,000 vectors of 1,536 floats would be 600 MB
PART_BYTES = 128_000_000


def record_path(rec: CommitRecord) -> str:
    return f"{COMMITS}/{rec.shard}/{rec.seq:06d}.json"


def _gen_name(gen: int) -> str:
    return f"{SHARD_PREFIX}{gen:06d}"


def _task(stage: str | None) -> str:
    return "summary" if stage == "summarize" else "embed"


# ---------------------------------------------------------------------- recovery


def _identity(rec: CommitRecord | dict[str, Any]) -> list[Any]:
    data = rec.to_json() if isinstance(rec, CommitRecord) else rec
    return [data.get("committed_at"), data.get("writer"), data.get("run_id")]


def _read_record(store: OutputStore, rel: str) -> CommitRecord | None:
    if not store.exists(rel):
        return None
    return CommitRecord.from_json(store.read_json(rel))


def _roll_forward(store: OutputStore, manifest: dict[str, Any]) -> None:
    for rel in manifest["records"]:
        rec = _read_record(store, rel)
        if rec is not None:
            for part in rec.files.values():
                store.publish(part, writer=rec.writer or "")
    for old in manifest["superseded"]:
        current = _read_record(store, old["record"])
        if current is not None and _identity(current) != old["identity"]:
            continue  # the sequence number was reused by a later run: not ours to delete
        for part in old["files"]:
            store.delete(part)
        if current is not None:
            store.delete(old["record"])
    store.write_json(
        f"{COMPACTIONS}/{manifest['generation']}.json",
        {**manifest, "done": True, "finished_at": datetime.now(UTC).isoformat()},
    )


def _abandon(store: OutputStore, shard: str) -> None:
    """Remove a generation killed before its commit point: records and their files."""
    for rec in Checkpoint(store).iter_records(shard):
        for part in rec.files.values():
            store.delete(store.temp_name(part, writer=rec.writer or ""))
            store.delete(part)
        store.delete(record_path(rec))
    prefix = f"part-{shard}-"
    for dataset in DATASETS:
        for staged in store.staged_files(dataset):
            if final_name(staged.rpartition("/")[2]).startswith(prefix):
                store.delete(staged)
    for name in store.list_files(f"{COMMITS}/{shard}"):
        store.delete(f"{COMMITS}/{shard}/{name}")


def _manifests(store: OutputStore) -> dict[str, dict[str, Any]]:
    return {
        n[: -len(".json")]: store.read_json(f"{COMPACTIONS}/{n}")
        for n in store.list_files(COMPACTIONS)
        if n.endswith(".json")
    }


def finish_pending(store: OutputStore) -> int:
    """Finish what a killed compaction left: roll a committed generation forward, remove
    one killed before its commit point. The caller holds the run lease. Returns how many
    generations it touched."""
    manifests = _manifests(store)
    touched = 0
    for manifest in manifests.values():
        if not manifest.get("done"):
            log.info("compaction %s: finishing after an interruption", manifest["generation"])
            _roll_forward(store, manifest)
            touched += 1
    for shard in store.list_dirs(COMMITS):
        if shard.startswith(SHARD_PREFIX) and shard not in manifests:
            log.info("compaction %s: removing, interrupted before its commit", shard)
            _abandon(store, shard)
            touched += 1
    return touched


# ---------------------------------------------------------------------- planning


#: the SQLite page cache of the planning database (KiB, negative: a size, not pages)
PLAN_CACHE_KIB = 16_000
_BATCH = 50_000


def _batches(
    rows: Iterator[tuple[Any, ...]], size: int = _BATCH
) -> Iterator[list[tuple[Any, ...]]]:
    while batch := list(itertools.islice(rows, size)):
        yield batch


def _failure_keys(store: OutputStore, rel: str) -> list[tuple[str | None, str | None, str | None]]:
    t = pq.read_table(store.path(rel), columns=["doc_id", "stage", "source"], filesystem=store.fs)
    return list(
        zip(
            t.column("doc_id").to_pylist(),
            t.column("stage").to_pylist(),
            t.column("source").to_pylist(),
            strict=True,
        )
    )


class _Plan:
    """Per record (by position in ``records``, oldest first): what of it is current.

    The records' entries live in a private temporary SQLite database on disk (removed at
    :meth:`close`), not in memory: ``entry`` (one row per entry of a record's ``docs``,
    numbered in record and list order), ``cur`` (per document: its newest content hash,
    the newest record position holding an embed state for it, the same for its summary,
    -1 for none, and whether it is deleted) and ``deleted``. Memory is the records'
    headers (files, counts, fingerprints, no ``docs``), the failure rows' keys and
    SQLite's bounded page cache."""

    def __init__(self) -> None:
        self.db = sqlite3.connect("", isolation_level=None)  # "": a temporary file on disk
        for pragma in (
            f"cache_size = -{PLAN_CACHE_KIB}",
            "journal_mode = OFF",
            "synchronous = OFF",
            "temp_store = FILE",
        ):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute(
            "CREATE TABLE entry (id INTEGER PRIMARY KEY, r INTEGER NOT NULL, doc TEXT NOT NULL,"
            " chash TEXT NOT NULL, e TEXT, s TEXT)"
        )
        self.db.execute("CREATE TABLE pos (r INTEGER PRIMARY KEY, pos INTEGER NOT NULL)")
        self.db.execute(
            "CREATE TABLE cur (doc TEXT PRIMARY KEY, hk INTEGER NOT NULL, hash TEXT NOT NULL,"
            " epos INTEGER NOT NULL, spos INTEGER NOT NULL, gone INTEGER NOT NULL DEFAULT 0)"
            " WITHOUT ROWID"
        )
        self.db.execute("CREATE TABLE deleted (doc TEXT PRIMARY KEY) WITHOUT ROWID")
        self.records: list[CommitRecord] = []  # oldest first, without their docs
        self.spans: list[tuple[int, int]] = []  # per record: its entries' ids [first, end)
        self.newest_fail: dict[tuple[str, str], int] = {}
        self.newest_place: dict[str, int] = {}
        self.fail_keys: dict[int, list[tuple[str | None, str | None, str | None]]] = {}
        self._fail_cur: dict[str, tuple[int, int]] = {}
        self._fail_deleted: set[str] = set()

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ loading

    def load(self, records: Iterable[CommitRecord]) -> None:
        """Read the records one at a time (in any order): their entries go to ``entry``,
        their headers stay; then order the headers as ``Checkpoint.records`` does."""
        loaded: list[tuple[CommitRecord, tuple[int, int]]] = []
        next_id = 0
        self.db.execute("BEGIN")
        for rec in records:
            first = next_id
            r = len(loaded)
            rows = ((first + j, r, d[0], d[1], d[2], d[3]) for j, d in enumerate(rec.docs))
            for batch in _batches(rows):
                self.db.executemany("INSERT INTO entry VALUES (?, ?, ?, ?, ?, ?)", batch)
            next_id += len(rec.docs)
            rec.docs = []
            loaded.append((rec, (first, next_id)))
        order = sorted(range(len(loaded)), key=lambda r: record_order(loaded[r][0]))
        self.records = [loaded[r][0] for r in order]
        self.spans = [loaded[r][1] for r in order]
        self.db.executemany("INSERT INTO pos VALUES (?, ?)", ((r, i) for i, r in enumerate(order)))
        self.db.execute("COMMIT")

    def compute(self, deletions: Iterable[pa.Array], present: Iterable[pa.Array] | None) -> int:
        """Each document's current hash and records, and the deleted ids (those of
        ``deletions`` not in ``present``, as ``deletions.deleted_ids``). Returns how many
        deleted ids the records hold."""
        db = self.db
        db.execute("BEGIN")
        db.execute(
            "INSERT INTO cur (doc, hk, hash, epos, spos)"
            " SELECT x.doc, (p.pos << 32) + x.id, x.chash,"
            "  CASE WHEN coalesce(x.e, '') != '' THEN p.pos ELSE -1 END,"
            "  CASE WHEN coalesce(x.s, '') != '' THEN p.pos ELSE -1 END"
            " FROM entry x JOIN pos p ON p.r = x.r"
            " WHERE 1"
            " ON CONFLICT (doc) DO UPDATE SET"
            "  hash = CASE WHEN excluded.hk > cur.hk THEN excluded.hash ELSE cur.hash END,"
            "  hk = max(cur.hk, excluded.hk),"
            "  epos = max(cur.epos, excluded.epos),"
            "  spos = max(cur.spos, excluded.spos)"
        )
        for ids in deletions:
            db.executemany(
                "INSERT OR IGNORE INTO deleted VALUES (?)",
                ((d,) for d in ids.to_pylist() if d is not None),
            )
        if present is not None and db.execute("SELECT 1 FROM deleted LIMIT 1").fetchone():
            for ids in present:
                db.executemany(
                    "DELETE FROM deleted WHERE doc = ?",
                    ((d,) for d in ids.to_pylist() if d is not None),
                )
        gone = db.execute("UPDATE cur SET gone = 1 WHERE doc IN (SELECT doc FROM deleted)").rowcount
        db.execute("COMMIT")
        log.info(
            "compact: planned %d records in a %.0f MB temporary file",
            len(self.records),
            self.disk_bytes() / 1e6,
        )
        return int(gone)

    def disk_bytes(self) -> int:
        """The size of the planning database (on disk, under the temporary directory)."""
        pages = self.db.execute("PRAGMA page_count").fetchone()[0]
        return int(pages) * int(self.db.execute("PRAGMA page_size").fetchone()[0])

    def load_failures(self, store: OutputStore) -> None:
        """The failure rows' keys (few), and the current records of the documents they
        name (looked up for those documents only)."""
        docs: set[str] = set()
        for i, rec in enumerate(self.records):
            rel = rec.files.get("failures")
            if rel and store.exists(rel):
                keys = _failure_keys(store, rel)
                self.fail_keys[i] = keys
                for doc, stage, place in keys:
                    if doc is None:
                        self.newest_place[place or ""] = i
                    else:
                        self.newest_fail[(doc, _task(stage))] = i
                        docs.add(doc)
        wanted = sorted(docs)
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            for doc, epos, spos in self.db.execute(
                f"SELECT doc, epos, spos FROM cur WHERE doc IN ({marks})", chunk
            ):
                self._fail_cur[doc] = (int(epos), int(spos))
            for (doc,) in self.db.execute(f"SELECT doc FROM deleted WHERE doc IN ({marks})", chunk):
                self._fail_deleted.add(doc)

    # ------------------------------------------------------------------ questions

    _KEPT = (
        "SELECT x.id, x.doc, x.chash, x.e, x.s,"
        " (coalesce(x.e, '') != '' AND c.gone = 0 AND c.epos = :pos AND c.hash = x.chash) AS ke,"
        " (coalesce(x.s, '') != '' AND c.gone = 0 AND c.spos = :pos AND c.hash = x.chash) AS ks"
        " FROM entry x JOIN cur c ON c.doc = x.doc WHERE x.id >= :first AND x.id < :end"
    )

    def _args(self, i: int) -> dict[str, int]:
        first, end = self.spans[i]
        return {"pos": i, "first": first, "end": end}

    def counts(self, i: int) -> tuple[int, int, int]:
        """(entries, entries kept, entries kept unchanged) of record ``i``: the record's
        kept list equals its ``docs`` when the three are equal."""
        n, kept, same = self.db.execute(
            "SELECT count(*), coalesce(sum(ke OR ks), 0),"
            " coalesce(sum((ke OR ks) AND (e IS NULL OR ke) AND (s IS NULL OR ks)), 0)"
            f" FROM ({self._KEPT})",
            self._args(i),
        ).fetchone()
        return int(n), int(kept), int(same)

    def kept_docs(self, i: int) -> list[list[str | None]]:
        """Record ``i``'s current entries, in its ``docs`` order, the states no longer
        current cleared."""
        return [
            [doc, chash, e if ke else None, s if ks else None]
            for doc, chash, e, s, ke, ks in self.db.execute(
                f"SELECT doc, chash, e, s, ke, ks FROM ({self._KEPT}) WHERE ke OR ks ORDER BY id",
                self._args(i),
            )
        ]

    def failure_kept(self, i: int, doc: str | None, stage: str | None, place: str | None) -> bool:
        if doc is None:
            return self.newest_place.get(place or "") == i
        if doc in self._fail_deleted:
            return False
        task = _task(stage)
        if self.newest_fail.get((doc, task)) != i:
            return False
        held = self._fail_cur.get(doc)
        settled = -1 if held is None else held[0 if task == "embed" else 1]
        return settled <= i


# ---------------------------------------------------------------------- rewriting


@dataclass
class _Buffer:
    key: tuple[str, str | None]
    tables: dict[str, list[pa.Table]] = field(default_factory=lambda: defaultdict(list))
    meta: dict[str, dict[str, str]] = field(default_factory=dict)
    docs: list[list[str | None]] = field(default_factory=list)
    committed_at: str = ""
    rows: int = 0
    nbytes: int = 0

    def add(self, dataset: str, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self.tables[dataset].append(table)
        self.nbytes += table.nbytes
        if dataset not in self.meta:
            raw = table.schema.metadata or {}
            self.meta[dataset] = {k.decode(): v.decode() for k, v in raw.items()}
        self.rows = max(self.rows, sum(t.num_rows for t in self.tables[dataset]))


@dataclass
class CompactReport:
    generation: str = ""
    run_id: str = ""
    records_before: int = 0
    records_after: int = 0
    unchanged: int = 0
    rewritten: int = 0
    superseded: int = 0
    new_records: int = 0
    deleted_documents: int = 0
    rows_before: dict[str, int] = field(default_factory=dict)
    rows_after: dict[str, int] = field(default_factory=dict)
    recovered: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Writer:
    """Stages new parts and writes their records (step 1)."""

    def __init__(self, store: OutputStore, shard: str, run_id: str, part_rows: int) -> None:
        self.store = store
        self.shard = shard
        self.run_id = run_id
        self.part_rows = part_rows
        self.seq = 0
        self.written: list[CommitRecord] = []

    def flush(self, buf: _Buffer) -> None:
        if not buf.docs and not any(buf.tables.values()):
            return
        name = f"part-{self.shard}-{self.seq:06d}.parquet"
        files: dict[str, str] = {}
        counts: dict[str, int] = {}
        for dataset in DATASETS:
            tables = buf.tables.get(dataset) or []
            if not tables:
                counts[dataset] = 0
                continue
            table = pa.concat_tables(tables, promote_options="permissive")
            table = table.replace_schema_metadata(None)
            meta = {**buf.meta.get(dataset, {}), "oci_genai_batch.compacted_by": self.run_id}
            rel = f"{dataset}/{name}"
            self.store.stage_parquet(rel, table, meta)
            files[dataset] = rel
            counts[dataset] = table.num_rows
        rec = CommitRecord(
            shard=self.shard,
            seq=self.seq,
            run_id=self.run_id,
            committed_at=buf.committed_at,
            embed_fp=buf.key[0],
            summary_fp=buf.key[1],
            files=files,
            docs=buf.docs,
            counts=counts,
            writer=self.store.writer,
        )
        self.store.write_json(record_path(rec), rec.to_json(), exclusive=True)
        rec.docs = []  # written: what is kept of it is its header
        self.written.append(rec)
        self.seq += 1
        buf.tables = defaultdict(list)
        buf.docs = []
        buf.meta = {}
        buf.rows = 0
        buf.nbytes = 0
        buf.committed_at = ""


def _filtered(store: OutputStore, rel: str, keep: set[str]) -> pa.Table:
    table = pq.read_table(store.path(rel), filesystem=store.fs)
    if not keep:
        return table.slice(0, 0)
    mask = pc.is_in(table.column("doc_id"), value_set=pa.array(sorted(keep), pa.string()))
    return table.filter(mask)


def _rewrite(store: OutputStore, plan: _Plan, i: int, buf: _Buffer) -> None:
    rec = plan.records[i]
    kept = plan.kept_docs(i)
    embed = {str(d[0]) for d in kept if d[2]}
    summary = {str(d[0]) for d in kept if d[3]}
    for dataset, keep in (("embeddings", embed), ("summaries", summary)):
        rel = rec.files.get(dataset)
        if rel and keep:
            buf.add(dataset, _filtered(store, rel, keep))
    rel = rec.files.get("failures")
    keys = plan.fail_keys.get(i, [])
    if rel and any(plan.failure_kept(i, *k) for k in keys):
        table = pq.read_table(store.path(rel), filesystem=store.fs)
        mask = pa.array([plan.failure_kept(i, *k) for k in keys], pa.bool_())
        buf.add("failures", table.filter(mask))
    buf.docs.extend(kept)
    buf.committed_at = max(buf.committed_at, rec.committed_at)


def _next_generation(store: OutputStore) -> int:
    seen = [0]
    for name in store.list_files(COMPACTIONS):
        if name.startswith(SHARD_PREFIX) and name.endswith(".json"):
            seen.append(int(name[len(SHARD_PREFIX) : -len(".json")]))
    for shard in store.list_dirs(COMMITS):
        if shard.startswith(SHARD_PREFIX):
            seen.append(int(shard[len(SHARD_PREFIX) :]))
    return max(seen) + 1


def _sweep(store: OutputStore, records: Iterable[CommitRecord]) -> int:
    """Remove what no record names from the datasets (files of runs killed before their
    commit record: a reader would see them); publish staged files a record names."""
    named: dict[str, CommitRecord] = {}
    for rec in records:
        for rel in rec.files.values():
            named[rel] = rec
    removed = 0
    for dataset in DATASETS:
        for staged in store.staged_files(dataset):
            rel = f"{dataset}/{final_name(staged.rpartition('/')[2])}"
            owner = named.get(rel)
            if owner is not None and store.temp_name(rel, writer=owner.writer or "") == staged:
                store.publish(rel, writer=owner.writer or "")
            else:
                store.delete(staged)
                removed += 1
        for name in store.list_files(dataset):
            rel = f"{dataset}/{name}"
            if name.startswith("part-") and name.endswith(".parquet") and rel not in named:
                store.delete(rel)
                removed += 1
    return removed


def _compact(
    store: OutputStore, run_id: str, part_rows: int, report: CompactReport
) -> CompactReport:
    report.recovered = finish_pending(store)
    finish_presence(store)
    plan = _Plan()
    try:
        return _compact_planned(store, run_id, part_rows, report, plan)
    finally:
        plan.close()


def _compact_planned(
    store: OutputStore, run_id: str, part_rows: int, report: CompactReport, plan: _Plan
) -> CompactReport:
    plan.load(Checkpoint(store).iter_records())
    records = plan.records  # headers, oldest first
    _sweep(store, records)
    report.records_before = len(records)
    for rec in records:
        for dataset in DATASETS:
            report.rows_before[dataset] = report.rows_before.get(dataset, 0) + int(
                rec.counts.get(dataset, 0)
            )
    report.deleted_documents = plan.compute(deletion_log_ids(store), present_ids(store))
    plan.load_failures(store)

    unchanged: list[int] = []
    rewrite: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    superseded: list[int] = []
    small: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        entries, kept, same = plan.counts(i)
        keys = plan.fail_keys.get(i, [])
        fails_kept = [plan.failure_kept(i, *k) for k in keys]
        key = (rec.embed_fp, rec.summary_fp)
        if same == entries and all(fails_kept):  # what is kept is the record's docs
            rows = max((int(v) for v in rec.counts.values()), default=0)
            if rows < max(1, part_rows // 4):
                small[key].append(i)
            unchanged.append(i)
        elif not kept and not any(fails_kept):
            superseded.append(i)
        else:
            rewrite[key].append(i)
    merged: set[int] = set()
    for key, few in small.items():
        if len(few) + len(rewrite.get(key, [])) >= 2:  # small parts merge
            for i in few:
                merged.add(i)
                rewrite[key].append(i)
    unchanged = [i for i in unchanged if i not in merged]
    report.unchanged = len(unchanged)
    report.superseded = len(superseded)
    report.rewritten = sum(len(g) for g in rewrite.values())
    if not superseded and not rewrite:
        report.records_after = len(records)
        report.rows_after = dict(report.rows_before)
        log.info("compact: nothing to do (%d records, all current)", len(records))
        return report

    gen = _gen_name(_next_generation(store))
    report.generation = gen
    writer = _Writer(store, gen, run_id, part_rows)
    # step 1: stage the new parts and write their records
    for key, group in rewrite.items():
        buf = _Buffer(key)
        for i in sorted(group):
            _rewrite(store, plan, i, buf)
            if buf.rows >= part_rows or buf.nbytes >= PART_BYTES:
                writer.flush(buf)
        writer.flush(buf)
    old = [i for members in rewrite.values() for i in members] + superseded
    manifest = {
        "generation": gen,
        "run_id": run_id,
        "started_at": datetime.now(UTC).isoformat(),
        "records": [record_path(r) for r in writer.written],
        "superseded": [
            {
                "record": record_path(records[i]),
                "identity": _identity(records[i]),
                "files": sorted(records[i].files.values()),
            }
            for i in sorted(old)
        ],
        "done": False,
    }
    # step 2: the commit point
    store.write_json(f"{COMPACTIONS}/{gen}.json", manifest, exclusive=True)
    # step 3: publish the new parts, remove the superseded ones
    _roll_forward(store, manifest)
    report.new_records = len(writer.written)
    report.records_after = len(unchanged) + len(writer.written)
    kept_records = [records[i] for i in unchanged] + writer.written
    for rec in kept_records:
        for dataset in DATASETS:
            report.rows_after[dataset] = report.rows_after.get(dataset, 0) + int(
                rec.counts.get(dataset, 0)
            )
    return report


def compact(
    output: str,
    *,
    settings: StorageSettings | None = None,
    part_rows: int = DEFAULT_PART_ROWS,
    run_id: str | None = None,
    store: OutputStore | None = None,
    on_done: Callable[[CompactReport], None] | None = None,
) -> CompactReport:
    """Rewrite ``output`` to its current rows (see the module docstring), holding the
    output's run lease. Safe to run again after any interruption: it finishes first what
    an interrupted compaction left. Writes ``_state/compact.json`` (the last report)."""
    started = time.monotonic()
    store = store or OutputStore(output, settings=settings)
    run_id = run_id or f"compact-{new_run_id()}"
    report = CompactReport(run_id=run_id)
    if not store.list_dirs("_state"):
        raise ConfigError(
            f"output {store.uri}: not an output of a run (no _state/ in it); nothing to compact"
        )
    with run_lease(store, run_id):
        _compact(store, run_id, part_rows, report)
        report.seconds = round(time.monotonic() - started, 3)
        store.write_json("_state/compact.json", report.to_json())
    log.info(
        "compact %s: %d records -> %d (%d unchanged, %d rewritten, %d superseded),"
        " embeddings %d -> %d rows, %.1f s",
        report.generation or "(nothing to do)",
        report.records_before,
        report.records_after,
        report.unchanged,
        report.rewritten,
        report.superseded,
        report.rows_before.get("embeddings", 0),
        report.rows_after.get("embeddings", 0),
        report.seconds,
    )
    if on_done:
        on_done(report)
    return report


__all__ = ["COMPACTIONS", "CompactReport", "compact", "finish_pending"]
