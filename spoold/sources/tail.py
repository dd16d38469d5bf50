"""Live tailing of ``[[sources]]``: new complete lines → rows → spool, then a durable offset.

Files are followed by identity (device + inode), not by name. New complete
lines are read from the saved :class:`Position` (partial last lines wait),
materialized with the reader backfill uses, appended to the spool (durable on
return) and ONLY THEN does the offset move (``<spool root>/.tail/``). A crash
in between re-reads those lines; their keys make that harmless.

Rotation (:mod:`.rotation`): a name that now holds another inode (logrotate's
rename-and-create, also while spoold was stopped) has its old inode looked up
by inode in its directory and read to its end under its new name, until it
has been quiet for ``rotated_quiet_s`` (producers may write to an open
descriptor after the rename) or is gone. A file that shrank below its offset
or no longer matches its fingerprint (copytruncate, a rewrite in place) has
the rest of its rotated copy read first, if a sibling starts with the bytes
already read, and is then read again from its start.

No line stops a file: a line that cannot be materialized or encoded goes to
the table's quarantine with its reason and bytes, and the offset moves past
it. A line over ``[spool] max_line_bytes`` is streamed past, never held, and
quarantined by offset (length, head, sha256). Nor can a line kill the daemon
for good: a pass is marked before its rows are encoded; a start that finds
the mark re-reads that pass line by line in a child process
(:mod:`.isolate`), quarantining the line a child dies on. Failures of the
environment leave the offset where it is: a full spool
parks the file until a flush frees room (the file keeps the rows meanwhile;
a pass is at most a quarter of ``[spool] max_bytes``, so it fits an emptied
spool), any other (the spool's disk, reading the source, memory) retries it with
backoff; a table whose spool lock another process holds has all its files
retried later after one bounded wait (``Spool.lock_wait_s``) per pass.
Symlinked sources are watched at their target's directory too. Work per
pass is bounded.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spoold._testhooks import reached
from spoold.config import SourceSpec
from spoold.errors import SpooldError, SpoolFull
from spoold.layout import TAIL_DIR
from spoold.logs import LogLimiter
from spoold.sources.follow import Follow, Followed
from spoold.sources.isolate import PassMarks, isolate
from spoold.sources.pack import line_record, pack
from spoold.sources.position import PositionStore
from spoold.sources.reader import SourceLine, read_lines
from spoold.sources.rotation import find_copy
from spoold.spool.spool import LockHeld, Spool

log = logging.getLogger(__name__)

MAX_LINES_PER_PASS = 50_000
MAX_BYTES_PER_PASS = 8 << 20  # transcript lines can be huge (tool output): bound memory too
ROTATED_QUIET_S = 30.0  # a rotated file is read until it has not changed for this long
_RETRY_S = (1.0, 30.0)  # backoff of a file whose rows could not be spooled (spool full, disk error)


class _Moved(Exception):
    """The follow's path is gone or holds another inode now."""


