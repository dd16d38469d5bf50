"""``[daemon] listen``: Prometheus metrics at ``GET /metrics`` and a health check at ``GET /health``.

Counting is a few calls at the places where things happen (:func:`flushed`
from the worker, :func:`commit_conflict` from the commit loop,
:func:`maintained` from maintenance); they do nothing until a daemon serves
metrics, so ``spoold flush`` and a daemon without ``listen`` pay nothing and
never import prometheus-client. Gauges (pending rows and bytes, oldest row,
spool full, source lag) are read at scrape time from the state the daemon
publishes once a second (:mod:`spoold.daemon.report`), so a scrape never touches the
loop, and an unscraped daemon only keeps one reference up to date. The server
answers on its own threads.

Health (:func:`health`, pure): 200 while capture and commits work; 503 while
starting (until the loop's first turn) or draining (SIGTERM), while some
table's rows have failed to commit (or found its spool lock held) for longer
than ``max_delay_s``, while a table's spool is full, and while the daemon's
loop has not turned for ``STALL_S`` (a heartbeat the loop records). The body
names each troubled table and the class of its error (``catalog
unreachable``...), never the error's text: /health has no authentication, and
drivers' messages may quote credentials.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from spoold.config import Config

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("spoold.daemon.loop")

STARTING, RUNNING, DRAINING = "starting", "running", "draining"
STALL_S = 10.0  # the loop turns every 250 ms and long work pings about every second: this long silent is stuck
INGEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
FLUSH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def health(phase: str, state: Mapping[str, Any], now: float, max_delay_s: float,
           stalled_s: float = 0.0, ingest_down: bool = False) -> tuple[bool, str]:
    """(healthy, why) from the daemon's phase and its published state (see :meth:`DaemonReport.state_doc`);
    ``stalled_s``: how long since the loop's last heartbeat; ``ingest_down``: ``[ingest] listen`` is set and
    its listener is not serving.

    ``why`` names the table and the class of its error, never the error's text: /health is unauthenticated.
    """
    if phase != RUNNING:
        return False, phase
    if stalled_s > STALL_S:
        return False, f"daemon loop stuck: no turn for {stalled_s:.0f}s"
    if ingest_down:
        return False, "ingest listener down"
    for table, info in sorted(state.get("tables", {}).items()):
        oldest = info.get("oldest_pending_at")
        if info.get("lock_held_since") and oldest is not None and now - oldest > max_delay_s:
            return False, (f"table {table}: spool lock held by another process for "
                           f"{now - info['lock_held_since']:.0f}s; rows wait past max_delay_s {max_delay_s:g}")
        if info.get("failures") and oldest is not None and now - oldest > max_delay_s:
            return False, (f"table {table}: {info.get('error_class') or 'flush failing'}, rows failing to commit "
                           f"for {now - oldest:.0f}s (max_delay_s {max_delay_s:g})")
    for table in state.get("spool_full", []):
        return False, f"table {table}: spool full, appends are refused"
    return True, "ok"


def troubled(state: Mapping[str, Any], now: float) -> dict[str, dict[str, Any]]:
    """Per table whose flushes fail, whose spool lock is held or whose spool is full: the class of error, since when."""
    out: dict[str, dict[str, Any]] = {}
    for table, info in sorted(state.get("tables", {}).items()):
        if info.get("lock_held_since"):
            out[table] = {"error": "spool lock held", "since_s": round(now - info["lock_held_since"], 1)}
        elif info.get("failures"):
            oldest = info.get("oldest_pending_at")
            out[table] = {"error": info.get("error_class") or "flush failing", "failures": info["failures"],
                          "since_s": round(now - oldest, 1) if oldest is not None else None}
    for table in state.get("spool_full", []):
        out.setdefault(table, {"error": "spool full"})
    return out


class _Counters:
    """The counters of a serving daemon (prometheus-client objects in its own registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Histogram

        self.tables: frozenset[str] = frozenset()  # every table seen: a drained table shows 0, not nothing

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, ["table", *labels], registry=registry)

        self.committed = counter("spoold_rows_committed", "Rows committed to the table")
        self.deduplicated = counter("spoold_rows_deduplicated", "Rows not committed: their key was already there")
        self.quarantined = counter("spoold_rows_quarantined", "Lines and rows put into quarantine by flushes")
        self.flushes = counter("spoold_flushes", "Flushes, by result (ok, error)", "result")
        self.conflicts = counter("spoold_commit_conflicts", "Commits that met another writer's and re-settled")
        self.maintenance = counter("spoold_maintenance_runs", "Table maintenance runs, by result", "result")
        self.duration: Histogram = Histogram("spoold_flush_duration_seconds", "Wall time of a flush, by table",
                                             ["table"], buckets=FLUSH_BUCKETS, registry=registry)
        self.ingest_requests = Counter("spoold_ingest_requests", "Ingest requests answered, by route and code",
                                       ["route", "code"], registry=registry)
        self.ingest_rows = counter("spoold_ingest_rows", "Rows acknowledged by the ingest listener (fsync'd)")
        self.ingest_duration = Histogram("spoold_ingest_request_duration_seconds", "Ingest requests' time from "
                                         "their head to their reply, by route", ["route"],
                                         buckets=INGEST_BUCKETS, registry=registry)

    def table(self, table: str) -> None:
        """Show ``table``'s metrics from now on, its counters at zero before their first event (for rate())."""
        if table in self.tables:
            return
        self.tables = self.tables | {table}  # replaced whole: a scrape iterates the old or the new set
        for c in (self.committed, self.deduplicated, self.quarantined, self.conflicts):
            c.labels(table)
        for result in ("ok", "error"):
            self.flushes.labels(table, result)
        self.maintenance.labels(table, "ok")
        self.duration.labels(table)


