"""Duplicate ids across the shards of a run, found once when planning.

Within a shard, :func:`pipeline.sources.read_units` catches a repeated id with one
validator. Shards run apart (Airflow mapped tasks, maybe on other machines), so a copy in
another shard is found here instead: :func:`find_duplicates` reads only the id column of
every Parquet unit, in source order (unit order, then row order), and names every later
copy of an id (a "loser") with the place of its first copy (the "winner").
:class:`Duplicates` travels through the output's state as
``_state/runs/<run_id>/duplicates.json`` and each shard turns its losers into
``DuplicateId`` failure rows.

Two passes keep memory small. The first keeps an 8-byte hash per row in NumPy arrays
(8 MB per million rows), sorts them once and finds the hashes seen more than once. The
second re-reads the id column of only the row groups holding such a hash and compares the
ids themselves, so a hash collision never makes a false duplicate.

Ids of document files come from their paths (unique by construction) or from the line /
item number, so only Parquet units are scanned.

Known limit: the winner is the first copy by position, even if its text then turns out
invalid (empty, too large); within one shard a rejected first copy does not shadow a good
later one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.sources.location import fs_for_unit
from pipeline.sources.options import SourceOptions, SourceUnit
from pipeline.sources.validate import coerce_id

_VERSION = 1
#: Rows of the id column decoded at a time.
_SCAN_BATCH = 65_536


def duplicates_path(run_id: str) -> str:
    """Where a run's duplicates live, relative to the output root."""
    return f"_state/runs/{run_id}/duplicates.json"