class Tailer:
    """Tails the configured sources into ``spool`` (one thread; the daemon loop drives it)."""

    def __init__(self, spool: Spool, sources: Sequence[SourceSpec], *, max_lines: int = MAX_LINES_PER_PASS,
                 max_bytes: int = MAX_BYTES_PER_PASS, rotated_quiet_s: float = ROTATED_QUIET_S,
                 tick: Callable[[], None] | None = None) -> None:
        self.spool = spool
        self.tick = tick  # called during long work (re-running a pass out of process): the daemon's watchdog
        limit = spool.bounds.limits.max_bytes  # a pass must fit in an emptied spool
        self.max_lines = max_lines
        self.max_bytes = min(max_bytes, max(1, limit // 4)) if limit else max_bytes
        self.dir = spool.root / TAIL_DIR
        self.files = Followed(PositionStore(self.dir), sources, spool.root, rotated_quiet_s)
        self.marks = PassMarks(self.dir)
        self.max_line = spool.bounds.limits.max_line_bytes
        self._retry: dict[str, float] = {}  # key → monotonic time of its next try after a failure
        self._parked: dict[str, str] = {}  # key → table: refused by a full spool, waiting for room
        self._errors = LogLimiter()

    # -- what to watch, what changed ------------------------------------------------
    def watch_paths(self) -> list[Path]:
        """Existing source directories, and those of symlink targets and rotated files outside them."""
        return [p for p in self.files.wanted_paths() if p.is_dir()]

    def wanted_paths(self) -> list[Path]:
        """Every directory to watch, existing or not."""
        return self.files.wanted_paths()

    def covers(self, path: str) -> bool:
        """True if an event at ``path`` may concern a tailed file (the daemon then calls :meth:`on_change`)."""
        return self.files.covers(path)

    def discover(self) -> None:
        """Glob every source; tail new files, notice moved and vanished ones, retire rotated ones."""
        self.files.discover()

    def on_change(self, path: str, deleted: bool = False) -> bool:
        """A filesystem event at ``path``; True when it concerns a tailed (or newly matching) file."""
        return self.files.on_change(path)

    def has_work(self) -> bool:
        """True while some file has lines to read now (or a failed one is due for another try)."""
        dirty = self.files.dirty
        for key, table in list(self._parked.items()):
            if key not in self.files.follows:
                del self._parked[key]
            elif not self.spool.bounds.full(table):  # room again: read on from its offset
                del self._parked[key]
                dirty[key] = None
            else:
                dirty.pop(key, None)  # a parked file waits for room, not for its next change
        return bool(dirty) or (bool(self._retry) and min(self._retry.values()) <= time.monotonic())

    # -- reading ----------------------------------------------------------------
    def run_pass(self, max_lines: int | None = None) -> dict[str, int]:
        """Read new complete lines of dirty files into the spool; rows appended per table.

        At most ``max_lines`` source lines (and about ``max_bytes`` bytes) are
        read; files with more left stay dirty, behind the others, for the next pass.
        """
        files = self.files
        files.load()
        now = time.monotonic()
        for key in [k for k, at in self._retry.items() if at <= now]:
            del self._retry[key]
            if key in files.follows:
                files.dirty[key] = None
        budget = self.max_lines if max_lines is None else max_lines
        byte_budget = self.max_bytes
        appended: dict[str, int] = {}
        held: dict[str, float] = {}  # table → when its files are tried again: its spool lock was held this pass
        for key in list(files.dirty):
            if budget <= 0 or byte_budget <= 0:
                break
            if key not in files.dirty or key not in files.follows or key in self._parked:
                files.dirty.pop(key, None)
                continue  # forgotten since the pass began, or waiting for room
            del files.dirty[key]
            f = files.follows[key]
            table = files.spec(f).table
            if table in held:  # one wait for a held lock per table and pass, not one per file
                self._retry[key] = held[table]
                continue
            try:
                rows, lines, nbytes, more = self._read(f, budget, byte_budget)
            except _Moved:
                files.moved(f)
                continue
            except LockHeld as e:
                # Someone holds the table's append lock (this append waited ``lock_wait_s`` for it): the
                # table's other files wait too, for the same retry, so a pass costs one wait per held table.
                f.failures += 1
                held[table] = self._retry[key] = time.monotonic() + self._backoff(f.failures)
                self._log_error(f"held:{table}", "source %s: not tailed this time, retrying: %s", f.pos.path, e)
                continue
            except SpoolFull as e:
                self._parked[key] = table
                self._log_error(f"full:{table}", "source %s: waiting for room in the spool: %s", f.pos.path, e)
                continue
            except (OSError, SpooldError, MemoryError) as e:
                # Cannot read it, encode it (out of memory) or spool it right now: the offset stays; tried
                # again after a pause.
                f.failures += 1
                self._retry[key] = time.monotonic() + self._backoff(f.failures)
                self._log_error(f"io:{key}", "source %s: not tailed this time, retrying: %s", f.pos.path, e)
                continue
            f.failures = 0
            budget -= lines
            byte_budget -= nbytes
            if rows:
                appended[table] = appended.get(table, 0) + rows
            if more:
                files.dirty[key] = None
        return appended

    @staticmethod
    def _backoff(failures: int) -> float:
        return min(_RETRY_S[1], _RETRY_S[0] * 2 ** (failures - 1))

    def _read(self, f: Follow, budget: int, byte_budget: int) -> tuple[int, int, int, bool]:
        """Tail one file; returns (rows appended, lines read, bytes read, more left)."""
        pos, spec = f.pos, self.files.spec(f)
        try:
            fd = os.open(pos.path, os.O_RDONLY)
        except FileNotFoundError:
            raise _Moved from None
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != pos.identity:
                raise _Moved
            f.size, f.mtime_ns = st.st_size, st.st_mtime_ns
            if not pos.same_file(fd, st):
                if not f.live:  # a rotated file only ever goes on; this is not the one we were reading
                    self.files.forget(f.key, f"source {pos.path}: changed after its rotation")
                    return 0, 0, 0, False
                if self._rewritten(f):
                    return 0, 0, 0, False  # its rotated copy is read first
            quiet = not f.live and time.time() - st.st_mtime >= self.files.rotated_quiet_s
            if st.st_size <= pos.offset:
                if quiet:
                    self.files.forget(f.key, f"source {pos.path} (rotated): read to its end")
                return 0, 0, 0, False
            start = pos.offset
            mark = self.marks.found().get(f.key)
            if mark is not None:
                if mark.get("start") == start and [mark.get("dev"), mark.get("ino")] == list(pos.identity):
                    return self._recover(f, fd, st, mark["end"])
                self.marks.clear(f.key)  # that pass was saved; only its mark's removal was cut off
            good: list[SourceLine] = []
            bad: list[tuple[SourceLine, str]] = []
            end, lineno, lines, more, inside = start, pos.lineno, 0, False, pos.inside
            # A rotated file that stopped changing is finished: its unterminated last line is final too.
            for line in read_lines(pos.path, spec.format, start, lineno=pos.lineno, include_partial=quiet, fd=fd,
                                   max_line=self.max_line, inside=pos.inside):
                if line.error is not None:
                    bad.append((line, line.error))
                elif line.rows:
                    good.append(line)
                inside = line.long is not None and line.long.open  # a long line goes on: resume inside it
                end, lineno = line.end, line.lineno + (0 if inside else 1)
                lines += 1
                if lines >= budget or end - start >= byte_budget:
                    more = True
                    break
            if end == start:
                return 0, lines, 0, False  # only a partial line (or blank lines) so far
            if good:  # marked before encoding: if encoding kills the daemon, the next start isolates this pass
                self.marks.mark(f.key, path=pos.path, dev=pos.dev, ino=pos.ino, start=start, end=end)
                reached("tail.marked")  # test-only mark: a crash here must not crash every start after it
            try:
                envs, poison = pack(good, self.max_line)
                self._quarantine(f, fd, sorted(bad + poison, key=lambda b: b[0].start))
                if envs:
                    self.spool.append_lines(spec.table, envs)  # durable when it returns ...
                    reached("tail.appended")  # test-only mark: a crash here re-reads these lines
                pos.move(fd, st, end, lineno, inside=inside)
                self.files.save(f)  # ... and only then does the offset move past those lines
            finally:  # done, or failed and alive (a full spool...): nothing for a next start to isolate
                if good:
                    self.marks.clear(f.key)
            if quiet and end >= st.st_size:
                self.files.forget(f.key, f"source {pos.path} (rotated): read to its end")
            return sum(n for _, n in envs), lines, end - start, more
        finally:
            os.close(fd)

    def _recover(self, f: Follow, fd: int, st: os.stat_result, stop: int) -> tuple[int, int, int, bool]:
        """The daemon died inside a pass of ``f`` (its mark is still there): run it again out of process, a
        line at a time, so the line that killed it is quarantined and every other line spooled once."""
        pos, spec = f.pos, self.files.spec(f)
        start = pos.offset
        log.warning("source %s: the daemon died while spooling bytes %d-%d; re-reading them line by line in a "
                    "separate process", pos.path, start, stop)
        res = isolate(pos.path, spec.format, start, stop, pos.lineno, self.max_line, pos.inside, tick=self.tick)
        self._quarantine(f, fd, [(SourceLine(pos.path, n, s, e, [], reason), reason) for s, e, n, reason in res.bad])
        if res.envelopes:
            self.spool.append_lines(spec.table, res.envelopes)
        pos.move(fd, st, res.end, res.lineno, inside=res.inside)
        self.files.save(f)
        self.marks.clear(f.key)
        return res.rows, 1, res.end - start, True

    def _rewritten(self, f: Follow) -> bool:
        """``f`` shrank below its offset or changed under it: read its rotated copy (if any) first, then it."""
        pos = f.pos
        copy = find_copy(pos, [os.path.dirname(pos.path), os.path.dirname(f.real)], pos.path) if pos.offset else None
        log.info("source %s: truncated or rewritten; %s", pos.path, f"reading the rest of its copy {copy} first, "
                 "then it from its start" if copy else "reading it again from its start")
        if copy is not None:
            self.files.add_copy(f, copy)
        pos.reset()
        self.files.dirty[f.key] = None
        return copy is not None

    def _quarantine(self, f: Follow, fd: int, bad: list[tuple[SourceLine, str]]) -> None:
        if not bad:
            return
        spec = self.files.spec(f)
        records = [line_record(reason, line, fd, self.max_line, format=spec.format, source="tail")
                   for line, reason in bad]
        # Named by the first bad line: a pass retried after a failure replaces the file, never doubles it.
        self.spool.quarantine(spec.table, f"tail-{f.key[:16]}-{bad[0][0].start:015d}", records)
        line, reason = bad[0]
        self._log_error(f"line:{spec.path}", "source %s line %d: quarantined (%d line(s) in this read): %s",
                        line.path, line.lineno, len(bad), reason)

    # -- lag ----------------------------------------------------------------------
    def lag(self) -> list[dict[str, Any]]:
        """Per source: files tailed, bytes read and bytes not yet read (as of the last look)."""
        out = []
        for i, g in enumerate(self.files.globs):
            follows = [f for f in self.files.follows.values() if f.src == i]
            out.append({
                "table": g.spec.table,
                "path": g.spec.path,
                "format": g.spec.format,
                "files": len(follows),
                "offset_bytes": sum(min(f.pos.offset, f.size) for f in follows),
                "lag_bytes": sum(max(0, f.size - f.pos.offset) for f in follows),
            })
        return out

    def _log_error(self, key: str, msg: str, *args: object) -> None:
        suppressed = self._errors.allow(key, time.monotonic())
        if suppressed is None:
            return
        if suppressed:
            msg += f" (and {suppressed} more like it in the last minute)"
        log.warning(msg, *args)
