"""Read a source file line by line from a byte offset and materialize each line.

Backfill and live tailing both go through ``read_lines``, so a line gives
the same rows whichever of them reads it. Offsets are byte positions: the
``end`` of a yielded line is where reading resumes for the next one.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from spoold.sources import jsonl, transcript
from spoold.sources.line import SourceLineError
from spoold.spool.files import LONG_HEAD_BYTES, MAX_LINE_BYTES  # one rule for spool and source lines

Materializer = Callable[[bytes], list[dict[str, object]]]

FORMATS = ("jsonl", "transcript")
_MATERIALIZERS: dict[str, Materializer] = {
    "jsonl": jsonl.materialize,
    "transcript": transcript.materialize,
}
_BLOCK = 1 << 20  # large reads, split in memory: per-line reads would dominate backfill time


@dataclass(slots=True)  # not frozen: frozen __init__ costs ~0.8 s per 1M lines
class SourceLine:
    """One line of a source file and what it materialized to.

    ``start``/``end`` are byte offsets; ``end`` is just past the line's
    ``b"\\n"`` (or the end of file for a partial last line). ``rows`` is empty
    when ``error`` is set or the line holds no rows.
    """

    path: str
    lineno: int
    start: int
    end: int
    rows: list[dict[str, object]]
    error: str | None
    partial: bool = False  # the last line of the file, without its b"\n" (only with include_partial)
    long: LongLine | None = None  # a line over max_line: streamed past, never held whole


@dataclass(slots=True)
class LongLine:
    """What is kept of a line longer than ``max_line``: enough to find it again in its file."""

    length: int  # bytes of it read (without its newline)
    head: bytes  # its first LONG_HEAD_BYTES ("" for the rest of one reported already)
    sha256: str  # of those ``length`` bytes
    open: bool  # no newline yet: it goes on past the item's ``end``


def expand_sources(patterns: Sequence[str]) -> list[Path]:
    """Expand source patterns into a sorted, de-duplicated list of absolute file paths.

    Each pattern (``~`` expanded) is a file, a directory (every ``*.jsonl``
    under it, recursively) or a glob (``**`` crosses directories; a directory
    it matches counts as a directory pattern). A pattern that matches no file
    raises FileNotFoundError naming it, so a typo never passes as "no data".
    """
    found: set[str] = set()
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        hits = glob.glob(expanded, recursive=True) if has_magic(expanded) else [expanded]
        files: list[str] = []
        for hit in hits:
            if os.path.isdir(hit):
                files += [f for f in glob.glob(jsonl_under(hit), recursive=True) if os.path.isfile(f)]
            elif os.path.isfile(hit):
                files.append(hit)
        if not files:
            raise FileNotFoundError(f"source {pattern!r} matches no files")
        found.update(os.path.abspath(f) for f in files)
    return [Path(f) for f in sorted(found)]


def has_magic(pattern: str) -> bool:
    """True if ``pattern`` is a glob (has ``*``, ``?`` or ``[``)."""
    return any(c in pattern for c in "*?[")


def jsonl_under(directory: str) -> str:
    """The glob for every ``*.jsonl`` file under ``directory`` (what a directory source means)."""
    return os.path.join(glob.escape(directory), "**", "*.jsonl")


def materializer(fmt: str) -> Materializer:
    """Return the ``materialize(line) -> rows`` function of source format ``fmt``."""
    try:
        return _MATERIALIZERS[fmt]
    except KeyError:
        raise ValueError(f"unknown source format {fmt!r}; expected one of: {', '.join(FORMATS)}") from None


def read_lines(
    path: str | os.PathLike[str],
    fmt: str,
    offset: int = 0,
    *,
    lineno: int = 1,
    include_partial: bool = False,
    fd: int | None = None,
    max_line: int = MAX_LINE_BYTES,
    inside: bool = False,
) -> Iterator[SourceLine]:
    """Yield each complete line of ``path`` from byte ``offset`` on, materialized as ``fmt``.

    ``lineno`` is the 1-based number of the line starting at ``offset``.
    Blank lines are skipped but counted. A last line without ``b"\\n"`` is
    yielded only with ``include_partial`` (history files are finished; a
    live file's last line may still be being written). A bad line comes back
    with ``error`` set and reading goes on, whatever the format's reader
    raised for it; only I/O errors raise. ``fd``: read this open file (the
    caller's, left open) instead of opening ``path``, which then only names it.

    A line longer than ``max_line`` bytes is never held whole: it is streamed
    past, and comes back with ``error`` set and :class:`LongLine` facts (length,
    head, sha256). One still unterminated at the end of the file comes back at
    once (``long.open``: it goes on past ``end``); ``inside=True`` resumes in
    such a line (``offset`` inside it): its rest is skipped up to its newline,
    yielded as an item without ``error`` that only moves the position on.
    """
    # Not a generator itself, so an unknown format fails at the call, not at the first next().
    return _read(materializer(fmt), os.fspath(path), offset, lineno, include_partial, fd, max_line, inside)


class _Big:
    """A line over the bound being streamed past: hashed and counted, only its head kept."""

    def __init__(self, start: int, pieces: list[bytes], known: bool) -> None:
        self.start, self.seen = start, 0
        self.hasher = hashlib.sha256() if known else None  # None: the rest of a line quarantined already
        self.head = b""
        for piece in pieces:
            self.feed(piece)

    def feed(self, piece: bytes) -> None:
        self.seen += len(piece)
        if self.hasher is not None:
            self.hasher.update(piece)
            if len(self.head) < LONG_HEAD_BYTES:
                self.head += piece[: LONG_HEAD_BYTES - len(self.head)]

    def item(self, name: str, lineno: int, max_line: int, *, open_: bool) -> SourceLine:
        end = self.start + self.seen + (0 if open_ else 1)
        if self.hasher is None:
            return SourceLine(name, lineno, self.start, end, [], None, long=LongLine(self.seen, b"", "", open_))
        error = f"line longer than max_line_bytes ({max_line} bytes): skipped, not read whole"
        return SourceLine(name, lineno, self.start, end, [], error,
                          long=LongLine(self.seen, self.head, self.hasher.hexdigest(), open_))


def _read(
    materialize: Materializer, name: str, offset: int, lineno: int, include_partial: bool, fd: int | None,
    max_line: int, inside: bool,
) -> Iterator[SourceLine]:
    with open(name, "rb", buffering=0) if fd is None else open(fd, "rb", buffering=0, closefd=False) as f:
        f.seek(offset)
        pos = offset  # byte offset of the next unconsumed byte
        pending: list[bytes] = []  # pieces of a line that spans blocks (at most max_line bytes)
        plen = 0
        big = _Big(pos, [], known=False) if inside else None
        while block := f.read(_BLOCK):
            if pending or big is not None:
                nl = block.find(b"\n")
                piece = block if nl < 0 else block[:nl]
                if big is None and plen + len(piece) > max_line:
                    big, pending, plen = _Big(pos, pending, known=True), [], 0
                if big is not None:
                    big.feed(piece)
                    if nl < 0:
                        continue
                    yield big.item(name, lineno, max_line, open_=False)
                    pos, big = pos + big.seen + 1, None
                    lineno += 1
                    block = block[nl + 1 :]
                elif nl < 0:
                    pending.append(block)
                    plen += len(block)
                    continue
                else:
                    pending.append(block[: nl + 1])
                    line = b"".join(pending)
                    pending, plen = [], 0
                    if (item := _source_line(materialize, name, lineno, pos, line)) is not None:
                        yield item
                    pos += len(line)
                    lineno += 1
                    block = block[nl + 1 :]
            lines = block.split(b"\n")
            tail = lines.pop()
            for line in lines:
                end = pos + len(line) + 1
                if len(line) > max_line:  # (only when max_line is below the block size)
                    yield _Big(pos, [line], known=True).item(name, lineno, max_line, open_=False)
                elif line and not line.isspace():
                    try:
                        rows, error = materialize(line), None
                    except SourceLineError as e:
                        rows, error = [], str(e)
                    except Exception as e:  # whatever a format raises is that line's failure, never the reader's
                        rows, error = [], _unexpected(e)
                    yield SourceLine(name, lineno, pos, end, rows, error)
                pos = end
                lineno += 1
            if len(tail) > max_line:
                big = _Big(pos, [tail], known=True)
            elif tail:
                pending.append(tail)
                plen += len(tail)
        if big is not None:  # a long line still being written: reported now, once, not re-read every pass
            yield big.item(name, lineno, max_line, open_=True)
        elif pending and include_partial:
            if (item := _source_line(materialize, name, lineno, pos, b"".join(pending))) is not None:
                item.partial = True
                yield item


def _source_line(materialize: Materializer, name: str, lineno: int, start: int, line: bytes) -> SourceLine | None:
    """Materialize one line read in pieces; None for a blank line (as in the block loop)."""
    end = start + len(line)
    content = line.rstrip(b"\n")
    if not content or content.isspace():
        return None
    try:
        return SourceLine(name, lineno, start, end, materialize(content), None)
    except SourceLineError as e:
        return SourceLine(name, lineno, start, end, [], str(e))
    except Exception as e:
        return SourceLine(name, lineno, start, end, [], _unexpected(e))


def _unexpected(e: Exception) -> str:
    """The error of a line a format's reader failed on in a way it does not check for (e.g. a bug)."""
    return f"cannot read rows from this line: {type(e).__name__}: {e}"
