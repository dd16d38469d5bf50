"""What the daemon does to a table when the scheduler says so: flush it, with backoff and bounded logs.

The daemon loop (:mod:`spoold.daemon.loop`) decides *when*; this module does the
work and folds its outcome back into the pure schedule (:mod:`spoold.daemon.scheduler`):
pending-row probes, the catalog connection (opened at the first flush, since
pyiceberg is heavy), a failure's backoff, a table another flusher holds. Work
is bounded: a flush never waits for another flusher's lock, stops between
chunks once the daemon is stopping, and lets the watchdog be fed meanwhile.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from spoold.config import Config
from spoold.daemon import metrics
from spoold.daemon.footprint import preload, release
from spoold.daemon.pending import Pending
from spoold.daemon.report import DaemonReport
from spoold.daemon.scheduler import TableState, after_failure, after_success, observe
from spoold.errors import SpooldError, TableBusy, error_class, one_line
from spoold.logs import LogLimiter
from spoold.spool.spool import LockHeld, Spool

if TYPE_CHECKING:
    from spoold.daemon.maintainer import Maintainer

log = logging.getLogger("spoold.daemon.loop")

BUSY_RETRY_S = 2.0  # a table another process is flushing is looked at again this soon
HELD_RETRY_MAX_S = 15.0  # a table whose append lock stays held is tried ever less often, up to this


class Worker:
    """Per-table flushes for one daemon configuration; ``states`` is the schedule's view of each table."""

    def __init__(self, config: Config, spool: Spool, report: DaemonReport, errors: LogLimiter) -> None:
        self.config, self.spool, self.report = config, spool, report
        self.errors = errors  # the daemon's rate limit for repeated error logs
        self.states: dict[str, TableState] = {}
        self.pending = Pending(spool)  # a new spool: no cached probe carries over
        self._sink: Any = None  # spoold.iceberg.sink.Sink, imported at the first flush (pyiceberg is heavy)
        self._maintainer: Maintainer | None = None  # maintenance through that sink's catalog connection
        self._preloading: threading.Thread | None = None

    # -- the schedule's view ------------------------------------------------------
    def observe(self, table: str, now: float, *, changed: bool) -> None:
        """Fold what the spool holds for ``table`` right now into its state; never raises: a table whose
        spool cannot be looked at keeps its state (logged, rate-limited) and holds up no other table."""
        try:
            first, rows = self.pending.probe(table)
        except Exception as e:
            if (more := self.errors.note(f"observe:{table}", now)) is not None:
                log.error("table %s: cannot look at its spool (the daemon goes on): %s%s", table, one_line(e), more,
                          exc_info=not isinstance(e, (SpooldError, OSError)))
            return
        self.errors.forget(f"observe:{table}")
        self._set(table, observe(self.states.get(table, TableState()), now, first, rows, changed=changed))

    def _set(self, table: str, state: TableState) -> None:
        if state.pending:
            self.states[table] = state
            if self._preloading is None:  # once: the import happens while the first rows wait out their debounce
                self._preloading = preload()
        else:
            self.states.pop(table, None)

    # -- flushing -----------------------------------------------------------------
    def flush(self, table: str, *, stop: Callable[[], bool], tick: Callable[[], None]) -> None:
        """Flush ``table`` once; never raises (a failure backs the table off and is logged, rate-limited)."""
        from spoold.daemon.maintainer import Maintainer
        from spoold.flush.flush import FlushResult, flush_table  # pyiceberg/pyarrow load at the first flush
        from spoold.iceberg.sink import Sink

        settings = self.config.flush
        result, started = FlushResult(), time.monotonic()  # what a failed flush committed still counts
        try:
            if self._sink is None:
                # A fresh catalog connection drops the maintenance run in progress and its commit counts.
                self._maintainer = Maintainer(self.config)
                self._sink = Sink(self.config, events=_Events(self._maintainer))
            flush_table(self.config, self.spool, self._sink, table, wait=False, stop=stop, tick=tick, result=result)
        except LockHeld as e:
            # A producer (or anyone) holds the table's append lock: skip it this turn, the other tables go on.
            now = time.time()
            prev = self.states.get(table, TableState())
            since = prev.lock_held_since or now
            delay = min(HELD_RETRY_MAX_S, max(BUSY_RETRY_S, (now - since) / 2))
            if (more := self.errors.note(f"held:{table}", now)) is not None:
                log.warning("table %s: %s; skipped, looking again in %.0fs%s", table, e, delay, more)
            self.states[table] = replace(prev, retry_at=now + delay, lock_held_since=since)
            if result.files:  # the files rotated before were flushed all the same
                metrics.flushed(table, "ok", time.monotonic() - started, result.summary())
                log.info("table %s: committed %d row(s) of earlier flush files, %d deduplicated, %d quarantined",
                         table, result.committed, result.deduplicated, result.quarantined)
                self.report.flushed(table, now, result.summary())
            return
        except TableBusy as e:
            # Not a failure: another flusher (e.g. `spoold flush`) is committing these rows right now.
            now = time.time()
            if (more := self.errors.note(f"busy:{table}", now)) is not None:
                log.info("table %s: %s; looking again in %.0fs%s", table, e, BUSY_RETRY_S, more)
            self._lock_free(table, now)
            self.states[table] = replace(self.states.get(table, TableState()), retry_at=now + BUSY_RETRY_S,
                                         lock_held_since=None)
            return
        except Exception as e:  # a failing catalog or an unexpected bug: back off, never exit
            self._sink = None  # a fresh catalog connection for the next try
            now = time.time()
            self._lock_free(table, now)  # it got past the lock: a held lock must not hide this error
            state = after_failure(self.states.get(table, TableState()), now, settings, one_line(e), random.random())
            state = replace(state, error_class=error_class(e))
            self.states[table] = state
            if (more := self.errors.note(f"flush:{table}", now)) is not None:
                log.error("table %s: flush failed, rows stay spooled, retry in %.1fs (failure %d): %s%s", table,
                          state.backoff_s, state.failures, state.last_error, more,
                          exc_info=not isinstance(e, (SpooldError, OSError)))  # a full disk is no bug
            self.observe(table, now, changed=False)
            # Quarantined rows of a failed flush are not counted: its retry quarantines them again.
            metrics.flushed(table, "error", time.monotonic() - started, {**result.summary(), "quarantined": 0})
            return
        if result.files:
            metrics.flushed(table, "ok", time.monotonic() - started, result.summary())
        release(self._sink)  # idle connections and freed buffers go back between flushes
        now = time.time()
        prev = self.states.get(table, TableState())
        if prev.failures:
            log.info("table %s: flush succeeded again after %d failure(s)", table, prev.failures)
            self.errors.forget(f"flush:{table}")
        self._lock_free(table, now)
        if result.files:
            log.info("table %s: committed %d row(s), %d deduplicated, %d quarantined%s", table,
                     result.committed, result.deduplicated, result.quarantined,
                     "; stopped early, the rest stays spooled" if result.interrupted else "")
            self.report.flushed(table, now, result.summary())
        first, rows = self.pending.probe(table)
        self._set(table, after_success(prev, now, first, rows))

    def _lock_free(self, table: str, now: float) -> None:
        """A flush of ``table`` ended other than on a held spool lock: say so if it was held (the state's
        ``lock_held_since`` is cleared by the caller, with the rest of the outcome)."""
        prev = self.states.get(table)
        if prev is not None and prev.lock_held_since is not None:
            log.info("table %s: its spool lock is free again after %.0fs", table, now - prev.lock_held_since)
            self.errors.forget(f"held:{table}")

    def maintain(self) -> bool:
        """A bounded slice of table maintenance, once the flush stack is loaded; True if it did work.

        The daemon calls it when no flush is due (see :mod:`spoold.daemon.maintainer`).
        """
        if self._sink is None or self._maintainer is None:
            return False
        return self._maintainer.step(self._sink.tables, time.time(), self._sink.committed)

    def flush_all(self, tables: list[str], *, stop: Callable[[], bool], tick: Callable[[], None]) -> None:
        """Flush each of ``tables`` until ``stop()`` (the shutdown flush)."""
        for table in tables:
            if stop():
                break
            self.flush(table, stop=stop, tick=tick)


class _Events:
    """The sink's commit events, counted: Prometheus' conflict counter and the maintenance triggers."""

    def __init__(self, maintainer: Maintainer) -> None:
        self._maintainer = maintainer

    def committed(self, table: str) -> None:
        self._maintainer.committed(table)

    def conflict(self, table: str) -> None:
        metrics.commit_conflict(table)
