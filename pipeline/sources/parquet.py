"""Parquet sources: planning row-range units from file footers and reading them in bounded
record batches.

Only the footer is read to plan, and only the needed columns of the unit's row groups,
``batch_size`` rows at a time, to read: memory does not grow with the file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.errors import SourceError
from pipeline.models import Document, Failure, SourceBatch
from pipeline.sources.location import FoundFile
from pipeline.sources.options import ROWS_PER_UNIT, SourceOptions, SourceUnit
from pipeline.sources.validate import Validator, coerce_datetime, optional_str

_MAX_COLUMNS_IN_MESSAGE = 40


def _base_type(dtype: pa.DataType) -> pa.DataType:
    return dtype.value_type if pa.types.is_dictionary(dtype) else dtype


def _is_text_type(dtype: pa.DataType) -> bool:
    dtype = _base_type(dtype)
    return bool(
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_string_view(dtype)
        or pa.types.is_binary(dtype)
        or pa.types.is_large_binary(dtype)
        or pa.types.is_binary_view(dtype)
        or pa.types.is_fixed_size_binary(dtype)
    )


def _is_id_type(dtype: pa.DataType) -> bool:
    return _is_text_type(dtype) or pa.types.is_integer(_base_type(dtype))


def check_schema(schema: pa.Schema, options: SourceOptions, named: str) -> None:
    """Raise :class:`SourceError` unless ``schema`` has usable id, text and passthrough
    columns. ``named`` introduces the file in the message ("source data/x.parquet")."""
    names = schema.names
    shown = ", ".join(names[:_MAX_COLUMNS_IN_MESSAGE])
    if len(names) > _MAX_COLUMNS_IN_MESSAGE:
        shown += f", … ({len(names)} in all)"
    required = [
        (options.id_column, "--id-column"),
        (options.text_column, "--text-column"),
    ] + [(name, "--passthrough") for name in options.passthrough]
    for column, flag in required:
        if column not in names:
            hint = f"set {flag}" if flag != "--passthrough" else f"check {flag}"
            raise SourceError(f"{named} has no column {column!r} (columns: {shown}); {hint}")
    id_type = schema.field(options.id_column).type
    if not _is_id_type(id_type):
        raise SourceError(
            f"{named}: id column {options.id_column!r} has type {id_type}; "
            "expected a string or integer column"
        )
    text_type = schema.field(options.text_column).type
    if not _is_text_type(text_type):
        raise SourceError(
            f"{named}: text column {options.text_column!r} has type {text_type}; "
            "expected a string or binary column"
        )


class UnreadableFile(SourceError):
    """A Parquet file whose footer cannot be read: corrupt (``CorruptParquet``, for good)
    or an I/O error (``ReadError``, may pass)."""

    def __init__(self, message: str, error_class: str) -> None:
        super().__init__(message)
        self.error_class = error_class

    def as_found(self, found: FoundFile) -> FoundFile:
        """``found`` marked with this problem, for a failed unit."""
        return FoundFile(found.path, found.rel, found.size, self.error_class, str(self))


def _error_class(exc: Exception) -> str:
    # pyarrow reports bad bytes (bad magic, thrift, decompression, checksums) as
    # ArrowInvalid or as a plain OSError with no errno; a real I/O error carries an errno
    if isinstance(exc, OSError) and exc.errno is not None:
        return "ReadError"
    return "CorruptParquet"


def _open_error(named: str, exc: Exception) -> UnreadableFile:
    return UnreadableFile(f"{named} cannot be read as Parquet: {exc}", _error_class(exc))


def plan_file(
    fs: pafs.FileSystem, found: FoundFile, unit_path: str, options: SourceOptions, named: str
) -> list[SourceUnit]:
    """Units of one Parquet file: consecutive row groups of up to about ``ROWS_PER_UNIT``
    rows each. A file without rows is still one (empty) unit, so that it shows in plans.

    Raises :class:`UnreadableFile` (introduced by ``named``) when the footer cannot be
    read, :class:`SourceError` when the schema lacks a needed column.
    """
    try:
        with fs.open_input_file(found.path) as handle:
            meta = open_parquet(handle).metadata
            schema = meta.schema.to_arrow_schema()
    except (pa.ArrowException, OSError) as exc:
        raise _open_error(named, exc) from exc
    check_schema(schema, options, named)
    total = meta.num_rows
    if total == 0:
        return [SourceUnit(unit_path, "parquet", 0, 0, found.size)]
    units: list[SourceUnit] = []
    start = end = 0
    for index in range(meta.num_row_groups):
        rows = meta.row_group(index).num_rows
        if end > start and end - start + rows > ROWS_PER_UNIT:
            units.append(_unit(unit_path, start, end, total, found.size))
            start = end
        end += rows
    if end > start:
        units.append(_unit(unit_path, start, end, total, found.size))
    return units


def _unit(path: str, start: int, end: int, total: int, size: int) -> SourceUnit:
    # Bytes are shared out by rows: close enough for balancing, and needs no more reads.
    share = round(size * (end - start) / total) if total else size
    return SourceUnit(path, "parquet", start, end, share)


def _values(column: pa.Array | pa.ChunkedArray) -> list[Any]:
    # Nanosecond temporal values cannot become datetime objects without pandas.
    dtype = column.type
    if (
        pa.types.is_timestamp(dtype) or pa.types.is_time64(dtype) or pa.types.is_duration(dtype)
    ) and dtype.unit == "ns":
        if pa.types.is_timestamp(dtype):
            target: pa.DataType = pa.timestamp("us", dtype.tz)
        elif pa.types.is_duration(dtype):
            target = pa.duration("us")
        else:
            target = pa.time64("us")
        column = column.cast(target, safe=False)
    return column.to_pylist()


def _row_groups(meta: pq.FileMetaData, start: int, end: int) -> list[tuple[int, int, int]]:
    """``(index, first row, rows)`` of the row groups overlapping ``[start, end)``."""
    groups: list[tuple[int, int, int]] = []
    offset = 0
    for index in range(meta.num_row_groups):
        rows = meta.row_group(index).num_rows
        if offset < end and offset + rows > start:
            groups.append((index, offset, rows))
        offset += rows
    return groups


def open_parquet(handle: Any) -> pq.ParquetFile:
    # Page checksums, where the writer stored them, turn silent corruption into an error.
    return pq.ParquetFile(handle, page_checksum_verification=True)


def read_parquet_unit(
    fs: pafs.FileSystem,
    fs_path: str,
    unit: SourceUnit,
    options: SourceOptions,
    validator: Validator,
    losers: Mapping[int, str] | None = None,
) -> Iterator[SourceBatch]:
    """Yield the unit's rows as batches of at most ``options.batch_size`` documents.

    Row numbers in failures are 0-based row indices within the file. A file that cannot
    be opened is one failure row; a row group that cannot be decoded is one failure row
    naming its rows (``rows a..b``), and the row groups after it are still read.
    ``losers`` maps rows to the place their id was first read (:mod:`.duplicates`): those
    rows are ``DuplicateId`` failures. Raises :class:`SourceError` only when the file
    lacks the id/text columns.
    """
    named = f"source file {unit.path}"
    try:
        handle = fs.open_input_file(fs_path)
        with handle:
            pf = open_parquet(handle)
            yield from _read_groups(pf, unit, options, validator, losers or {})
    except UnreadableFile as exc:
        yield _unit_failure(unit, exc.error_class, str(exc))
    except (pa.ArrowException, OSError) as exc:
        error = _open_error(named, exc)
        yield _unit_failure(unit, error.error_class, str(error))


def _unit_failure(unit: SourceUnit, error_class: str, message: str) -> SourceBatch:
    permanent = error_class != "ReadError"
    failure = Failure(None, "read", error_class, message, permanent, source=unit.path)
    return SourceBatch(documents=[], failures=[failure])


def _read_groups(
    pf: pq.ParquetFile,
    unit: SourceUnit,
    options: SourceOptions,
    validator: Validator,
    losers: Mapping[int, str],
) -> Iterator[SourceBatch]:
    named = f"source file {unit.path}"
    schema = pf.schema_arrow
    check_schema(schema, options, named)
    total = pf.metadata.num_rows
    start = max(unit.row_start, 0)
    end = total if unit.row_end is None else min(unit.row_end, total)
    wanted = _columns(schema.names, options)
    for index, first_row, rows in _row_groups(pf.metadata, start, end):
        row = first_row
        try:
            # One row group at a time, so that a corrupt one stops only itself.
            for batch in pf.iter_batches(
                batch_size=options.batch_size, row_groups=[index], columns=wanted
            ):
                first = row
                row += batch.num_rows
                lo, hi = max(start - first, 0), min(end - first, batch.num_rows)
                if lo >= hi:
                    continue
                if lo > 0 or hi < batch.num_rows:
                    batch = batch.slice(lo, hi - lo)
                out = _convert(batch, first + lo, unit.path, options, validator, losers)
                if out.documents or out.failures:
                    yield out
        except (pa.ArrowException, OSError) as exc:
            lo, hi = max(row, start), min(first_row + rows, end)
            if lo >= hi:
                continue
            error_class = _error_class(exc)
            message = f"{named}: rows {lo}..{hi - 1} (row group {index}) cannot be read: {exc}"
            failure = Failure(
                None,
                "read",
                "CorruptRowGroup" if error_class == "CorruptParquet" else error_class,
                message,
                permanent=error_class != "ReadError",
                source=f"{unit.path}#rows={lo}..{hi - 1}",
            )
            yield SourceBatch(documents=[], failures=[failure])


def _columns(names: Sequence[str], options: SourceOptions) -> list[str]:
    wanted = [options.id_column, options.text_column]
    for optional in (options.title_column, options.uri_column, options.updated_at_column):
        if optional and optional in names:
            wanted.append(optional)
    wanted.extend(options.passthrough)
    # A column may play two parts (e.g. passthrough of the id); read it once.
    return list(dict.fromkeys(wanted))


def _convert(
    batch: pa.RecordBatch,
    first_row: int,
    path: str,
    options: SourceOptions,
    validator: Validator,
    losers: Mapping[int, str],
) -> SourceBatch:
    columns = {name: _values(batch.column(name)) for name in batch.schema.names}
    ids = columns[options.id_column]
    texts = columns[options.text_column]
    titles = columns.get(options.title_column or "")
    uris = columns.get(options.uri_column or "")
    stamps = columns.get(options.updated_at_column or "")
    id_label = f"column {options.id_column!r}"
    out = SourceBatch(documents=[])
    for i in range(batch.num_rows):
        row = first_row + i
        if row in losers:
            out.failures.append(
                validator.duplicate(
                    ids[i], f"row {row} of {path}", f"{path}#row={row}", losers[row]
                )
            )
            continue
        checked = validator.check(
            ids[i],
            texts[i],
            where=f"row {row} of {path}",
            source=f"{path}#row={row}",
            id_label=id_label,
        )
        if not isinstance(checked, tuple):
            out.failures.append(checked)
            continue
        doc_id, text = checked
        out.documents.append(
            Document(
                doc_id=doc_id,
                text=text,
                title=optional_str(titles[i]) if titles is not None else None,
                uri=optional_str(uris[i]) if uris is not None else None,
                updated_at=coerce_datetime(stamps[i]) if stamps is not None else None,
                extra={name: columns[name][i] for name in options.passthrough},
            )
        )
    return out
