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

import orjson
from watchfiles import Change, watch

from spoold import systemd
from spoold.config import Config, load_config, validate_identifier
from spoold.errors import SpooldError, UsageError
from spoold.scheduler import LogLimiter, TableState, after_failure, after_success, due_tables, observe
from spoold.sources.tail import Tailer
from spoold.spool import QUARANTINE, Spool, first_envelope, write_atomic

log = logging.getLogger("spoold.daemon")

STATE_FILE = ".daemon.json"  # read by ``spoold status``
_RUST_TIMEOUT_MS = 250  # longest the loop sleeps without changes: timer precision
_WATCH_DEBOUNCE_MS = 300  # longest watchfiles gathers a burst of changes
_RESCAN_S = 60.0  # safety net for missed events (e.g. an inotify queue overflow)
_TAIL_SLICE_S = 0.5  # tailing a backlog yields to flushes and signals this often
_STATE_EVERY_S = 1.0
_DEFAULT_RATIO = 1 / 200  # rows per byte when a pending file's first envelope is unreadable


class Daemon:
    """One running ``spoold run``: config, spool, tailer, per-table schedule."""

    def __init__(self, config: Config, config_path: str | os.PathLike[str] | None = None) -> None:
        self.config_path = config_path
        self.started_at = time.time()
        self.states: dict[str, TableState] = {}
        self.errors = LogLimiter()
        self._wake = threading.Event()  # the watcher's stop event: set by signals to end a wait
        self._stop_signal: int | None = None
        self._reload = False
        self._rewatch = False
        self._scan = True  # a full look at spool and sources is due (start-up, reload, rescan)
        self._touched: set[str] = set()
        self._probes: dict[tuple[str, str, int], tuple[float, float]] = {}
        self._sink: Any = None  # spoold.sink.Sink, imported at the first flush (pyiceberg is heavy)
        self._last_flush: dict[str, Any] | None = None
        self._last_rescan = time.monotonic()
        self._last_ping = 0.0
        self._last_state: tuple[float, bytes] = (0.0, b"")
        self._last_status = ""
        self._ready = False
        self._preloading: threading.Thread | None = None
        self._apply(config)

    # -- configuration ----------------------------------------------------------
    def _apply(self, config: Config) -> None:
        self.config = config
        self.spool = Spool.from_config(config)
        self.spool.make_root()
        self.root = str(self.spool.root.resolve())
        self.tailer = Tailer(self.spool, config.sources)
        self.states = {}
        self._probes.clear()
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
        systemd.notify("READY=1", self._status_line())

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
                log.error("file watcher failed, retrying: %s%s", _one_line(e), more)
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
            table = self._table_of(path)
            if table is not None:
                self._touched.add(table)
            elif self.tailer.covers(path):
                if change == Change.added and os.path.isdir(path):
                    self._scan = True  # a new directory: files made before its watch was set
                self.tailer.on_change(path, deleted=change == Change.deleted)

    def _table_of(self, path: str) -> str | None:
        """The table whose spool directory holds ``path``; None for internal files and quarantine."""
        if not path.startswith(self.root + "/"):
            return None
        parts = path[len(self.root) + 1 :].split("/")
        if parts[0].startswith(".") or (len(parts) > 1 and (parts[1] == QUARANTINE or parts[1].startswith("."))):
            return None
        try:
            return validate_identifier(parts[0])
        except UsageError:
            return None

    def _tick(self) -> None:
        """One turn of the loop; nothing in it (disk, catalog, a bug) may end the daemon."""
        try:
            self._step()
        except Exception as e:
            if (more := self._limited("loop", time.time())) is not None:
                log.error("loop error (the daemon goes on): %s%s", _one_line(e), more, exc_info=True)
        if not self._ready:
            self._ready = True
            systemd.notify("READY=1", self._status_line())
            log.info("spoold running: spool %s, %d source(s), debounce %ss, max delay %ss",
                     self.spool.root, len(self.config.sources), self.config.flush.debounce_s,
                     self.config.flush.max_delay_s)
        self._housekeeping()

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
        first, rows = self._probe(table)
        self._set(table, observe(self.states.get(table, TableState()), now, first, rows, changed=changed))

    def _set(self, table: str, state: TableState) -> None:
        if state.pending:
            self.states[table] = state
            self._preload()
        else:
            self.states.pop(table, None)

    def _preload(self) -> None:
        """Import the flush stack (pyarrow, pyiceberg: ~1 s, ~100 MB) while the first rows wait out
        their debounce, so neither start-up memory nor the first commit's latency pays for it."""
        if self._preloading is None:
            self._preloading = threading.Thread(target=_import_flush_stack, name="spoold-preload", daemon=True)
            self._preloading.start()

    def _probe(self, table: str) -> tuple[float | None, int]:
        """Oldest pending row time and an estimate of pending rows, from the spool files' sizes.

        Each file's first envelope gives its write time (``at``) and its rows per
        byte; that is cached per file (flush files are immutable, active.jsonl is
        keyed by inode), so a busy table costs a directory listing and stats.
        """
        first: float | None = None
        rows = 0.0
        seen = set()
        for path in self.spool.pending(table):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            key = (table, path.name, st.st_ino)
            seen.add(key)
            probe = self._probes.get(key)
            if probe is None:
                found = first_envelope(path)
                probe = found if found is not None else (st.st_mtime, _DEFAULT_RATIO)
                if found is not None:
                    self._probes[key] = probe
            at, ratio = probe
            first = at if first is None else min(first, at)
            rows += st.st_size * ratio
        for key in [k for k in self._probes if k[0] == table and k not in seen]:
            del self._probes[key]
        return first, int(rows)

    def _flush(self, table: str) -> None:
        from spoold.flush import flush_table  # pyiceberg/pyarrow load at the first flush, not at start-up
        from spoold.sink import Sink

        settings = self.config.flush
        try:
            if self._sink is None:
                self._sink = Sink(self.config)
            result = flush_table(self.config, self.spool, self._sink, table)
        except Exception as e:  # a failing catalog or an unexpected bug: back off, never exit
            self._sink = None  # a fresh catalog connection for the next try
            now = time.time()
            state = after_failure(self.states.get(table, TableState()), now, settings, _one_line(e), random.random())
            self.states[table] = state
            if (more := self._limited(f"flush:{table}", now)) is not None:
                log.error("table %s: flush failed, rows stay spooled, retry in %.1fs (failure %d): %s%s", table,
                          state.backoff_s, state.failures, state.last_error, more,
                          exc_info=not isinstance(e, SpooldError))
            self._observe(table, now, changed=False)
            return
        _release(self._sink)
        now = time.time()
        prev = self.states.get(table, TableState())
        if prev.failures:
            log.info("table %s: flush succeeded again after %d failure(s)", table, prev.failures)
            self.errors.forget(f"flush:{table}")
        if result.files:
            log.info("table %s: committed %d row(s), %d deduplicated, %d quarantined", table,
                     result.committed, result.deduplicated, result.quarantined)
            self._last_flush = {"table": table, "at": round(now, 3), **result.summary()}
        first, rows = self._probe(table)
        self._set(table, after_success(prev, now, first, rows))

    def _limited(self, key: str, now: float) -> str | None:
        """None when this error should stay silent; else a suffix counting the ones that did."""
        suppressed = self.errors.allow(key, now)
        if suppressed is None:
            return None
        return f" ({suppressed} more since the last report)" if suppressed else ""

    # -- systemd and status --------------------------------------------------------
    def _housekeeping(self) -> None:
        mono = time.monotonic()
        interval = systemd.watchdog_interval_s()
        if interval is not None and mono - self._last_ping >= interval:
            self._last_ping = mono
            systemd.notify("WATCHDOG=1")
        line = self._status_line()
        if line != self._last_status:
            self._last_status = line
            systemd.notify(f"STATUS={line}")
        self._write_state()

    def _status_line(self) -> str:
        pending = sum(s.pending_rows for s in self.states.values())
        text = f"~{pending} row(s) pending in {len(self.states)} table(s)"
        backing_off = [t for t, s in self.states.items() if s.retry_at is not None]
        if backing_off:
            text += f"; backing off: {', '.join(sorted(backing_off))}"
        if self._last_flush:
            f = self._last_flush
            text += f"; last flush {f['table']} at {time.strftime('%H:%M:%S', time.localtime(f['at']))}" \
                    f" committed {f['committed']}"
        return text

    def state_doc(self, *, running: bool = True) -> dict[str, Any]:
        """What ``spoold status`` shows under ``daemon`` (and ``backoff_s`` per table)."""
        return {
            "pid": os.getpid(),
            "running": running,
            "started_at": round(self.started_at, 3),
            "config": os.path.abspath(self.config.path) if self.config.path else None,
            "backoff": {t: s.backoff_s for t, s in sorted(self.states.items()) if s.retry_at is not None},
            "tables": {
                t: {
                    "pending_rows_estimate": s.pending_rows,
                    "oldest_pending_at": s.first_pending,
                    "failures": s.failures,
                    "retry_at": round(s.retry_at, 3) if s.retry_at is not None else None,
                    "last_error": s.last_error,
                }
                for t, s in sorted(self.states.items())
            },
            "sources": self.tailer.lag(),
            "last_flush": self._last_flush,
        }

    def _write_state(self, *, running: bool = True, force: bool = False) -> None:
        mono = time.monotonic()
        last_at, last_doc = self._last_state
        if not force and mono - last_at < _STATE_EVERY_S:
            return
        doc = orjson.dumps(self.state_doc(running=running))
        if not force and doc == last_doc:
            return
        try:
            write_atomic(self.spool.root / STATE_FILE, doc)
            self._last_state = (mono, doc)
        except OSError as e:
            if (more := self._limited("state", time.time())) is not None:
                log.warning("cannot write %s: %s%s", self.spool.root / STATE_FILE, e, more)

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
        self._write_state(running=False, force=True)
        log.info("stopped")
        if worker.is_alive():
            logging.shutdown()
            os._exit(0)  # the worker is inside a commit; a commit cut short is safe, waiting is not
        return 0

    def _flush_all(self, tables: list[str]) -> None:
        for table in tables:
            self._flush(table)


