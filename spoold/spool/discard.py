"""``spoold quarantine drop TABLE [--reason TEXT]``: discard quarantined records for good, and count them.

For records that can never pass (not JSON, a torn line, a bad envelope, a line
too long to have been kept): replay would keep them forever. A record goes
when its reason contains TEXT (every record without ``--reason``); a line of a
quarantine file that is not a record counts as the reason
``unreadable quarantine record``.

Crash-safe per record: each quarantine file is rewritten atomically with the
records it keeps, or removed when it keeps none, under the table's flush lock
(a flush publishes quarantine files) and its tally lock, so a record is either
still there whole or gone. Records counted past the quarantine's budget (the
tally) go the same way. What went is added to ``<table>/.dropped.json``,
which ``spoold status`` shows; a kill between a file's rewrite and that count
leaves the count short by that file's records, never a record half there.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from spoold._testhooks import reached
from spoold.durable import fsync_dir, write_atomic, write_state
from spoold.layout import DROPPED, QUARANTINE
from spoold.safefile import UnsafeFile
from spoold.spool import tally
from spoold.spool.files import LongLine, iter_lines
from spoold.spool.quarantine import MAX_RECORD_BYTES, UNREADABLE, dropped_count, files
from spoold.spool.spool import Spool

__all__ = ["DropSummary", "drop", "matching"]

log = logging.getLogger(__name__)


@dataclass
class DropSummary:
    """``dropped``: records discarded; ``kept``: records left in quarantine; ``unsafe``: files left alone."""

    dropped: int = 0
    kept: int = 0
    unsafe: int = 0


def _reason(line: bytes | LongLine) -> str:
    if isinstance(line, LongLine):
        return UNREADABLE
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        return UNREADABLE
    return str(rec.get("reason", UNREADABLE)) if isinstance(rec, dict) else UNREADABLE


def _goes(reason: str, text: str | None) -> bool:
    return text is None or text in reason


def matching(spool: Spool, table: str, text: str | None) -> DropSummary:
    """What :func:`drop` would discard now (nothing changes)."""
    out = DropSummary()
    for path in files(spool, table):
        for goes in _verdicts(path, text, out):
            out.dropped += goes
            out.kept += not goes
    qdir = spool.table_dir(table) / QUARANTINE
    n, reasons, _, _ = tally.counts(qdir, spool.bounds.owner())
    gone = n if text is None else sum(c for r, c in reasons.items() if text in r)
    out.dropped += gone
    out.kept += n - gone
    return out


def _verdicts(path: Path, text: str | None, out: DropSummary) -> list[bool]:
    try:
        return [_goes(_reason(line), text) for _, line, _ in iter_lines(path, MAX_RECORD_BYTES) if line.strip()]
    except FileNotFoundError:
        return []
    except UnsafeFile as e:  # a link or FIFO planted in a group spool's quarantine: never read, never ours
        log.warning("%s; left alone", e)
        out.unsafe += 1
        return []


def drop(spool: Spool, table: str, text: str | None = None) -> DropSummary:
    """Discard ``table``'s quarantined records whose reason contains ``text`` (all: None)."""
    out = DropSummary()
    qdir = spool.table_dir(table) / QUARANTINE
    if not qdir.is_dir():
        return out
    for path in files(spool, table):
        with spool.flush_lock(table), spool.tally_lock(table):
            gone = _drop_file(spool, path, text, out)
        if gone:
            reached("drop.rewritten")  # test-only mark: a kill here leaves this file's drop uncounted
            _count(spool, table, gone)
    with spool.flush_lock(table), spool.tally_lock(table):
        gone = tally.drop(qdir, text, spool.file_mode, spool.bounds.owner())
    if gone:
        out.dropped += gone
        _count(spool, table, gone)
    if out.dropped:
        log.info("table %s: dropped %d quarantined record(s)%s, %d kept", table, out.dropped,
                 "" if text is None else f" whose reason contains {text!r}", out.kept)
    return out


def _drop_file(spool: Spool, path: Path, text: str | None, out: DropSummary) -> int:
    """Rewrite ``path`` without the records that go; returns how many went."""
    keep: list[bytes] = []
    gone = 0
    try:
        for _, line, _ in iter_lines(path, MAX_RECORD_BYTES):
            if not line.strip():
                continue
            if not _goes(_reason(line), text):
                if isinstance(line, LongLine):  # cannot be written back whole: leave the whole file as it is
                    log.warning("%s: a line too long to rewrite; the file is left as it is", path)
                    out.kept += len(keep) + gone + 1
                    return 0
                keep.append(bytes(line) + b"\n")
            else:
                gone += 1
    except FileNotFoundError:
        return 0
    except UnsafeFile as e:
        log.warning("%s; left alone", e)
        out.unsafe += 1
        return 0
    if gone:
        if keep:
            write_atomic(path, b"".join(keep), spool.file_mode)
        else:
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)
    out.dropped += gone
    out.kept += len(keep)
    return gone


def _count(spool: Spool, table: str, n: int) -> None:
    doc = {"records": dropped_count(spool, table) + n, "at": round(time.time(), 3)}
    write_state(spool.table_dir(table) / DROPPED, orjson.dumps(doc), spool.group)