_live: _Counters | None = None  # the serving daemon's counters; None: counting is a no-op


def flushed(table: str, result: str, duration_s: float, counts: Mapping[str, int]) -> None:
    """A flush of ``table`` ended (``result`` "ok" or "error") after ``duration_s``, with these row counts."""
    c = _live
    if c is None:
        return
    c.table(table)
    c.flushes.labels(table, result).inc()
    c.duration.labels(table).observe(duration_s)
    c.committed.labels(table).inc(counts.get("committed", 0))
    c.deduplicated.labels(table).inc(counts.get("deduplicated", 0))
    c.quarantined.labels(table).inc(counts.get("quarantined", 0))


def commit_conflict(table: str) -> None:
    """A commit to ``table`` met another committer's: it is settled again and retried."""
    if _live is not None:
        _live.conflicts.labels(table).inc()


def maintained(table: str, result: str = "ok") -> None:
    """Maintenance of ``table`` ran (``result``: "ok", or "error" when it failed)."""
    if _live is not None:
        _live.maintenance.labels(table, result).inc()


class IngestEvents:
    """The ingest listener's events as metrics (a no-op until a daemon serves them)."""

    def request(self, route: str, code: int, duration_s: float) -> None:
        if (c := _live) is not None:
            c.ingest_requests.labels(route, str(code)).inc()
            c.ingest_duration.labels(route).observe(duration_s)

    def accepted(self, table: str, rows: int) -> None:
        if (c := _live) is not None:
            c.ingest_rows.labels(table).inc(rows)


