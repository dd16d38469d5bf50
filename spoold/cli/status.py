"""``spoold status``: what is spooled, quarantined and committed, per table, and what ran on it last.

Tables shown: every table of the config, of the spool, and of the catalog that
spoold wrote to (its tables carry the property ``spoold.key``, its commits
``spoold.op`` in their snapshot summaries). The spool side is read with the
line-level envelope rules and never changes anything. The committed side is
read from each table's current metadata (:mod:`spoold.iceberg.peek`: for a
local SQLite catalog without importing pyiceberg), so the last flush, backfill
and maintenance runs shown are the table's own, whichever host ran them. The
catalog is optional: when it cannot be read the committed fields are null and
``catalog_error`` says why.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from spoold.config import Config
from spoold.envelope import parse_envelope
from spoold.errors import SpooldError, UsageError
from spoold.iceberg.properties import LAST_MAINTENANCE, retention_of
from spoold.layout import DAEMON_STATE, LAST_FLUSH
from spoold.redact import redact, redact_doc
from spoold.safefile import read_state
from spoold.settings import MaintainSettings
from spoold.spool.files import first_envelope, iter_lines
from spoold.spool.held import spooled
from spoold.spool.quarantine import count_records, dropped_count
from spoold.spool.spool import Spool

RUN_KINDS = {"flush": "last_flush", "backfill": "last_backfill", "maintain": "last_maintenance"}
_SUMMARY_SKIP = frozenset({"spoold.op", "spoold.files"})  # (files: a flush's spool file names, long)


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
    """The spool half of a table's status: pending rows and files, oldest pending age, quarantined records."""
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
    out: dict[str, Any] = {
        "spooled_rows": rows,
        "spooled_files": len(files),
        "oldest_pending_s": round(now - oldest, 3) if oldest is not None else None,
        "quarantined": count_records(spool, table),
        "dropped": dropped_count(spool, table),  # quarantined records discarded by `spoold quarantine drop`
        "spooled_bytes": spool.bounds.pending_bytes(table),
        "spool_full": spool.bounds.full(table),  # appends refused (see [spool] max_bytes, min_free_bytes)
    }
    try:
        out["last_flush_attempt"] = orjson.loads(read_state(spool.table_dir(table) / LAST_FLUSH, spool.root))
    except (OSError, SpooldError, orjson.JSONDecodeError):
        out["last_flush_attempt"] = None
    return out


def committed_status(meta: dict[str, Any] | None, maintain: MaintainSettings | None = None) -> dict[str, Any]:
    """The committed half of a table's status, from its metadata document (None: not in the catalog yet).

    The last run of each kind is the newest ancestor of the current snapshot
    whose summary has that ``spoold.op``; maintenance prefers the table's
    ``spoold.last-maintenance`` property (it also records runs that committed nothing).
    ``snapshots`` counts the history kept; ``retention`` is what expiry keeps of
    it (the table's properties, overridden by ``maintain``, the ``[maintain]`` section).
    """
    out: dict[str, Any] = {"committed_rows": 0, "snapshot_id": None, "data_files": 0, "metadata_location": None,
                           "snapshots": 0, "retention": None, **dict.fromkeys(RUN_KINDS.values())}
    if meta is None:
        return out
    out["metadata_location"] = meta.get("metadata-location")
    listed = meta.get("snapshots")
    listed = listed if isinstance(listed, list) else []
    out["snapshots"] = len(listed)
    props = meta.get("properties")
    out["retention"] = retention_of(props if isinstance(props, dict) else {}, maintain).doc()
    snaps = {s.get("snapshot-id"): s for s in listed if isinstance(s, dict)}
    snap = snaps.get(meta.get("current-snapshot-id"))
    if snap is not None:
        summary = snap.get("summary") or {}
        out["snapshot_id"] = snap["snapshot-id"]
        out["committed_rows"] = _int(summary.get("total-records"))
        out["data_files"] = _int(summary.get("total-data-files"))
    walked: set[Any] = set()
    while snap is not None and snap.get("snapshot-id") not in walked and not all(
            out[k] is not None for k in RUN_KINDS.values()):
        walked.add(snap.get("snapshot-id"))
        summary = snap.get("summary") or {}
        field = RUN_KINDS.get(summary.get("spoold.op", ""))
        if field is not None and out[field] is None:
            out[field] = _run(snap, summary)
        snap = snaps.get(snap.get("parent-snapshot-id"))
    prop = (meta.get("properties") or {}).get(LAST_MAINTENANCE)
    if prop:
        try:
            out["last_maintenance"] = orjson.loads(prop)
        except orjson.JSONDecodeError:
            pass
    return out


