"""The spool's bounds (docs/operating.md): pending bytes per table and free space on its filesystem.

An append that would cross ``[spool] max_bytes`` (a table's pending bytes:
``active.jsonl`` plus its flush files) or leave less than ``min_free_bytes``
free on the spool's filesystem is refused whole with :class:`SpoolFull`.
Nothing acknowledged is ever dropped to make room: a flush frees it. Appends
are refused; rotation and flush never are (a flush is what frees room).

Quarantine has a budget per table (``[spool] quarantine_max_bytes``) and
counts against ``min_free_bytes`` too. Records a replay could bring back (kind
``row``) are never dropped: when they do not fit, the quarantine is refused
with :class:`SpoolFull` and the flush that brought them is retried. Records that
can never be replayed (``line``, ``source``, truncated) that do not fit are
counted, not written (:mod:`spoold.spool.tally`). Only the regular files of the
spool's owner count, by the space they take (a producer's planted file or
sparse file counts as nothing).

The check runs under the table's append lock on every append, so it is kept
cheap: one ``fstat`` and one ``fstatvfs`` of the open active file, and the
flush files' total size, listed again only when the table's directory changed.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import threading
import time
from pathlib import Path

from spoold.errors import QuarantineFull, SpoolFull
from spoold.settings import SpoolLimits

AUTO_FREE_FRACTION = 0.02  # min_free_bytes by default: 2% of the spool's filesystem ...
AUTO_FREE_MAX = 256 << 20  # ... and never more than 256 MiB
# A directory changed within this long of its listing may change again without its mtime moving
# (timestamps come from a coarse clock): such a listing is not trusted twice.
_RACY_NS = 100_000_000
_WARN_EVERY_S = 60.0  # a quarantine past its budget is logged at most this often per table

log = logging.getLogger(__name__)


def min_free(limits: SpoolLimits, fs_bytes: int) -> int:
    """Free bytes to keep on a filesystem of ``fs_bytes``: the setting, or the default share of it."""
    if limits.min_free_bytes != SpoolLimits.AUTO_FREE:
        return limits.min_free_bytes
    return min(int(fs_bytes * AUTO_FREE_FRACTION), AUTO_FREE_MAX)


class Bounds:
    """The bounds of one spool root; thread-safe. ``rotated`` names a table's flush files."""

    def __init__(self, root: Path, limits: SpoolLimits, rotated: re.Pattern[str], active: str) -> None:
        self.root = root
        self.limits = limits
        self._rotated = rotated
        self._active = active
        self._sizes: dict[str, tuple[int, int]] = {}  # table → (its directory's mtime_ns, flush files' bytes)
        self._refused: dict[str, int] = {}  # table → size of the last append refused in this process
        self._warned: dict[str, tuple[float, int]] = {}  # table → (last warning, records not kept since)
        self._ignored: set[tuple[str, int]] = set()  # quarantine entries not spoold's, logged once
        self._guard = threading.Lock()

    # -- the check (under the table's append lock) -------------------------------------
    def check(self, table: str, fd: int, size: int, *, staged: bool = False) -> None:
        """Raise :class:`SpoolFull` if appending ``size`` bytes to ``table``'s active ``fd`` would cross a bound.

        ``staged``: ``fd`` is instead a staging file that already holds the ``size``
        bytes (a large append published by rename), so their space is already taken.
        """
        pending = self.pending_bytes(table) if staged else os.fstat(fd).st_size + self.rotated_bytes(table)
        fs = os.fstatvfs(fd) if self.limits.min_free_bytes else None
        refusal = self._refusal(table, pending, size, fs, size if staged else 0)
        with self._guard:
            if refusal is None:
                self._refused.pop(table, None)
                return
            self._refused[table] = size
        raise SpoolFull(refusal)

    def disk_full(self, table: str, size: int, e: OSError) -> SpoolFull | None:
        """The retryable SpoolFull an append of ``size`` bytes that failed with ``e`` raises, if the disk is full."""
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            return None
        with self._guard:
            self._refused[table] = size
        return SpoolFull(f"spool full: no space left on the spool's filesystem for an append of {size} bytes "
                         f"to table {table} ({e.strerror})")

    def _refusal(self, table: str, pending: int, size: int, fs: os.statvfs_result | None, taken: int) -> str | None:
        """Why an append of ``size`` bytes must be refused, or None (``fs`` None: no free space to keep;
        ``taken``: bytes of it already written, no longer free)."""
        limit = self.limits.max_bytes
        if limit and pending + size > limit:
            if size > limit:
                return (f"spool full: an append of {size} bytes to table {table} is larger than "
                        f"[spool] max_bytes = {limit} on its own")
            return (f"spool full: table {table} has {pending} bytes pending; {size} more would cross "
                    f"[spool] max_bytes = {limit} (a flush frees room)")
        if fs is None:
            return None
        free, keep = fs.f_bavail * fs.f_frsize + taken, min_free(self.limits, fs.f_blocks * fs.f_frsize)
        if free - size < keep:
            return (f"spool full: {free} bytes free on the spool's filesystem; an append of {size} bytes to "
                    f"table {table} would leave less than [spool] min_free_bytes = {keep}")
        return None

    # -- quarantine ------------------------------------------------------------------------
    def owner(self) -> int:
        """The spool's owner (the daemon's user), whose files in shared directories are spoold's own."""
        try:
            return os.stat(self.root).st_uid
        except FileNotFoundError:
            return os.geteuid()

    def quarantine_room(self, qdir: Path, replacing: Path) -> int:
        """Bytes a quarantine file published as ``replacing`` in ``qdir`` may take (it replaces its old self).

        Counted: the regular files of the spool's owner, by the space they take (``st_blocks``), so a
        producer's planted file, link or sparse file takes no room; each is logged once.
        """
        used = old = 0
        owner = self.owner()
        with os.scandir(qdir) as entries:
            for e in entries:
                if e.name.endswith(".jsonl") and not e.name.startswith("."):
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if not stat.S_ISREG(st.st_mode) or st.st_uid != owner:
                        self._not_ours(qdir / e.name, st, owner)
                        continue
                    n = st.st_blocks * 512
                    used += n
                    old = n if e.name == replacing.name else old
        room = self.limits.quarantine_max_bytes - (used - old) if self.limits.quarantine_max_bytes else 1 << 62
        if self.limits.min_free_bytes:
            fs = os.statvfs(qdir)
            free = fs.f_bavail * fs.f_frsize + old
            room = min(room, free - min_free(self.limits, fs.f_blocks * fs.f_frsize))
        return room

    def quarantine_fit(self, table: str, qdir: Path, path: Path, lines: list[bytes], keep: list[bool]) -> list[bool]:
        """Which of ``lines`` (quarantine records to publish as ``path``) are written; the rest are counted.

        ``keep``: the records a replay could bring back, never dropped: SpoolFull (retryable, nothing
        written yet) if they do not all fit. The others are then taken in order while they fit.
        """
        room = self.quarantine_room(qdir, path)
        size = sum(len(ln) for ln, k in zip(lines, keep) if k)
        budget = self.limits.quarantine_max_bytes
        if size and budget and size > budget:
            raise QuarantineFull(f"table {table}: quarantine full: {sum(keep)} rejected row(s) of one spool file "
                                 f"take {size} bytes as quarantine records, more than [spool] quarantine_max_bytes "
                                 f"= {budget} on their own; nothing was dropped and the flush is retried (raise "
                                 "quarantine_max_bytes)")
        if size and size > room:
            raise QuarantineFull(f"table {table}: quarantine full (quarantine_max_bytes / min_free_bytes): "
                            f"{sum(keep)} rejected row(s) ({size} bytes) that a replay could bring back do not "
                            f"fit in the {max(room, 0)} bytes left; nothing was dropped and the flush is retried "
                            "(raise [spool] quarantine_max_bytes, or replay or remove quarantine files)")
        keep = list(keep)
        for i, k in enumerate(keep):
            if not k and size + len(lines[i]) <= room:
                size += len(lines[i])
                keep[i] = True
        return keep

    def _not_ours(self, path: Path, st: os.stat_result, owner: int) -> None:
        key = (str(path), st.st_ino)
        with self._guard:
            if key in self._ignored:
                return
            self._ignored.add(key)
        what = "not a regular file" if not stat.S_ISREG(st.st_mode) else f"owned by uid {st.st_uid}, not {owner}"
        log.warning("%s: %s; not spoold's, so it does not count against the quarantine's budget", path, what)

    def quarantine_over(self, table: str, not_kept: int) -> None:
        """``not_kept`` records of ``table`` were counted, not written: warn, at most every ``_WARN_EVERY_S``."""
        now = time.monotonic()
        with self._guard:
            last, pending = self._warned.get(table, (float("-inf"), 0))
            pending += not_kept
            due = now - last >= _WARN_EVERY_S
            self._warned[table] = (now, 0) if due else (last, pending)
        if due:
            log.warning("table %s: quarantine is at [spool] quarantine_max_bytes = %d or the spool's free-space "
                        "floor: %d record(s) counted, not kept (spoold quarantine %s)",
                        table, self.limits.quarantine_max_bytes, pending, table)

    # -- what the daemon, status and metrics show -----------------------------------------
    def pending_bytes(self, table: str) -> int:
        """Bytes ``table`` has pending: ``active.jsonl`` plus its flush files."""
        try:
            active = os.lstat(self.root / table / self._active).st_size  # a planted link counts as nothing
        except FileNotFoundError:
            active = 0
        return active + self.rotated_bytes(table)

    def room(self, table: str) -> int:
        """Bytes an append to ``table`` could add right now (may be negative); a hint, the check decides."""
        fs = self.filesystem()
        if fs is None:
            return 1 << 62  # unknown: the append's own check decides
        room = fs.f_bavail * fs.f_frsize - min_free(self.limits, fs.f_blocks * fs.f_frsize)
        if self.limits.max_bytes:
            room = min(room, self.limits.max_bytes - self.pending_bytes(table))
        return room

    def full(self, table: str) -> bool:
        """True while ``table`` takes no append: no room, or less than this process's last refused append needs."""
        with self._guard:
            need = self._refused.get(table, 1)
        return self.room(table) < need

    def free_bytes(self) -> int | None:
        """Free bytes on the spool's filesystem (as an unprivileged writer sees them); None if unknown."""
        fs = self.filesystem()
        return None if fs is None else fs.f_bavail * fs.f_frsize

    def filesystem(self) -> os.statvfs_result | None:
        """The spool's filesystem: the root's, or before the root exists that of the directory it will be made
        in (a fresh install is not "full"); None if it cannot be looked at."""
        path = self.root
        while True:
            try:
                return os.statvfs(path)
            except FileNotFoundError:
                if path.parent == path:
                    return None
                path = path.parent
            except OSError:
                return None

    # -- the flush files' size, cached -----------------------------------------------------
    def rotated_bytes(self, table: str) -> int:
        """Total size of ``table``'s flush files; listed again only when its directory changed.

        Flush files are immutable: only a rotation (a new one) or a flush (removing
        some) changes the total, and both change the directory's mtime.
        """
        d = self.root / table
        try:
            mtime = os.stat(d).st_mtime_ns
        except FileNotFoundError:
            return 0
        with self._guard:
            cached = self._sizes.get(table)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        listed_at = time.time_ns()
        total = 0
        with os.scandir(d) as entries:
            for e in entries:
                if self._rotated.fullmatch(e.name):
                    try:
                        total += e.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        pass  # flushed while we looked
        with self._guard:
            if mtime < listed_at - _RACY_NS:
                self._sizes[table] = (mtime, total)
            else:
                self._sizes.pop(table, None)
        return total
