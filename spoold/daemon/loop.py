"""``spoold run``: the event loop that tails sources and flushes tables on a debounce.

The loop is thin: watchfiles reports changes under the spool root and the
source directories (inotify, not polling), changes mark tables touched, the
tailer copies new source lines into the spool, and :mod:`spoold.daemon.scheduler`
(pure) says which tables are due. ``watch`` yields at least every
``_RUST_TIMEOUT_MS`` even when nothing changes, so timers fire and the loop
can ping the systemd watchdog.

Signal handlers only set flags (and wake the watcher): SIGTERM/SIGINT flush
what is pending within ``flush.shutdown_timeout_s`` and exit 0; a second one
exits at once (the spool is on disk, nothing is lost); SIGHUP reloads the
config, unless the daemon has a controlling terminal: then it is that terminal
hanging up and stops the daemon like SIGTERM (see :mod:`spoold.daemon.terminal`).
Nothing a producer or a source writes can make the daemon exit. One
thing outside does: the config file it runs by gone together with its spool
root stops it with exit 0, like SIGTERM, instead of making a deleted tree (e.g.
a test's temporary directory) again; see :meth:`Daemon._world`. A config file
gone alone (moved aside to be edited, rewritten by config management) is
logged once and the daemon runs on with the config it has.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from watchfiles import Change, watch

from spoold.config import Config, is_loopback, load_config, parse_listen
from spoold.daemon import systemd, terminal
from spoold.daemon.footprint import loaded, restart_lean
from spoold.daemon.report import DaemonReport
from spoold.daemon.scheduler import TableState, due_tables
from spoold.daemon.worker import Worker
from spoold.errors import SpooldError, one_line
from spoold.logs import LogLimiter
from spoold.sources.tail import Tailer
from spoold.spool import quarantine
from spoold.spool.spool import ROTATE_WAIT_S, Spool

if TYPE_CHECKING:
    from spoold.ingest.server import IngestServer

log = logging.getLogger("spoold.daemon.loop")

_RUST_TIMEOUT_MS = 250  # longest the loop sleeps without changes: timer precision
_WATCH_DEBOUNCE_MS = 300  # longest watchfiles gathers a burst of changes
_TAIL_SLICE_S = 0.5  # tailing a backlog yields to flushes and signals this often
_LAST_COMMIT_S = 5.0  # past shutdown_timeout_s, the commit in flight gets this long before the process exits
_GONE_GRACE_S = 2.0  # a spool root missing this long (its config still there) is made again
_INGEST_DRAIN_S = 5.0  # ingest requests in flight at SIGTERM get this long to be appended and answered
# A second stop signal this soon after the first is the same request delivered twice (the kernel re-sends a
# parent-death signal at each reparenting; a shell may forward a hangup too), not a user asking to exit now.
REPEATED_SIGNAL_S = 1.0


class Daemon:
    """One running ``spoold run``: config, spool, tailer, per-table schedule."""

    def __init__(self, config: Config, config_path: str | os.PathLike[str] | None = None, *,
                 may_restart: bool = False) -> None:
        self.config_path = config_path
        self.may_restart = may_restart  # only a real `spoold run` process re-executes itself when idle
        self._busy_at = time.monotonic()
        self.errors = LogLimiter(config.daemon.log_repeat_s)
        # systemd STATUS/WATCHDOG, .daemon.json and, with [daemon] listen, /metrics and /health
        self.report = DaemonReport(self.errors.note, config.daemon.listen, listen_public=config.daemon.listen_public)
        self.ingest = start_ingest(config, self.report)  # [ingest] listen: rows over HTTP, on threads of its own
        self._wake = threading.Event()  # the watcher's stop event: set by signals to end a wait
        self._stop_signal: int | None = None
        self._stop_at = 0.0  # when the first stop signal came (monotonic)
        self._reload = False
        self._hup = terminal.HUP_RELOAD  # set by run(): what SIGHUP means to this process
        self._tty_fds: tuple[int, ...] = ()
        self._rewatch = False
        self._scan = True  # a full look at spool and sources is due (start-up, reload, rescan)
        self._touched: set[str] = set()
        self._last_rescan = time.monotonic()
        self._gone_at: float | None = None  # when the spool root was first seen missing
        self._config_missing = False  # the config file is missing (logged once when it went)
        self._apply(config)
        # The shutdown flush's thread, started now: a drain under a task limit (TasksMax=) needs no new one.
        self._drain: tuple[list[str], object] | None = None
        self._drain_go = threading.Event()
        self._drainer = threading.Thread(target=self._drain_when_told, name="spoold-shutdown", daemon=True)
        self._drainer.start()

    # -- configuration ----------------------------------------------------------
    def _apply(self, config: Config) -> None:
        self.config = config
        self.spool = Spool.from_config(config)
        self.spool.lock_wait_s = ROTATE_WAIT_S  # a stuck producer's lock costs its table a turn, never the loop
        self.spool.make_root()
        self.spool.sweep_temp()  # the root's own leftovers (per table: each flush)
        self.root = str(self.spool.root.resolve())
        self.tailer = Tailer(self.spool, config.sources, tick=self._alive)
        self.worker = Worker(config, self.spool, self.report, self.errors)
        self._scan = True
        self._watched: list[str] = []
        self._missing: list[Path] = []
        self._root_id: tuple[int, int] | None = None

    def _reload_config(self) -> None:
        self._reload = False
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            new = load_config(self.config_path)
            if self.ingest is not None:  # its token stays the one read at start-up
                from spoold.ingest.handler import check_group_token

                check_group_token(new.spool_group, self.ingest.handler.token)
            Spool.from_config(new).make_root()
        except SpooldError as e:
            log.error("reload failed, keeping the running configuration: %s", e)
        else:
            if new.spool_root != self.config.spool_root and self.spool.tables():
                log.warning("spool root changed from %s to %s; rows left under the old root wait for a "
                            "`spoold flush` with the old config", self.config.spool_root, new.spool_root)
            if new.daemon.listen != self.config.daemon.listen:
                log.warning("daemon.listen changed: the new address is served after a restart")
            if _ingest_wiring(new) != _ingest_wiring(self.config):
                log.warning("ingest listen, token_file or TLS changed: served after a restart")
            if self.ingest is not None:
                self.ingest.reconfigure(new)
            self._apply(new)
            log.info("reloaded configuration from %s", new.path or "embedded defaults")
        systemd.notify("READY=1", f"STATUS={self.report.status_line(self.states)}")

    @property
    def states(self) -> dict[str, TableState]:
        return self.worker.states

    # -- the loop ----------------------------------------------------------------
    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        self._hup = terminal.hangup_means()
        self._tty_fds = terminal.terminal_fds()
        handled = (signal.SIGTERM, signal.SIGINT) + (() if self._hup == terminal.HUP_IGNORE else (signal.SIGHUP,))
        old = {s: signal.signal(s, self._on_signal) for s in handled}
        # Ready as soon as work can be accepted (the spool root exists; appends are safe at any
        # time): before the first look at the spool, which may start a long flush of a backlog.
        systemd.notify("READY=1", f"STATUS={self.report.status_line(self.states)}")
        log.info("spoold running: spool %s, %d source(s), debounce %ss, max delay %ss", self.spool.root,
                 len(self.config.sources), self.config.flush.debounce_s, self.config.flush.max_delay_s)
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
            if self._world(time.monotonic()) is None:
                self.spool.make_root()  # (not while the tree may be being deleted: see _world)
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
            if (more := self.errors.note("watch", time.time())) is not None:
                log.error("file watcher failed, retrying: %s%s", one_line(e), more)
            self._tick()
            self._wake.wait(1.0)
        self._wake.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP and self._hup == terminal.HUP_RELOAD:
            self._reload = True
        elif signum == signal.SIGHUP:
            # The terminal hung up (the kernel and the shell may each send one): stop once, as SIGTERM does.
            terminal.leave_terminal(self._tty_fds)
            if self._stop_signal is None:
                self._stop_signal, self._stop_at = signum, time.monotonic()
        elif self._stop_signal is None:
            self._stop_signal, self._stop_at = signum, time.monotonic()
        elif time.monotonic() - self._stop_at < REPEATED_SIGNAL_S:
            pass  # the same request delivered again: a parent-death signal is re-sent as the process is reparented
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
                if change == Change.added and (os.path.isdir(path) or os.path.islink(path)):
                    self._scan = True  # a new directory (files made before its watch), a symlink (its target's)
                self.tailer.on_change(path, deleted=change == Change.deleted)

    def _tick(self) -> None:
        """One turn of the loop; nothing in it (disk, catalog, a bug) may end the daemon."""
        try:
            self._step()
        except Exception as e:
            if (more := self.errors.note("loop", time.time())) is not None:
                log.error("loop error (the daemon goes on): %s%s", one_line(e), more, exc_info=True)
        self.report.publish(self.states, self.config, self.spool, self.tailer)

    def _step(self) -> None:
        now = time.time()
        mono = time.monotonic()
        world = self._world(mono)
        if world == "gone":
            log.warning("config file %s is gone with the spool root: stopping, not making the spool again",
                        self.config.path)
            self._stop_signal = 0  # as a SIGTERM: flush what is pending (if anything is left), exit 0
            return
        if world == "wait":
            return  # no tailing or flushing: either would make the missing root again
        if any(p.is_dir() for p in self._missing):
            self._scan = True  # a source directory appeared: watch it
        if _file_id(self.root) != self._root_id:
            # The spool root was removed or replaced: start afresh on the new one (a new Spool, so
            # no lock is held on a deleted file that producers no longer see) and watch it.
            log.warning("spool root %s was replaced; starting over on the new one", self.spool.root)
            self._apply(self.config)
            self._rewatch = True
            return
        if self._scan or mono - self._last_rescan >= self.config.daemon.rescan_s:
            self._full_scan(mono)
        slice_end = mono + _TAIL_SLICE_S
        while self.tailer.has_work() and self._stop_signal is None and time.monotonic() < slice_end:
            self._touched.update(self.tailer.run_pass())
        for table in sorted(self._touched):
            self.worker.observe(table, now, changed=True)
        self._touched.clear()
        for table in due_tables(self.states, now, self.config.flush):
            if self._stop_signal is not None or self._reload:
                break
            self.worker.flush(table, stop=self._stopping, tick=self._alive)
        if self._stop_signal is None and not due_tables(self.states, time.time(), self.config.flush) \
                and self.worker.maintain():  # a slice of maintenance, between flushes
            self._busy_at = time.monotonic()
        if self.states or self.tailer.has_work() or not loaded():
            self._busy_at = mono
        elif self.ingest is not None and self.ingest.inflight:
            self._busy_at = mono  # never re-executed under a request between its fsync and its 200
        elif self.may_restart and 0 < self.config.flush.idle_restart_s <= mono - self._busy_at:
            log.info("idle for %.0fs: restarting to hand back the flush stack's memory", mono - self._busy_at)
            restart_lean()

    def _world(self, mono: float) -> str | None:
        """"gone" once the config file the daemon runs by is missing together with the spool root: its
        world was deleted, and making the root (with its missing parents) again would bring back a deleted
        tree. "wait" while only the root is missing, for up to ``_GONE_GRACE_S`` (a tree being deleted may
        lose its config file last). None: carry on (a root missing past the grace, with the config still
        there, is made again; a config file missing alone is logged once and the daemon runs on as
        configured: a config moved aside to be edited must not stop a production daemon for good)."""
        root_gone = _file_id(self.root) is None
        config_gone = self.config.path is not None and not os.path.exists(self.config.path)
        if config_gone != self._config_missing:
            self._config_missing = config_gone
            if config_gone:
                log.warning("config file %s is missing; running on with the configuration loaded from it (the "
                            "daemon stops only if its spool root %s goes too)", self.config.path, self.root)
            else:
                log.info("config file %s is back (SIGHUP reloads it)", self.config.path)
        if not root_gone:
            self._gone_at = None
            return None
        if config_gone:
            return "gone"
        if self._gone_at is None:
            self._gone_at = mono
        return "wait" if mono - self._gone_at < _GONE_GRACE_S else None

    def _full_scan(self, mono: float) -> None:
        """Start-up, reload and periodic safety net: pending tables from disk, source files by glob."""
        self._scan = False
        self._last_rescan = mono
        now = time.time()
        for table in self.spool.tables():
            if table not in self.states and table not in self._touched:
                # Real oldest-pending time from the spool, so max_delay holds across restarts.
                self.worker.observe(table, now, changed=False)
        self.tailer.discover()
        if [str(p) for p in self.tailer.watch_paths()] != self._watched[1:]:
            self._rewatch = True
        self._expire_quarantine(now)

    def _expire_quarantine(self, now: float) -> None:
        """``[spool] quarantine_retention_s``: remove quarantine older than that (at start-up and each rescan)."""
        keep_s = self.config.spool_limits.quarantine_retention_s
        if not keep_s:
            return
        for table in self.spool.tables():
            try:
                files, records = quarantine.expire(self.spool, table, keep_s, now)
            except OSError as e:
                if (more := self.errors.note(f"retention:{table}", now)) is not None:
                    log.error("table %s: cannot apply quarantine retention: %s%s", table, one_line(e), more)
                continue
            if files or records:
                log.info("table %s: removed %d quarantine file(s), %d record(s), older than "
                         "[spool] quarantine_retention_s = %gs", table, files, records, keep_s)

    def _stopping(self) -> bool:
        """Asked by a flush between chunks: a stop signal ends it early (the rest stays spooled)."""
        return self._stop_signal is not None

    def _alive(self) -> None:
        """Called during long work on the loop thread: feed the systemd watchdog when due."""
        self.report.ping()

    # -- shutdown -------------------------------------------------------------------
    def _pending_tables(self, tables: list[str]) -> list[str]:
        """Those of ``tables`` with rows pending; one whose spool cannot be looked at is left out (logged)."""
        out = []
        for table in tables:
            try:
                if self.spool.pending(table):
                    out.append(table)
            except OSError as e:
                log.error("table %s: cannot look at its spool: %s", table, one_line(e))
        return out

    def _drain_when_told(self) -> None:
        self._drain_go.wait()
        if self._drain is not None:
            tables, stop = self._drain
            self.worker.flush_all(tables, stop=stop, tick=lambda: None)  # type: ignore[arg-type]

    def _shutdown(self) -> int:
        """Flush everything pending within shutdown_timeout_s, then report exit 0."""
        name = signal.Signals(self._stop_signal).name if self._stop_signal else "stop"
        if self._stop_signal == signal.SIGHUP:
            name = "terminal hung up (SIGHUP)"
        timeout = self.config.flush.shutdown_timeout_s
        tables = self._pending_tables(self.spool.tables())
        systemd.notify("STOPPING=1", f"STATUS=stopping: flushing {len(tables)} table(s)")
        self.report.draining()
        if self.ingest is not None:  # 503 to new requests; those in flight end (fsync'd) before the flush
            self.ingest.drain(_INGEST_DRAIN_S)
            tables = self._pending_tables(self.spool.tables())
        log.info("%s: flushing %d table(s) before exit (at most %ss)", name, len(tables), timeout)
        deadline = time.monotonic() + timeout

        def past_deadline() -> bool:
            return time.monotonic() >= deadline

        # A flush asks past_deadline() between chunks: the last one ends within one commit of it.
        self._drain = (tables, past_deadline)
        self._drain_go.set()
        worker = self._drainer
        interval = systemd.watchdog_interval_s()
        end = deadline + _LAST_COMMIT_S
        while worker.is_alive() and time.monotonic() < end:
            worker.join(min(interval or 1.0, max(0.0, end - time.monotonic()), 1.0))
            if interval is not None:
                systemd.notify("WATCHDOG=1")
        left = self._pending_tables(tables)
        if worker.is_alive():
            log.warning("shutdown flush still running after %ss; exiting, rows stay in the spool: %s", timeout,
                        ", ".join(left))
        elif left:
            log.warning("exiting with rows still spooled (committed on the next start): %s", ", ".join(left))
        self.report.write_state(self.states, self.config, self.spool, self.tailer, running=False, force=True)
        self.report.close()
        log.info("stopped")
        if worker.is_alive():
            logging.shutdown()
            os._exit(0)  # the worker is inside a commit; a commit cut short is safe, waiting is not
        return 0


def run_daemon(config: Config, config_path: str | os.PathLike[str] | None = None, *, may_restart: bool = False) -> int:
    """``spoold run``: the daemon in the foreground; returns the exit code.

    ``may_restart``: this process is ``spoold run`` itself (not a host program
    embedding the daemon), so it may re-execute itself when idle.
    """
    return Daemon(config, config_path, may_restart=may_restart).run()


def start_ingest(config: Config, report: DaemonReport) -> IngestServer | None:
    """``[ingest] listen``'s server, started (None when off); ConfigError for an unsafe token setup."""
    s = config.ingest
    if not s.listen:
        return None
    from spoold.daemon.metrics import IngestEvents
    from spoold.ingest.handler import read_token
    from spoold.ingest.server import IngestServer

    token = read_token(s.token_file, is_loopback(parse_listen(s.listen, "ingest.listen")[0]), config.spool_group)
    try:
        server = IngestServer(config, token, IngestEvents())
    except OSError as e:
        raise SpooldError(f"ingest.listen {s.listen}: cannot listen: {e.strerror or e}") from None
    server.start()
    if report.metrics is not None:
        report.metrics.ingest_alive = lambda: server.alive
    return server


def _ingest_wiring(config: Config) -> tuple[str, str, str, str]:
    s = config.ingest
    return s.listen, s.token_file, s.tls_cert, s.tls_key


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
