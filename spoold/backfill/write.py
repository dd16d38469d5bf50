"""One backfill run's write side: groups of source rows → validated → deduped → chunks → commits.

Each group of rows is validated with THE rules, looked up in the seen-set
(committed ∪ spooled ∪ kept by this run), and what is new fills the chunk;
a full chunk is committed through the :class:`CommitPipeline` (one snapshot,
re-settled against committed keys, poison rows isolated into quarantine).
Rows the rules reject go to quarantine with the chunk. The source cursors the
reader marked move only in the callback of the commit that makes every row
before them durable (quarantined rows are durable too: a poison stretch never
holds a limited run in place).
"""

from __future__ import annotations

import gc
import logging
import threading
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from hashlib import blake2b
from itertools import accumulate
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from spoold._testhooks import reached
from spoold.backfill.cursor import Cursors
from spoold.backfill.seen import SeenSet
from spoold.config import Config, TableSpec
from spoold.envelope import Validator, columnize
from spoold.flush.pipeline import CommitPipeline
from spoold.flush.verify import Keeper
from spoold.iceberg.sink import CommitOutcome, TableSink
from spoold.keys.batch import Batch
from spoold.keys.index import fingerprints
from spoold.keys.settle import settle
from spoold.progress import Progress
from spoold.sources import SourceLine
from spoold.sources.detect import source_types
from spoold.sources.position import Position
from spoold.spool import held
from spoold.spool.files import quarantine_record
from spoold.spool.spool import Spool

log = logging.getLogger("spoold.backfill.run")
GROUP_ROWS = 4096  # rows validated and looked up together: amortises per-call costs, bounds memory
SAMPLE_KEYS = 10


@dataclass
class BackfillSummary:
    """What a run did; ``as_dict`` is the ``--json`` document (the documented fields first, docs/commands.md)."""

    scanned: int = 0  # non-blank source lines read
    materialized: int = 0  # rows those lines gave (at most --limit)
    skipped_committed: int = 0
    skipped_spooled: int = 0
    written: int = 0
    quarantined: int = 0
    failed: int = 0  # source lines that are not valid input (reported on stderr)
    dry_run: bool = False
    limit_reached: bool = False  # the limit stopped the run before the end of the sources
    table: str = ""
    run_id: str = ""
    duplicates_in_source: int = 0
    would_write: int = 0  # rows that passed the seen-set (written, or to be written in a dry run)
    interrupted: bool = False
    unreadable_spool_files: int = 0
    unreadable_sources: int = 0
    resumed_files: int = 0  # files read on from their cursor (not from their start)
    formats: dict[str, int] = field(default_factory=dict)  # files read per format
    first_quarantine_reason: str = ""
    seen_set_s: float = 0.0  # reading committed and spooled keys
    elapsed_s: float = 0.0
    sample_keys: list[str] = field(default_factory=list)

    @property
    def all_quarantined(self) -> bool:
        """Rows were materialized and every one of them was quarantined."""
        return self.materialized > 0 and self.quarantined >= self.materialized

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


