"""The on-disk spool: locked, fsync'd appends; atomic rotation; read-only listing.

Layout per table (docs/spool-layout.md)::

    <root>/<table>/active.jsonl          producers append here, under .lock
    <root>/<table>/flush-<seq>.jsonl     rotated, immutable
    <root>/<table>/quarantine/*.jsonl    rejected lines/rows with their reason
    <root>/<table>/.lock, .seq           the append/rotate lock, the sequence counter

Appends and rotation take one exclusive lock, so a rotated flush file can never
receive a late write. Only ``append``, ``rotate``, ``quarantine`` and
``remove`` change anything; listing and reading never lock producers out.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from spoold.config import Config, TableSpec, validate_identifier, writable_table
from spoold.durable import append_all, fsync_dir, write_all, write_atomic
from spoold.envelope import Validator, columnize, envelopes
from spoold.errors import InputError, SpoolError, TableBusy, UsageError
from spoold.layout import FLUSH_LOCK, HELD, LOCK, SEQ, TALLY_LOCK, temp_name
from spoold.locks import Busy, FileLocks
from spoold.safefile import UnsafeFile, check_dir, open_file, read_file
from spoold.settings import SpoolLimits
from spoold.spool import tally
from spoold.spool.bounds import Bounds
from spoold.spool.files import (
    ACTIVE,
    FLUSH_RE,
    QUARANTINE,
    READ_BLOCK,
    flush_name,
    quarantine_record,
    read_tail,
    record_line,
    replayable,
)
from spoold.spool.modes import Modes, open_active, regular

log = logging.getLogger("spoold.spool")

STAGE_BYTES = 4 << 20  # an append stream larger than this is staged in a file and published by rename
# Rotation waits at most this long for a table's append lock: a producer holds it for one fsync,
# so a longer hold is a stuck (or hostile) producer, and the flusher must go on with other tables.
ROTATE_WAIT_S = 1.0


class LockHeld(TableBusy):
    """A table's append lock stayed held by someone else past the bound: try the table again later."""


