"""Source lines → envelope lines for the spool, with each line that cannot be stored set aside.

A tailing pass encodes all its rows at once, so the usual case costs one
encode. When that fails (a value no envelope may carry: nested too deeply,
an integer beyond 64 bits; a column name no envelope carries), the lines
are halved until every failing one is alone: those come back with their
reason, for quarantine, and every other line is spooled. A failing line
costs O(log n) re-encodes of shrinking halves, never one encode per line.
Running out of memory is the host's fault, not a line's: a MemoryError
propagates (the tailer retries the file later) and quarantines nothing. A
RecursionError is a line's: only a deeply nested value causes one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from spoold.envelope import envelopes
from spoold.errors import SpooldError
from spoold.sources.reader import SourceLine
from spoold.spool.files import LONG_HEAD_BYTES, MAX_LINE_BYTES, quarantine_record

Envelope = tuple[bytes, int]  # an encoded envelope line and its row count


def pack(lines: Sequence[SourceLine],
         max_line: int | None = None) -> tuple[list[Envelope], list[tuple[SourceLine, str]]]:
    """Envelopes of the rows of ``lines``, and the lines whose rows cannot be encoded, with why."""
    rows = [row for line in lines for row in line.rows]
    if not rows:
        return [], []
    try:
        return list(envelopes(rows, max_line)), []
    except Exception as e:  # whatever else encoding raises is the fault of some line's rows
        if _environment(e):
            raise
        if len(lines) == 1:
            return [], [(lines[0], _reason(e))]
    mid = len(lines) // 2
    first, bad_first = pack(lines[:mid], max_line)
    second, bad_second = pack(lines[mid:], max_line)
    return first + second, bad_first + bad_second


def line_record(reason: str, line: SourceLine, fd: int, max_line: int = MAX_LINE_BYTES, **extra: Any) -> dict[str, Any]:
    """A quarantine record of source ``line`` (read back from ``fd``: its exact bytes, without the newline).

    A line over ``max_line`` is never read whole: the record keeps its first
    LONG_HEAD_BYTES, its length and (when the reader streamed it) its sha256.
    """
    if line.long is not None:
        big = {"length": line.long.length, "sha256": line.long.sha256, "truncated": True}
        if line.long.open:
            big["unterminated"] = True  # it went on past what was read: length and hash are of its start
        return quarantine_record(reason, line.path, line.lineno, line.long.head, offset=line.start, **big, **extra)
    length = line.end - line.start
    if length > max_line:
        raw = os.pread(fd, LONG_HEAD_BYTES, line.start)
        return quarantine_record(reason, line.path, line.lineno, raw, offset=line.start, length=length,
                                 truncated=True, **extra)
    raw = os.pread(fd, length, line.start)
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    return quarantine_record(reason, line.path, line.lineno, raw, offset=line.start, **extra)


def _environment(e: BaseException) -> bool:
    """True for the host's failures (memory, as spoold.iceberg.catalog maps them), which no line is to blame for."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, MemoryError) or (isinstance(cur, RuntimeError) and "can't start new thread" in str(cur)):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _reason(e: Exception) -> str:
    if isinstance(e, SpooldError):
        return f"cannot store in the spool: {e}"
    return f"cannot store in the spool: {type(e).__name__}: {e}"


__all__ = ["Envelope", "line_record", "pack"]
