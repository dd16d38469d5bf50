"""Backfill and flush judge spooled rows alike against a real, existing table (issue 15).

When the table exists, its column types decide which spooled rows are valid
(not what the spool's first envelopes would suggest). Backfill must count as
"already spooled" exactly the rows flush will commit: a row flush quarantines
must be backfilled (else it is lost), a row flush commits must not be (else
the two race to commit it). The spool here holds rows whose verdict depends
on the table: a value the first envelope would make a double while the table
says long, a number where the table has a string, a new column.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from support.cli import run_spoold, write_config
from support.tables import read_table

TABLE = "free.rows"  # not declared: only the existing table knows its types


def run(cfg: Path, *args: str, data: bytes | None = None) -> dict[str, Any]:
    proc = run_spoold(*args, "--config", str(cfg), "--json", input=data)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def test_backfill_skips_exactly_the_spooled_rows_flush_commits_into_an_existing_table(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    run(cfg, "append", TABLE, data=jsonl([{"part_id": "base", "n": 1, "s": "text", "f": 0.5, "b": True}]))
    assert run(cfg, "flush")["tables"][TABLE]["committed"] == 1  # n long, s string, f double, b boolean

    # Spooled rows, each in its own append (its own envelope), the first ones fixing nothing: the table does.
    spooled = [
        {"part_id": "n-double", "n": 2.5},  # first in the spool: inferring would make n a double
        {"part_id": "n-long", "n": 2},
        {"part_id": "n-string", "n": "3"},
        {"part_id": "s-number", "s": 5},
        {"part_id": "s-text", "s": "ok"},
        {"part_id": "f-int", "f": 1},  # an integer is a valid double
        {"part_id": "b-string", "b": "yes"},
        {"part_id": "new-col", "z": 1},
    ]
    valid = {"n-long", "s-text", "f-int", "new-col"}
    spool_dir = tmp_path / "state" / "spool" / TABLE
    for row in spooled:  # written as envelopes directly: `spoold append` would refuse some of them
        line = json.dumps({"version": 1, "columns": list(row), "rows": [list(row.values())]}) + "\n"
        with open(spool_dir / "active.jsonl", "a") as f:
            f.write(line)

    src = tmp_path / "history.jsonl"
    src.write_bytes(jsonl([{"part_id": r["part_id"], "n": 7} for r in spooled] + [{"part_id": "fresh", "n": 8}]))
    out = run(cfg, "backfill", TABLE, "--source", str(src), "--all")
    assert (out["skipped_spooled"], out["written"], out["quarantined"]) == (len(valid), 5, 0), out
    after_backfill = Counter(read_table(cfg, TABLE).column("part_id").to_pylist())
    assert set(after_backfill) == {"base", "fresh"} | ({r["part_id"] for r in spooled} - valid)

    flushed = run(cfg, "flush")["tables"][TABLE]
    # Flush commits exactly the rows backfill left to it, none of which backfill wrote too.
    assert flushed == {"committed": len(valid), "deduplicated": 0, "quarantined": len(spooled) - len(valid)}
    final = Counter(read_table(cfg, TABLE).column("part_id").to_pylist())
    assert set(final) == {"base", "fresh"} | {r["part_id"] for r in spooled} and max(final.values()) == 1


def test_backfill_and_flush_judge_nested_rows_alike(tmp_path: Path) -> None:
    """The same with nested values: the table's struct and list types decide, at every depth."""
    cfg = write_config(tmp_path)
    base = {"part_id": "base", "p": {"u": {"id": 1}, "s": "x"}, "tags": ["a"]}
    run(cfg, "append", TABLE, data=jsonl([base]))
    assert run(cfg, "flush")["tables"][TABLE]["committed"] == 1  # p struct<u: struct<id: long>, s: string>
    spooled = [
        {"part_id": "id-double", "p": {"u": {"id": 2.5}}},  # first in the spool: inferring would make id a double
        {"part_id": "id-long", "p": {"u": {"id": 2}}},
        {"part_id": "id-string", "p": {"u": {"id": "3"}}},
        {"part_id": "new-field", "p": {"u": {"id": 4, "name": "n"}}},  # evolves the struct
        {"part_id": "not-struct", "p": ["x"]},
        {"part_id": "tag-number", "tags": ["a", 1]},
        {"part_id": "tag-ok", "tags": []},
    ]
    valid = {"id-long", "new-field", "tag-ok"}
    spool_dir = tmp_path / "state" / "spool" / TABLE
    for row in spooled:
        line = json.dumps({"version": 1, "columns": list(row), "rows": [list(row.values())]}) + "\n"
        with open(spool_dir / "active.jsonl", "a") as f:
            f.write(line)
    src = tmp_path / "history.jsonl"
    src.write_bytes(jsonl([{"part_id": r["part_id"], "tags": ["h"]} for r in spooled]))
    out = run(cfg, "backfill", TABLE, "--source", str(src), "--all")
    assert (out["skipped_spooled"], out["written"]) == (len(valid), len(spooled) - len(valid)), out
    flushed = run(cfg, "flush")["tables"][TABLE]
    assert flushed == {"committed": len(valid), "deduplicated": 0, "quarantined": len(spooled) - len(valid)}
    final = Counter(read_table(cfg, TABLE).column("part_id").to_pylist())
    assert set(final) == {"base"} | {r["part_id"] for r in spooled} and max(final.values()) == 1