def run_daemon(config: Config, config_path: str | os.PathLike[str] | None = None) -> int:
    """``spoold run``: the daemon in the foreground; returns the exit code."""
    return Daemon(config, config_path).run()


def _import_flush_stack() -> None:
    try:
        import spoold.flush  # noqa: F401
        import spoold.sink  # noqa: F401
    except Exception as e:  # the flush itself will report it
        log.debug("preloading the flush stack: %s", e)


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _release(sink: Any) -> None:
    """Close idle catalog connections between flushes (the key indexes stay).

    An idle daemon then holds no connection that a catalog restart, a moved
    SQLite file or a server's idle timeout could leave stale.
    """
    try:
        engine = getattr(sink.catalog(), "engine", None)
        if engine is not None:
            engine.dispose()
    except Exception as e:  # best effort: the next flush reconnects anyway
        log.debug("releasing catalog connections: %s", e)
    _trim_memory()


def _trim_memory() -> None:
    """Hand a flush's freed buffers back to the OS, so an idle daemon stays small.

    Arrow's pool and glibc's malloc both keep freed memory for reuse; between
    flushes (minutes apart) that is just resident weight.
    """
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except Exception as e:
        log.debug("releasing Arrow memory: %s", e)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    return text if isinstance(e, SpooldError) and text else f"{type(e).__name__}: {text}"
