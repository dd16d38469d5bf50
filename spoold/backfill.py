"""Backfill: source rows → dedupe against committed ∪ spooled keys → the same commit path as flush.

The seen-set (:mod:`spoold.seen`) is the union of the keys committed to the
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
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from hashlib import blake2b
from itertools import accumulate
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from spoold import held
from spoold.config import Config, TableSpec
from spoold.envelope import Validator, columnize
from spoold.errors import InputError
from spoold.iceberg.sink import CommitOutcome, Sink
from spoold.iceberg.verify import Keeper
from spoold.keyindex import fingerprints
from spoold.pipeline import CommitPipeline
from spoold.progress import Progress
from spoold.seen import SeenSet
from spoold.settle import Batch, gc_paused, settle
from spoold.sources import SourceLine, expand_sources, materializer, read_lines
from spoold.spool import Spool, quarantine_record

log = logging.getLogger(__name__)
GROUP_ROWS = 4096  # rows validated and looked up together: amortises per-call costs, bounds memory
SAMPLE_KEYS = 10
MAX_REPORTED_LINES = 50  # bad source lines named on stderr; the rest are only counted
COMMIT_PROPS = {"spoold.op": "backfill"}


@dataclass
class BackfillSummary:
    """What a run did; ``as_dict`` is the ``--json`` document (SPEC fields first)."""

    scanned: int = 0  # non-blank source lines read
    materialized: int = 0  # rows those lines gave (at most --limit)
    skipped_committed: int = 0
    skipped_spooled: int = 0
    written: int = 0
    quarantined: int = 0
    failed: int = 0  # source lines that are not valid input (reported on stderr)
    dry_run: bool = False
    table: str = ""
    duplicates_in_source: int = 0
    would_write: int = 0  # rows that passed the seen-set (written, or to be written in a dry run)
    interrupted: bool = False
    unreadable_spool_files: int = 0
    unreadable_sources: int = 0
    seen_set_s: float = 0.0  # reading committed and spooled keys
    elapsed_s: float = 0.0
    sample_keys: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        if not self.dry_run:
            del doc["sample_keys"]
        return doc


def _picker(positions: list[int]) -> Callable[[list[Any]], list[Any]]:
    """``pick(values)`` → ``[values[i] for i in positions]``, at C speed."""
    if len(positions) == 1:
        i = positions[0]
        return lambda values: [values[i]]
    get = itemgetter(*positions)
    return lambda values: list(get(values))


class _Run:
    """One backfill run: the seen-set, the chunk being filled, the counts."""

    def __init__(self, config: Config, spec: TableSpec, sink: Sink, summary: BackfillSummary, *, dry_run: bool,
                 limit: int | None, progress: Progress | None, stop: Callable[[], bool] | None) -> None:
        self.config, self.spec, self.sink, self.s = config, spec, sink, summary
        self.spool = spool = Spool.from_config(config)
        self.dry_run, self.limit, self.progress, self.stop = dry_run, limit, progress, stop
        self.seen = SeenSet(sink, spool, spec)
        summary.unreadable_spool_files += self.seen.unreadable_spool_files
        self.validator = Validator(spec, self.seen.types, self.seen.required)
        self.batch = Batch(self.validator.types)
        self.pipeline = CommitPipeline(sink, spec, self.reject_commit)  # chunk k commits while chunk k+1 is read
        self.keeper = Keeper(config, spool, spec.identifier)
        self.copy: list[Any] = []  # the chunk's source rows, kept on disk while the table is not verified
        self.group_rows = min(GROUP_ROWS, config.flush.chunk_rows)  # so chunks stay near chunk_rows
        self.rows: list[dict[str, Any]] = []
        self.lines: list[SourceLine] = []  # the lines ``rows`` came from, in order
        self.rejects: list[dict[str, Any]] = []
        self.reject_name: str | None = None
        self._count_lock = threading.Lock()  # the commit thread counts its rejects too

    def reject(self, line: SourceLine, reason: str, row: Any) -> None:
        with self._count_lock:
            self.s.quarantined += 1
        if self.dry_run:
            return
        if self.reject_name is None:  # deterministic, so re-running the same backfill replaces, not doubles
            tag = blake2b(line.path.encode("utf-8", "surrogateescape"), digest_size=4).hexdigest()
            self.reject_name = f"backfill-{Path(line.path).stem[:40]}-{tag}-{line.lineno:010d}"
        self.rejects.append(quarantine_record(reason, line.path, line.lineno, row=row, source="backfill"))

    def settle_group(self) -> None:
        """Validate the gathered rows, drop those already seen, add the rest to the chunk."""
        rows, lines = self.rows, self.lines
        self.rows, self.lines = [], []
        if not rows:
            return
        starts: list[int] = []

        def origin(i: int) -> SourceLine:  # the line rows[i] came from (only asked for rejects)
            if not starts:
                starts.extend(accumulate((len(line.rows) for line in lines[:-1]), initial=0))
            return lines[bisect_right(starts, i) - 1]

        cols, matrix = columnize(rows)  # the readers never give an empty row or column name
        verdict = self.validator.rows(cols, matrix)
        for rej in verdict.rejects:
            self.reject(origin(rej.index), rej.reason, rows[rej.index])
        keys = verdict.keys
        if not keys:
            return
        n = len(keys)
        fh, fl = fingerprints(keys)
        # In a dry run, or while a commit is in flight, earlier chunks' keys may not be committed yet.
        com, dup, spo = self.seen.lookup(keys, fh, fl, unsettled=self.dry_run or self.pipeline.busy)
        seen = dup | com | spo
        if len(set(keys)) == n:  # no key twice in the group: no need to walk it in Python
            keep = np.flatnonzero(~seen).tolist()
        else:
            keep = settle(keys, seen.tolist())
        ncom, nspo = int(com.sum()), int(spo.sum())
        self.s.skipped_committed += ncom
        self.s.skipped_spooled += nspo
        self.s.duplicates_in_source += len(keys) - len(keep) - ncom - nspo
        self.s.would_write += len(keep)
        if not keep:
            return
        whole = len(keep) == len(keys)
        pick = None if whole else _picker(keep)
        kept = keys if pick is None else pick(keys)
        self.seen.take(kept, (fh, fl) if whole else (fh[keep], fl[keep]))
        if self.dry_run:
            self.s.sample_keys.extend(kept[: SAMPLE_KEYS - len(self.s.sample_keys)])
            if len(self.seen.chunk_keys) >= self.config.flush.chunk_rows:
                self.seen.roll()
            return
        if not self.sink.verified(self.spec):  # rows committed there need a copy until then (iceberg/verify.py)
            bad = {r.index for r in verdict.rejects}
            accepted = [i for i in range(len(rows)) if i not in bad] if bad else None
            self.copy += [rows[accepted[k]] for k in keep] if accepted else [rows[k] for k in keep]
        if pick is None:
            self.batch.add(verdict)
        else:
            self.batch.add_rows(kept, {c: pick(v) for c, v in verdict.values.items()})
        if len(self.batch) >= self.config.flush.chunk_rows:
            self.commit()

    def commit(self) -> None:
        """Quarantine the chunk's rejects, then settle and commit its rows (one snapshot, via the pipeline)."""
        if self.rejects:
            self.spool.quarantine(self.spec.identifier, self.reject_name or "backfill", self.rejects)
            log.warning("table %s: quarantined %d bad source row(s), first: %s",
                        self.spec.identifier, len(self.rejects), self.rejects[0]["reason"])
            self.rejects, self.reject_name = [], None
        if len(self.batch):
            batch, self.batch = self.batch, Batch(self.validator.types)
            copy = held.write_copy(self.spool, self.spec.identifier, self.copy) if self.copy else None
            self.copy = []
            self.seen.roll()
            self.pipeline.submit(batch, self.validator, COMMIT_PROPS, lambda out: self._count(out, copy))

    def reject_commit(self, batch: Batch, row: int, reason: str) -> None:
        """A row no commit can take (on the commit thread): quarantined under a name its key decides."""
        key, values = batch.keys[row], batch.row(row)
        rec = quarantine_record(f"cannot commit: {reason}", "", -1, key=key, columns=list(values),
                                row=list(values.values()), source="backfill")
        tag = blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
        self.spool.quarantine(self.spec.identifier, f"backfill-commit-{tag}", [rec])
        with self._count_lock:
            self.s.quarantined += 1

    def _count(self, out: CommitOutcome, copy: Path | None = None) -> None:
        if copy is not None:  # deleted if the table is verified now, else held with its commit
            self.keeper.settled([copy.stem], [copy], out)
        self.s.written += out.committed
        self.s.skipped_committed += out.deduplicated  # another committer got there first
        gc.collect(1)  # the young cycles a commit leaves (the caller's loop runs with GC off)


