"""``spoold append``: validate a whole input of JSON rows, then spool it in one durable, all-or-nothing append.

The input is streamed: lines are parsed one by one, validated a batch at a
time with THE envelope rules (column by column, the same verdicts as flush),
encoded into envelopes and handed to :meth:`Spool.append_stream`, which
publishes them only once the whole input passed. Memory stays bounded
whatever the input's size. Imports neither pyarrow nor pyiceberg: producers
call this from hooks and scripts, where start-up time matters.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from typing import IO, Any

from spoold.config import Config
from spoold.envelope import MAX_ENVELOPE_ROWS, Validator, columnize, envelopes
from spoold.errors import InputError
from spoold.sources import SourceLineError
from spoold.sources.jsonl import parse_object
from spoold.spool.spool import Spool

READ_BLOCK = 1 << 20
BATCH_ROWS = MAX_ENVELOPE_ROWS  # rows validated together: one envelope's worth


def bounded_lines(stream: IO[bytes], max_line: int) -> Iterator[bytes]:
    """The input's lines (without their newline), read a block at a time: a line longer than ``max_line`` is
    InputError once the bytes read show it, never held whole (at most ``max_line`` plus a block)."""
    lineno, pending = 0, b""
    while block := stream.read(READ_BLOCK):
        *lines, pending = (pending + block).split(b"\n")
        for line in lines:
            lineno += 1
            if len(line) > max_line:
                raise InputError(f"line {lineno}: longer than max_line_bytes ({max_line} bytes)")
            yield line
        if len(pending) > max_line:
            raise InputError(f"line {lineno + 1}: longer than max_line_bytes ({max_line} bytes)")
    if pending:
        yield pending


def validated_batches(lines: Iterable[bytes], validator: Validator) -> Iterator[tuple[list[dict[str, Any]], list[int]]]:
    """Parse and check every line, yielding ``(rows, their line numbers)`` a batch at a time.

    Raises InputError naming the first bad line (in input order).
    """
    rows: list[dict[str, Any]] = []
    linenos: list[int] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(parse_object(line))  # the jsonl source format's rule: one object, one row
        except SourceLineError as e:
            _check(validator, rows, linenos)  # an earlier line's error comes first
            raise InputError(f"line {lineno}: {e}") from None
        linenos.append(lineno)
        if len(rows) >= BATCH_ROWS:
            _check(validator, rows, linenos)
            yield rows, linenos
            rows, linenos = [], []
    if rows:
        _check(validator, rows, linenos)
        yield rows, linenos


def _check(validator: Validator, rows: list[dict[str, Any]], linenos: list[int]) -> None:
    """The row-level rules over a batch, column by column; InputError naming the first rejected line."""
    if not rows:
        return
    cols, matrix = columnize(rows)
    verdict = validator.rows(cols, matrix)
    if verdict.rejects:
        first = min(verdict.rejects, key=lambda r: r.index)
        raise InputError(f"line {linenos[first.index]}: {first.reason}")


def _envelope_lines(lines: Iterable[bytes], validator: Validator, counter: list[int],
                    max_line: int) -> Iterator[bytes]:
    # Every row that passed the rules fits in an envelope (they refuse what no envelope can carry).
    for rows, linenos in validated_batches(lines, validator):
        try:
            for line, _ in envelopes(rows, max_line):
                yield line
        except InputError as e:  # a row just under max_line_bytes, longer once enveloped: name its line
            big = next((n for r, n in zip(rows, linenos, strict=True) if _too_long([r], max_line)), linenos[0])
            raise InputError(f"line {big}: {e}") from None
        counter[0] += len(rows)


def _too_long(rows: list[dict[str, Any]], max_line: int) -> bool:
    try:
        list(envelopes(rows, max_line))
    except InputError:
        return True
    return False


def append_input(config: Config, table: str, source: str) -> int:
    """Append every row of ``source`` (a path, or ``-`` for stdin) to ``table``; all or nothing."""
    try:
        stream = nullcontext(sys.stdin.buffer) if source == "-" else open(source, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise InputError(f"no such file: {source}") from None
    except OSError as e:
        raise InputError(f"cannot read {source}: {e.strerror}") from None
    count = [0]
    with stream as f:
        # It cannot see the table, whose column may be a string where these rows look like timestamps (or
        # a long where a transcript's is an int): it types new columns as plainly as it can, and flush,
        # which sees the table, decides (quarantining what the table's types refuse).
        validator = Validator(config.table(table), cast=False, infer_timestamps=False)
        max_line = config.spool_limits.max_line_bytes
        Spool.from_config(config).append_stream(table, _envelope_lines(bounded_lines(f, max_line), validator, count,
                                                                       max_line))
    return count[0]
