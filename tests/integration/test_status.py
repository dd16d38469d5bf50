"""``spoold status`` through the real CLI against a real SQLite catalog (issue 14, acceptance 4).

Status lists every table of the config, of the spool and of the catalog that
spoold wrote to; it reads the last flush, backfill and maintenance runs from
the table itself (so any host sees them) and never needs the catalog.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from support.cli import run_spoold, write_config

from spoold.cli.status import committed_status
from spoold.config import load_config
from spoold.iceberg.sink import Sink


def ok(proc: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert proc.returncode == 0, (proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def status(cfg: Path, *tables: str) -> dict[str, Any]:
    out = ok(run_spoold("status", *tables, "--json", "--config", str(cfg)))
    assert out.stdout.count(b"\n") == 1
    return json.loads(out.stdout)


def rows(prefix: str, n: int) -> bytes:
    return b"".join(json.dumps({"part_id": f"{prefix}{i}", "n": i}).encode() + b"\n" for i in range(n))


def test_a_table_only_backfill_wrote_is_listed_with_its_rows_and_run(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    src = tmp_path / "history.jsonl"
    src.write_bytes(rows("h", 25))
    ok(run_spoold("backfill", "hist.rows", "--source", str(src), "--format", "jsonl", "--all", "--config", str(cfg)))
    ok(run_spoold("append", "live.rows", "--config", str(cfg), input=rows("l", 3)))
    ok(run_spoold("flush", "--config", str(cfg)))
    # Seen from another host's spool on the same catalog: neither table is in its spool or its config.
    cfg = write_config(tmp_path, name="other-host.toml", spool=str(tmp_path / "other-host-spool"))
    doc = status(cfg)
    assert set(doc["tables"]) == {"hist.rows", "live.rows"}
    hist = doc["tables"]["hist.rows"]
    assert hist["committed_rows"] == 25 and hist["spooled_rows"] == 0 and hist["data_files"] >= 1
    assert hist["last_backfill"]["rows"] == 25 and hist["last_backfill"]["host"]
    assert hist["last_flush"] is None
    live = doc["tables"]["live.rows"]
    assert live["committed_rows"] == 3 and live["last_flush"]["rows"] == 3 and live["last_backfill"] is None
    text = ok(run_spoold("status", "--config", str(cfg))).stdout.decode()
    assert text.startswith("hist.rows: ") and "committed 25 row(s)" in text and "no tables" not in text


def test_an_unknown_table_exits_2_and_a_foreign_one_is_not_shown(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[tables."decl.only"]\n')
    config = load_config(cfg)
    catalog = Sink(config).tables.catalog()
    catalog.create_namespace("other")
    from pyiceberg.schema import Schema
    from pyiceberg.types import NestedField, StringType

    catalog.create_table("other.foreign", Schema(NestedField(1, "x", StringType())))  # not spoold's
    r = run_spoold("status", "chat.nope", "--config", str(cfg))
    assert r.returncode == 2 and r.stdout == b""
    assert r.stderr.decode().startswith("spoold: error: unknown table chat.nope") and r.stderr.count(b"\n") == 1
    r = run_spoold("status", "other.foreign", "--config", str(cfg))
    assert r.returncode == 2 and b"spoold never wrote to it" in r.stderr
    assert set(status(cfg)["tables"]) == {"decl.only"}  # declared: shown before its first row
    assert set(status(cfg, "decl.only")["tables"]) == {"decl.only"}


def test_runs_are_read_from_the_table_so_every_host_sees_them(tmp_path: Path) -> None:
    """Another host's flush and a maintenance run recorded on the table show up here."""
    cfg = write_config(tmp_path)
    ok(run_spoold("append", "t.x", "--config", str(cfg), input=rows("a", 4)))
    ok(run_spoold("flush", "--config", str(cfg)))
    config = load_config(cfg)
    sink = Sink(config)
    from spoold.envelope import Validator
    from spoold.keys.batch import Batch

    spec = config.table("t.x")
    validator = Validator(spec, {"n": "long"})
    batch = Batch(validator.types)
    batch.add(validator.rows(["part_id", "n"], [["b0", 1], ["b1", 2]]))
    sink.tables.host = "other-host"
    sink.commit(spec, batch, validator.types, {"spoold.op": "flush"})
    maint = {"at": 1767268800.0, "host": "m-host", "duration_s": 1.5, "snapshots_expired": 3, "files_before": 9,
             "files_after": 1, "duplicates_removed": 0, "files_deleted": 8, "orphans_deleted": 0}
    tbl = sink.load(spec)
    assert tbl is not None
    with tbl.transaction() as tx:
        tx.set_properties({"spoold.last-maintenance": json.dumps(maint, separators=(",", ":"))})
    shutil.rmtree(tmp_path / "state" / "spool" / "t.x")  # what this host remembers plays no part
    info = status(cfg)["tables"]["t.x"]
    assert info["committed_rows"] == 6 and info["last_flush"]["host"] == "other-host"
    assert info["last_flush"]["rows"] == 2 and info["last_maintenance"] == maint
    assert info["metadata_location"].endswith(".metadata.json")
    text = ok(run_spoold("status", "t.x", "--config", str(cfg))).stdout.decode()
    assert "on other-host, 2 row(s)" in text and "last maintenance 2026-01-01" in text


def test_the_last_run_of_each_kind_is_the_newest_ancestor_with_it() -> None:
    snaps = [
        {"snapshot-id": 1, "timestamp-ms": 1000, "summary": {"spoold.op": "backfill", "spoold.rows": "5",
                                                              "spoold.host": "h1", "spoold.run": "r1"}},
        {"snapshot-id": 2, "parent-snapshot-id": 1, "timestamp-ms": 2000,
         "summary": {"spoold.op": "flush", "spoold.rows": "1", "spoold.files": "flush-1"}},
        {"snapshot-id": 3, "parent-snapshot-id": 2, "timestamp-ms": 3000,
         "summary": {"spoold.op": "maintain", "spoold.rows": "6", "total-records": "6", "total-data-files": "1"}},
        {"snapshot-id": 9, "timestamp-ms": 4000, "summary": {"spoold.op": "flush"}},  # not an ancestor
    ]
    out = committed_status({"current-snapshot-id": 3, "snapshots": snaps, "properties": {}})
    assert (out["committed_rows"], out["data_files"], out["snapshot_id"]) == (6, 1, 3)
    assert out["last_flush"] == {"at": 2.0, "snapshot_id": 2, "rows": 1}
    assert out["last_backfill"] == {"at": 1.0, "snapshot_id": 1, "rows": 5, "host": "h1", "run": "r1"}
    assert out["last_maintenance"]["snapshot_id"] == 3  # no property: the maintain commit itself
    assert committed_status(None)["committed_rows"] == 0


def test_status_never_needs_the_catalog(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    ok(run_spoold("append", "t.x", "--config", str(cfg), input=rows("a", 2)))
    ok(run_spoold("flush", "--config", str(cfg)))
    db = tmp_path / "state" / "catalog.db"
    with sqlite3.connect(db) as con:  # another process holds the catalog's write lock
        con.execute("BEGIN EXCLUSIVE")
        doc = status(cfg)
        assert doc["tables"]["t.x"]["committed_rows"] is None and "t.x" in doc["tables"]
        assert str(db) in doc["catalog_error"] and "[catalog] uri" in doc["catalog_error"]
    assert status(cfg)["tables"]["t.x"]["committed_rows"] == 2


def test_status_reads_the_local_catalog_without_loading_pyiceberg(tmp_path: Path) -> None:
    """What makes it fast: neither pyiceberg nor pyarrow is imported for a local SQLite catalog."""
    cfg = write_config(tmp_path)
    ok(run_spoold("append", "t.x", "--config", str(cfg), input=rows("a", 2)))
    ok(run_spoold("flush", "--config", str(cfg)))
    code = ("import sys, json; from spoold.config import load_config; from spoold.cli.status import status\n"
            f"doc = status(load_config({str(cfg)!r}))\n"
            "print(json.dumps([doc['tables']['t.x']['committed_rows'],"
            " sorted(m for m in sys.modules if m.split('.')[0] in ('pyiceberg', 'pyarrow', 'sqlalchemy'))]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=60)
    assert json.loads(out.stdout) == [2, []]


def test_the_fast_local_read_and_pyiceberg_see_the_same_tables(tmp_path: Path) -> None:
    """Other catalogs go through pyiceberg: both ways give the same metadata for a local one."""
    from spoold.iceberg.peek import _through_pyiceberg, catalog_tables

    cfg = write_config(tmp_path)
    for t in ("a.one", "b.two"):
        ok(run_spoold("append", t, "--config", str(cfg), input=rows(t, 3)))
    ok(run_spoold("flush", "--config", str(cfg)))
    config = load_config(cfg)
    fast, slow = catalog_tables(config), _through_pyiceberg(config, None)
    assert set(fast) == set(slow) == {"a.one", "b.two"}
    for t in fast:
        assert committed_status(fast[t]) == committed_status(slow[t])
        assert fast[t]["properties"] == slow[t]["properties"] and fast[t]["metadata-location"]
    assert set(catalog_tables(config, ["b.two", "c.none"])) == {"b.two"}
