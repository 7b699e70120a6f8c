"""Document sources: from a source URI to bounded batches of validated documents.

A source is a Parquet file, a directory holding a Parquet dataset, a glob of files
(``data/*.parquet``), or a directory of documents (.txt, .md, .rst, .text, .html, .htm,
.json, .jsonl, each optionally .gz). :func:`list_units` plans it into shard-able units
(files, or row ranges of Parquet files); :func:`read_unit` reads one unit in batches of at
most ``batch_size`` documents plus a :class:`Failure` for every rejected input;
:func:`read_source` reads them all, with duplicate ids detected across the whole source.

Sources live anywhere :mod:`pipeline.storage` reaches: a local path, ``oci://`` (listed
natively with paged ListObjects and read with one GetObject per object, see
:mod:`.objects`), ``s3://`` or any fsspec URI. ``SourceOptions.modified_since`` /
``modified_until`` keep only files and objects modified in that window; documents of
files record their uri, time modified, size, etag and md5.

A directory holding any Parquet file is a Parquet dataset: only its Parquet files are
read. Names starting with ``.`` are skipped everywhere, and names starting with ``_``
(``_SUCCESS``, ``_metadata``) in Parquet datasets.

Nothing found wrong with one entry stops a run: a link loop, a link out of the source, a
name that is not UTF-8 (see :mod:`.walk`) or a Parquet file of a dataset whose footer is
corrupt is planned as a ``"failed"`` unit, which reads as one failure row.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline import storage
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
    utc,
)
from pipeline.sources.objects import find_fsspec, find_oci, oci_client_of
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

log = logging.getLogger(__name__)

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
    inner = storage.fsspec_of(fs)
    if inner is not None:
        return find_fsspec(inner, path, recursive=recursive)  # with etags where given
    return list_files(fs, path, recursive=recursive)


def _find(
    uri: str, fs: pafs.FileSystem, path: str, pattern: str | None, options: SourceOptions
) -> tuple[Iterable[FoundFile], str, bool]:
    """``(files, root, single)``: the files the URI names, the directory their relative
    paths start from, and whether the URI named one file. ``files`` may be a generator
    (object storage): errors can surface while it is consumed."""
    deep = pattern is None or "/" in pattern or "**" in pattern
    client = oci_client_of(fs)
    if client is not None:
        return find_oci(client, uri, path, pattern, deep=deep)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        _missing_bucket(uri, fs, path)
    if pattern is None:
        if info.type == pafs.FileType.NotFound:
            raise SourceError(f"source {uri} does not exist")
        if info.type == pafs.FileType.File:
            name = posixpath.basename(path)
            found = FoundFile(path, name, info.size or 0, mtime=utc(info.mtime))
            return [found], posixpath.dirname(path), True
        return _list(fs, path, options), path, False
    if info.type != pafs.FileType.Directory:
        raise SourceError(f"source {uri} does not exist: no directory {path}")
    regex = compile_glob(pattern)
    found_files = (
        f
        for f in _list(fs, path, options, recursive=deep)
        if regex.match(f.rel) or (f.is_dir and f.error_class)
    )
    return found_files, path, False


def _missing_bucket(uri: str, fs: pafs.FileSystem, path: str) -> None:
    """Name the bucket when that is what is missing (object stores)."""
    if isinstance(fs, pafs.LocalFileSystem) or not path.strip("/"):
        return
    bucket = path.strip("/").split("/", 1)[0]
    if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
        raise SourceError(
            f"source {uri}: bucket {bucket} does not exist, or these credentials may not see it"
        )


def _is_dataset_file(found: FoundFile, single: bool) -> bool:
    return found.rel.lower().endswith(PARQUET_SUFFIXES) and (
        single or not is_hidden(found.rel, "._")
    )


@dataclass
class _Selection:
    """What the listing kept: the candidate files (the caller's unit list in the making),
    how many the modified window left out, and whether any Parquet file was seen (which
    makes the source a dataset, whatever the window kept)."""

    files: list[FoundFile] = field(default_factory=list)
    outside: int = 0
    dataset: bool = False


def _select(
    listed: Iterable[FoundFile], options: SourceOptions, *, single: bool, explicit: bool
) -> _Selection:
    """Filter the listing as it comes (glob, hidden names, kinds, modified window), so
    what is held is what becomes units, not the whole listing of a bucket."""
    kept = _Selection()
    for f in listed:
        if options.glob and not single and not (matches(options.glob, f.rel) or f.is_dir):
            continue
        if not single and is_hidden(f.rel, "."):
            continue
        dataset = _is_dataset_file(f, single)
        if not (dataset or explicit or f.is_dir or _is_document(f.rel)):
            continue
        kept.dataset = kept.dataset or dataset
        if not options.in_window(f.mtime):
            kept.outside += 1
            continue
        kept.files.append(f)
    return kept


def _failed_unit(found: FoundFile, unit_path: str, root: str | None = None) -> SourceUnit:
    return SourceUnit(
        unit_path, FAILED, size=0, root=root, error_class=found.error_class, error=found.error
    )


def _file_unit(found: FoundFile, unit_path: str, root: str) -> SourceUnit:
    return SourceUnit(
        unit_path,
        "file",
        size=found.size,
        root=root,
        mtime=found.mtime.isoformat() if found.mtime is not None else None,
        etag=found.etag,
        md5=found.md5,
    )


def _window_text(options: SourceOptions) -> str:
    def shown(moment: datetime | None, default: str) -> str:
        return moment.isoformat().replace("+00:00", "Z") if moment else default

    since = shown(options.modified_since, "the beginning")
    return f"from {since} to {shown(options.modified_until, 'now')}"


def list_units(uri: str, options: SourceOptions, *, filesystem: object = None) -> list[SourceUnit]:
    """Resolve ``uri`` to a sorted, deterministic list of units.

    ``uri`` is a path, a glob or a URI with a scheme (``oci://bucket@namespace/prefix``
    listed natively, see :mod:`.objects`; anything else through
    :mod:`pipeline.storage`); ``filesystem`` may be a pyarrow or fsspec filesystem to
    read it with instead. Parquet files are checked up front (footer only) and split into
    units of whole row groups of about 50,000 rows at most. Files and objects modified
    outside ``options``' modified window are left out; when that leaves nothing, the
    list is empty (a nightly run with nothing new has nothing to do).

    Raises :class:`SourceError` naming the URI when it does not exist, holds no usable
    file (the message names what was skipped and why), the one file it names is not
    readable Parquet, or a Parquet file lacks the id, text or a passthrough column;
    :class:`~pipeline.errors.AuthError` naming the auth mode when the store refuses the
    credentials.
    """
    loc = resolve(uri, filesystem)
    try:
        listed, root, single = _find(uri, loc.fs, loc.path, loc.pattern, options)
        # Files picked by name (the URI itself, its glob, options.glob) are read whatever
        # their extension; a plain directory listing keeps only known document types.
        explicit = single or loc.pattern is not None or options.glob is not None
        selection = _select(listed, options, single=single, explicit=explicit)
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(f"source {uri} cannot be listed: {exc}") from exc
    files = selection.files
    units: list[SourceUnit] = []
    if selection.dataset:
        parquet = [f for f in files if _is_dataset_file(f, single)]
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
        unit_root = join(loc.prefix, root)
        units = [
            (
                _failed_unit(f, join(loc.prefix, f.path), unit_root)
                if f.error_class
                else _file_unit(f, join(loc.prefix, f.path), unit_root)
            )
            for f in files
        ]
    readable = [u for u in units if u.kind != FAILED]
    if not readable and selection.outside:
        log.info(
            "source %s: none of its %d usable file(s) was modified %s; nothing to read",
            uri,
            selection.outside,
            _window_text(options),
        )
    elif not readable:
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
    elif selection.outside:
        log.info(
            "source %s: %d file(s) modified %s, %d left out by the modified window",
            uri,
            len(readable),
            _window_text(options),
            selection.outside,
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
    try:
        for unit in units:
            yield from _read(unit, options, filesystem, validator, duplicates)
    finally:
        validator.seen.close()  # its temporary file, if the ids outgrew memory


def read_source(
    uri: str, options: SourceOptions, *, filesystem: object = None
) -> Iterator[SourceBatch]:
    """Every unit of ``uri`` in order, duplicate ids detected across the whole source
    (the first wins), small batches of consecutive units merged up to ``batch_size``."""
    units = list_units(uri, options, filesystem=filesystem)
    validator = Validator(options)
    batches = (b for unit in units for b in _read(unit, options, filesystem, validator))
    return rebatch(batches, options.batch_size)