def _run(snap: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    run: dict[str, Any] = {"at": round(snap.get("timestamp-ms", 0) / 1000, 3), "snapshot_id": snap["snapshot-id"]}
    for k, v in summary.items():
        if k.startswith("spoold.") and k not in _SUMMARY_SKIP:
            run[k[len("spoold."):]] = _int(v) if k == "spoold.rows" else v
    return run


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def written_by_spoold(meta: dict[str, Any]) -> bool:
    """True for a table spoold created (property ``spoold.key``) or committed to (``spoold.*`` summaries)."""
    if "spoold.key" in (meta.get("properties") or {}):
        return True
    return any("spoold.op" in (s.get("summary") or {}) or "spoold.host" in (s.get("summary") or {})
               for s in meta.get("snapshots") or [])


def status(config: Config, tables: list[str] | None = None, *, catalog: bool = True) -> dict[str, Any]:
    """The ``spoold status --json`` document. Raises UsageError for a named table spoold does not know."""
    spool = Spool.from_config(config)
    local = set(spool.tables()) | set(config.tables)
    metas: dict[str, dict[str, Any]] = {}
    error = None
    if catalog:
        from spoold.iceberg.peek import catalog_tables  # pyiceberg only for catalogs that need it

        try:
            metas = catalog_tables(config, tables or None)
        except SpooldError as e:
            error = str(e)
    ours = {t for t, m in metas.items() if written_by_spoold(m)}
    for t in tables or []:
        if t not in local and t not in ours and error is None:
            where = "is in the catalog, but spoold never wrote to it" if t in metas else \
                "is not in the config, the spool, or the catalog"
            raise UsageError(f"unknown table {t}: it {where}")
    names = list(dict.fromkeys(tables)) if tables else sorted(local | ours)
    result: dict[str, Any] = {"tables": {}}
    for t in names:
        info = spool_status(spool, t)
        info.update(committed_status(metas.get(t), config.maintain))
        if error is not None:
            info.update(committed_rows=None, snapshot_id=None, data_files=None, snapshots=None)
        result["tables"][t] = info
    if error is not None:
        result["catalog_error"] = error
    _add_daemon(spool, result)
    # Errors are scrubbed where they are made; this catches what older state files or other hosts wrote.
    return redact_doc(result)


def _add_daemon(spool: Spool, result: dict[str, Any]) -> None:
    daemon = _daemon_state(spool)
    if not daemon:
        return
    live = bool(daemon.get("running", True) and _alive(daemon.get("pid")))
    for t, info in result["tables"].items():
        # A dead daemon's backoff is history, not a wait anyone is in.
        info["backoff_s"] = daemon.get("backoff", {}).get(t) if live else None
        info["last_error"] = (daemon.get("tables", {}).get(t) or {}).get("last_error") if live else None
        # The daemon also knows the size its tailer's refused append needs.
        info["spool_full"] = info.get("spool_full") or (live and t in daemon.get("spool_full", []))
    daemon["running"] = live
    result["daemon"] = daemon
    # Per source: files tailed and bytes not yet read (offset lag), as of the daemon's last look.
    result["sources"] = daemon.get("sources", [])


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


def _daemon_state(spool: Spool) -> dict[str, Any] | None:
    try:
        state = orjson.loads(read_state(spool.root / DAEMON_STATE, spool.root))
        return state if isinstance(state, dict) else None
    except (OSError, SpooldError, orjson.JSONDecodeError):
        return None


def status_lines(doc: dict[str, Any]) -> list[str]:
    """``spoold status`` as text: one line per table, then hints, the daemon and the sources."""
    lines, hints = [], []
    for t, s in doc["tables"].items():
        committed = "?" if s["committed_rows"] is None else \
            f"{s['committed_rows']} row(s) in {s['data_files']} data file(s)"
        age = "" if s["oldest_pending_s"] is None else f", oldest {s['oldest_pending_s']:.0f}s ago"
        runs = "; ".join(f"{label} {_when(s.get(k))}" for label, k in (
            ("last flush", "last_flush"), ("last backfill", "last_backfill"), ("last maintenance", "last_maintenance")))
        lines.append(f"{t}: spooled {s['spooled_rows']} row(s) in {s['spooled_files']} file(s){age}; "
                     f"quarantined {s['quarantined']}"
                     + (f" ({s['dropped']} dropped before)" if s.get("dropped") else "")
                     + f"; committed {committed}{_history(s)}; {runs}"
                     + ("; SPOOL FULL: appends are refused until a flush frees room" if s.get("spool_full") else ""))
        attempt = s.get("last_flush_attempt") or {}
        if str(attempt.get("result", "")).startswith("error"):
            hints.append(f"{t}: the last flush here failed: {attempt['result'][len('error: '):]}")
        if s["quarantined"]:
            hints.append(f"{t}: `spoold quarantine {t}` shows why {s['quarantined']} record(s) are in quarantine, "
                         "and whether to replay them (after a config or table fix) or drop them (they can "
                         "never pass)")
    lines += hints if doc["tables"] else ["no tables"]
    lines += daemon_lines(doc)
    if "catalog_error" in doc:
        lines.append(f"catalog unreachable: {doc['catalog_error']}")
    return [redact(line) for line in lines]


def _history(s: dict[str, Any]) -> str:
    """``, 100 snapshot(s) kept (retention: at most 100, none older than 1d but the newest 10)``."""
    if s.get("snapshots") is None:
        return ""
    keep = s.get("retention")
    if not keep:
        return f", {s['snapshots']} snapshot(s) kept"
    cap = f"at most {keep['max_snapshots']}, " if keep.get("max_snapshots") else ""
    return (f", {s['snapshots']} snapshot(s) kept (retention: {cap}none older than {_span(keep['max_age_s'])} "
            f"but the newest {keep['min_snapshots']})")


def _span(seconds: int) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % n == 0:
            return f"{seconds // n}{unit}"
    return f"{seconds}s"


def _when(run: dict[str, Any] | None) -> str:
    if not run:
        return "-"
    at = run.get("at")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if isinstance(at, (int, float)) else "?"
    host = f" on {run['host']}" if run.get("host") else ""
    rows = f", {run['rows']} row(s)" if isinstance(run.get("rows"), int) else ""
    return f"{when}{host}{rows}"


def daemon_lines(doc: dict[str, Any]) -> list[str]:
    """Text lines for ``spoold status``: the daemon, per-table backoff and per-source offset lag."""
    daemon = doc.get("daemon")
    if not daemon:
        return ["daemon: not running (none has run on this spool root)"]
    lines = [f"daemon: {'running, pid ' + str(daemon.get('pid')) if daemon.get('running') else 'not running'}"]
    for t, info in doc.get("tables", {}).items():
        if info.get("backoff_s"):
            lines.append(f"{t}: backing off {info['backoff_s']}s after: {info.get('last_error') or '?'}")
    for src in doc.get("sources", []):
        lines.append(f"source {src.get('path')} -> {src.get('table')}: {src.get('files')} file(s), "
                     f"{src.get('lag_bytes')} byte(s) not yet read")
    return lines
