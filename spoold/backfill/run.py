"""Backfill: source rows → dedupe against committed ∪ spooled keys → the same commit path as flush.

The seen-set (:mod:`spoold.backfill.seen`) is the union of the keys committed to the
table and the keys waiting in the spool, read as a flush starting now would
read them, so a row that flush would quarantine is never "already captured".

Rows that survive go through ``Sink.commit`` in chunks of ``flush.chunk_rows``,
which settles again against committed keys and owns conflict retries, so a
concurrent flush or a second backfill can never double a key.

Counts (each materialized row lands in exactly one of them)::

    materialized = written + skipped_committed + skipped_spooled
                   + duplicates_in_source + quarantined      (+ would_write in a dry run)

A key that appears twice in the sources is kept once; the repeats count in
``duplicates_in_source``. Rows another committer added between our pre-check
and our commit count in ``skipped_committed``.

Each source file is read from its cursor (:mod:`spoold.backfill.cursor`) in
its format (``auto``: :mod:`spoold.sources.detect`), and at most ``limit``
rows are considered per run; a run stopped by the limit says so
(``limit_reached``), and the next one goes on where it stopped. The write
side (validate, dedupe, commit, move the cursors) is :mod:`spoold.backfill.write`.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from spoold.backfill.cursor import Cursors
from spoold.backfill.write import BackfillRun, BackfillSummary
from spoold.config import Config
from spoold.errors import InputError, TableBusy
from spoold.flush.rebuild import pending
from spoold.iceberg.sink import Sink, TableSink
from spoold.keys.batch import gc_paused
from spoold.progress import Progress
from spoold.sources import SourceLine, expand_sources, materializer, read_lines
from spoold.sources.detect import format_chooser, format_types
from spoold.sources.position import Position
from spoold.spool.spool import Spool

log = logging.getLogger(__name__)
MAX_REPORTED_LINES = 50  # bad source lines named on stderr; the rest are only counted
MAX_SOURCES_PROP = 500  # characters of --source patterns kept in a snapshot's summary


def backfill(
    config: Config,
    table: str,
    sources: Sequence[str],
    fmt: str = "auto",
    limit: int | None = 1000,
    dry_run: bool = False,
    *,
    restart: bool = False,
    progress: Progress | None = None,
    stop: Callable[[], bool] | None = None,
    sink: TableSink | None = None,
) -> BackfillSummary:
    """Write the source rows of ``table`` whose keys are neither committed nor spooled.

    ``fmt``: ``auto``, ``jsonl`` or ``transcript``. ``limit``: consider at most
    this many materialized rows (None: all), going on from each file's cursor
    (``restart``: from each file's start). ``stop()`` is polled between groups
    of rows; once true, what is gathered is committed and the run ends
    (``interrupted``). Raises InputError for a missing source, SpooldError
    (exit 1) when the catalog fails.
    """
    started = time.monotonic()
    try:
        if fmt != "auto":
            materializer(fmt)
        files = expand_sources(sources)
    except (FileNotFoundError, ValueError) as e:
        raise InputError(str(e.args[0] if e.args else e)) from None
    sizes = []
    for p in files:
        try:
            sizes.append(p.stat().st_size)
        except OSError:
            sizes.append(0)  # reading it will report the error
    total_bytes = sum(sizes)
    summary = BackfillSummary(dry_run=dry_run, table=table, run_id=uuid.uuid4().hex[:16])
    spec = config.table(table)
    spool = Spool.from_config(config)
    if not dry_run and spool.table_dir(table).is_dir() and (staging := pending(spool, table)) is not None:
        # between a rebuild's renames the table is missing: a commit would create a new, empty one
        raise TableBusy(f"table {table} is being rebuilt (into {staging}); backfill it once it has finished: "
                        f"`spoold rebuild {table}` finishes it (`spoold rebuild {table} --abort` rolls it back while "
                        "it is still copying)")
    choose = format_chooser(config, table, fmt)
    cursors = Cursors(config.spool_root, table, restart=restart, save=not dry_run)
    # The sink adds spoold.host: every commit of this run names the run, what it read and where it ran.
    props = {"spoold.op": "backfill", "spoold.run": summary.run_id, "spoold.sources": _bounded(sources)}
    run = BackfillRun(config, spec, sink or Sink(config), summary, cursors, props=props, dry_run=dry_run,
                      limit=limit, progress=progress, stop=stop)
    summary.seen_set_s = round(time.monotonic() - started, 3)
    log.info("backfill %s: %d source file(s), %.1f MB; rows whose key is among the %d committed or %d spooled "
             "are skipped", table, len(files), total_bytes / 1e6, len(run.seen.committed), len(run.seen.spooled))
    stopped = False
    if progress is not None:
        progress.start()
    # The cyclic GC would keep re-walking the chunk being filled (measured: 2-3x slower);
    # it is paused for the run, and each commit collects what it left.
    with gc_paused():
        try:
            done = 0
            for index, (path, size) in enumerate(zip(files, sizes)):
                if stop is not None and stop():
                    stopped = True
                    break
                try:
                    stopped = _read_file(run, path, choose, done, total_bytes)
                except _Unreadable as e:
                    summary.unreadable_sources += 1
                    _warn(progress, "cannot read source %s: %s", path, e.__cause__)
                done += size
                if stopped:
                    break
                if limit is not None and summary.materialized >= limit:
                    rest = files[index + 1 :]
                    summary.limit_reached = summary.limit_reached or any(cursors.unread(str(p)) for p in rest)
                    break
            run.take_group()
            run.commit()
            run.pipeline.join()
        finally:
            run.close()
    if progress is not None:
        progress.clear()
    summary.interrupted = stopped
    summary.resumed_files = cursors.resumed
    summary.elapsed_s = round(time.monotonic() - started, 3)
    if summary.failed > MAX_REPORTED_LINES:
        log.warning("%d bad source line(s) in all; only the first %d were named", summary.failed, MAX_REPORTED_LINES)
    return summary


def _bounded(sources: Sequence[str]) -> str:
    """The --source patterns for a snapshot summary, cut to MAX_SOURCES_PROP characters."""
    text = ", ".join(sources)
    if len(text) <= MAX_SOURCES_PROP:
        return text
    kept = text[:MAX_SOURCES_PROP].rsplit(", ", 1)[0]
    return f"{kept}, ... ({len(sources) - kept.count(', ') - 1} more)"


class _Unreadable(Exception):
    """A source file failed to open or read (not: a failure while handling its rows)."""


def _lines(path: Path, fmt: str, pos: Position, fd: int, max_line: int) -> Iterator[SourceLine]:
    try:  # history files are finished: an unterminated last line counts too
        yield from read_lines(path, fmt, pos.offset, lineno=pos.lineno, include_partial=True, fd=fd,
                              max_line=max_line)
    except OSError as e:
        raise _Unreadable from e


def _read_file(run: BackfillRun, path: Path, choose: Callable[[str, int], str], done_bytes: int,
               total_bytes: int) -> bool:
    """Feed one source file to the run from its cursor; True if ``stop()`` asked to end the run."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise _Unreadable from e
    try:
        try:  # the format's first line and the cursor's fingerprint are read here
            fmt = choose(str(path), fd)
            pos = run.cursors.start(str(path), fd)
        except OSError as e:
            raise _Unreadable from e
        run.s.formats[fmt] = run.s.formats.get(fmt, 0) + 1
        run.validator.hints.update(format_types(fmt))  # a transcript's columns are created with its types
        return _read_lines(run, pos, fd, fmt, done_bytes, total_bytes)
    finally:
        os.close(fd)


def _read_lines(run: BackfillRun, pos: Position, fd: int, fmt: str, done_bytes: int, total_bytes: int) -> bool:
    """Feed the lines of ``fd`` from ``pos`` on to the run, marking the cursor at each group and the end."""
    s, limit, progress, stop, cursors = run.s, run.limit, run.progress, run.stop, run.cursors
    # The per-line path is the hot loop of a backfill: locals only, counters written back
    # at group boundaries, no calls but the reader's.
    rows_buf, lines_buf, group_rows = run.rows, run.lines, run.group_rows
    room = -1 if limit is None else limit - s.materialized  # rows the limit still allows
    scanned = materialized = 0
    start, skip = pos.offset, pos.skip  # the first line's first ``skip`` rows: taken by an earlier run
    line = None
    lines = _lines(Path(pos.path), fmt, pos, fd, run.config.spool_limits.max_line_bytes)
    try:
        for line in lines:
            scanned += 1
            if line.error is not None:
                s.failed += 1
                if s.failed <= MAX_REPORTED_LINES:
                    _warn(progress, "%s:%d: %s", line.path, line.lineno, line.error)
                continue
            rows = line.rows
            if skip:
                if line.start == start:
                    rows = line.rows = rows[skip:]
                else:
                    skip = 0
            if not rows:
                continue
            n = len(rows)
            if 0 <= room <= materialized + n:
                taken = room - materialized
                rows = line.rows = rows[:taken]
                materialized += taken
                lines_buf.append(line)
                rows_buf += rows
                if taken < n:  # the line is cut: the next run takes the rest of it
                    cursors.mark(pos, fd, line.start, line.lineno, skip + taken if line.start == start else taken)
                    s.limit_reached = True
                else:
                    _mark_after(cursors, pos, fd, line)
                    s.limit_reached = s.limit_reached or _more(lines)
                return False
            materialized += n
            lines_buf.append(line)
            rows_buf += rows
            if len(rows_buf) >= group_rows:
                s.scanned += scanned
                s.materialized += materialized
                scanned = materialized = 0
                room = -1 if limit is None else limit - s.materialized
                _mark_after(cursors, pos, fd, line)
                run.take_group()
                rows_buf, lines_buf = run.rows, run.lines
                if progress is not None:
                    fractions = [(done_bytes + line.end) / total_bytes] if total_bytes else []
                    if limit is not None:
                        fractions.append(s.materialized / limit)
                    progress.update(s.materialized, max(fractions, default=None))
                if stop is not None and stop():
                    return True
        if line is not None:
            _mark_after(cursors, pos, fd, line)
        return False
    finally:
        s.scanned += scanned
        s.materialized += materialized


def _mark_after(cursors: Cursors, pos: Position, fd: int, line: SourceLine) -> None:
    """The cursor goes past ``line`` (to its start if it is an unterminated last line: it may grow)."""
    if line.partial:
        cursors.mark(pos, fd, line.start, line.lineno)
    else:
        cursors.mark(pos, fd, line.end, line.lineno + 1)


def _more(lines: Iterator[SourceLine]) -> bool:
    """True if the file has another non-blank line after the limit was reached."""
    try:
        return next(lines, None) is not None
    except _Unreadable:
        return True


def _warn(progress: Progress | None, msg: str, *args: Any) -> None:
    if progress is not None:
        progress.clear()
    log.warning(msg, *args)


__all__ = ["BackfillSummary", "backfill"]
