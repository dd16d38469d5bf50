"""Rows committed to a table not verified yet, held in the spool until a later look shows them still there.

Why (the reasoning is in docs/fleet.md): on a catalog whose
create is not atomic, another host's late create can replace a new table
after this host committed to it, and the commit is then referenced by nothing.
So until this spool's commits are verified in a table, the spool files whose
rows were committed are not deleted but moved here, with a record of the
commits that hold their rows::

    <spool>/<table>/.held/flush-<seq>.jsonl    a flush file, moved here after its commit
    <spool>/<table>/.held/backfill-<n>.jsonl   a backfill's copy of the rows it commits
    <spool>/<table>/.held/<name>.json          the record: commits (uuid, snapshot, metadata), due time

Flush reads only the table directory's ``flush-*.jsonl``, so held rows are
not committed again while they wait; status and backfill count them as
spooled (:func:`spooled`). Once due, a fresh load decides: the file is
released (deleted) or re-queued (flush settles its rows again against the
committed keys, so nothing doubles). This module only moves files; it never
imports pyiceberg (the daemon's pending-row probe asks it which files are due).
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from spoold.durable import write_atomic_locked, write_state
from spoold.envelope import envelopes
from spoold.layout import HELD
from spoold.safefile import UnsafeFile, check_dir, move_aside, open_file, read_file
from spoold.spool.spool import Spool, fsync_dir

log = logging.getLogger("spoold.spool")

_STALE_TMP_S = 3600.0


@dataclass(frozen=True, slots=True)
class Commit:
    """One commit that holds rows of a held file."""

    table_uuid: str
    snapshot_id: int
    metadata_location: str


@dataclass(frozen=True, slots=True)
class Record:
    """What a held file waits for: its commits, and when to look at them."""

    commits: tuple[Commit, ...]
    held_at: float
    due: float

    def to_json(self) -> bytes:
        return orjson.dumps({"commits": [[c.table_uuid, c.snapshot_id, c.metadata_location] for c in self.commits],
                             "held_at": self.held_at, "due": self.due})

    @classmethod
    def from_json(cls, data: bytes) -> Record:
        doc = orjson.loads(data)
        return cls(tuple(Commit(str(u), int(s), str(m)) for u, s, m in doc["commits"]),
                   float(doc["held_at"]), float(doc["due"]))


def held_dir(spool: Spool, table: str) -> Path:
    return spool.table_dir(table) / HELD


def spooled(spool: Spool, table: str) -> list[Path]:
    """Every file whose rows the spool still answers for: pending files, then held ones."""
    return spool.pending(table) + [p for p, _ in entries(spool, table, records=False)]


def entries(spool: Spool, table: str, *, records: bool = True) -> list[tuple[Path, Record | None]]:
    """Held files, oldest first, with their records (None: none written yet, or unreadable)."""
    d = held_dir(spool, table)
    try:
        check_dir(d, owner=_owner(spool))
        names = sorted(os.listdir(d))
    except (FileNotFoundError, UnsafeFile):  # a planted one is no held file's: the next hold moves it aside
        return []
    return [(d / n, record(d / n) if records else None) for n in names
            if n.endswith(".jsonl") and not n.startswith(".")]


def hold(spool: Spool, table: str, path: Path, commits: list[Commit], due: float) -> Path:
    """Hold ``path`` (a flush file, or a copy already held) until ``due``; returns where it is now.

    The record is written first: a crash before the move leaves the file in
    the flush queue (flushed again, re-settled: nothing doubles).
    """
    d = _make_dir(spool, table)
    now = time.time()
    write_state(_record_path(d / path.name), Record(tuple(commits), now, due).to_json(), spool.group)
    if path.parent != d:
        os.rename(path, d / path.name)
        fsync_dir(path.parent)
        fsync_dir(d)
    return d / path.name


@dataclass(frozen=True, slots=True)
class Copy:
    """A backfill's copy of rows it is committing, locked (``flock``) until the commit's outcome is kept:
    a flush that looks at held files meanwhile leaves it alone (:func:`claim`)."""

    path: Path
    fd: int

    def close(self) -> None:
        try:
            os.close(self.fd)  # drops the lock
        except OSError:
            pass


def write_copy(spool: Spool, table: str, rows: list[Any]) -> Copy:
    """A durable copy of rows about to be committed (backfill into a table not verified yet); no record yet.

    It is locked before it appears under its name, for as long as the copy is
    open. Without a record and unlocked (its backfill died, or its commit
    failed), it is re-queued at the next look: if the commit never happened
    (or its outcome was lost), flush commits the rows instead.
    """
    path = _make_dir(spool, table) / f"backfill-{time.time_ns()}-{os.getpid()}.jsonl"
    return Copy(path, write_atomic_locked(path, b"".join(line for line, _ in envelopes(rows)), spool.file_mode))


@contextmanager
def claim(path: Path) -> Iterator[bool]:
    """Whether ``path`` may be released or re-queued now: False while its backfill still commits it
    (or it is gone); the lock taken is held for the block."""
    try:
        fd = open_file(path)
    except (FileNotFoundError, UnsafeFile):
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def release(path: Path) -> None:
    """Delete a held file (its rows are verified in the table) and its record."""
    for p in (_record_path(path), path):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
    fsync_dir(path.parent)


def requeue(spool: Spool, table: str, path: Path) -> None:
    """Put a held file's rows back where flush reads them, then drop its record.

    A held flush file goes back under its own name (its quarantine records
    keep their names too); a backfill copy, whose rows all passed validation,
    is appended to ``active.jsonl``. A crash in between leaves the rows in both
    places: flush settles them by key, so nothing doubles.
    """
    if path.name.startswith("flush-"):
        os.rename(path, spool.table_dir(table) / path.name)
        fsync_dir(spool.table_dir(table))
    else:
        data = read_file(path, limit=1 << 40)
        if data:
            spool.append_lines(table, [data if data.endswith(b"\n") else data[: data.rfind(b"\n") + 1]])
        path.unlink()
    try:
        _record_path(path).unlink()
    except FileNotFoundError:
        pass
    fsync_dir(path.parent)


def postpone(path: Path, record: Record, due: float, group: str | None) -> None:
    """Look at a held file again at ``due`` (the catalog could not be asked now)."""
    write_state(_record_path(path), Record(record.commits, record.held_at, due).to_json(), group)


def due(spool: Spool, table: str, now: float) -> list[Path]:
    """Held files due for a look: the daemon counts them as pending, so the table flushes, which looks
    (a copy its backfill is still committing is not due)."""
    return [p for p, rec in entries(spool, table) if (rec is None and _free(p)) or (rec is not None and rec.due <= now)]


def _free(path: Path) -> bool:
    with claim(path) as ok:
        return ok


def _record_path(path: Path) -> Path:
    return path.with_suffix(".json")


def record(path: Path) -> Record | None:
    try:
        return Record.from_json(read_file(_record_path(path), limit=1 << 20))
    except (OSError, UnsafeFile, ValueError, KeyError, TypeError):
        return None  # none yet, or damaged: the file is re-queued, which is always safe


def _owner(spool: Spool) -> int:
    """Held files are the daemon's: the spool root's owner (the daemon's user)."""
    return os.stat(spool.root).st_uid


def _make_dir(spool: Spool, table: str) -> Path:
    """The table's held directory: the daemon's, which producers may read (status may run as one: 2750 with
    a group) but not write; a link or another user's directory planted in its place is moved aside."""
    parent = spool.table_dir(table, create=True)
    d = parent / HELD
    mode = 0o2750 if spool.group_id is not None else 0o700
    try:
        check_dir(d, owner=_owner(spool))
    except UnsafeFile as e:
        log.warning("%s; moved aside to %s", e, move_aside(d))
    try:
        os.mkdir(d, mode)
    except FileExistsError:
        if stat.S_IMODE(os.lstat(d).st_mode) != mode:
            os.chmod(d, mode)  # an older spoold made it group-writable
        return d
    os.chmod(d, mode)  # mkdir's mode is masked by the umask
    if spool.group_id is not None:
        os.chown(d, -1, spool.group_id)
    fsync_dir(parent)
    return d


def sweep_temp(spool: Spool, table: str) -> None:
    """Remove temp files a killed ``write_atomic`` left (only old ones: a live writer renames within moments)."""
    for tmp in held_dir(spool, table).glob(".*.tmp"):
        try:
            if tmp.lstat().st_mtime < time.time() - _STALE_TMP_S:
                tmp.unlink()
        except FileNotFoundError:
            pass
