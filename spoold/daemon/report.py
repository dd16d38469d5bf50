"""What a running daemon tells the outside: systemd STATUS and WATCHDOG, ``.daemon.json``, ``/metrics``.

``spoold status`` reads the state file to show the daemon's view (pending
estimates, backoff, source lag, spool full, the last flush); with ``[daemon]
listen`` the same state feeds ``/metrics`` and ``/health`` (:mod:`spoold.daemon.metrics`).
All are throttled so a busy loop costs nothing: STATUS is sent only when its
text changes, the state is made at most once a second and the file rewritten
only when its content changed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from spoold.config import Config
from spoold.daemon import systemd
from spoold.daemon.metrics import DRAINING, Metrics
from spoold.daemon.scheduler import TableState
from spoold.durable import write_state
from spoold.layout import DAEMON_STATE
from spoold.redact import redact_doc
from spoold.sources.tail import Tailer
from spoold.spool.spool import Spool

log = logging.getLogger("spoold.daemon.loop")

_STATE_EVERY_S = 1.0


class DaemonReport:
    """The daemon's outward signs; ``limited(key, now)`` rate-limits its warnings like the loop's errors."""

    def __init__(self, limited: Callable[[str, float], str | None], listen: str = "", *,
                 listen_public: bool = False) -> None:
        # First: a listen address that cannot be served ends start-up with one clear error.
        self.metrics = Metrics(listen, public=listen_public) if listen else None
        self.started_at = time.time()
        self.full: list[str] = []  # tables whose spool is full, as of the last state
        self.last_flush: dict[str, Any] | None = None
        self._limited = limited
        self._last_ping = 0.0
        self._last_state: tuple[float, bytes] = (0.0, b"")
        self._last_status = ""

    def flushed(self, table: str, at: float, summary: dict[str, Any]) -> None:
        """Remember a flush that committed, for the status line and ``last_flush``."""
        self.last_flush = {"table": table, "at": round(at, 3), **summary}

    def ping(self) -> None:
        """Feed the systemd watchdog when due (cheap: call it as often as work allows)."""
        interval = systemd.watchdog_interval_s()
        mono = time.monotonic()
        if self.metrics is not None:
            self.metrics.heartbeat = mono  # the loop turned (or long work on it went on): /health reads it
        if interval is not None and mono - self._last_ping >= interval:
            self._last_ping = mono
            systemd.notify("WATCHDOG=1")

    def publish(self, states: Mapping[str, TableState], config: Config, spool: Spool, tailer: Tailer) -> None:
        """Once per loop turn: ping the watchdog when due, update STATUS, refresh the state file."""
        self.ping()
        line = self.status_line(states)
        if line != self._last_status:
            self._last_status = line
            systemd.notify(f"STATUS={line}")
        self.write_state(states, config, spool, tailer)

    def status_line(self, states: Mapping[str, TableState]) -> str:
        """The one-line summary sent as systemd STATUS."""
        pending = sum(s.pending_rows for s in states.values())
        text = f"~{pending} row(s) pending in {len(states)} table(s)"
        backing_off = [t for t, s in states.items() if s.retry_at is not None]
        if backing_off:
            text += f"; backing off: {', '.join(sorted(backing_off))}"
        if self.full:
            text += f"; spool full: {', '.join(self.full)}"
        if self.last_flush:
            f = self.last_flush
            text += f"; last flush {f['table']} at {time.strftime('%H:%M:%S', time.localtime(f['at']))}" \
                    f" committed {f['committed']}"
        return text

    def state_doc(self, states: Mapping[str, TableState], config: Config, spool: Spool, tailer: Tailer, *,
                  running: bool = True) -> dict[str, Any]:
        """What ``spoold status`` shows under ``daemon`` (and ``backoff_s``, ``spool_full`` per table)."""
        candidates = {*states, *spool.tables(), *config.tables, *(s.table for s in config.sources)}
        return {
            "pid": os.getpid(),
            "running": running,
            "started_at": round(self.started_at, 3),
            "config": os.path.abspath(config.path) if config.path else None,
            "backoff": {t: s.backoff_s for t, s in sorted(states.items()) if s.retry_at is not None},
            "tables": {
                t: {
                    "pending_rows_estimate": s.pending_rows,
                    "oldest_pending_at": s.first_pending,
                    "failures": s.failures,
                    "retry_at": round(s.retry_at, 3) if s.retry_at is not None else None,
                    "last_error": s.last_error,
                    "error_class": s.error_class,
                    "lock_held_since": s.lock_held_since,
                    "pending_bytes": spool.bounds.pending_bytes(t),
                }
                for t, s in sorted(states.items())
            },
            "spool_full": sorted(t for t in candidates if spool.bounds.full(t)),
            "spool_free_bytes": spool.bounds.free_bytes(),
            "listen": self.metrics.address if self.metrics else None,
            "sources": tailer.lag(),
            "last_flush": self.last_flush,
        }

    def write_state(self, states: Mapping[str, TableState], config: Config, spool: Spool, tailer: Tailer, *,
                    running: bool = True, force: bool = False) -> None:
        """Publish :meth:`state_doc` as ``.daemon.json`` (``force``: now, even if unchanged)."""
        mono = time.monotonic()
        last_at, last_doc = self._last_state
        if not force and mono - last_at < _STATE_EVERY_S:
            return
        # Scrubbed once here: the state file, `spoold status` and /health all show it (spoold/redact.py).
        state = redact_doc(self.state_doc(states, config, spool, tailer, running=running))
        self.full = state["spool_full"]
        if self.metrics is not None:
            self.metrics.observe(state, config)
        doc = orjson.dumps(state)
        if not force and doc == last_doc:
            return
        try:
            write_state(spool.root / DAEMON_STATE, doc, spool.group)
            self._last_state = (mono, doc)
        except OSError as e:
            if (more := self._limited("state", time.time())) is not None:
                log.warning("cannot write %s: %s%s", spool.root / DAEMON_STATE, e, more)

    def draining(self) -> None:
        """Shutdown began: ``/health`` answers 503 from now on."""
        if self.metrics is not None:
            self.metrics.phase = DRAINING

    def close(self) -> None:
        """Stop serving ``/metrics`` and ``/health`` (the very last thing before exit)."""
        if self.metrics is not None:
            self.metrics.close()
