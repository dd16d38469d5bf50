"""What is in quarantine: ``<spool>/<table>/quarantine/*.jsonl``, one record per rejected line or row.

Records are written by :meth:`spoold.spool.spool.Spool.quarantine` (flush, backfill,
the torn-tail repair) in the format of :func:`spoold.spool.spool.quarantine_record`.
This module reads them: counts for ``spoold status``, the ``spoold quarantine``
summary (records per reason, oldest and newest), and the per-file access that
``spoold quarantine replay`` (:mod:`spoold.flush.replay`) uses. No pyarrow, no pyiceberg.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from spoold.durable import fsync_dir
from spoold.errors import SpooldError
from spoold.layout import DROPPED
from spoold.safefile import UnsafeFile, open_file, read_state
from spoold.spool import tally
from spoold.spool.files import MAX_LINE_BYTES, QUARANTINE, READ_BLOCK, LongLine, iter_lines
from spoold.spool.spool import Spool
from spoold.spool.tally import reason_group

__all__ = ["UNREADABLE", "can_pass", "count_lines", "count_records", "dropped_count", "expire", "files",
           "quarantine_doc", "read", "read_dropped", "reason_group", "summary", "summary_lines"]

log = logging.getLogger(__name__)
UNREADABLE = "unreadable quarantine record"  # the reason of a quarantine file's line that is not a record
# Reasons no config or table change can cure: the line or row itself is broken (or was never kept whole).
# Replay keeps such records for ever; `spoold quarantine drop` is their way out.
_NEVER_PASS = ("torn write", "not valid UTF-8 JSON", "not valid JSON", "not a JSON object", "version must be",
               "columns must be", "rows must be a list", "line longer than", "row is not a list", "row has ",
               "empty object", "empty column name", "a value is nested too deeply", "a content part is nested",
               "message content is neither", "no usable key: message line has no uuid", UNREADABLE)
# The longest record spoold writes: a line of max_line_bytes JSON-escaped (up to 6 bytes a byte) and more.
MAX_RECORD_BYTES = 8 * MAX_LINE_BYTES


def can_pass(reason: str) -> bool:
    """Whether a record quarantined for ``reason`` may pass after a config or table change (then replay it),
    or never can (not JSON, a torn line, a bad envelope, a line too long: drop it)."""
    return not reason.startswith(_NEVER_PASS)


def files(spool: Spool, table: str) -> list[Path]:
    """The table's quarantine files, oldest name first (temp files of a publish in progress left out)."""
    qdir = spool.table_dir(table) / QUARANTINE
    if not qdir.is_dir():
        return []
    return sorted(p for p in qdir.glob("*.jsonl") if not p.name.startswith("."))


def read(path: Path, max_record: int = MAX_RECORD_BYTES) -> Iterator[dict[str, Any]]:
    """The records of one quarantine file; a line that is not a record comes back as ``{"unreadable": text}``.

    Read line by line: a line over ``max_record`` bytes (no record spoold writes is that long: a producer
    planted it) is never held whole, it comes back unreadable.
    """
    try:
        lines = iter_lines(path, max_record)  # never a link a producer planted in a group spool's quarantine
        for _, line, _ in lines:
            if not line.strip():
                continue
            if isinstance(line, LongLine):
                yield {"unreadable": f"a line of {line.length} bytes, longer than any quarantine record"}
                continue
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                rec = None
            yield rec if isinstance(rec, dict) else {"unreadable": line.decode("utf-8", "backslashreplace")}
    except FileNotFoundError:  # replayed or rewritten meanwhile
        return
    except UnsafeFile as e:
        yield {"unreadable": str(e)}


def count_records(spool: Spool, table: str) -> int:
    """How many records the table's quarantine holds (one per line), counted ones past its budget included."""
    n = tally.counts(spool.table_dir(table) / QUARANTINE, spool.bounds.owner())[0]
    for path in files(spool, table):
        try:
            n += count_lines(path)
        except (FileNotFoundError, UnsafeFile):
            continue
    return n


def count_lines(path: Path) -> int:
    """The lines of ``path`` that are not blank, read in blocks: memory stays bounded whatever is in it
    (a producer's sparse file of a few GiB with no newline is one line)."""
    n, open_line = 0, False  # open_line: the line running on from the previous block has something in it
    with open(open_file(path), "rb", buffering=0) as f:
        while block := f.read(READ_BLOCK):
            pieces = block.split(b"\n")
            for piece in pieces[:-1]:
                n += 1 if open_line or piece.strip() else 0
                open_line = False
            open_line = open_line or bool(pieces[-1].strip())
    return n + open_line


def summary(spool: Spool, table: str) -> dict[str, Any]:
    """``{"records": n, "reasons": {reason: n}, "kinds": {kind: n}, "oldest": at, "newest": at, "files": n, ...}``.

    Records counted but not kept (past the quarantine's budget) are in every count; ``not_kept`` says how many.
    """
    not_kept, reasons, kinds, times = tally.counts(spool.table_dir(table) / QUARANTINE, spool.bounds.owner())
    paths = files(spool, table)
    for path in paths:
        for rec in read(path):
            reasons[reason_group(str(rec.get("reason", UNREADABLE)))] += 1
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
        "dropped": dropped_count(spool, table),
    }


def dropped_count(spool: Spool, table: str) -> int:
    """How many of ``table``'s quarantined records ``spoold quarantine drop`` discarded, all time."""
    n = read_dropped(spool, table).get("records")
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else 0


def read_dropped(spool: Spool, table: str) -> dict[str, Any]:
    """``<table>/.dropped.json`` (written by :mod:`spoold.spool.discard`); {} when there is none."""
    try:
        doc = orjson.loads(read_state(spool.table_dir(table) / DROPPED, spool.root))
    except (OSError, SpooldError, orjson.JSONDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


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
            if path.lstat().st_mtime >= cutoff:  # a link planted there: its own age, never followed
                continue
            n = count_lines(path)  # streamed: a producer's huge (sparse) file is never read whole
            path.unlink()
        except FileNotFoundError:
            continue
        except UnsafeFile as e:  # a link or a FIFO a producer planted: not a record file, and never read
            log.warning("%s; not counted as quarantine records", e)
            n = 0
            try:
                path.unlink()
            except FileNotFoundError:
                continue
        removed += 1
        records += n
    if removed:
        fsync_dir(qdir)
    with spool.tally_lock(table):
        records += tally.expire(qdir, cutoff, spool.file_mode, spool.bounds.owner())
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
        curable = [r for r in s["reasons"] if can_pass(r)]
        never = [r for r in s["reasons"] if not can_pass(r)]
        lines += [f"  {n:>8}  {reason}{'' if can_pass(reason) else '  (can never pass)'}"
                  for reason, n in s["reasons"].items()]
        if curable:
            lines.append(f"  fix the cause (config, table), then `spoold quarantine replay {t}`"
                         + (" (it keeps those that can never pass)" if never else ""))
        if never:
            opts = [""] if not curable else [f" --reason '{p}'" for p in dict.fromkeys(map(_never_prefix, never))]
            lines.append(f"  {'they' if not curable else 'those that'} can never pass: "
                         + "; ".join(f"`spoold quarantine drop {t}{o}`" for o in opts) + " discards them")
        if s.get("dropped"):
            lines.append(f"  {s['dropped']} record(s) dropped before (`spoold quarantine drop`)")
    return lines or ["nothing in quarantine"]


def _never_prefix(reason: str) -> str:
    """The start every reason of this kind has (a --reason TEXT that picks them, and no curable one)."""
    return next(p for p in _NEVER_PASS if reason.startswith(p)).strip()


def _ts(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
