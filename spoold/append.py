"""``spoold append``: validate a whole input of JSON rows, then spool it in one durable append.

Imports neither pyarrow nor pyiceberg: producers call this from hooks and
scripts, where start-up time matters.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from spoold.config import Config
from spoold.envelope import Validator
from spoold.errors import InputError
from spoold.sources import SourceLineError
from spoold.sources.jsonl import parse_object
from spoold.spool import Spool


def read_rows(data: bytes, validator: Validator) -> list[dict[str, Any]]:
    """Parse and check every line; raise InputError naming the first bad line."""
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
    return rows


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
    rows = read_rows(data, Validator(config.table(table)))
    if rows:
        Spool.from_config(config).append(table, rows)
    return len(rows)
