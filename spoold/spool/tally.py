"""Quarantine past its budget: records that are counted, not kept (docs/quarantine.md, "Bounds").

When a table's quarantine is at ``[spool] quarantine_max_bytes`` (or the
spool's filesystem at ``min_free_bytes``), the records that do not fit are
not written. The rows are already rejected; what is kept of them is how many
there were, why, where from and how many bytes: one entry per publish name
(a flush file's part, a torn tail...) in ``quarantine/.tally.json``, so a
retried flush that publishes the same name again replaces its entry instead of
counting twice. The file stays small: past ``_RECENT`` names the oldest entries
are folded into one total, and each entry names at most ``_REASONS`` reasons.

The caller holds the tally's lock (``TALLY_LOCK``) around :func:`record` and
:func:`expire`. The tally lives in a directory producers of a group spool can
write in: it is read only as a regular file of the spool's owner (``owner``),
never through a link nor from a FIFO (:func:`spoold.safefile.read_file`); anything
else in its place counts as no tally, and a writer moves it aside (logged).
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from spoold.durable import fsync_dir, write_atomic
from spoold.layout import TALLY
from spoold.safefile import UnsafeFile, move_aside, read_file

_RECENT = 64  # entries kept by name (a retry replaces its own); older ones are folded into the total
_REASONS = 8  # reasons named per entry; the rest are counted under _OTHER
_TOTAL_REASONS = 64
_REASON_CHARS = 200
_OTHER = "other reasons (not itemized)"
MAX_BYTES = 256 << 10  # what the tally can take on disk at most, with the bounds above

log = logging.getLogger(__name__)

# Reasons name the offending value ("cannot cast 3000000000 to int"); counts group them without it,
# so a thousand rows rejected for one cause count as one reason.
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


def load(qdir: Path, owner: int | None = None, *, fix: bool = False) -> dict[str, Any]:
    """The tally of quarantine directory ``qdir`` (an empty one if there is none or it is unreadable).

    ``owner``: the uid it must belong to (the spool's owner; default: this process's). One that is not
    a regular file of ``owner`` (a link, a FIFO, a producer's file) counts as none; ``fix``: the caller
    holds the tally's lock and will write it, so such an entry is moved aside first.
    """
    path = qdir / TALLY
    try:
        doc = orjson.loads(read_file(path, owner=os.geteuid() if owner is None else owner, limit=4 * MAX_BYTES))
    except UnsafeFile as e:
        doc = None
        if fix:
            log.warning("%s; moved aside to %s, counting starts again", e, move_aside(path))
    except (OSError, orjson.JSONDecodeError):
        doc = None
    if not isinstance(doc, dict):
        doc = {}
    doc.setdefault("total", _entry())
    doc.setdefault("recent", {})
    return doc


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def record(qdir: Path, name: str, records: list[dict[str, Any]], nbytes: int, mode: int,
           owner: int | None = None) -> None:
    """Count ``records`` (``nbytes`` of record lines not written) under ``name``, replacing what ``name``
    had; none: forget ``name``."""
    path = qdir / TALLY
    if not records and not _exists(path):
        return
    doc = load(qdir, owner, fix=True)
    recent: dict[str, Any] = doc["recent"]
    if not records and recent.pop(name, None) is None:
        return
    if records:
        reasons = Counter(reason_group(str(r.get("reason", ""))) for r in records)
        entry = _entry()
        entry.update(records=len(records), bytes=nbytes,
                     file=records[0].get("file"), first_line=records[0].get("line"), at=records[0].get("at"),
                     kinds=dict(Counter(str(r.get("kind", "line")) for r in records)))
        _add(entry["reasons"], reasons, _REASONS)
        recent.pop(name, None)
        recent[name] = entry  # insertion order is age order
    while len(recent) > _RECENT:
        _fold(doc["total"], recent.pop(next(iter(recent))))
    write_atomic(path, orjson.dumps(doc), mode)



def expire(qdir: Path, cutoff: float, mode: int, owner: int | None = None) -> int:
    """Forget what was counted before ``cutoff`` (epoch seconds); returns how many records that was."""
    if not _exists(qdir / TALLY):
        return 0
    doc = load(qdir, owner, fix=True)
    gone = 0
    for name, e in list(doc["recent"].items()):
        if (e.get("at") or 0) < cutoff:
            gone += e.get("records", 0)
            del doc["recent"][name]
    total = doc["total"]
    if total.get("records") and (total.get("newest") or 0) < cutoff:
        gone += total["records"]
        doc["total"] = _entry()
    if not gone:
        return 0
    if doc["recent"] or doc["total"]["records"]:
        write_atomic(qdir / TALLY, orjson.dumps(doc), mode)
    else:
        (qdir / TALLY).unlink(missing_ok=True)
        fsync_dir(qdir)
    return gone


def drop(qdir: Path, text: str | None, mode: int, owner: int | None = None) -> int:
    """Forget the counted records whose (grouped) reason contains ``text`` (all: None); returns how many."""
    if not _exists(qdir / TALLY):
        return 0
    doc = load(qdir, owner, fix=True)
    gone = 0
    for e in [doc["total"], *doc["recent"].values()]:
        if text is None:
            gone += int(e.get("records") or 0)
            e["records"] = 0
            continue
        reasons = e.get("reasons") or {}
        for reason in [r for r in reasons if text in r]:
            n = min(int(reasons.pop(reason) or 0), int(e.get("records") or 0))
            e["records"] = int(e.get("records") or 0) - n
            gone += n
    doc["recent"] = {name: e for name, e in doc["recent"].items() if e.get("records")}
    if not doc["total"].get("records"):
        doc["total"] = _entry()
    if doc["recent"] or doc["total"]["records"]:
        write_atomic(qdir / TALLY, orjson.dumps(doc), mode)
    else:
        (qdir / TALLY).unlink(missing_ok=True)
        fsync_dir(qdir)
    return gone


def counts(qdir: Path, owner: int | None = None) -> tuple[int, Counter[str], Counter[str], list[float]]:
    """(records, reasons, kinds, times) the tally counts, for ``spoold quarantine`` and status."""
    if not _exists(qdir / TALLY):
        return 0, Counter(), Counter(), []
    doc = load(qdir, owner)
    reasons: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    times: list[float] = []
    n = 0
    for e in [doc["total"], *doc["recent"].values()]:
        n += int(e.get("records") or 0)
        reasons.update(e.get("reasons") or {})
        kinds.update(e.get("kinds") or {})
        times += [float(t) for t in (e.get("at"), e.get("oldest"), e.get("newest")) if isinstance(t, (int, float))]
    return n, reasons, kinds, times


def _entry() -> dict[str, Any]:
    return {"records": 0, "bytes": 0, "reasons": {}, "kinds": {}}


def _add(into: dict[str, int], reasons: Counter[str] | dict[str, int], limit: int) -> None:
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        reason = reason[:_REASON_CHARS]
        key = reason if reason in into or len(into) < limit - 1 else _OTHER
        into[key] = into.get(key, 0) + n


def _fold(total: dict[str, Any], e: dict[str, Any]) -> None:
    total["records"] = total.get("records", 0) + e.get("records", 0)
    total["bytes"] = total.get("bytes", 0) + e.get("bytes", 0)
    _add(total.setdefault("reasons", {}), e.get("reasons") or {}, _TOTAL_REASONS)
    kinds = total.setdefault("kinds", {})
    for k, n in (e.get("kinds") or {}).items():
        kinds[k] = kinds.get(k, 0) + n
    at = e.get("at")
    if isinstance(at, (int, float)):
        total["oldest"] = min(total.get("oldest") or at, at)
        total["newest"] = max(total.get("newest") or at, at)


def size(qdir: Path) -> int:
    """Bytes the tally takes on disk (0 if none; never follows a link)."""
    try:
        return os.lstat(qdir / TALLY).st_size
    except FileNotFoundError:
        return 0
