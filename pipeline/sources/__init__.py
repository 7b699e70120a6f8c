"""Document sources: from a source URI to bounded batches of validated documents.

A source is a Parquet file, a directory holding a Parquet dataset, a glob of files
(``data/*.parquet``), or a directory of documents (.txt, .md, .rst, .text, .html, .htm,
.json, .jsonl, each optionally .gz). :func:`list_units` plans it into shard-able units
(files, or row ranges of Parquet files); :func:`read_unit` reads one unit in batches of at
most ``batch_size`` documents plus a :class:`Failure` for every rejected input;
:func:`read_source` reads them all, with duplicate ids detected across the whole source.

A directory holding any Parquet file is a Parquet dataset: only its Parquet files are
read. Names starting with ``.`` are skipped everywhere, and names starting with ``_``
(``_SUCCESS``, ``_metadata``) in Parquet datasets.

Nothing found wrong with one entry stops a run: a link loop, a link out of the source, a
name that is not UTF-8 (see :mod:`.walk`) or a Parquet file of a dataset whose footer is
corrupt is planned as a ``"failed"`` unit, which reads as one failure row.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.errors import SourceError
from pipeline.models import Failure, SourceBatch
from pipeline.sources.batching import rebatch
from pipeline.sources.duplicates import Duplicates, find_duplicates
from pipeline.sources.files import read_file_unit
from pipeline.sources.location import (
    FoundFile,
    compile_glob,
    fs_for_unit,
    is_hidden,
    join,
    list_files,
    matches,
    resolve,
)
from pipeline.sources.options import (
    DOCUMENT_SUFFIXES,
    FAILED,
    GZIP_SUFFIX,
    PARQUET_SUFFIXES,
    SourceOptions,
    SourceUnit,
)
from pipeline.sources.parquet import UnreadableFile, plan_file, read_parquet_unit
from pipeline.sources.validate import Validator
from pipeline.sources.walk import walk_local

__all__ = [
    "Duplicates",
    "SourceOptions",
    "SourceUnit",
    "find_duplicates",
    "list_units",
    "read_source",
    "read_unit",
    "read_units",
]


def _is_document(rel: str) -> bool:
    """A document file by its name: a known suffix (optionally .gz), or no suffix at all
    (what it is, is then told by its content)."""
    name = rel.lower()
    if name.endswith(GZIP_SUFFIX):
        name = name[: -len(GZIP_SUFFIX)]
    return name.endswith(DOCUMENT_SUFFIXES) or "." not in name.rpartition("/")[2]


def _list(
    fs: pafs.FileSystem, path: str, options: SourceOptions, *, recursive: bool = True
) -> list[FoundFile]:
    if isinstance(fs, pafs.LocalFileSystem):
        # links, loops and undecodable names need the local walker (see walk.py)
        return walk_local(path, recursive=recursive, follow_links=options.follow_links)
    return list_files(fs, path, recursive=recursive)


def _find(
    uri: str, fs: pafs.FileSystem, path: str, pattern: str | None, options: SourceOptions
) -> tuple[list[FoundFile], str, bool]:
    """``(files, root, single)``: the files the URI names, the directory their relative
    paths start from, and whether the URI named one file."""
    info = fs.get_file_info(path)
    if pattern is None:
        if info.type == pafs.FileType.NotFound:
            raise SourceError(f"source {uri} does not exist")
        if info.type == pafs.FileType.File:
            name = posixpath.basename(path)
            return [FoundFile(path, name, info.size or 0)], posixpath.dirname(path), True
        return _list(fs, path, options), path, False
    if info.type != pafs.FileType.Directory:
        raise SourceError(f"source {uri} does not exist: no directory {path}")
    regex = compile_glob(pattern)
    deep = "/" in pattern or "**" in pattern
    found = [
        f
        for f in _list(fs, path, options, recursive=deep)
        if regex.match(f.rel) or (f.is_dir and f.error_class)
    ]
    return found, path, False


def _failed_unit(found: FoundFile, unit_path: str, root: str | None = None) -> SourceUnit:
    return SourceUnit(
        unit_path, FAILED, size=0, root=root, error_class=found.error_class, error=found.error
    )


def list_units(uri: str, options: SourceOptions, *, filesystem: object = None) -> list[SourceUnit]:
    """Resolve ``uri`` to a sorted, deterministic list of units.

    ``uri`` is a path, a glob or a URI with a scheme (read with
    ``pyarrow.fs.FileSystem.from_uri``); ``filesystem`` may be a pyarrow or fsspec
    filesystem to read it with instead. Parquet files are checked up front (footer only)
    and split into units of whole row groups of about 50,000 rows at most.

    Raises :class:`SourceError` naming the URI when it does not exist, holds no usable
    file (the message names what was skipped and why), the one file it names is not
    readable Parquet, or a Parquet file lacks the id, text or a passthrough column.
    """
    loc = resolve(uri, filesystem)
    try:
        files, root, single = _find(uri, loc.fs, loc.path, loc.pattern, options)
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(f"source {uri} cannot be listed: {exc}") from exc
    if options.glob and not single:
        files = [f for f in files if matches(options.glob, f.rel) or f.is_dir]
    parquet = [
        f
        for f in files
        if f.rel.lower().endswith(PARQUET_SUFFIXES) and (single or not is_hidden(f.rel, "._"))
    ]
    units: list[SourceUnit] = []
    if parquet:
        units = [
            _failed_unit(f, join(loc.prefix, f.path))
            for f in files
            if f.is_dir and not is_hidden(f.rel, "._")
        ]
        for found in parquet:
            unit_path = join(loc.prefix, found.path)
            if found.error_class:
                units.append(_failed_unit(found, unit_path))
                continue
            named = f"source {uri}" if single else f"source {uri}: file {unit_path}"
            try:
                units.extend(plan_file(loc.fs, found, unit_path, options, named))
            except UnreadableFile as exc:
                if single:
                    raise
                # one bad file of a dataset is dead-lettered; the others are read
                units.append(_failed_unit(exc.as_found(found), unit_path))
    else:
        # Files picked by name (the URI itself, its glob, options.glob) are read whatever
        # their extension; a plain directory listing keeps only known document types.
        explicit = single or loc.pattern is not None or options.glob is not None
        unit_root = join(loc.prefix, root)
        units = [
            (
                _failed_unit(f, join(loc.prefix, f.path), unit_root)
                if f.error_class
                else SourceUnit(join(loc.prefix, f.path), "file", size=f.size, root=unit_root)
            )
            for f in files
            if (single or not is_hidden(f.rel, "."))
            and (explicit or _is_document(f.rel) or f.is_dir)
        ]
    readable = [u for u in units if u.kind != FAILED]
    if not readable:
        wanted = ", ".join(PARQUET_SUFFIXES + DOCUMENT_SUFFIXES)
        selected = f" matching glob {options.glob!r}" if options.glob else ""
        skipped = ""
        if units:
            shown = "; ".join(u.error or "" for u in units[:3])
            more = f" (and {len(units) - 3} more)" if len(units) > 3 else ""
            skipped = f"; skipped {len(units)}: {shown}{more}"
        raise SourceError(
            f"source {uri} has no usable files{selected} (looked for {wanted}, optionally .gz)"
            f"{skipped}"
        )
    units.sort(key=lambda u: (u.path, u.row_start))
    return units


def _read(
    unit: SourceUnit,
    options: SourceOptions,
    filesystem: object,
    validator: Validator,
    duplicates: Duplicates | None = None,
) -> Iterator[SourceBatch]:
    if unit.kind == FAILED:
        # found bad when planning (a link outside the source, a corrupt footer...):
        # one failure row naming the file; an I/O error may pass, the rest will not
        permanent = unit.error_class != "ReadError"
        message = unit.error or f"{unit.path} cannot be read"
        failure = Failure(
            None, "read", unit.error_class or "ReadError", message, permanent, source=unit.path
        )
        yield SourceBatch(documents=[], failures=[failure])
        return
    fs, fs_path = fs_for_unit(unit.path, filesystem)
    if unit.kind == "parquet":
        losers = duplicates.losers(unit.path) if duplicates is not None else None
        yield from read_parquet_unit(fs, fs_path, unit, options, validator, losers)
    elif unit.kind == "file":
        yield from read_file_unit(fs, fs_path, unit, options, validator)
    else:
        raise SourceError(f"unit {unit.path} has unknown kind {unit.kind!r}")


def read_unit(
    unit: SourceUnit,
    options: SourceOptions,
    *,
    filesystem: object = None,
    duplicates: Duplicates | None = None,
) -> Iterator[SourceBatch]:
    """Yield the unit's documents in batches of at most ``options.batch_size``, with a
    :class:`Failure` for each rejected input. Duplicate ids are detected within the unit,
    and against other units through ``duplicates`` (see :func:`read_units`).

    Pass the filesystem given to :func:`list_units`, if one was. Unreadable files and row
    groups are failure rows; raises :class:`SourceError` only when a Parquet file lacks
    the id or text column.
    """
    return _read(unit, options, filesystem, Validator(options), duplicates)


def read_units(
    units: list[SourceUnit],
    options: SourceOptions,
    *,
    filesystem: object = None,
    duplicates: Duplicates | None = None,
) -> Iterator[SourceBatch]:
    """Every unit of one shard in order, with one validator: a duplicate id in two units
    of the shard is caught (the first wins, the rest are ``DuplicateId`` failures naming
    where the first was read).

    ``duplicates`` (from :meth:`Duplicates.load`, written by the plan of a run with more
    than one shard) names rows whose id was first read in another shard: each of those
    is a ``DuplicateId`` failure too.
    """
    validator = Validator(options)
    for unit in units:
        yield from _read(unit, options, filesystem, validator, duplicates)


def read_source(
    uri: str, options: SourceOptions, *, filesystem: object = None
) -> Iterator[SourceBatch]:
    """Every unit of ``uri`` in order, duplicate ids detected across the whole source
    (the first wins), small batches of consecutive units merged up to ``batch_size``."""
    units = list_units(uri, options, filesystem=filesystem)
    validator = Validator(options)
    batches = (b for unit in units for b in _read(unit, options, filesystem, validator))
    return rebatch(batches, options.batch_size)
