"""Where a tailed file went when it was rotated: by rename (found by inode) or copied before a truncate.

logrotate's default renames the live file (``app.jsonl`` → ``app.jsonl.0``)
and creates a new one; the renamed inode may still get a few lines from a
producer's open descriptor, and its unread tail must not be lost. Its
``copytruncate`` mode copies the file (``app.jsonl.1``) and truncates the
original: the copy holds the lines past our offset. Both are looked for in
the file's own directory (and its symlink target's), where rotation puts them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from spoold.sources.position import Position

MAX_ENTRIES = 10_000  # a directory this large is not scanned entry by entry (stat per entry)


def find_inode(dirs: Iterable[str], identity: tuple[int, int]) -> str | None:
    """The path of the regular file with ``identity`` (st_dev, st_ino) in one of ``dirs``, if any."""
    dirs = list(dict.fromkeys(dirs))
    for d in dirs:  # readdir's d_ino first: no stat per entry
        for entry in _entries(d):
            try:
                if entry.inode() == identity[1] and _identity(entry) == identity:
                    return entry.path
            except OSError:
                continue
    for d in dirs:  # some filesystems (overlays) report another d_ino than st_ino
        entries = _entries(d)
        if len(entries) > MAX_ENTRIES:
            continue
        for entry in entries:
            try:
                if _identity(entry) == identity:
                    return entry.path
            except OSError:
                continue
    return None


def find_copy(pos: Position, dirs: Iterable[str], name: str) -> str | None:
    """A sibling of the file ``name`` that starts with the bytes ``pos`` has read: its copytruncate copy.

    Candidates are regular files other than ``pos``'s own inode whose name
    starts like ``name`` (``app.jsonl`` → ``app.jsonl.1``, ``app-20260101.jsonl``),
    newest first; the first whose prefix matches ``pos``'s fingerprint wins.
    """
    stem = os.path.basename(name).split(".", 1)[0]
    found: list[tuple[float, str]] = []
    for d in dict.fromkeys(dirs):
        for entry in _entries(d):
            if not entry.name.startswith(stem) or entry.path == name:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if _regular(st.st_mode) and (st.st_dev, st.st_ino) != pos.identity and st.st_size >= pos.offset:
                found.append((st.st_mtime, entry.path))
    for _, path in sorted(found, reverse=True):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if pos.prefix_matches(fd, os.fstat(fd).st_size):
                return path
        finally:
            os.close(fd)
    return None


def _entries(d: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(d) as it:
            return list(it)
    except OSError:
        return []


def _identity(entry: os.DirEntry[str]) -> tuple[int, int] | None:
    st = entry.stat(follow_symlinks=False)
    return (st.st_dev, st.st_ino) if _regular(st.st_mode) else None


def _regular(mode: int) -> bool:
    return stat.S_ISREG(mode)


__all__ = ["find_copy", "find_inode"]
