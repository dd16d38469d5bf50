"""Columns are bounded: ``[tables] max_columns`` and rules for inferred column names, through the real CLI.

An undeclared table infers its columns from its rows. ``spoold append`` refuses a row that would
break a rule (exit 2, nothing appended); rows that reach the spool another way (the Python API, a
tailed source) are quarantined by ``spoold flush`` with a reason naming the rule, and their
neighbours are committed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from support.cli import run_spoold, write_config
from support.tables import read_table

from spoold.config import load_config
from spoold.spool.spool import Spool

T = "free.cols"


def ok(proc: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert proc.returncode == 0, (proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def append(cfg: Path, rows: list[dict[str, Any]]) -> subprocess.CompletedProcess[bytes]:
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    return run_spoold("append", T, "-", "--config", str(cfg), input=data)


def flush(cfg: Path) -> dict[str, int]:
    return json.loads(ok(run_spoold("flush", T, "--json", "--config", str(cfg))).stdout)["tables"][T]


def test_rows_past_max_columns_or_with_bad_names_are_refused(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[tables]\nmax_columns = 5\n")
    ok(append(cfg, [{"part_id": "k1", "text": "hi", "n": 1}]))
    assert flush(cfg)["committed"] == 1

    # spoold append: refused whole, one line naming the rule, nothing appended (append does not load
    # the table, so it judges by the config and its own input: the flush below judges by the table too)
    for row, why in [
        ({"part_id": "k2", **{f"c{i}": i for i in range(5)}}, "beyond [tables] max_columns = 5"),
        ({"part_id": "k2", "title": "x", "Title": "x"}, "differs from column 'title' only in case"),
        ({"part_id": "k2", "a\u0000b": "x"}, "not printable"),
        ({"part_id": "k2", "x" * 300: "x"}, "300 bytes long"),
    ]:
        proc = append(cfg, [{"part_id": "k0"}, row])
        assert proc.returncode == 2, proc
        err = proc.stderr.decode()
        assert "line 2" in err and why in err and err.count("\n") == 1, err
    assert not Spool.from_config(load_config(cfg)).pending(T)

    # rows that reached the spool without the CLI's check: quarantined by the flush, the rest committed
    spool = Spool.from_config(load_config(cfg))
    spool.append(T, [
        {"part_id": "k3", "a": 1, "b": 2, "c": 3},  # a, b take columns 4 and 5; c would be the 6th
        {"part_id": "k4", "Text": "x"},
        {"part_id": "k5", "bad\nname": "x"},
        {"part_id": "k6", "y" * 256: "x"},
        {"part_id": "k7", "text": "fine", "c": None, "TEXT": None},  # nulls bring no column: kept
    ])
    assert flush(cfg) == {"committed": 1, "deduplicated": 0, "quarantined": 4}
    table = read_table(cfg, T)
    assert sorted(table.column("part_id").to_pylist()) == ["k1", "k7"]
    assert len(table.schema) <= 5 and "c" not in table.schema.names and "Text" not in table.schema.names

    doc = json.loads(ok(run_spoold("quarantine", T, "--json", "--config", str(cfg))).stdout)["tables"][T]
    reasons = " | ".join(doc["reasons"])
    assert doc["records"] == 4
    for why in ("column 'c' would be the table's column 6: beyond [tables] max_columns = 5",
                "differs from column 'text' only in case", "not printable", "256 bytes long"):
        assert why in reasons, reasons


def test_max_columns_must_be_a_positive_integer(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[tables]\nmax_columns = "many"\n')
    proc = run_spoold("flush", "--config", str(cfg))
    assert proc.returncode == 2 and "tables.max_columns" in proc.stderr.decode()
