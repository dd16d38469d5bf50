"""The spool's files, read-only: their names, their lines with THE verdicts, and the quarantine record format.

Reading never locks producers out: flush files are immutable once rotated, and
``active.jsonl`` is read only up to its last complete line. Writing them is
:class:`spoold.spool.spool.Spool`'s job.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from spoold.casts import too_deep
from spoold.envelope import LineResult, Validator
from spoold.layout import ACTIVE, FLUSH_RE, QUARANTINE, flush_name, flush_seq  # noqa: F401 (re-exported)
from spoold.safefile import UnsafeFile, open_file
from spoold.settings import SpoolLimits

READ_BLOCK = 1 << 20
MAX_LINE_BYTES = SpoolLimits().max_line_bytes
REPR_BYTES = 4096  # how much of a value that cannot be written as JSON a quarantine record keeps
# A rejected line or value up to RAW_KEEP_BYTES is kept whole (normal rows are far smaller, so they stay
# replayable); a longer one keeps its first RAW_HEAD_BYTES, its length and its sha256, and cannot be replayed.
RAW_KEEP_BYTES = 64 << 10
RAW_HEAD_BYTES = 4 << 10
LONG_HEAD_BYTES = RAW_HEAD_BYTES  # what stands for a line over max_line_bytes (a record keeps this head)


def iter_lines(path: Path, max_line: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes, bool]]:
    """Yield ``(lineno, line without newline, terminated)`` for every line of ``path``.

    A line over ``max_line`` bytes is never read whole: its first LONG_HEAD_BYTES
    stand for it (:func:`read_validated` rejects it as too long). UnsafeFile if
    ``path`` is a link or not a regular file (a producer planted it): never followed.
    """
    for lineno, raw, terminated, _length in _lines(path, max_line):
        yield lineno, raw, terminated


def _lines(path: Path, max_line: int) -> Iterator[tuple[int, bytes, bool, int]]:
    """:func:`iter_lines` plus each line's true length (over ``max_line``: only its head is in ``raw``)."""
    with open(open_file(path), "rb", buffering=0) as f:
        lineno, pending, plen = 1, bytearray(), 0  # the line spanning blocks: at most its head past max_line
        while block := f.read(READ_BLOCK):
            if plen:
                nl = block.find(b"\n")
                piece = block if nl < 0 else block[:nl]
                if plen + len(piece) <= max_line:
                    pending += piece
                elif len(pending) < LONG_HEAD_BYTES:
                    pending += piece[: LONG_HEAD_BYTES - len(pending)]
                plen += len(piece)
                if nl < 0:
                    continue
                yield lineno, _line_head(pending, plen, max_line), True, plen
                lineno, pending, plen, block = lineno + 1, bytearray(), 0, block[nl + 1 :]
            lines = block.split(b"\n")  # the usual case: whole lines within a block, split at C speed
            tail = lines.pop()
            for line in lines:
                yield lineno, line if len(line) <= max_line else line[:LONG_HEAD_BYTES], True, len(line)
                lineno += 1
            if tail:
                pending, plen = bytearray(tail if len(tail) <= max_line else tail[:LONG_HEAD_BYTES]), len(tail)
        if plen:
            yield lineno, _line_head(pending, plen, max_line), False, plen


def _line_head(pending: bytearray, plen: int, max_line: int) -> bytes:
    return bytes(pending) if plen <= max_line else bytes(pending[:LONG_HEAD_BYTES])


def read_validated(path: Path, validator: Validator,
                   max_line: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes, LineResult]]:
    """Every line of a pending spool file with THE verdict of the envelope rules.

    An unterminated last line of a *rotated* file is a torn write (rejected);
    in ``active.jsonl`` it may be a write still in progress, so it is skipped.
    A line over ``max_line`` bytes is rejected whole, unread: ``raw`` is its head.
    """
    active = path.name == ACTIVE
    for lineno, raw, terminated, length in _lines(path, max_line):
        if not terminated and active:
            return
        if length > max_line:
            yield lineno, raw, LineResult(error=f"line longer than max_line_bytes ({length} > {max_line} bytes); "
                                          f"raw keeps its first {len(raw)} bytes")
            continue
        yield lineno, raw, validator.line(raw, terminated)