class Spool:
    """Producers' and flushers' handle on a spool root (thread-safe)."""

    def __init__(self, root: str | os.PathLike[str], group: str | None = None,
                 limits: SpoolLimits | None = None, private: frozenset[str] = frozenset()) -> None:
        self.root = Path(root)
        self.private = private  # tables whose directory the producer group may not enter (tailed sources)
        self.group = group  # the producer group (spoold's state files are readable by it)
        self.bounds = Bounds(self.root, limits or SpoolLimits(), FLUSH_RE, ACTIVE)
        self.modes = Modes(group)
        self._dirs: dict[str, Path] = {}
        self._locks = FileLocks(self.modes.file_mode, self.modes.chown)
        # Longest an append waits for the table's lock (None: as long as it takes, as producers do);
        # the daemon bounds its own (its tailer's), so one stuck table never stops the others.
        self.lock_wait_s: float | None = None
        self._spec: Callable[[str], TableSpec] = TableSpec  # a table's declared spec (append(check=True))

    @classmethod
    def from_config(cls, config: Config) -> Spool:
        private = frozenset() if config.spool_share_sources else frozenset(s.table for s in config.sources)
        spool = cls(config.spool_root, config.spool_group, config.spool_limits, private)
        spool._spec = config.table
        return spool

    # -- layout -----------------------------------------------------------------
    @property
    def group_id(self) -> int | None:
        """The producer group's gid (``[spool] group``), None when the spool is private."""
        return self.modes.gid

    def table_dir(self, table: str, *, create: bool = False) -> Path:
        """``table``'s directory; UnsafeFile if a link (or anything but a directory) stands in its place."""
        path = self.root / validate_identifier(table)
        check_dir(path)
        if create and not path.is_dir():
            self.modes.mkdir(self.root)
            self.modes.mkdir(path, private=table in self.private)
        return path

    def make_root(self) -> None:
        """Create the spool root (0700, or 3770 for a producer group) if it is missing; give an older
        group root of ours the sticky bit."""
        try:
            self.modes.mkdir(self.root)
            self.modes.adopt(self.root)
        except OSError as e:
            raise SpoolError(f"cannot create the spool root {self.root}: {e}") from e

    def tables(self) -> list[str]:
        """Tables that have a spool directory (valid identifiers only)."""
        if not self.root.is_dir():
            return []
        out = []
        for p in sorted(self.root.iterdir()):
            if p.is_dir() and not p.is_symlink():  # a link planted in a group spool is no table's
                try:  # (a rebuild's staging or backup name, planted by a group member, is no table to flush)
                    out.append(writable_table(p.name))
                except UsageError:
                    continue  # not a table's directory (spoold never creates such names)
        return out

    def table_of(self, path: str, root: str | None = None) -> str | None:
        """The table whose spool directory holds ``path``; None for the root's and tables' internal
        files (dot files) and for quarantine. ``root``: this spool's root, already resolved."""
        root = root or str(self.root.resolve())
        if not path.startswith(root + "/"):
            return None
        parts = path[len(root) + 1 :].split("/")
        if parts[0].startswith(".") or (len(parts) > 1 and (parts[1] == QUARANTINE or parts[1].startswith("."))):
            return None
        try:
            return writable_table(parts[0])
        except UsageError:
            return None

    def flush_files(self, table: str) -> list[Path]:
        """Rotated files awaiting a flush, oldest first."""
        d = self.table_dir(table)
        if not d.is_dir():
            return []
        files = [p for p in d.iterdir() if FLUSH_RE.fullmatch(p.name) and regular(p)]
        return sorted(files, key=lambda p: p.name)

    def pending(self, table: str) -> list[Path]:
        """Flush files oldest first, then ``active.jsonl`` if it has bytes."""
        files = self.flush_files(table)
        active = self.table_dir(table) / ACTIVE
        try:
            st = os.lstat(active)  # a planted link is never followed: moved aside, logged
            if stat.S_ISREG(st.st_mode) and st.st_size > 0 and regular(active):
                files.append(active)
            elif not stat.S_ISREG(st.st_mode):
                regular(active)
        except FileNotFoundError:
            pass
        return files

    # -- writing ----------------------------------------------------------------
    def append(self, table: str, rows: Iterable[Mapping[str, Any]], *, check: bool = False) -> int:
        """Append row objects (column → value); durable (fsync'd) when this returns.

        A row whose values do not fit the table's declared columns is spooled all the same and
        quarantined by the flush with its reason (kept, replayable once the config is fixed): a
        producer's row is never lost to a config mistake. ``check=True`` refuses such rows first, as
        ``spoold append`` does: InputError naming the first bad row (1-based), nothing appended.
        """
        if check:
            rows = list(rows)
            self._check(table, rows)
        lines = list(envelopes(rows, self.bounds.limits.max_line_bytes))
        self.append_lines(table, lines)
        return sum(n for _, n in lines)

    def _check(self, table: str, rows: list[Mapping[str, Any]]) -> None:
        """The row-level rules ``spoold append`` applies (stdlib only: no pyarrow)."""
        if not rows:
            return
        cols, matrix = columnize([dict(r) for r in rows])
        verdict = Validator(self._spec(table), cast=False).rows(cols, matrix)
        if verdict.rejects:
            first = min(verdict.rejects, key=lambda r: r.index)
            raise InputError(f"table {table}: row {first.index + 1}: {first.reason}")

    def append_lines(self, table: str, lines: Iterable[tuple[bytes, int] | bytes]) -> None:
        """Append pre-encoded envelope lines: one write each, one fsync for the call; all or nothing.

        Raises :class:`SpoolFull` (retryable) when the spool's bounds or a full disk refuse them.
        """
        writable_table(table)  # never a rebuild's staging or backup table (--drop-backup would purge its rows)
        payloads = [x[0] if isinstance(x, tuple) else x for x in lines]
        if not payloads:
            return
        if max(map(len, payloads)) > self.bounds.limits.max_line_bytes:  # flush would quarantine it unread
            raise InputError(f"an envelope line is longer than max_line_bytes ({self.bounds.limits.max_line_bytes})")
        size = sum(map(len, payloads))
        try:
            with self._locked(table) as d:
                created = False
                try:
                    fd = open_active(d)
                except FileNotFoundError:
                    fd = open_file(d / ACTIVE, os.O_RDWR | os.O_APPEND | os.O_CREAT, self.modes.file_mode)
                    created = True
                try:
                    self.modes.chown(fd)
                    self._repair_tail(table, fd)
                    self.bounds.check(table, fd, size)
                    append_all(fd, payloads)
                    if created:  # a new file's name is durable only once its directory is synced
                        fsync_dir(d)
                finally:
                    os.close(fd)
        except OSError as e:
            if (full := self.bounds.disk_full(table, size, e)) is None:
                raise
            raise full from e

    def append_stream(self, table: str, lines: Iterable[bytes]) -> None:
        """Append envelope lines from an iterable, all or nothing, in memory bounded by ``STAGE_BYTES``.

        A small input goes to ``active.jsonl`` like any append. A large one is
        written to a temp file in the table's directory as the iterable yields
        (an error the iterable raises, e.g. a bad input line, removes it:
        nothing is appended), fsync'd once, and published under the lock as the
        next flush file, after rotating what producers appended before it, so
        spool order is kept. A crash before the rename leaves only the temp
        file, which flush sweeps once it is old.
        """
        writable_table(table)
        it = iter(lines)
        head: list[bytes] = []
        size = 0
        for line in it:
            head.append(line)
            size += len(line)
            if size > STAGE_BYTES:
                break
        else:
            self.append_lines(table, head)
            return
        d = self.table_dir(table, create=True)
        tmp = d / temp_name("stage")
        fd = open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.modes.file_mode)
        staged = 0
        try:
            self.modes.chown(fd)
            staged = self._stage(table, fd, b"".join(head), staged)
            pending: list[bytes] = []
            size = 0
            for line in it:
                pending.append(line)
                size += len(line)
                if size >= READ_BLOCK:
                    staged = self._stage(table, fd, b"".join(pending), staged)
                    pending, size = [], 0
            staged = self._stage(table, fd, b"".join(pending), staged)
            os.fsync(fd)
            with self._locked(table) as d:
                self._rotate_locked(table, d)
                self.bounds.check(table, fd, staged, staged=True)
                os.rename(tmp, d / flush_name(self._next_seq(d)))
                fsync_dir(d)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            if isinstance(e, OSError) and (full := self.bounds.disk_full(table, staged, e)) is not None:
                raise full from e
            raise
        finally:
            os.close(fd)

    def _stage(self, table: str, fd: int, data: bytes, staged: int) -> int:
        """Write ``data`` to a staging file holding ``staged`` bytes; SpoolFull as soon as it cannot fit."""
        write_all(fd, data)
        self.bounds.check(table, fd, staged + len(data), staged=True)
        return staged + len(data)

    def rotate(self, table: str) -> Path | None:
        """Rename ``active.jsonl`` to the next ``flush-<seq>.jsonl``; None if it is empty.

        Raises :class:`LockHeld` when the append lock stays held past ``ROTATE_WAIT_S``.
        """
        d = self.table_dir(table)
        if not (d / ACTIVE).exists():
            return None
        with self._locked(table, timeout=ROTATE_WAIT_S) as d:
            return self._rotate_locked(table, d)

    def _rotate_locked(self, table: str, d: Path) -> Path | None:
        active = d / ACTIVE
        try:
            fd = open_active(d)
        except FileNotFoundError:
            return None
        try:
            self._repair_tail(table, fd)
            empty = os.fstat(fd).st_size == 0
        finally:
            os.close(fd)
        if empty:
            return None
        seq = self._next_seq(d)
        target = d / flush_name(seq)
        os.rename(active, target)
        fsync_dir(d)
        return target

    def quarantine(self, table: str, name: str, records: list[dict[str, Any]]) -> Path | None:
        """Publish quarantine records as ``quarantine/<name>.jsonl`` (replacing, so retries don't double).

        The table's quarantine budget (``quarantine_max_bytes``) and ``min_free_bytes`` bound it:

        - records that can be replayed (kind ``row``: rows rejected for their values, commit poison) are
          never dropped: if they do not all fit, :class:`SpoolFull` (retryable) is raised before anything
          is written or forgotten, so the caller keeps the spool file they came from and retries;
        - the others (``line``, ``source``, truncated ones: never replayable) are written while they fit
          after those, and the rest only counted in the tally (:mod:`spoold.spool.tally`).

        None: nothing was written (all counted).
        """
        if not records:
            return None
        qdir = self.table_dir(table, create=True) / QUARANTINE
        check_dir(qdir)
        self.modes.mkdir(qdir)
        path = qdir / f"{name}.jsonl"
        lines = [record_line(r) for r in records]
        keep = self.bounds.quarantine_fit(table, qdir, path, lines, [replayable(r) for r in records])
        kept = [ln for ln, k in zip(lines, keep) if k]
        counted = [r for r, k in zip(records, keep) if not k]
        with self.tally_lock(table):
            if kept:
                write_atomic(path, b"".join(kept), self.modes.file_mode)
            elif path.exists():  # a retry that finds less room than its first try: the tally counts them all
                path.unlink()
                fsync_dir(qdir)
            tally.record(qdir, name, counted, sum(len(ln) for ln, k in zip(lines, keep) if not k),
                         self.modes.file_mode, self.bounds.owner())
        if counted:
            self.bounds.quarantine_over(table, len(counted))
        return path if kept else None

    @contextmanager
    def tally_lock(self, table: str) -> Iterator[None]:
        """Held while the quarantine's tally of ``table`` changes (flush, backfill and retention all count)."""
        with self._locks.hold(self.table_dir(table) / QUARANTINE / TALLY_LOCK):
            yield

    @property
    def file_mode(self) -> int:
        """The mode of the files this spool writes (0600, or 0660 for a producer group)."""
        return self.modes.file_mode

    def remove(self, paths: Iterable[Path]) -> None:
        """Delete flush files whose rows are durably committed."""
        dirs = set()
        for p in paths:
            try:
                p.unlink()
                dirs.add(p.parent)
            except FileNotFoundError:
                pass
        for d in dirs:
            fsync_dir(d)

    def close(self) -> None:
        """Close the lock files this handle keeps open between calls (the next call reopens them).

        A long-lived producer never needs it; a process making many handles
        (e.g. one per test) does, or it runs out of file descriptors.
        """
        self._locks.close()

    def sweep_temp(self, table: str | None = None, older_than_s: float = 3600.0) -> int:
        """Remove temp files a killed ``write_atomic`` left in ``table``'s directories.

        ``None``: in the spool root's own files instead (``.daemon.json``, the
        tail offsets). Only old ones: a live writer renames its temp file
        within moments.
        """
        cutoff = time.time() - older_than_s
        removed = 0
        d = self.table_dir(table) if table is not None else self.root
        sub = d.glob(f"{QUARANTINE}/.*.tmp") if table is not None else d.glob(".*/.*.tmp")
        for tmp in [*d.glob(".*.tmp"), *sub]:
            try:
                if tmp.lstat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    @contextmanager
    def flush_lock(self, table: str, *, wait: bool = True) -> Iterator[Path]:
        """Held while flushing ``table``, so two flushers of one spool don't do the work twice.

        Correctness never depends on it (keys do that); producers never wait on it.
        ``wait=False`` raises :class:`TableBusy` at once when another flush holds it:
        the daemon's loop must never block on a stopped or stuck ``spoold flush``.
        """
        with self._locked(table, FLUSH_LOCK, wait=wait) as d:
            yield d

    # -- internals --------------------------------------------------------------
    @contextmanager
    def _locked(self, table: str, name: str = LOCK, *, wait: bool = True,
                timeout: float | None = None) -> Iterator[Path]:
        d = self._dirs.get(table)
        if d is None:
            d = self._dirs[table] = self.table_dir(table)  # validated once per table
            if os.path.isdir(d):
                self.modes.adopt(d, private=table in self.private)
        if not os.path.isdir(d):
            self.table_dir(table, create=True)
        else:
            check_dir(d)  # a producer's own table directory may have been swapped for a link meanwhile
        if name == LOCK and self.lock_wait_s is not None:
            timeout = self.lock_wait_s if timeout is None else min(timeout, self.lock_wait_s)
        try:
            with self._locks.hold(d / name, wait=wait, timeout=timeout):
                yield d
        except Busy as e:
            if name == LOCK:
                waited = f" for over {timeout:g}s" if timeout is not None else ""
                raise LockHeld(f"table {table}: spool lock held by {e}{waited} "
                               "(a producer stuck in an append?)") from None
            raise TableBusy(f"table {table} is being flushed by {e} (e.g. `spoold flush`)") from None

    def _repair_tail(self, table: str, fd: int) -> None:
        """Move a torn last line (a producer died mid-write) to quarantine, then cut it off."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        pos = size
        while pos > 0:
            start = max(0, pos - READ_BLOCK)
            block = os.pread(fd, pos - start, start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                pos = start + nl + 1
                break
            pos = start
        tail = read_tail(fd, pos, size, self.bounds.limits.max_line_bytes)
        rec = quarantine_record("torn write: unterminated last line of active.jsonl", ACTIVE, -1, tail, offset=pos)
        self.quarantine(table, f"torn-{time.time_ns()}", [rec])
        os.ftruncate(fd, pos)
        os.fsync(fd)

    def _next_seq(self, d: Path) -> int:
        seq_file = d / SEQ
        try:
            last = int(read_file(seq_file, limit=64) or 0)
        except (FileNotFoundError, ValueError):
            last = 0
        except UnsafeFile as e:  # a planted link: never read; the names on disk still order the files
            log.warning("%s; the next sequence number comes from the flush files' names", e)
            last = 0
        # held flush files go back under their own names, so theirs count too
        held = d / HELD
        names = [*os.listdir(d), *(os.listdir(held) if held.is_dir() and not held.is_symlink() else [])]
        existing = [int(m.group(1)) for n in names if (m := FLUSH_RE.fullmatch(n))]
        seq = max([last, *existing]) + 1
        write_atomic(seq_file, str(seq).encode(), self.modes.file_mode)
        return seq

