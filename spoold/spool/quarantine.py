"""What is in quarantine: ``<spool>/<table>/quarantine/*.jsonl``, one record per rejected line or row.

Records are written by :meth:`spoold.spool.spool.Spool.quarantine` (flush, backfill,
the torn-tail repair) in the format of :func:`spoold.spool.spool.quarantine_record`.
This module reads them: counts for ``spoold status``, the ``spoold quarantine``
summary (records per reason, oldest and newest), and the per-file access that
``spoold quarantine replay`` (:mod:`spoold.flush.replay`) uses. No pyarrow, no pyiceberg.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from spoold.safefile import UnsafeFile, open_file, read_file
from spoold.spool.files import QUARANTINE
from spoold.spool.spool import Spool

# Reasons name the offending value ("cannot cast 3000000000 to int"); the summary
# groups them without it, so a thousand rows rejected for one cause count as one reason.
_GROUPS = [
    (re.compile(r"^(column '[^']*': cannot cast) .* (to \w+)$"), r"\1 a value \2"),
    (re.compile(r"^(not valid UTF-8 JSON):.*$"), r"\1"),
    (re.compile(r"^(version must be the integer 1) \(got .*\)$"), r"\1"),
    (re.compile(r"^(row has) \d+ (values for) \d+ (columns)$"), r"\1 a wrong number of \2 its \3"),
]


def reason_group(reason: str) -> str:
    """``reason`` without the value it names, for counting records by cause."""
    for pattern, repl in _GROUPS:
        grouped, n = pattern.subn(repl, reason)
        if n:
            return grouped
    return reason


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
    """How many records the table's quarantine holds (one per line)."""
    n = 0
    for path in files(spool, table):
        try:
            with open(open_file(path), "rb") as f:
                n += sum(1 for line in f if line.strip())
        except (FileNotFoundError, UnsafeFile):
            continue
    return n


def summary(spool: Spool, table: str) -> dict[str, Any]:
    """``{"records": n, "reasons": {reason: n}, "kinds": {kind: n}, "oldest": at, "newest": at, "files": n, ...}``."""
    reasons: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    times: list[float] = []
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
        "directory": str(spool.table_dir(table) / QUARANTINE),
    }


def quarantine_doc(spool: Spool, tables: list[str]) -> dict[str, Any]:
    """The ``spoold quarantine --json`` document: every table with a quarantine (or the named ones)."""
    names = tables or [t for t in spool.tables() if files(spool, t)]
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
        lines += [f"  {n:>8}  {reason}" for reason, n in s["reasons"].items()]
        lines.append(f"  fix the cause (config, table), then `spoold quarantine replay {t}`")
    return lines or ["nothing in quarantine"]


def _ts(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
