"""``spoold append``: validate a whole input of JSON rows, then spool it in one durable append.

Imports neither pyarrow nor pyiceberg: producers call this from hooks and
scripts, where start-up time matters.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from spoold.config import Config
from spoold.envelope import Validator, encode, envelopes
from spoold.errors import InputError
from spoold.sources import SourceLineError
from spoold.sources.jsonl import parse_object
from spoold.spool import Spool


def read_rows(data: bytes, validator: Validator, linenos: list[int] | None = None) -> list[dict[str, Any]]:
    """Parse and check every line; raise InputError naming the first bad line.

    ``linenos``, if given, receives the line number of each row returned.
    """
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            row = parse_object(line)  # the jsonl source format's rule: one object, one row
        except SourceLineError as e:
            raise InputError(f"line {lineno}: {e}") from None
        verdict = validator.rows(list(row), [list(row.values())])
        if verdict.rejects:
            raise InputError(f"line {lineno}: {verdict.rejects[0].reason}")
        rows.append(row)
        if linenos is not None:
            linenos.append(lineno)
    return rows


def encode_rows(rows: list[dict[str, Any]], linenos: list[int]) -> list[tuple[bytes, int]]:
    """The rows as envelope lines; InputError naming the line of a row no envelope can carry.

    The rules accept any nesting orjson can write on its own, but an envelope wraps a
    value three levels deeper; the rare row that fits alone and not in an envelope is
    found only when the batch fails to encode.
    """
    try:
        return list(envelopes(rows))
    except TypeError:
        for row, lineno in zip(rows, linenos):
            try:
                encode(list(row), [list(row.values())])
            except TypeError:
                raise InputError(f"line {lineno}: a value is nested too deeply to store in the spool") from None
        raise


def append_input(config: Config, table: str, source: str) -> int:
    """Append every row of ``source`` (a path, or ``-`` for stdin) to ``table``; all or nothing."""
    if source == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise InputError(f"no such file: {source}") from None
        except OSError as e:
            raise InputError(f"cannot read {source}: {e.strerror}") from None
    linenos: list[int] = []
    rows = read_rows(data, Validator(config.table(table)), linenos)
    if rows:
        Spool.from_config(config).append_lines(table, encode_rows(rows, linenos))
    return len(rows)