@dataclass
class Duplicates:
    """The later copies of ids in a run: ``rows[file path][row] = winner``, where row is
    the 0-based row index in the Parquet file and winner names the first copy
    ("row 3 of /data/a.parquet")."""

    rows: dict[str, dict[int, str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(r) for r in self.rows.values())

    def losers(self, path: str) -> Mapping[int, str]:
        """Rows of the file ``path`` that are later copies, with their winner."""
        return self.rows.get(path, {})

    def to_json(self) -> dict[str, Any]:
        return {
            "version": _VERSION,
            "rows": {
                path: [[row, winner] for row, winner in sorted(rows.items())]
                for path, rows in self.rows.items()
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Duplicates:
        return cls(
            {
                path: {int(row): str(winner) for row, winner in pairs}
                for path, pairs in data.get("rows", {}).items()
            }
        )

    def save(self, store: Any, run_id: str) -> None:
        """Write to ``store`` (a :class:`pipeline.sinks.OutputStore`)."""
        store.write_json(duplicates_path(run_id), self.to_json())

    @classmethod
    def load(cls, store: Any, run_id: str) -> Duplicates | None:
        """The run's duplicates from ``store``; ``None`` when the plan found none."""
        rel = duplicates_path(run_id)
        if not store.exists(rel):
            return None
        return cls.from_json(store.read_json(rel))


def _groups(meta: pq.FileMetaData, unit: SourceUnit) -> Iterator[tuple[int, int, int, int]]:
    """``(row group, first row, lo, hi)``: the row groups of ``unit`` and the part of each
    (file rows ``[lo, hi)``) inside the unit's range."""
    end = meta.num_rows if unit.row_end is None else min(unit.row_end, meta.num_rows)
    offset = 0
    for index in range(meta.num_row_groups):
        rows = meta.row_group(index).num_rows
        lo, hi = max(offset, unit.row_start), min(offset + rows, end)
        if lo < hi:
            yield index, offset, lo, hi
        offset += rows


def _ids(pf: pq.ParquetFile, index: int, first: int, lo: int, hi: int, column: str) -> list[Any]:
    """Raw id values of file rows ``[lo, hi)`` of one row group (strings come back as
    ``str`` or ``None``, whatever the column's encoding)."""
    out: list[Any] = []
    row = first
    for batch in pf.iter_batches(batch_size=_SCAN_BATCH, row_groups=[index], columns=[column]):
        a, b = max(lo - row, 0), min(hi - row, batch.num_rows)
        if a < b:
            out.extend(batch.column(0).slice(a, b - a).to_pylist())
        row += batch.num_rows
    return out


def _hash(value: Any) -> int:
    # Python's str hash: salted per process, which is fine inside one plan; collisions
    # are weeded out by the second pass, which compares the ids themselves.
    doc_id = coerce_id(value)
    return hash("") if doc_id is None else hash(doc_id)


def _is_text(dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return bool(
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_string_view(dtype)
    )


def _hashes(raw: list[Any], text: bool) -> np.ndarray:
    """One hash per id value: strings as they are (the common case, 3x faster than
    coercing each), anything else (integers, bytes) through :func:`coerce_id`, so that
    ``7`` and ``"7"`` are the same id."""
    if text:
        return np.fromiter(map(hash, raw), dtype=np.int64, count=len(raw))
    return np.fromiter(map(_hash, raw), dtype=np.int64, count=len(raw))


def find_duplicates(
    units: list[SourceUnit], options: SourceOptions, *, filesystem: object = None
) -> Duplicates | None:
    """Every later copy of an id among the Parquet ``units`` (in this order), or ``None``
    when there is none. Row groups that cannot be read are left out: reading them gives
    a failure row anyway."""
    column = options.id_column
    parquet = [u for u in units if u.kind == "parquet"]
    hashes: list[np.ndarray] = []
    where: list[tuple[int, int, int, int, int]] = []  # unit, group, first, lo, hi
    for u, unit in enumerate(parquet):
        for pf, index, first, lo, hi in _open_groups(unit, filesystem):
            try:
                text = _is_text(pf.schema_arrow.field(column).type)
                raw = _ids(pf, index, first, lo, hi, column)
            except (pa.ArrowException, OSError, KeyError):
                continue  # reading the unit reports it
            hashes.append(_hashes(raw, text))
            where.append((u, index, first, lo, hi))
    if not hashes:
        return None
    ordered = np.sort(np.concatenate(hashes))
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    # rows without an id are not duplicates (blank ids are weeded out in the second pass)
    repeated = repeated[~np.isin(repeated, [hash(""), hash(None)])]
    del ordered
    if not repeated.size:
        return None
    # second pass: only row groups holding a repeated hash, ids compared exactly
    first_seen: dict[str, str] = {}
    rows: dict[str, dict[int, str]] = defaultdict(dict)
    for group_hashes, (u, index, first, lo, hi) in zip(hashes, where, strict=True):
        hits = np.flatnonzero(np.isin(group_hashes, repeated))
        if not hits.size:
            continue
        unit = parquet[u]
        fs, fs_path = fs_for_unit(unit.path, filesystem)
        with fs.open_input_file(fs_path) as handle:
            raw = _ids(pq.ParquetFile(handle), index, first, lo, hi, column)
        for offset in hits.tolist():
            doc_id = coerce_id(raw[offset])
            if doc_id is None:
                continue
            here = f"row {lo + offset} of {unit.path}"
            winner = first_seen.setdefault(doc_id, here)
            if winner != here:
                rows[unit.path][lo + offset] = winner
    found = Duplicates({path: dict(r) for path, r in rows.items() if r})
    return found if len(found) else None


def _open_groups(
    unit: SourceUnit, filesystem: object
) -> Iterator[tuple[pq.ParquetFile, int, int, int, int]]:
    fs, fs_path = fs_for_unit(unit.path, filesystem)
    try:
        handle = fs.open_input_file(fs_path)
    except (pa.ArrowException, OSError):
        return
    with handle:
        try:
            pf = pq.ParquetFile(handle)
        except (pa.ArrowException, OSError):
            return
        for index, first, lo, hi in _groups(pf.metadata, unit):
            yield pf, index, first, lo, hi
