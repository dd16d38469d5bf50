"""What is in quarantine: ``<spool>/<table>/quarantine/*.jsonl``, one record per rejected line or row.

Records are written by :meth:`spoold.spool.spool.Spool.quarantine` (flush, backfill,
the torn-tail repair) in the format of :func:`spoold.spool.spool.quarantine_record`.
This module reads them: counts for ``spoold status``, the ``spoold quarantine``
summary (records per reason, oldest and newest), and the per-file access that
``spoold quarantine replay`` (:mod:`spoold.flush.replay`) uses. No pyarrow, no pyiceberg.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from spoold.durable import fsync_dir
from spoold.safefile import UnsafeFile, open_file, read_file
from spoold.spool import tally
from spoold.spool.files import QUARANTINE
from spoold.spool.spool import Spool
from spoold.spool.tally import reason_group

__all__ = ["count_records", "expire", "files", "quarantine_doc", "read", "reason_group", "summary", "summary_lines"]

def files(spool: Spool, table: str) -> list[Path]:
    """The table's quarantine files, oldest name first (temp files of a publish in progress left out)."""
    qdir = spool.table_dir(table) / QUARANTINE
    if not qdir.is_dir():
        return []
    return sorted(p for p in qdir.glob("*.jsonl") if not p.name.startswith("."))


def read(path: Path) -> Iterator[dict[str, Any]]:
    """The records of one quarantine file; a line that is not a record comes back as ``{"unreadable": text}``."""
    try:
        data = read_file(path, limit=1 << 40)  # never a link a producer planted in a group spool's quarantine
    except FileNotFoundError:  # replayed or rewritten meanwhile
        return
    except UnsafeFile as e:
        yield {"unreadable": str(e)}
        return
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            rec = None
        yield rec if isinstance(rec, dict) else {"unreadable": line.decode("utf-8", "backslashreplace")}


def count_records(spool: Spool, table: str) -> int:
    """How many records the table's quarantine holds (one per line), counted ones past its budget included."""
    n = tally.counts(spool.table_dir(table) / QUARANTINE)[0]
    for path in files(spool, table):
        try:
            with open(open_file(path), "rb") as f:
                n += sum(1 for line in f if line.strip())
        except (FileNotFoundError, UnsafeFile):
            continue
    return n


def summary(spool: Spool, table: str) -> dict[str, Any]:
    """``{"records": n, "reasons": {reason: n}, "kinds": {kind: n}, "oldest": at, "newest": at, "files": n, ...}``.

    Records counted but not kept (past the quarantine's budget) are in every count; ``not_kept`` says how many.
    """
    not_kept, reasons, kinds, times = tally.counts(spool.table_dir(table) / QUARANTINE)
    paths = files(spool, table)
    for path in paths:
        for rec in read(path):
            reasons[reason_group(str(rec.get("reason", "unreadable quarantine record")))] += 1
            kinds[str(rec.get("kind", "line"))] += 1
            at = rec.get("at")
            if isinstance(at, (int, float)) and not isinstance(at, bool):
                times.append(float(at))
    return {
        "records": sum(reasons.values()),
        "reasons": dict(reasons.most_common()),
        "kinds": dict(sorted(kinds.items())),
        "oldest": min(times, default=None),
        "newest": max(times, default=None),
        "files": len(paths),
        "not_kept": not_kept,
        "directory": str(spool.table_dir(table) / QUARANTINE),
    }


def expire(spool: Spool, table: str, older_than_s: float, now: float) -> tuple[int, int]:
    """Remove ``table``'s quarantine files (and counts) older than ``older_than_s``: (files, records) removed.

    A file's age is its last change (a replay that rewrites it keeps what stays for another period).
    """
    qdir = spool.table_dir(table) / QUARANTINE
    if not qdir.is_dir():
        return 0, 0
    cutoff = now - older_than_s
    removed = records = 0
    for path in files(spool, table):
        try:
            if path.stat().st_mtime >= cutoff:
                continue
            n = sum(1 for _ in read(path))
            path.unlink()
        except FileNotFoundError:
            continue
        removed += 1
        records += n
    if removed:
        fsync_dir(qdir)
    with spool.tally_lock(table):
        records += tally.expire(qdir, cutoff, spool.file_mode)
    return removed, records


def quarantine_doc(spool: Spool, tables: list[str]) -> dict[str, Any]:
    """The ``spoold quarantine --json`` document: every table with a quarantine (or the named ones)."""
    names = tables or [t for t in spool.tables()
                       if files(spool, t) or tally.size(spool.table_dir(t) / QUARANTINE)]
    return {"tables": {t: summary(spool, t) for t in names}}


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """``spoold quarantine`` as text."""
    lines = []
    for t, s in doc["tables"].items():
        if not s["records"]:
            lines.append(f"{t}: nothing in quarantine")
            continue
        lines.append(f"{t}: {s['records']} record(s) in {s['directory']}, oldest {_ts(s['oldest'])}, "
                     f"newest {_ts(s['newest'])}")
        if s.get("not_kept"):
            lines.append(f"  {s['not_kept']} of them counted only (past [spool] quarantine_max_bytes or "
                         "min_free_bytes): not kept, cannot be replayed")
        lines += [f"  {n:>8}  {reason}" for reason, n in s["reasons"].items()]
        lines.append(f"  fix the cause (config, table), then `spoold quarantine replay {t}`")
    return lines or ["nothing in quarantine"]


def _ts(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
