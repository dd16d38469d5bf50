"""The daemon's side of maintenance: count commits, decide (pure, :mod:`spoold.daemon.maintenance`), run steps.

The daemon's worker holds a Maintainer beside its Sink: the sink reports
each commit (:meth:`Maintainer.committed`, through the events it is handed)
and the daemon calls :meth:`Maintainer.step` whenever no flush is due. A
step is one bounded piece of a run (reading or writing one file of a
compaction group, the commit, the expiry, the orphan sweep); a call runs
steps for ``SLICE_S`` (at least one), so a flush that falls due waits for
that slice and one step at most. A failed run is logged (rate-limited)
and retried after a backoff; nothing in here can stop capture. The counts
live beside the Sink: a daemon that replaces its Sink (after a failed flush, a
reload) starts counting afresh, and the run in progress is dropped (its
uncommitted files deleted as the run is closed).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import orjson

from spoold.config import Config, TableSpec
from spoold.daemon.maintenance import MaintenanceState, after_commit, after_failure, after_run, due, sweep_due
from spoold.durable import write_state
from spoold.errors import SpooldError, one_line
from spoold.iceberg.maintain.run import MaintenanceReport, Options, last_record, run_steps, totals
from spoold.iceberg.tables import Tables
from spoold.layout import LAST_MAINTENANCE
from spoold.logs import LogLimiter
from spoold.safefile import read_state

log = logging.getLogger(__name__)
_UNSEEN = MaintenanceState()
SLICE_S = 0.2  # a call runs steps for this long at most (plus the last step), then the daemon looks at its flushes
PROBE_S = 60.0  # a table's data-file count is looked up at most this often (shared tables: a catalog read)


class Maintainer:
    """Per-table maintenance state and the run in progress (at most one at a time)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.states: dict[str, MaintenanceState] = {}
        self.errors = LogLimiter()
        self._probed: dict[str, float] = {}  # when each table's data-file count was last looked up
        # table, its steps, its report, the table's commit count when it started, whether it sweeps orphans
        self._run: tuple[str, Iterator[str], MaintenanceReport, int, bool] | None = None

    @property
    def busy(self) -> bool:
        """A run is in progress (the daemon is not idle)."""
        return self._run is not None

    def committed(self, table: str) -> None:
        """A commit to ``table`` landed (no I/O: called on the commit path)."""
        self.states[table] = after_commit(self.states.get(table, _UNSEEN), None)

    def step(self, tables: Tables, now: float, index: Callable[[TableSpec, Any], object] | None = None) -> bool:
        """Steps of the run in progress (or of the due table's new run) for ``SLICE_S``; False when none is due.

        At least one step; more while the slice lasts: a step may be reading one
        small file, and one per turn of the daemon's loop would stretch a run
        over minutes.
        """
        if self._run is None:
            settings = self.config.maintain
            if not settings.enabled:
                return False
            for table in sorted(self.states):
                self._probe(table, tables, now)
            table = next((t for t in sorted(self.states) if due(self.states[t], now, settings)), None)
            if table is None:
                return False
            log.info("table %s: maintenance due (%s)", table, due(self.states[table], now, settings))
            report, spec = MaintenanceReport(), self.config.table(table)
            opts = Options(orphans=sweep_due(self.states[table], now, settings))
            # ``index``: the daemon's Sink's committed-key index, kept in step, so the expiry cannot leave
            # it on an expired snapshot (which would cost the next flush a full rescan).
            steps = run_steps(tables, self.config, spec, opts, report,
                              index=(lambda tbl: index(spec, tbl)) if index else None)
            self._run = (table, steps, report, self.states[table].commits, opts.orphans)
        table, steps, report, before, sweeps = self._run
        try:
            ends = time.monotonic() + SLICE_S
            next(steps)
            while time.monotonic() < ends:  # small steps (one small file) go on for a slice of time
                next(steps)
            return True
        except StopIteration:
            self._run = None
            keep_record(self.config, table, report)
            log.info("%s", report.line(table))  # (`spoold maintain` prints it instead)
            state = self.states[table]  # flushes committed between the steps count towards the next run
            self.states[table] = replace(after_run(state, time.time(), report.files_after, swept=sweeps),
                                         commits=max(0, state.commits - before))
            self.errors.forget(table)
        except Exception as e:  # a failing catalog or a bug: back off, never stop capture
            self._run = None
            now = time.time()
            state = self.states[table] = after_failure(self.states[table], now, one_line(e), random.random())
            suppressed = self.errors.allow(table, now)
            if suppressed is not None:
                log.error("table %s: maintenance failed, retry in %.0fs (failure %d): %s%s", table,
                          (state.retry_at or now) - now, state.failures, state.last_error,
                          f" ({suppressed} more since the last report)" if suppressed else "",
                          exc_info=not isinstance(e, SpooldError))
        return True

    def _probe(self, table: str, tables: Tables, now: float) -> None:
        """Now and then, the table's data-file count (and, the first time, its last run's record)."""
        state = self.states[table]
        if state.commits == 0 or now - self._probed.get(table, -PROBE_S) < PROBE_S:
            return
        self._probed[table] = now
        try:
            tbl = tables.load(self.config.table(table), reuse=True)  # the last committed version, unless shared
        except SpooldError:
            return
        if tbl is None:
            return
        if state.last_run is None and state.files_after is None:
            first = self._initial(table, last_record(tbl))
            state = replace(state, last_run=first.last_run, files_after=first.files_after)
        self.states[table] = replace(state, data_files=totals(tbl)[0])

    def close(self) -> None:
        """Abandon the run in progress (its uncommitted files are deleted)."""
        if self._run is not None:
            self._run[1].close()
            self._run = None

    def _initial(self, table: str, record: dict[str, object] | None) -> MaintenanceState:
        """Where the triggers start: the newer of the spool's and the table's record of the last run."""
        local = None
        try:
            root = self.config.spool_root
            local = orjson.loads(read_state(root / table / LAST_MAINTENANCE, root))
        except (OSError, SpooldError, orjson.JSONDecodeError):
            pass
        best = max((r for r in (local, record) if isinstance(r, dict) and isinstance(r.get("at"), (int, float))),
                   key=lambda r: r["at"], default=None)
        if best is None:
            return MaintenanceState()
        files = best.get("files_after")
        return MaintenanceState(last_run=float(best["at"]) + float(best.get("duration_s") or 0),
                      files_after=files if isinstance(files, int) else None)


def keep_record(config: Config, table: str, report: MaintenanceReport) -> None:
    """Keep a finished run's record in the table's spool directory too (the daemon's triggers start from it)."""
    d = config.spool_root / table
    if d.is_dir():
        write_state(d / LAST_MAINTENANCE, report.record(), config.spool_group)