def first_envelope(path: Path) -> tuple[float, float] | None:
    """(write time, rows per byte) of a pending file's first envelope; None if it has none readable.

    Envelopes carry ``at`` (when they were written), so the first one dates the
    file's oldest row; its size gives a cheap estimate of the file's row count.
    """
    try:
        with open(open_file(path), "rb") as f:
            first = f.readline()
        env = orjson.loads(first) if first.endswith(b"\n") else None
    except (OSError, UnsafeFile, orjson.JSONDecodeError):
        return None
    at = env.get("at") if isinstance(env, dict) else None
    rows = env.get("rows") if isinstance(env, dict) else None
    if isinstance(at, (int, float)) and not isinstance(at, bool) and isinstance(rows, list) and rows:
        return float(at), len(rows) / len(first)
    return None


def quarantine_record(reason: str, file: str, line: int, raw: bytes | None = None, **extra: Any) -> dict[str, Any]:
    """A quarantine entry, one grep-able JSON line (the format: docs/quarantine.md).

    A ``raw`` line that is not UTF-8 keeps its exact bytes (``raw_b64``) and a
    readable rendering with the bad bytes escaped (``raw_escaped``). One longer
    than ``RAW_KEEP_BYTES`` keeps only its head (``raw_head``, and ``raw_head_b64``
    if it is not UTF-8), its length (``raw_bytes``) and ``raw_sha256``; so do a
    rejected ``row`` and its ``columns`` whose JSON text is that long (``row_head``...).
    """
    kind = "row" if "row" in extra else "source" if "format" in extra else "line"
    rec: dict[str, Any] = {"reason": reason, "kind": kind, "file": file, "line": line, **extra}
    for name in ("row", "columns"):
        if name in rec and rec[name] is not None:
            _bound_value(rec, name)
    if raw is not None and len(raw) > RAW_KEEP_BYTES:
        _head(rec, "raw", raw)
    elif raw is not None:
        try:
            rec["raw"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            rec["raw_b64"] = base64.b64encode(raw).decode("ascii")
            rec["raw_escaped"] = raw.decode("utf-8", "backslashreplace")
    rec["at"] = time.time()
    return rec


def _bound_value(rec: dict[str, Any], name: str) -> None:
    """Replace ``rec[name]`` by its head, length and hash when its JSON text is longer than RAW_KEEP_BYTES."""
    value = rec[name]
    if isinstance(value, (list, dict)) and len(value) * 2 < RAW_KEEP_BYTES and _small(value):
        return  # the usual row: no need to encode it to know it is small
    try:
        text = orjson.dumps(value, default=str)
    except TypeError:
        return  # nested too deeply to write as JSON: record_line keeps its repr (bounded by the nesting limit)
    if len(text) > RAW_KEEP_BYTES:
        del rec[name]
        _head(rec, name, text)


def _small(value: list[Any] | dict[str, Any]) -> bool:
    items = value.values() if isinstance(value, dict) else value
    return all(v is None or type(v) in (bool, int, float) or (type(v) is str and len(v) < 1024) for v in items)


def _head(rec: dict[str, Any], name: str, data: bytes) -> None:
    head = data[:RAW_HEAD_BYTES]
    rec[f"{name}_head"] = head.decode("utf-8", "backslashreplace")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut in two at the end
            rec[f"{name}_head_b64"] = base64.b64encode(head).decode("ascii")
    rec[f"{name}_bytes"] = len(data)
    rec[f"{name}_sha256"] = hashlib.sha256(data).hexdigest()
    rec["truncated"] = True


def record_line(rec: dict[str, Any]) -> bytes:
    """One quarantine record as a JSON line, even when a rejected value cannot be written as JSON
    (nested over MAX_DEPTH levels, which is never handed to the encoder, or an integer beyond 64
    bits): that value is kept as the start of its Python repr instead."""
    if not any(isinstance(v, (dict, list, tuple)) and too_deep(v) for v in rec.values()):
        try:
            return orjson.dumps(rec, default=str) + b"\n"
        except TypeError:
            pass
    safe = {}
    for k, v in rec.items():
        if isinstance(v, (dict, list, tuple)) and too_deep(v):
            safe[f"{k}_repr"] = _short_repr(v)
            continue
        try:
            orjson.dumps(v, default=str)
            safe[k] = v
        except TypeError:
            safe[f"{k}_repr"] = _short_repr(v)
    return orjson.dumps(safe, default=str) + b"\n"


def _short_repr(v: Any) -> str:
    try:
        return repr(v)[:REPR_BYTES]
    except RecursionError:
        return f"<a {type(v).__name__} nested too deeply to show>"