class Metrics:
    """The daemon's counters and health: what ``GET /metrics`` and ``GET /health`` answer on ``[daemon] listen``
    (the server is :class:`spoold.daemon.listener.Listener`, which this binds)."""

    def __init__(self, listen: str, *, public: bool = False) -> None:
        global _live
        from prometheus_client import CollectorRegistry, ProcessCollector, disable_created_metrics

        from spoold.daemon.listener import bind  # http.server (and ssl, by http.client) only when serving

        disable_created_metrics()  # no *_created series beside each counter: nobody graphs them
        self.phase = STARTING
        self.heartbeat = time.monotonic()  # the loop's last turn, set by its DaemonReport
        self.ingest_alive: Callable[[], bool] | None = None  # with [ingest] listen: is its listener serving?
        self._state: Mapping[str, Any] = {}
        self._max_delay_s = float("inf")
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # memory, CPU, open files of the daemon itself
        self.counters = _Counters(self.registry)
        self.registry.register(_StateCollector(self))
        self._httpd = bind(listen, self, public=public)  # public: [daemon] listen_public (any Host header)
        host, port = self._httpd.server_address[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._httpd.start()  # its threads, all of them: serving and stopping never start another
        _live = self.counters
        log.info("serving /metrics and /health on http://%s", self.address)

    def observe(self, state: Mapping[str, Any], config: Config) -> None:
        """The daemon's latest published state (called from its loop; the first one ends "starting")."""
        for table in (*state.get("tables", {}), *state.get("spool_full", []), *config.tables,
                      *(s.table for s in config.sources)):
            self.counters.table(table)
        # Replaced whole, never changed in place: a scrape reads the old state or the new one.
        self._state, self._max_delay_s = state, config.flush.max_delay_s
        if self.phase == STARTING:
            self.phase = RUNNING

    def health(self) -> tuple[bool, str]:
        """:func:`health` now, from the last published state."""
        return health(self.phase, self._state, time.time(), self._max_delay_s, time.monotonic() - self.heartbeat,
                      self._ingest_down())

    def _ingest_down(self) -> bool:
        return self.ingest_alive is not None and not self.ingest_alive()

    def health_doc(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, the ``/health`` body): phase, why, and ``tables``: each troubled table with its class of error."""
        now = time.time()
        ok, reason = health(self.phase, self._state, now, self._max_delay_s, time.monotonic() - self.heartbeat,
                            self._ingest_down())
        status = self.phase if self.phase != RUNNING or ok else "failing"
        doc: dict[str, Any] = {"ok": ok, "status": status, "reason": reason}
        tables = troubled(self._state, now)
        if tables:  # only when some table is in trouble: a healthy daemon's body stays as it was
            doc["tables"] = tables
        return ok, doc

    def state(self) -> tuple[Mapping[str, Any], frozenset[str]]:
        """The last published state and every table seen so far."""
        return self._state, self.counters.tables

    def close(self) -> None:
        """Stop serving (at the very end of shutdown, so /health said "draining" meanwhile)."""
        global _live
        if _live is self.counters:
            _live = None
        self._httpd.close()


class _StateCollector:
    """Gauges from the daemon's last published state, computed when scraped."""

    def __init__(self, server: Metrics) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        state, seen = self.server.state()
        now = time.time()
        tables: Mapping[str, Any] = state.get("tables", {})
        full = set(state.get("spool_full", []))
        names = sorted(seen)

        def per_table(name: str, doc: str, value: Any) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=["table"])
            for t in names:
                g.add_metric([t], value(tables.get(t) or {}, t))
            return g

        yield per_table("spoold_spool_pending_rows", "Rows waiting in the spool (estimated from file sizes)",
                        lambda i, t: i.get("pending_rows_estimate", 0))
        yield per_table("spoold_spool_pending_bytes", "Bytes waiting in the spool: active and flush files",
                        lambda i, t: i.get("pending_bytes", 0))
        yield per_table("spoold_oldest_pending_seconds", "Age of the oldest row waiting in the spool (0: none)",
                        lambda i, t: max(0.0, now - i["oldest_pending_at"]) if i.get("oldest_pending_at") else 0)
        yield per_table("spoold_spool_full", "1 while appends to the table are refused (spool full)",
                        lambda i, t: int(t in full))
        yield per_table("spoold_flush_failures", "Consecutive failed flushes of the table (0: the last one worked)",
                        lambda i, t: i.get("failures", 0))
        lag = GaugeMetricFamily("spoold_source_lag_bytes", "Bytes of source files not yet read",
                                labels=["table", "path"])
        for src in state.get("sources", []):
            lag.add_metric([src["table"], src["path"]], src.get("lag_bytes", 0))
        yield lag
        free = state.get("spool_free_bytes")
        if free is not None:
            yield GaugeMetricFamily("spoold_spool_free_bytes", "Free bytes on the spool's filesystem", value=free)
        ok, _ = self.server.health()
        yield GaugeMetricFamily("spoold_healthy", "1 when GET /health answers 200", value=int(ok))
