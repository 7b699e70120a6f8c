"""Commit records, resume and the incremental index. State lives beside the data.

A shard writes its output in *parts*. Committing part ``seq`` of shard ``S``:

1. stage each table (``embeddings/``, ``summaries/``, ``failures/``) under a name unique
   to the writer that no reader sees (``OutputStore.stage_parquet``): locally
   ``DIR/.NAME.<writer>.tmp``, on object storage ``_state/staging/DIR/.NAME.<writer>.tmp``;
2. write ``_state/commits/S/<seq>.json`` atomically and only if absent (a hard link
   locally, a conditional PUT on object storage) — **this is the commit point**; the record
   names the writer whose staged files it commits;
3. publish the staged files under their final names (``OutputStore.publish``: a local
   rename; OCI RenameObject; copy then delete on S3).

On resume, ``recover(S)`` rolls step 3 forward for every committed part, deletes every
writer's leftover staged file of ``S`` and any final-named file of ``S`` that no commit
record names. So a kill at any instant loses no committed row and never leaves a
duplicate, and no file a reader sees is ever uncommitted.

One writer per shard: ``recover`` assumes no other live process writes shard ``S``, which
the shard lease (``pipeline.lease.shard_lease``) guarantees. While this process holds that
lease, ``commit`` first checks it is still ours, and a commit record is never overwritten:
a writer that lost its lease raises ``LockedError`` instead of committing beside the new one.
Records and temporary files of earlier versions (no ``writer``, ``.NAME.tmp``) still recover.

The index maps ``doc_id`` to the content hash last committed for it, per task (embed,
summary) and model fingerprint: a re-run skips what is already done for the same text and
the same model, and redoes a document whose text or model changed. It is compacted
(``pipeline.index``): ``compact_index`` folds the commit records into hash-partitioned
Parquet files under ``_state/index/`` with a manifest naming the records folded in, and
``load_index`` / ``recover`` read the newest manifest plus only the records it does not
hold, so start-up does not grow with the number of past runs, and a shard asks a local
disk-backed lookup instead of holding every document in memory.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline import index as _index
from pipeline.errors import LockedError
from pipeline.index import COMMITS, FAILED, OK, Compaction, Index
from pipeline.lease import active_shard_lease, check_shard_writer
from pipeline.sinks import OutputStore, final_name, is_temp_name

log = logging.getLogger(__name__)

DATASETS = ("embeddings", "summaries", "failures")


def fingerprint_id(fields: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def part_name(shard: str, seq: int) -> str:
    return f"part-{shard}-{seq:06d}.parquet"


@dataclass
class CommitRecord:
    shard: str
    seq: int
    run_id: str
    committed_at: str
    embed_fp: str
    summary_fp: str | None
    files: dict[str, str] = field(default_factory=dict)  # dataset -> relative path
    # [doc_id, content_hash, embed state or None, summary state or None]
    docs: list[list[str | None]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    # the OutputStore.writer that staged ``files``; None in records of earlier versions,
    # whose temporary files are ``.NAME.tmp``
    writer: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "seq": self.seq,
            "run_id": self.run_id,
            "committed_at": self.committed_at,
            "embed_fp": self.embed_fp,
            "summary_fp": self.summary_fp,
            "files": self.files,
            "docs": self.docs,
            "counts": self.counts,
            "writer": self.writer,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CommitRecord:
        return cls(**data)


def record_order(rec: CommitRecord) -> tuple[str, str, int]:
    """The order of commit records, oldest first: committed_at, shard, seq."""
    return (rec.committed_at, rec.shard, rec.seq)


class Checkpoint:
    def __init__(self, store: OutputStore) -> None:
        self.store = store

    def records(self, shard: str | None = None) -> list[CommitRecord]:
        """Every commit record (of ``shard``, or of all shards), oldest first (see
        :func:`record_order`)."""
        out = list(self.iter_records(shard))
        out.sort(key=record_order)
        return out

    def iter_records(self, shard: str | None = None) -> Iterator[CommitRecord]:
        """The records of :meth:`records` one at a time, in listing order (shard by shard,
        by file name), not sorted: for a caller that must not hold every record's
        ``docs`` at once (sort light copies with :func:`record_order`, which is stable
        over this order like :meth:`records`)."""
        shards = [shard] if shard else self.store.list_dirs(COMMITS)
        for s in shards:
            for name in self.store.list_files(f"{COMMITS}/{s}"):
                if not name.endswith(".json"):
                    continue  # a torn temporary file from a kill: not a commit
                yield CommitRecord.from_json(self.store.read_json(f"{COMMITS}/{s}/{name}"))

    def load_index(
        self, embed_fp: str, summary_fp: str | None, plain_embed_fp: str | None = None
    ) -> Index:
        """The index of what is committed under these fingerprints; ``plain_embed_fp`` is
        the embed fingerprint without the sectioned chunker (see :class:`Index`). The
        caller closes it (it holds a temporary file)."""
        return _index.load_index(self.store, embed_fp, summary_fp, plain_embed_fp)

    def compact_index(self) -> Compaction | None:
        """Fold the commit records not yet in the compacted index into it (see
        ``pipeline.index.compact``); None when there was nothing to fold."""
        return _index.compact(self.store)

    def recover(self, shard: str) -> tuple[int, list[str]]:
        """Finish interrupted commits of ``shard`` and remove what was never committed.

        Returns (next part sequence number, relative paths removed). Raises LockedError,
        deleting nothing, when another live process holds the shard's lease."""
        check_shard_writer(self.store, shard)
        # records the compacted index holds were published when they were folded in: only
        # the others can need a roll-forward, and only theirs are read
        manifest, todo = _index.unfolded(self.store, shard)
        seqs = _index.commit_names(self.store, shard).get(shard, [])
        records = [CommitRecord.from_json(self.store.read_json(rel)) for rel in todo]
        folded = set(manifest.folded.seqs(shard)) if manifest else set()
        committed = {f"{dataset}/{part_name(shard, seq)}" for seq in folded for dataset in DATASETS}
        for rec in records:
            for rel in rec.files.values():
                # roll forward a commit killed before its renames
                self.store.publish(rel, writer=rec.writer or "")
                committed.add(rel)
        removed: list[str] = []
        prefix = f"part-{shard}-"
        for dataset in DATASETS:
            # every staged file left now is a dead writer's (one writer per shard)
            for staged in self.store.staged_files(dataset):
                if final_name(posixpath.basename(staged)).startswith(prefix):
                    self.store.delete(staged)
                    removed.append(staged)
            for name in self.store.list_files(dataset):
                if is_temp_name(name) or not name.startswith(prefix):
                    continue
                # a final name no record holds: a part written in place by an earlier
                # version on object storage, killed before its commit record
                if f"{dataset}/{name}" not in committed:
                    self.store.delete(f"{dataset}/{name}")
                    removed.append(f"{dataset}/{name}")
        for name in self.store.list_files(f"{COMMITS}/{shard}"):
            if name.endswith(".tmp"):
                self.store.delete(f"{COMMITS}/{shard}/{name}")
        if removed:
            log.info("shard %s: removed %d uncommitted file(s)", shard, len(removed))
        next_seq = max([*seqs, *folded], default=-1) + 1
        return next_seq, removed

    def commit(self, record: CommitRecord) -> None:
        """Commit one part whose files this store staged. Raises LockedError when this
        process's shard lease was lost, or another writer committed the same part."""
        lease = active_shard_lease(self.store, record.shard)
        if lease is not None:
            lease.check()
        if record.writer is None:
            record.writer = self.store.writer
        rel = _index.record_path(record.shard, record.seq)
        try:
            self.store.write_json(rel, record.to_json(), exclusive=True)
        except FileExistsError:
            raise LockedError(
                f"shard {record.shard}: part {record.seq} was committed by another writer"
                f" ({self.store.display(rel)}); is a second process writing this shard?"
            ) from None
        for part in record.files.values():
            self.store.publish(part, writer=record.writer)


__all__ = [
    "COMMITS",
    "DATASETS",
    "FAILED",
    "OK",
    "Checkpoint",
    "CommitRecord",
    "Index",
    "fingerprint_id",
    "part_name",
    "record_order",
]