def backfill(
    config: Config,
    table: str,
    sources: Sequence[str],
    fmt: str = "jsonl",
    limit: int | None = 1000,
    dry_run: bool = False,
    *,
    progress: Progress | None = None,
    stop: Callable[[], bool] | None = None,
    sink: Sink | None = None,
) -> BackfillSummary:
    """Write the source rows of ``table`` whose keys are neither committed nor spooled.

    ``limit``: consider at most this many materialized rows (None: all).
    ``stop()`` is polled between groups of rows; once true, what is gathered
    is committed and the run ends (``interrupted``). Raises InputError for a
    missing source, SpooldError (exit 1) when the catalog fails.
    """
    started = time.monotonic()
    try:
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
    summary = BackfillSummary(dry_run=dry_run, table=table)
    spec = config.table(table)
    run = _Run(config, spec, sink or Sink(config), summary, dry_run=dry_run, limit=limit, progress=progress,
               stop=stop)
    summary.seen_set_s = round(time.monotonic() - started, 3)
    log.info("backfill %s: %d source file(s), %.1f MB; seen-set: %d committed + %d spooled key(s)",
             table, len(files), total_bytes / 1e6, len(run.seen.committed), len(run.seen.spooled))
    stopped = False
    if progress is not None:
        progress.start()
    # The cyclic GC would keep re-walking the chunk being filled (measured: 2-3x slower);
    # it is paused for the run, and each commit collects what it left.
    with gc_paused():
        try:
            done = 0
            for path, size in zip(files, sizes):
                if stop is not None and stop():
                    stopped = True
                    break
                try:
                    stopped = _read_file(run, path, fmt, done, total_bytes)
                except _Unreadable as e:
                    summary.unreadable_sources += 1
                    _warn(progress, "cannot read source %s: %s", path, e.__cause__)
                done += size
                if stopped or (limit is not None and summary.materialized >= limit):
                    break
            run.settle_group()
            run.commit()
            run.pipeline.join()
        finally:
            run.pipeline.close()
    if progress is not None:
        progress.clear()
    summary.interrupted = stopped
    summary.elapsed_s = round(time.monotonic() - started, 3)
    if summary.failed > MAX_REPORTED_LINES:
        log.warning("%d bad source line(s) in all; only the first %d were named", summary.failed, MAX_REPORTED_LINES)
    return summary