class BackfillRun:
    """One backfill run: the seen-set, the chunk being filled, the counts, the cursors to move."""

    def __init__(self, config: Config, spec: TableSpec, sink: TableSink, summary: BackfillSummary, cursors: Cursors, *,
                 props: Mapping[str, str], dry_run: bool, limit: int | None, progress: Progress | None,
                 stop: Callable[[], bool] | None) -> None:
        self.config, self.spec, self.sink, self.s, self.cursors = config, spec, sink, summary, cursors
        self.spool = spool = Spool.from_config(config)
        self.props, self.dry_run, self.limit, self.progress, self.stop = props, dry_run, limit, progress, stop
        hints = source_types(config, spec.identifier)
        self.seen = SeenSet(sink, spool, spec, hints)
        summary.unreadable_spool_files += self.seen.unreadable_spool_files
        self.validator = Validator(spec, self.seen.types, self.seen.required, hints=hints)
        self.batch = Batch(self.validator.types)
        # chunk k commits while chunk k+1 is read
        self.pipeline = CommitPipeline(sink, spec, spool, "backfill", self.rejected_commit)
        self.keeper = Keeper(config, spool, spec.identifier)
        self.copy: list[Any] = []  # the chunk's source rows, kept on disk while the table is not verified
        self.copies: list[held.Copy] = []  # copies whose commit has not returned yet (locked meanwhile)
        self.group_rows = min(GROUP_ROWS, config.flush.chunk_rows)  # so chunks stay near chunk_rows
        self.rows: list[dict[str, Any]] = []
        self.lines: list[SourceLine] = []  # the lines ``rows`` came from, in order (line.rows: exactly those)
        self.rejects: list[dict[str, Any]] = []
        self.reject_name: str | None = None
        self._count_lock = threading.Lock()  # the commit thread counts its rejects too

    def reject(self, line: SourceLine, reason: str, row: Any) -> None:
        with self._count_lock:
            self.s.quarantined += 1
            self.s.first_quarantine_reason = self.s.first_quarantine_reason or reason
        if self.dry_run:
            return
        if self.reject_name is None:  # deterministic, so re-running the same backfill replaces, not doubles
            tag = blake2b(line.path.encode("utf-8", "surrogateescape"), digest_size=4).hexdigest()
            self.reject_name = f"backfill-{Path(line.path).stem[:40]}-{tag}-{line.lineno:010d}"
        self.rejects.append(quarantine_record(reason, line.path, line.lineno, row=row, source="backfill"))

    def take_group(self) -> None:
        """Validate the gathered rows, drop those already seen, add the rest to the chunk."""
        rows, lines = self.rows, self.lines
        self.rows, self.lines = [], []
        if rows:
            self._take(rows, lines)

    def _take(self, rows: list[dict[str, Any]], lines: list[SourceLine]) -> None:
        starts: list[int] = []

        def origin(i: int) -> SourceLine:  # the line rows[i] came from (only asked for rejects)
            if not starts:
                starts.extend(accumulate((len(line.rows) for line in lines[:-1]), initial=0))
            return lines[bisect_right(starts, i) - 1]

        try:
            cols, matrix = columnize(rows)  # the readers never give an empty row or column name
            verdict = self.validator.rows(cols, matrix)
        except Exception as e:  # a row the rules trip over (never expected): halve down to its line
            if len(lines) == 1:
                for row in rows:
                    self.reject(lines[0], f"cannot validate: {type(e).__name__}: {e}", row)
                return
            mid = len(lines) // 2
            cut = sum(len(line.rows) for line in lines[:mid])
            self._settle(rows[:cut], lines[:mid])
            self._settle(rows[cut:], lines[mid:])
            return
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
        if not self.sink.verified(self.spec):  # rows committed there need a copy until then (flush/verify.py)
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
        """Quarantine the chunk's rejects, then settle and commit its rows (one snapshot, via the pipeline);
        the cursors marked so far move once that commit (and every earlier one) is durable."""
        if self.rejects:
            self.spool.quarantine(self.spec.identifier, self.reject_name or "backfill", self.rejects)
            log.warning("table %s: quarantined %d bad source row(s), first: %s",
                        self.spec.identifier, len(self.rejects), self.rejects[0]["reason"])
            self.rejects, self.reject_name = [], None
        marks = self.cursors.take()
        if len(self.batch):
            batch, self.batch = self.batch, Batch(self.validator.types)
            copy = held.write_copy(self.spool, self.spec.identifier, self.copy) if self.copy else None
            self.copy = []
            if copy is not None:
                self.copies.append(copy)
            self.seen.roll()
            self.pipeline.submit(batch, self.validator, self.props, lambda out: self._committed(out, marks, copy))
        elif marks:
            self.pipeline.join()  # the rows before these marks may still be committing
            self.cursors.save(marks)

    def rejected_commit(self, reason: str) -> None:
        """A row no commit can take was quarantined (on the commit thread)."""
        with self._count_lock:
            self.s.quarantined += 1
            self.s.first_quarantine_reason = self.s.first_quarantine_reason or reason

    def close(self) -> None:
        """Stop the commit thread; a copy whose commit never returned is unlocked (the next look re-queues it)."""
        try:
            self.pipeline.close()
        finally:
            for copy in self.copies:
                copy.close()
            self.copies = []

    def _committed(self, out: CommitOutcome, marks: dict[str, Position], copy: held.Copy | None = None) -> None:
        if copy is not None:  # deleted if the table is verified now, else held with its commit
            try:
                self.keeper.commit_done([copy.path.stem], [copy.path], out)
            finally:
                copy.close()
                self.copies.remove(copy)
        self.s.written += out.committed
        self.s.skipped_committed += out.deduplicated  # another committer got there first
        reached("backfill.committed")  # test-only mark: a crash here reads these rows again, settles them
        self.cursors.save(marks)
        gc.collect(1)  # the young cycles a commit leaves (the caller's loop runs with GC off)


__all__ = ["BackfillRun", "BackfillSummary"]
