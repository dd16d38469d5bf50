"""``spoold status``: what is spooled, quarantined and committed, per table.

The spool side is read with the line-level envelope rules and never changes
anything; the catalog side is optional: when it cannot be reached the
committed fields are null and ``catalog_error`` says why.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from spoold.config import Config
from spoold.envelope import parse_envelope
from spoold.errors import SpooldError
from spoold.held import spooled
from spoold.spool import QUARANTINE, Spool, first_envelope, iter_lines

LAST_FLUSH = ".last-flush.json"
DAEMON_STATE = ".daemon.json"  # written by the daemon (report.py)


def _first_written(path: Path) -> float | None:
    """When the oldest row of a pending file was written (its first envelope's ``at``, else mtime)."""
    probe = first_envelope(path)
    if probe is not None:
        return probe[0]
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def spool_status(spool: Spool, table: str, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    rows = 0
    files = spooled(spool, table)  # held rows (committed, not verified yet) are still the spool's
    for path in files:
        try:
            for _, raw, terminated in iter_lines(path):
                env, _ = parse_envelope(raw, terminated)
                if env is not None:
                    rows += len(env["rows"])
        except FileNotFoundError:  # flushed while we looked
            continue
    times = [t for t in map(_first_written, files) if t is not None]
    oldest = min(times) if times else None
    quarantined = 0
    qdir = spool.table_dir(table) / QUARANTINE
    if qdir.is_dir():
        for q in qdir.glob("*.jsonl"):
            with open(q, "rb") as f:
                quarantined += sum(1 for _ in f)
    out: dict[str, Any] = {
        "spooled_rows": rows,
        "spooled_files": len(files),
        "oldest_pending_s": round(now - oldest, 3) if oldest is not None else None,
        "quarantined": quarantined,
        "spooled_bytes": spool.bounds.pending_bytes(table),
        "spool_full": spool.bounds.full(table),  # appends refused (see [spool] max_bytes, min_free_bytes)
    }
    last = spool.table_dir(table) / LAST_FLUSH
    try:
        out["last_flush"] = orjson.loads(last.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        out["last_flush"] = None
    return out


def status(config: Config, tables: list[str] | None = None, *, catalog: bool = True) -> dict[str, Any]:
    """The ``spoold status --json`` document."""
    spool = Spool.from_config(config)
    names = tables if tables else sorted(set(spool.tables()) | set(config.tables))
    result: dict[str, Any] = {"tables": {t: spool_status(spool, t) for t in names}}
    daemon = _daemon_state(spool)
    live = bool(daemon and daemon.get("running", True) and _alive(daemon.get("pid")))
    for t, info in result["tables"].items():
        info["committed_rows"] = None
        info["snapshot_id"] = None
        if daemon:
            # A dead daemon's backoff is history, not a wait anyone is in.
            info["backoff_s"] = daemon.get("backoff", {}).get(t) if live else None
            info["last_error"] = (daemon.get("tables", {}).get(t) or {}).get("last_error") if live else None
            # The daemon also knows the size its tailer's refused append needs.
            info["spool_full"] = info["spool_full"] or (live and t in daemon.get("spool_full", []))
    if daemon:
        daemon["running"] = live
        result["daemon"] = daemon
        # Per source: files tailed and bytes not yet read (offset lag), as of the daemon's last look.
        result["sources"] = daemon.get("sources", [])
    if catalog and names:
        _add_committed(config, result)
    return result


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user (e.g. the systemd DynamicUser)
        return True
    return True


def daemon_lines(doc: dict[str, Any]) -> list[str]:
    """Text lines for ``spoold status``: the daemon, per-table backoff and per-source offset lag."""
    daemon = doc.get("daemon")
    if not daemon:
        return []
    lines = [f"daemon: {'running, pid ' + str(daemon.get('pid')) if daemon.get('running') else 'not running'}"]
    for t, info in doc.get("tables", {}).items():
        if info.get("backoff_s"):
            lines.append(f"{t}: backing off {info['backoff_s']}s after: {info.get('last_error') or '?'}")
    for src in doc.get("sources", []):
        lines.append(f"source {src.get('path')} -> {src.get('table')}: {src.get('files')} file(s), "
                     f"{src.get('lag_bytes')} byte(s) not yet read")
    return lines


def _daemon_state(spool: Spool) -> dict[str, Any] | None:
    try:
        state = orjson.loads((spool.root / DAEMON_STATE).read_bytes())
        return state if isinstance(state, dict) else None
    except (OSError, orjson.JSONDecodeError):
        return None


def _add_committed(config: Config, result: dict[str, Any]) -> None:
    from spoold.iceberg.sink import Sink  # only now: the spool half of status needs no pyiceberg

    try:
        sink = Sink(config)
        for t, info in result["tables"].items():
            tbl = sink.load(config.table(t))
            snap = tbl.current_snapshot() if tbl is not None else None
            info["snapshot_id"] = snap.snapshot_id if snap else None
            total = snap.summary.additional_properties.get("total-records") if snap and snap.summary else None
            info["committed_rows"] = int(total) if total is not None else 0
    except SpooldError as e:
        result["catalog_error"] = str(e)
        for info in result["tables"].values():
            info["committed_rows"] = None
            info["snapshot_id"] = None