class _Unreadable(Exception):
    """A source file failed to open or read (not: a failure while handling its rows)."""


def _lines(path: Path, fmt: str) -> Iterator[SourceLine]:
    try:
        yield from read_lines(path, fmt, include_partial=True)  # history files are finished
    except OSError as e:
        raise _Unreadable from e


def _read_file(run: _Run, path: Path, fmt: str, done_bytes: int, total_bytes: int) -> bool:
    """Feed one source file to the run; True if ``stop()`` asked to end the run."""
    s, limit, progress, stop = run.s, run.limit, run.progress, run.stop
    # The per-line path is the hot loop of a backfill: locals only, counters written back
    # at group boundaries, no calls but the reader's.
    rows_buf, lines_buf, group_rows = run.rows, run.lines, run.group_rows
    room = -1 if limit is None else limit - s.materialized  # rows the limit still allows
    scanned = materialized = 0
    try:
        for line in _lines(path, fmt):
            scanned += 1
            if line.error is not None:
                s.failed += 1
                if s.failed <= MAX_REPORTED_LINES:
                    _warn(progress, "%s:%d: %s", line.path, line.lineno, line.error)
                continue
            rows = line.rows
            if not rows:
                continue
            n = len(rows)
            if 0 <= room <= materialized + n:
                rows = rows[: room - materialized]
                materialized += len(rows)
                lines_buf.append(line)
                rows_buf += rows
                return False
            materialized += n
            lines_buf.append(line)
            rows_buf += rows
            if len(rows_buf) >= group_rows:
                s.scanned += scanned
                s.materialized += materialized
                scanned = materialized = 0
                room = -1 if limit is None else limit - s.materialized
                run.settle_group()
                rows_buf, lines_buf = run.rows, run.lines
                if progress is not None:
                    fractions = [(done_bytes + line.end) / total_bytes] if total_bytes else []
                    if limit is not None:
                        fractions.append(s.materialized / limit)
                    progress.update(s.materialized, max(fractions, default=None))
                if stop is not None and stop():
                    return True
        return False
    finally:
        s.scanned += scanned
        s.materialized += materialized


def _warn(progress: Progress | None, msg: str, *args: Any) -> None:
    if progress is not None:
        progress.clear()
    log.warning(msg, *args)


__all__ = ["BackfillSummary", "backfill"]
