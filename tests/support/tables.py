"""What a test reads back: the committed table (a fresh catalog connection each time) and the spooled keys."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from spoold.config import Config, load_config
from spoold.envelope import Validator, parse_envelope
from spoold.spool.files import iter_lines, read_validated
from spoold.spool.spool import Spool


def _config(cfg: Path | Config) -> Config:
    return cfg if isinstance(cfg, Config) else load_config(cfg)


def load_table(cfg: Path | Config, table: str) -> Any:
    """The pyiceberg table, loaded afresh, or None while it does not exist."""
    from spoold.iceberg.sink import Sink  # pyiceberg: only for the tests that read tables

    config = _config(cfg)
    return Sink(config).load(config.table(table))


def read_table(cfg: Path | Config, table: str) -> Any:
    """The committed table as a pyarrow Table; the table must exist."""
    tbl = load_table(cfg, table)
    assert tbl is not None, f"table {table} does not exist"
    return tbl.scan().to_arrow()


def committed_keys(cfg: Path | Config, table: str, column: str = "part_id") -> list[Any]:
    """The committed keys in scan order, duplicates kept ([] before the table's first commit)."""
    tbl = load_table(cfg, table)
    return [] if tbl is None else tbl.scan(selected_fields=(column,)).to_arrow().column(column).to_pylist()


def committed_counts(cfg: Path | Config, table: str, column: str = "part_id") -> Counter[Any]:
    """How often each key is committed: a key landing twice shows as 2."""
    return Counter(committed_keys(cfg, table, column))


def _spool(spool: Path | Spool) -> Spool:
    return spool if isinstance(spool, Spool) else Spool.from_config(load_config(spool))


def spooled_keys(spool: Path | Spool, table: str, column: str = "part_id") -> list[Any]:
    """Every key in the table's pending spool files (``active.jsonl`` too), in order, duplicates kept.

    Every line must be a whole envelope: a torn or unparsable line fails the test.
    """
    keys: list[Any] = []
    for path in _spool(spool).pending(table):
        for _, raw, terminated in iter_lines(path):
            env, err = parse_envelope(raw, terminated)
            assert env is not None, f"{path}: {err}"
            i = env["columns"].index(column)
            keys += [row[i] for row in env["rows"]]
    return keys


def validated_keys(cfg: Path | Config, table: str, *, strict: bool = True) -> list[Any]:
    """The table's pending keys as flush's reader sees them (the envelope rules and the table's columns;
    an unterminated last line of ``active.jsonl`` is a write in progress and left out).

    ``strict``: every line and row must pass (else the test fails); otherwise rejected ones are left out.
    """
    config = _config(cfg)
    spool = Spool.from_config(config)
    validator = Validator(config.table(table))
    keys: list[Any] = []
    for path in spool.pending(table):
        for _, _, verdict in read_validated(path, validator):
            if strict:
                assert verdict.error is None and not verdict.rejects, (path, verdict.error, verdict.rejects)
            keys.extend(verdict.keys)
    return keys
