"""The spool's files, read-only: their names, their lines with THE verdicts, and the quarantine record format.

Reading never locks producers out: flush files are immutable once rotated, and
``active.jsonl`` is read only up to its last complete line. Writing them is
:class:`spoold.spool.spool.Spool`'s job.
"""

from __future__ import annotations

import base64
import hashlib
import os
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
# A rejected line or row that was read whole (up to max_line_bytes) is kept whole, so it can be replayed.
# A line over max_line_bytes is never read whole: it keeps its first RAW_HEAD_BYTES, its length and its
# sha256 (a LongLine stands for it), and cannot be replayed.
RAW_HEAD_BYTES = 4 << 10
LONG_HEAD_BYTES = RAW_HEAD_BYTES  # what stands for a line over max_line_bytes (a record keeps this head)
ESCAPED_BYTES = 64 << 10  # how much of a non-UTF-8 line ``raw_escaped`` renders (``raw_b64`` keeps it all)


class LongLine(bytes):
    """The head of a line longer than max_line_bytes, which was never read whole: its true length and sha256
    ride along, so that :func:`quarantine_record` keeps head, length and hash."""

    length: int
    sha256: str

    def __new__(cls, head: bytes, length: int, sha256: str) -> LongLine:
        self = super().__new__(cls, head)
        self.length, self.sha256 = length, sha256
        return self


def iter_lines(path: Path, max_line: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes, bool]]:
    """Yield ``(lineno, line without newline, terminated)`` for every line of ``path``.

    A line over ``max_line`` bytes is never read whole: its first LONG_HEAD_BYTES
    stand for it (:func:`read_validated` rejects it as too long). UnsafeFile if
    ``path`` is a link or not a regular file (a producer planted it): never followed.
    """
    for lineno, raw, terminated, _length in _lines(path, max_line):
        yield lineno, raw, terminated


def _lines(path: Path, max_line: int) -> Iterator[tuple[int, bytes, bool, int]]:
    """:func:`iter_lines` plus each line's true length (over ``max_line``: a :class:`LongLine` is in ``raw``)."""
    with open(open_file(path), "rb", buffering=0) as f:
        # the line spanning blocks: whole up to max_line; past it, its head and the hash of all of it so far
        lineno, pending, plen, sha = 1, bytearray(), 0, None
        while block := f.read(READ_BLOCK):
            if plen:
                nl = block.find(b"\n")
                piece = block if nl < 0 else block[:nl]
                if plen + len(piece) <= max_line:
                    pending += piece
                else:
                    if sha is None:  # just went past max_line: pending is all of it so far
                        sha = hashlib.sha256(pending)
                        del pending[LONG_HEAD_BYTES:]
                    sha.update(piece)
                    if len(pending) < LONG_HEAD_BYTES:
                        pending += piece[: LONG_HEAD_BYTES - len(pending)]
                plen += len(piece)
                if nl < 0:
                    continue
                yield lineno, _line(pending, plen, sha), True, plen
                lineno, pending, plen, sha, block = lineno + 1, bytearray(), 0, None, block[nl + 1 :]
            lines = block.split(b"\n")  # the usual case: whole lines within a block, split at C speed
            tail = lines.pop()
            for line in lines:
                yield lineno, line if len(line) <= max_line else _long(line), True, len(line)
                lineno += 1
            if tail:
                plen = len(tail)
                if plen <= max_line:
                    pending = bytearray(tail)
                else:
                    pending, sha = bytearray(tail[:LONG_HEAD_BYTES]), hashlib.sha256(tail)
        if plen:
            yield lineno, _line(pending, plen, sha), False, plen


def _long(line: bytes) -> LongLine:
    return LongLine(line[:LONG_HEAD_BYTES], len(line), hashlib.sha256(line).hexdigest())


def _line(pending: bytearray, plen: int, sha: Any) -> bytes:
    return bytes(pending) if sha is None else LongLine(bytes(pending[:LONG_HEAD_BYTES]), plen, sha.hexdigest())


def read_tail(fd: int, pos: int, size: int, max_line: int = MAX_LINE_BYTES) -> bytes:
    """The bytes of open ``fd`` from ``pos`` to ``size`` (a torn tail); past ``max_line`` a :class:`LongLine`."""
    if size - pos <= max_line:
        return os.pread(fd, size - pos, pos)
    sha = hashlib.sha256()
    for start in range(pos, size, READ_BLOCK):
        sha.update(os.pread(fd, min(READ_BLOCK, size - start), start))
    return LongLine(os.pread(fd, LONG_HEAD_BYTES, pos), size - pos, sha.hexdigest())


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
            yield lineno, raw, LineResult(error=f"line longer than max_line_bytes ({length} > {max_line} bytes): "
                                          "only its head, length and sha256 are kept")
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

    ``kind``: ``row`` (a rejected row: ``row`` given), ``source`` (a source line:
    ``format`` given) or ``line`` (a spool line). Whatever was read whole is kept
    whole, so it can be replayed. A ``raw`` line that is not UTF-8 keeps its exact
    bytes (``raw_b64``) and a readable rendering of its start with the bad bytes
    escaped (``raw_escaped``). A line over max_line_bytes, which was never read
    whole (a :class:`LongLine`), keeps only its head (``raw_head``, and
    ``raw_head_b64`` if it is not UTF-8), its length (``raw_bytes``) and
    ``raw_sha256``, and is marked ``truncated``.
    """
    kind = "row" if "row" in extra else "source" if "format" in extra else "line"
    rec: dict[str, Any] = {"reason": reason, "kind": kind, "file": file, "line": line, **extra}
    if isinstance(raw, LongLine):
        _head(rec, "raw", raw, raw.length, raw.sha256)
    elif raw is not None:
        try:
            rec["raw"] = raw.decode("utf-8")
        except UnicodeDecodeError:
            rec["raw_b64"] = base64.b64encode(raw).decode("ascii")
            rec["raw_escaped"] = raw[:ESCAPED_BYTES].decode("utf-8", "backslashreplace")
    rec["at"] = time.time()
    return rec


def replayable(rec: dict[str, Any]) -> bool:
    """A record that a replay can bring back (a row, kept whole): never dropped to make room."""
    return rec.get("kind") == "row" and not rec.get("truncated")


def _head(rec: dict[str, Any], name: str, head: bytes, length: int, sha256: str) -> None:
    rec[f"{name}_head"] = head.decode("utf-8", "backslashreplace")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut in two at the end
            rec[f"{name}_head_b64"] = base64.b64encode(head).decode("ascii")
    rec[f"{name}_bytes"] = length
    rec[f"{name}_sha256"] = sha256
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
