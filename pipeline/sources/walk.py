"""Listing a local directory safely: symbolic links, loops and undecodable names.

pyarrow's local listing follows every directory link, so a loop (``ln -s . self``) never
ends, and a file name that is not UTF-8 aborts it. This walker lists with ``os.scandir``
and keeps these rules:

- Each directory is entered once, tracked by ``(st_dev, st_ino)``: listing always
  terminates, and a directory reached twice (through a link) is not read twice.
- Each regular file is listed once, tracked the same way; a path without links wins over
  one through a link, then the first in sorted order.
- A link whose target lies outside the source root is not followed unless
  ``follow_links``; it becomes a ``LinkOutsideSource`` problem. A link to a directory
  that contains it is a ``SymlinkLoop`` problem; a dangling link a ``BrokenLink``.
- A name that is not valid UTF-8 is an ``UndecodableName`` problem, shown with its bad
  bytes escaped (``caf\\xe9.txt``).
- Names starting with ``.`` are not entered (they are never read anyway); special files
  (FIFOs, sockets, devices) are left out: reading one could block forever.

Problems are :class:`FoundFile` entries with ``error_class`` set; the caller turns them
into failure rows.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

from pipeline.sources.location import FoundFile

_Key = tuple[int, int]


def _shown(text: str) -> str:
    """``text`` with bytes that are not UTF-8 escaped (``\\xe9``), safe for JSON."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def _decodable(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@dataclass
class _Candidate:
    found: FoundFile
    via_link: bool


class _Walk:
    def __init__(self, root: str, recursive: bool, follow_links: bool) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self.recursive = recursive
        self.follow_links = follow_links
        self.dirs: set[_Key] = set()
        self.files: dict[_Key, _Candidate] = {}
        self.problems: list[FoundFile] = []
        # directory links are followed after the real tree, so real paths win
        self.links: deque[tuple[str, str]] = deque()

    def problem(self, path: str, rel: str, error_class: str, error: str, is_dir: bool) -> None:
        self.problems.append(
            FoundFile(_shown(path), _shown(rel), 0, error_class, error, is_dir=is_dir)
        )

    def tree(self, top: str, top_rel: str, via_link: bool) -> None:
        """Every entry under ``top`` (a directory not yet entered), depth first."""
        stack = [(top, top_rel)]
        while stack:
            path, rel = stack.pop()
            try:
                st = os.stat(path)
                if (st.st_dev, st.st_ino) in self.dirs:
                    continue
                self.dirs.add((st.st_dev, st.st_ino))
                with os.scandir(path) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                self.problem(
                    path,
                    rel or ".",
                    "ReadError",
                    f"directory {_shown(path)} cannot be listed: {exc.strerror or exc}",
                    True,
                )
                continue
            subdirs = []
            for entry in entries:
                entry_rel = f"{rel}/{entry.name}" if rel else entry.name
                if entry.name.startswith("."):
                    continue
                if not _decodable(entry.name):
                    self.problem(
                        entry.path,
                        entry_rel,
                        "UndecodableName",
                        f"file name {_shown(entry.path)} is not valid UTF-8; rename it to read it",
                        entry.is_dir(follow_symlinks=False),
                    )
                    continue
                if entry.is_symlink():
                    self.link(entry.path, entry_rel)
                elif entry.is_dir(follow_symlinks=False):
                    if self.recursive:
                        subdirs.append((entry.path, entry_rel))
                elif entry.is_file(follow_symlinks=False):
                    self.file(entry.path, entry_rel, via_link, entry)
            stack.extend(reversed(subdirs))

    def file(
        self, path: str, rel: str, via_link: bool, entry: os.DirEntry[str] | None = None
    ) -> None:
        try:
            # a DirEntry of a regular file caches its stat (one system call, no lookup)
            st = entry.stat(follow_symlinks=False) if entry is not None else os.stat(path)
        except OSError as exc:
            self.problem(path, rel, "ReadError", f"file {path} cannot be read: {exc}", False)
            return
        if not stat.S_ISREG(st.st_mode):
            return
        key = (st.st_dev, st.st_ino)
        seen = self.files.get(key)
        if seen is None or (seen.via_link, seen.found.rel) > (via_link, rel):
            mtime = datetime.fromtimestamp(st.st_mtime, UTC)
            self.files[key] = _Candidate(FoundFile(path, rel, st.st_size, mtime=mtime), via_link)

    def link(self, path: str, rel: str) -> None:
        target = os.path.realpath(path)
        try:
            st = os.stat(path)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            self.problem(
                path, rel, "BrokenLink", f"link {path} points to {target}: {reason}", False
            )
            return
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir and not self.recursive:
            return
        if not self.follow_links and not _inside(target, self.real_root):
            kind = "directory" if is_dir else "file"
            self.problem(
                path,
                rel,
                "LinkOutsideSource",
                f"link {path} points to the {kind} {target}, outside the source"
                f" {self.real_root}; not followed (pass --follow-links to read it)",
                is_dir,
            )
            return
        if is_dir:
            self.links.append((path, rel))
        else:
            self.file(path, rel, True)

    def linked_dir(self, path: str, rel: str) -> None:
        target = os.path.realpath(path)
        try:
            st = os.stat(path)
        except OSError as exc:
            self.problem(path, rel, "BrokenLink", f"link {path}: {exc}", True)
            return
        if (st.st_dev, st.st_ino) not in self.dirs:
            self.tree(path, rel, True)
        elif _inside(os.path.realpath(os.path.dirname(path)), target):
            self.problem(
                path,
                rel,
                "SymlinkLoop",
                f"link {path} points to {target}, a directory that contains it (a loop);"
                " not followed",
                True,
            )
        # else: a second way into a directory already listed; its files are read once


def walk_local(root: str, *, recursive: bool = True, follow_links: bool = False) -> list[FoundFile]:
    """Files and problems under the local directory ``root``, sorted by relative path.

    See the module docstring for the rules. Never raises for an entry: an entry that
    cannot be listed is a ``ReadError`` problem.
    """
    walk = _Walk(root, recursive, follow_links)
    walk.tree(root, "", False)
    while walk.links:
        walk.linked_dir(*walk.links.popleft())
    found = [c.found for c in walk.files.values()] + walk.problems
    found.sort(key=lambda f: f.rel)
    return found
