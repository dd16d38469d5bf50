"""``spoold run``: the event loop that tails sources and flushes tables on a debounce.

The loop is thin: watchfiles reports changes under the spool root and the
source directories (inotify, not polling), changes mark tables touched, the
tailer copies new source lines into the spool, and :mod:`spoold.scheduler`
(pure) says which tables are due. ``watch`` yields at least every
``_RUST_TIMEOUT_MS`` even when nothing changes, so timers fire and the loop
can ping the systemd watchdog.

Signal handlers only set flags (and wake the watcher): SIGTERM/SIGINT flush
what is pending within ``flush.shutdown_timeout_s`` and exit 0; a second one
exits at once (the spool is on disk, nothing is lost); SIGHUP reloads the
config. Nothing a producer or a source writes can make the daemon exit.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from watchfiles import Change, watch

from spoold import systemd
from spoold.config import Config, load_config
from spoold.errors import SpooldError, one_line
from spoold.footprint import loaded, preload, release, restart_lean
from spoold.pending import Pending
from spoold.report import Report
from spoold.scheduler import LogLimiter, TableState, after_failure, after_success, due_tables, observe
from spoold.sources.tail import Tailer
from spoold.spool import Spool

log = logging.getLogger("spoold.daemon")

_RUST_TIMEOUT_MS = 250  # longest the loop sleeps without changes: timer precision
_WATCH_DEBOUNCE_MS = 300  # longest watchfiles gathers a burst of changes
_RESCAN_S = 60.0  # safety net for missed events (e.g. an inotify queue overflow)
_TAIL_SLICE_S = 0.5  # tailing a backlog yields to flushes and signals this often


class Daemon:
    """One running ``spoold run``: config, spool, tailer, per-table schedule."""

    def __init__(self, config: Config, config_path: str | os.PathLike[str] | None = None, *,
                 may_restart: bool = False) -> None:
        self.config_path = config_path
        self.may_restart = may_restart  # only a real `spoold run` process re-executes itself when idle
        self._busy_at = time.monotonic()
        self.states: dict[str, TableState] = {}
        self.errors = LogLimiter()
        self.report = Report(self._limited)  # systemd STATUS/WATCHDOG and .daemon.json
        self._wake = threading.Event()  # the watcher's stop event: set by signals to end a wait
        self._stop_signal: int | None = None
        self._reload = False
        self._rewatch = False
        self._scan = True  # a full look at spool and sources is due (start-up, reload, rescan)
        self._touched: set[str] = set()
        self._sink: Any = None  # spoold.iceberg.sink.Sink, imported at the first flush (pyiceberg is heavy)
        self._last_rescan = time.monotonic()
        self._ready = False
        self._preloading: threading.Thread | None = None
        self._apply(config)

    # -- configuration ----------------------------------------------------------
    def _apply(self, config: Config) -> None:
        self.config = config
        self.spool = Spool.from_config(config)
        self.spool.make_root()
        self.spool.sweep_temp()  # the root's own leftovers (per table: each flush)
        self.root = str(self.spool.root.resolve())
        self.tailer = Tailer(self.spool, config.sources)
        self.states = {}
        self.pending = Pending(self.spool)  # a new spool: no cached probe carries over
        self._sink = None
        self._scan = True
        self._watched: list[str] = []
        self._missing: list[Path] = []
        self._root_id: tuple[int, int] | None = None

    def _reload_config(self) -> None:
        self._reload = False
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            new = load_config(self.config_path)
            Spool.from_config(new).make_root()
        except SpooldError as e:
            log.error("reload failed, keeping the running configuration: %s", e)
        else:
            if new.spool_root != self.config.spool_root and self.spool.tables():
                log.warning("spool root changed from %s to %s; rows left under the old root wait for a "
                            "`spoold flush` with the old config", self.config.spool_root, new.spool_root)
            self._apply(new)
            log.info("reloaded configuration from %s", new.path or "embedded defaults")
        systemd.notify("READY=1", self.report.status_line(self.states))

    # -- the loop ----------------------------------------------------------------
    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            while self._stop_signal is None:
                self._watch()
                if self._reload and self._stop_signal is None:
                    self._reload_config()
            return self._shutdown()
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _watch(self) -> None:
        """Wait on changes and timers until a signal, a reload or new source directories."""
        self._rewatch = False
        self._scan = True  # whatever changed before this watcher existed is found by a full look
        try:
            self.spool.make_root()
            self._root_id = _file_id(self.root)
            paths = [self.root, *(str(p) for p in self.tailer.watch_paths())]
            self._watched = paths
            self._missing = [p for p in self.tailer.wanted_paths() if str(p) not in paths]
            for changes in watch(*paths, watch_filter=None, debounce=_WATCH_DEBOUNCE_MS, stop_event=self._wake,
                                 rust_timeout=_RUST_TIMEOUT_MS, yield_on_timeout=True, raise_interrupt=False,
                                 ignore_permission_denied=True):
                self._on_changes(changes)
                self._tick()
                if self._stop_signal is not None or self._reload or self._rewatch:
                    break
        except Exception as e:
            # The watcher itself failed (the inotify watch limit, a watched directory gone):
            # keep flushing on timers and try a new watcher in a second.
            if (more := self._limited("watch", time.time())) is not None:
                log.error("file watcher failed, retrying: %s%s", one_line(e), more)
            self._tick()
            self._wake.wait(1.0)
        self._wake.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        elif self._stop_signal is None:
            self._stop_signal = signum
        else:
            # Second stop signal: out now. Every acknowledged row is in the spool on disk.
            os.write(2, b"spoold: second signal, exiting at once; pending rows stay in the spool\n")
            os._exit(128 + signum)
        self._wake.set()

    def _on_changes(self, changes: set[tuple[Change, str]]) -> None:
        for change, path in changes:
            table = self.spool.table_of(path, self.root)
            if table is not None:
                self._touched.add(table)
            elif self.tailer.covers(path):
                if change == Change.added and os.path.isdir(path):
                    self._scan = True  # a new directory: files made before its watch was set
                self.tailer.on_change(path, deleted=change == Change.deleted)

    def _tick(self) -> None:
        """One turn of the loop; nothing in it (disk, catalog, a bug) may end the daemon."""
        try:
            self._step()
        except Exception as e:
            if (more := self._limited("loop", time.time())) is not None:
                log.error("loop error (the daemon goes on): %s%s", one_line(e), more, exc_info=True)
        if not self._ready:
            self._ready = True
            systemd.notify("READY=1", self.report.status_line(self.states))
            log.info("spoold running: spool %s, %d source(s), debounce %ss, max delay %ss",
                     self.spool.root, len(self.config.sources), self.config.flush.debounce_s,
                     self.config.flush.max_delay_s)
        self.report.publish(self.states, self.config, self.spool, self.tailer)

    def _step(self) -> None:
        now = time.time()
        mono = time.monotonic()
        if any(p.is_dir() for p in self._missing):
            self._scan = True  # a source directory appeared: watch it
        if _file_id(self.root) != self._root_id:
            # The spool root was removed or replaced: start afresh on the new one (a new Spool, so
            # no lock is held on a deleted file that producers no longer see) and watch it.
            log.warning("spool root %s was replaced; starting over on the new one", self.spool.root)
            self._apply(self.config)
            self._rewatch = True
            return
        if self._scan or mono - self._last_rescan >= _RESCAN_S:
            self._full_scan(mono)
        slice_end = mono + _TAIL_SLICE_S
        while self.tailer.has_work() and self._stop_signal is None and time.monotonic() < slice_end:
            self._touched.update(self.tailer.run_pass())
        for table in sorted(self._touched):
            self._observe(table, now, changed=True)
        self._touched.clear()
        for table in due_tables(self.states, now, self.config.flush):
            if self._stop_signal is not None or self._reload:
                break
            self._flush(table)
        if self._sink and self._stop_signal is None and not due_tables(self.states, time.time(), self.config.flush) \
                and self._sink.maintain():  # one step (spoold.iceberg.upkeep)
            self._busy_at = mono
        if self.states or self.tailer.has_work() or not loaded():
            self._busy_at = mono
        elif self.may_restart and 0 < self.config.flush.idle_restart_s <= mono - self._busy_at:
            log.info("idle for %.0fs: restarting to hand back the flush stack's memory", mono - self._busy_at)
            restart_lean()

    def _full_scan(self, mono: float) -> None:
        """Start-up, reload and periodic safety net: pending tables from disk, source files by glob."""
        self._scan = False
        self._last_rescan = mono
        now = time.time()
        for table in self.spool.tables():
            if table not in self.states and table not in self._touched:
                # Real oldest-pending time from the spool, so max_delay holds across restarts.
                self._observe(table, now, changed=False)
        self.tailer.discover()
        if [str(p) for p in self.tailer.watch_paths()] != self._watched[1:]:
            self._rewatch = True

    # -- tables -------------------------------------------------------------------
    def _observe(self, table: str, now: float, *, changed: bool) -> None:
        first, rows = self.pending.probe(table)
        self._set(table, observe(self.states.get(table, TableState()), now, first, rows, changed=changed))

    def _set(self, table: str, state: TableState) -> None:
        if state.pending:
            self.states[table] = state
            self._preload()
        else:
            self.states.pop(table, None)

    def _preload(self) -> None:
        if self._preloading is None:  # once: the import happens while the first rows wait out their debounce
            self._preloading = preload()

    def _flush(self, table: str) -> None:
        from spoold.flush import flush_table  # pyiceberg/pyarrow load at the first flush, not at start-up
        from spoold.iceberg.sink import Sink

        settings = self.config.flush
        try:
            if self._sink is None:
                self._sink = Sink(self.config)
            result = flush_table(self.config, self.spool, self._sink, table)
        except Exception as e:  # a failing catalog or an unexpected bug: back off, never exit
            self._sink = None  # a fresh catalog connection for the next try
            now = time.time()
            state = after_failure(self.states.get(table, TableState()), now, settings, one_line(e), random.random())
            self.states[table] = state
            if (more := self._limited(f"flush:{table}", now)) is not None:
                log.error("table %s: flush failed, rows stay spooled, retry in %.1fs (failure %d): %s%s", table,
                          state.backoff_s, state.failures, state.last_error, more,
                          exc_info=not isinstance(e, SpooldError))
            self._observe(table, now, changed=False)
            return
        release(self._sink)  # idle connections and freed buffers go back between flushes
        now = time.time()
        prev = self.states.get(table, TableState())
        if prev.failures:
            log.info("table %s: flush succeeded again after %d failure(s)", table, prev.failures)
            self.errors.forget(f"flush:{table}")
        if result.files:
            log.info("table %s: committed %d row(s), %d deduplicated, %d quarantined", table,
                     result.committed, result.deduplicated, result.quarantined)
            self.report.flushed(table, now, result.summary())
        first, rows = self.pending.probe(table)
        self._set(table, after_success(prev, now, first, rows))

    def _limited(self, key: str, now: float) -> str | None:
        """None when this error should stay silent; else a suffix counting the ones that did."""
        suppressed = self.errors.allow(key, now)
        if suppressed is None:
            return None
        return f" ({suppressed} more since the last report)" if suppressed else ""

    # -- shutdown -------------------------------------------------------------------
    def _shutdown(self) -> int:
        """Flush everything pending within shutdown_timeout_s, then report exit 0."""
        name = signal.Signals(self._stop_signal).name if self._stop_signal else "stop"
        timeout = self.config.flush.shutdown_timeout_s
        tables = [t for t in self.spool.tables() if self.spool.pending(t)]
        systemd.notify("STOPPING=1", f"STATUS=stopping: flushing {len(tables)} table(s)")
        log.info("%s: flushing %d table(s) before exit (at most %ss)", name, len(tables), timeout)
        worker = threading.Thread(target=self._flush_all, args=(tables,), name="spoold-shutdown", daemon=True)
        worker.start()
        deadline = time.monotonic() + timeout
        interval = systemd.watchdog_interval_s()
        while worker.is_alive() and time.monotonic() < deadline:
            worker.join(min(interval or 1.0, max(0.0, deadline - time.monotonic()), 1.0))
            if interval is not None:
                systemd.notify("WATCHDOG=1")
        left = [t for t in tables if self.spool.pending(t)]
        if worker.is_alive():
            log.warning("shutdown flush still running after %ss; exiting, rows stay in the spool: %s", timeout,
                        ", ".join(left))
        elif left:
            log.warning("exiting with rows still spooled (committed on the next start): %s", ", ".join(left))
        self.report.write_state(self.states, self.config, self.spool, self.tailer, running=False, force=True)
        log.info("stopped")
        if worker.is_alive():
            logging.shutdown()
            os._exit(0)  # the worker is inside a commit; a commit cut short is safe, waiting is not
        return 0

    def _flush_all(self, tables: list[str]) -> None:
        for table in tables:
            self._flush(table)


def run_daemon(config: Config, config_path: str | os.PathLike[str] | None = None, *, may_restart: bool = False) -> int:
    """``spoold run``: the daemon in the foreground; returns the exit code.

    ``may_restart``: this process is ``spoold run`` itself (not a host program
    embedding the daemon), so it may re-execute itself when idle.
    """
    return Daemon(config, config_path, may_restart=may_restart).run()


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino

