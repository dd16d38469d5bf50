"""Nested rows become struct, list and map columns: inferred or declared, validated strictly, evolved (issue 23).

Through the real CLI and a real daemon against SQLite; read back by pyiceberg
and by DuckDB's iceberg extension (loaded offline from its wheel).
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from support.cli import run_spoold, write_config
from support.daemonproc import DaemonProc, wait_for
from support.tables import committed_keys, load_table, read_table

TABLE = "ev.nested"


def run(cfg: Path, *args: str, data: bytes | None = None, rc: int = 0) -> Any:
    proc = run_spoold(*args, "--config", str(cfg), "--json", input=data)
    assert proc.returncode == rc, proc.stderr.decode()
    return json.loads(proc.stdout) if rc == 0 and proc.stdout.strip() else proc


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def by_key(cfg: Path, table: str = TABLE) -> dict[str, dict[str, Any]]:
    return {r["part_id"]: r for r in read_table(cfg, table).to_pylist()}


def duck(cfg: Path, sql: str, table: str = TABLE) -> list[tuple[Any, ...]]:
    """``sql`` with ``FROM T`` read by DuckDB's iceberg extension (loaded offline from its wheel)."""
    import duckdb
    import duckdb_extension_avro  # type: ignore[import-not-found]
    import duckdb_extension_iceberg  # type: ignore[import-not-found]

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    for mod, name in ((duckdb_extension_avro, "avro"), (duckdb_extension_iceberg, "iceberg")):
        found = glob.glob(f"{os.path.dirname(mod.__file__)}/**/{name}.duckdb_extension", recursive=True)
        con.execute(f"LOAD '{found[0]}'")
    scan = f"iceberg_scan('{load_table(cfg, table).metadata_location}')"
    return con.execute(sql.replace("FROM T", f"FROM {scan}")).fetchall()


FIRST = [
    {"part_id": "a", "props": {"user": {"id": 1, "name": "ann"}, "score": 1.5}, "tags": ["x", "y"], "none": []},
    {"part_id": "b", "props": {"user": {"id": 2}}, "tags": [], "mixed": [{"k": 1}, "s"]},
]
LATER = [{"part_id": "c", "props": {"user": {"id": 3, "email": "c@x"}, "new": True}, "tags": ["z"]}]


def check_landed(cfg: Path) -> None:
    """What FIRST then LATER leave in the table, seen by pyiceberg and by DuckDB."""
    tbl = load_table(cfg, TABLE)
    props = tbl.schema().find_field("props")
    assert str(props.field_type.field_type if hasattr(props.field_type, "field_type") else props.field_type) \
        .replace("optional ", "").count("email") == 1
    rows = by_key(cfg)
    assert rows["a"]["props"] == {"user": {"id": 1, "name": "ann", "email": None}, "score": 1.5, "new": None}
    assert rows["c"]["props"] == {"user": {"id": 3, "name": None, "email": "c@x"}, "score": None, "new": True}
    assert [rows[k]["tags"] for k in "abc"] == [["x", "y"], [], ["z"]]
    assert rows["b"]["mixed"] == '[{"k":1},"s"]' and "none" not in rows["a"]  # json fallback; [] waits for a type
    assert duck(cfg, "select part_id, props.user.id, props.user.email FROM T order by 1") == [
        ("a", 1, None), ("b", 2, None), ("c", 3, "c@x")]
    assert duck(cfg, "select part_id, unnest(tags) FROM T order by 1, 2") == [("a", "x"), ("a", "y"), ("c", "z")]


def test_nested_rows_of_an_undeclared_table_land_as_struct_and_list_columns_and_evolve(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    run_spoold("append", TABLE, "--config", str(cfg), input=jsonl(FIRST))
    assert run(cfg, "flush")["tables"][TABLE]["committed"] == 2
    tbl = load_table(cfg, TABLE)
    assert isinstance(tbl.schema().find_field("props").field_type.fields[0].field_type.fields[0].field_type,
                      type(tbl.schema().find_field("props.user.id").field_type))
    ids = {f: tbl.schema().find_field(f).field_id for f in ("props", "props.user", "props.user.id", "tags")}
    run_spoold("append", TABLE, "--config", str(cfg), input=jsonl(LATER))
    assert run(cfg, "flush")["tables"][TABLE] == {"committed": 1, "deduplicated": 0, "quarantined": 0}
    after = load_table(cfg, TABLE).schema()
    assert {f: after.find_field(f).field_id for f in ids} == ids  # evolved in place: field ids kept
    check_landed(cfg)


@pytest.mark.slow
def test_the_daemon_lands_and_evolves_nested_rows(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[flush]\ndebounce_s = 0.2\nmax_delay_s = 2\n")
    d = DaemonProc(cfg)
    try:
        run_spoold("append", TABLE, "--config", str(cfg), input=jsonl(FIRST))
        wait_for(lambda: len(committed_keys(cfg, TABLE)) == 2, "the first rows committed")
        run_spoold("append", TABLE, "--config", str(cfg), input=jsonl(LATER))
        wait_for(lambda: len(committed_keys(cfg, TABLE)) == 3, "the evolving row committed")
    finally:
        assert d.stop() == 0, d.log()
    check_landed(cfg)


DECLARED = f'''
[tables."{TABLE}".columns]
part_id = "string!"
props = "struct<user: struct<id: long!, name: string>, at: timestamptz>"
tags = "list<string!>"
attrs = "map<string, long>"
raw = "json"
'''


def test_declared_nested_columns_commit_valid_rows_and_quarantine_bad_ones_by_path(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, DECLARED)
    good = [
        {"part_id": "g1", "props": {"user": {"id": 1, "name": "n"}, "at": "2026-01-02T03:04:05Z"}, "tags": ["a"],
         "attrs": {"x": 1, "y": None}, "raw": {"any": [1, "thing"]}},
        {"part_id": "g2", "props": None, "tags": None, "attrs": {}, "raw": 5},
        {"part_id": "g3", "props": {"user": None}, "raw": "already text"},
    ]
    bad = {
        "b1": ({"props": {"user": {"id": "x"}}}, 'column props.user.id: expected long, got string "x"'),
        "b2": ({"props": {"user": {"name": "no id"}}}, "column props.user.id: required field is null"),
        "b3": ({"tags": ["a", 5]}, "column tags[1]: expected string, got number 5"),
        "b4": ({"tags": ["a", None]}, "column tags[1]: required element is null"),
        "b5": ({"attrs": {"k": 1.5}}, 'column attrs["k"]: expected long, got number 1.5'),
        "b6": ({"props": {"user": {"id": 1}, "extra": 1}}, 'column props: unexpected field "extra"'),
        "b7": ({"props": {"at": "yesterday"}}, 'column props.at: expected timestamptz, got string "yesterday"'),
        "b8": ({"props": [1]}, "column props: expected struct, got array [1]"),
    }
    spool = tmp_path / "state" / "spool" / TABLE
    spool.mkdir(parents=True)
    lines = [{"part_id": k, **v} for k, (v, _) in bad.items()] + good
    with open(spool / "active.jsonl", "ab") as f:  # as envelopes: `spoold append` would refuse the bad rows
        for chunk in (lines, lines[:3]):  # one big envelope (a column at a time) and a small one (value by value)
            cols = list(dict.fromkeys(c for r in chunk for c in r))
            f.write(json.dumps({"version": 1, "columns": cols, "rows": [[r.get(c) for c in cols] for r in chunk]})
                    .encode() + b"\n")
    out = run(cfg, "flush")["tables"][TABLE]
    assert (out["committed"], out["quarantined"]) == (3, len(bad) + 3)
    reasons = run(cfg, "quarantine")["tables"][TABLE]["reasons"]
    assert reasons == {why: (2 if k in ("b1", "b2", "b3") else 1) for k, (_, why) in bad.items()}
    rows = by_key(cfg)
    assert rows["g1"]["props"]["user"] == {"id": 1, "name": "n"} and rows["g1"]["props"]["at"].year == 2026
    assert rows["g1"]["attrs"] == [("x", 1), ("y", None)] and rows["g1"]["raw"] == '{"any":[1,"thing"]}'
    assert (rows["g2"]["raw"], rows["g3"]["raw"], rows["g3"]["props"]) == ("5", "already text", {"user": None,
                                                                                                 "at": None})
    assert duck(cfg, "select attrs['x'] FROM T where part_id = 'g1'") in ([(1,)], [([1],)])


def test_a_bad_type_string_is_refused_at_config_load_naming_the_column_and_position(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f'[tables."{TABLE}".columns]\npart_id = "string!"\np = "struct<a: long, b: lng>"\n')
    proc = run_spoold("status", "--config", str(cfg))
    assert proc.returncode == 2
    assert "columns.p: unknown type 'lng'" in proc.stderr.decode() and "at character 20" in proc.stderr.decode()


def test_a_string_column_of_json_text_written_before_nested_columns_keeps_taking_json_text(tmp_path: Path) -> None:
    """An existing table whose column holds objects as JSON text (what spoold wrote before) never changes type."""
    from pyiceberg.catalog import load_catalog
    from pyiceberg.schema import Schema
    from pyiceberg.types import NestedField, StringType

    cfg = write_config(tmp_path)
    from spoold.config import load_config

    config = load_config(cfg)
    cat = load_catalog(config.catalog_name, **config.catalog_props)
    cat.create_namespace("ev")
    old = cat.create_table(TABLE, Schema(NestedField(1, "part_id", StringType(), required=True),
                                         NestedField(2, "props", StringType()), NestedField(3, "tags", StringType())),
                           properties={"spoold.key": "part_id"})
    old.append(pa.table({"part_id": ["old"], "props": ['{"user":{"id":0}}'], "tags": ['["t"]']},
                        schema=old.schema().as_arrow()))
    run_spoold("append", TABLE, "--config", str(cfg), input=jsonl(FIRST + LATER))
    assert run(cfg, "flush")["tables"][TABLE]["committed"] == 3
    tbl = load_table(cfg, TABLE)
    assert str(tbl.schema().find_field("props").field_type) == "string"
    rows = by_key(cfg)
    assert rows["old"]["props"] == '{"user":{"id":0}}'
    assert json.loads(rows["c"]["props"]) == LATER[0]["props"] and json.loads(rows["a"]["tags"]) == ["x", "y"]


def test_compaction_keeps_nested_columns_intact(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    for rows in (FIRST, LATER, [{**FIRST[0], "part_id": "d"}]):
        run_spoold("append", TABLE, "--config", str(cfg), input=jsonl(rows))
        run(cfg, "flush")
    before = by_key(cfg)
    assert before["d"]["props"]["user"] == {"id": 1, "name": "ann", "email": None}
    out = run(cfg, "maintain", TABLE, "--older-than", "0s", "--keep", "1")
    assert out["tables"][TABLE]
    assert len(load_table(cfg, TABLE).inspect.files()) == 1
    assert by_key(cfg) == before


def test_a_declared_nested_field_widens_or_is_added_and_another_change_is_refused_naming_its_path(
        tmp_path: Path) -> None:
    def declare(props: str) -> Path:
        return write_config(tmp_path, f'[tables."{TABLE}".columns]\npart_id = "string!"\nprops = "{props}"\n')

    cfg = declare("struct<u: struct<n: int>>")
    run_spoold("append", TABLE, "--config", str(cfg), input=jsonl([{"part_id": "a", "props": {"u": {"n": 1}}}]))
    assert run(cfg, "flush")["tables"][TABLE]["committed"] == 1
    cfg = declare("struct<u: struct<n: long, m: string>, l: list<double>>")
    row = {"part_id": "b", "props": {"u": {"n": 2**40, "m": "x"}, "l": [0.5]}}
    run_spoold("append", TABLE, "--config", str(cfg), input=jsonl([row]))
    assert run(cfg, "flush")["tables"][TABLE]["committed"] == 1
    assert str(load_table(cfg, TABLE).schema().find_field("props.u.n").field_type) == "long"
    assert by_key(cfg)["b"]["props"] == row["props"] and by_key(cfg)["a"]["props"]["u"] == {"n": 1, "m": None}
    cfg = declare("struct<u: struct<n: string>>")
    run_spoold("append", TABLE, "--config", str(cfg), input=jsonl([{"part_id": "c", "props": {"u": {"n": "s"}}}]))
    proc = run(cfg, "flush", rc=2)
    assert "the table's field props.u.n is long, the config declares string" in proc.stderr.decode()


def test_a_row_quarantined_for_an_undeclared_struct_field_is_replayed_once_the_config_declares_it(
        tmp_path: Path) -> None:
    def declare(props: str) -> Path:
        return write_config(tmp_path, f'[tables."{TABLE}".columns]\npart_id = "string!"\nprops = "{props}"\n')

    cfg = declare("struct<a: long>")
    spool = tmp_path / "state" / "spool" / TABLE
    spool.mkdir(parents=True)
    (spool / "active.jsonl").write_text(json.dumps(
        {"version": 1, "columns": ["part_id", "props"], "rows": [["ok", {"a": 1}], ["later", {"a": 2, "b": "x"}]]})
        + "\n")
    assert run(cfg, "flush")["tables"][TABLE] == {"committed": 1, "deduplicated": 0, "quarantined": 1}
    cfg = declare("struct<a: long, b: string>")
    assert run(cfg, "quarantine", "replay", TABLE)["replayed"] == 1
    assert run(cfg, "flush")["tables"][TABLE]["committed"] == 1
    assert by_key(cfg)["later"]["props"] == {"a": 2, "b": "x"} and by_key(cfg)["ok"]["props"] == {"a": 1, "b": None}
