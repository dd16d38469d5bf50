"""Interop: DuckDB reads the tables spoold writes and agrees with pyiceberg (issue 12, acceptance 3).

DuckDB 1.5.5 with its Iceberg, Avro and httpfs extensions from their PyPI
wheels (test extra), loaded offline from the wheels' files (never downloaded):
a local warehouse is read through the table's current metadata file, the
REST catalog on S3 (SeaweedFS) through ``ATTACH ... (TYPE iceberg)``. Both
readers must see the same count, keys, column types, values and partitions.
"""

from __future__ import annotations

import datetime as dt
import importlib
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
from support.cli import run_spoold, write_config
from support.servers import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, SeaweedFS

from spoold.config import load_config
from spoold.iceberg.sink import Sink

EXTENSIONS = ("avro", "httpfs", "iceberg")  # avro first: iceberg reads its manifests with it
# Iceberg type (as spoold declares it) -> how DuckDB names it
DUCK_TYPES = {"string": "VARCHAR", "long": "BIGINT", "int": "INTEGER", "double": "DOUBLE", "boolean": "BOOLEAN",
              "timestamptz": "TIMESTAMP WITH TIME ZONE", "date": "DATE"}
COLUMNS = {"part_id": "string!", "n": "long", "i": "int", "x": "double", "b": "boolean", "ts": "timestamptz",
           "d": "date", "text": "string"}


def duckdb_connection() -> Any:
    """DuckDB with the wheels' extensions loaded from their files, nothing fetched."""
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    for name in EXTENSIONS:
        module = importlib.import_module(f"duckdb_extension_{name}")
        (path,) = Path(module.__file__ or "").parent.glob(f"extensions/v{duckdb.__version__}/{name}.duckdb_extension")
        con.load_extension(str(path))
    con.sql("SET TimeZone = 'UTC'")
    return con


def table_toml(table: str) -> str:
    cols = "".join(f'{c} = "{t}"\n' for c, t in COLUMNS.items())
    return f'[tables."{table}"]\npartition_by = ["day(ts)"]\n[tables."{table}".columns]\n{cols}\n'


def rows(n: int) -> list[dict[str, Any]]:
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    out = []
    for k in range(n):
        ts = base + dt.timedelta(hours=7 * k, minutes=k)  # spread over days, some offsets non-UTC
        tz = "Z" if k % 3 else "+05:30"
        stamp = ts.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30))) if tz != "Z" else ts
        out.append({"part_id": f"k{k:04d}", "n": k * 1_000_000_007, "i": k - 50, "x": k / 7, "b": k % 2 == 0,
                    "ts": stamp.isoformat().replace("+00:00", "Z"), "d": (base + dt.timedelta(days=k % 40)).date()
                    .isoformat(), "text": None if k % 11 == 0 else f"row {k} ✓"})
    return out


def land(cfg: Path, table: str, batch: list[dict[str, Any]]) -> Any:
    """Append and flush through the real CLI (twice: the first flush may hold files until verified)."""
    import orjson

    proc = run_spoold("append", table, "--config", str(cfg), input=b"".join(orjson.dumps(r) + b"\n" for r in batch))
    assert proc.returncode == 0, proc.stderr.decode()
    for _ in range(2):
        proc = run_spoold("flush", "--config", str(cfg))
        assert proc.returncode == 0, proc.stderr.decode()
    config = load_config(cfg)
    tbl = Sink(config).load(config.table(table))
    assert tbl is not None
    return tbl


def agree(con: Any, relation: str, tbl: Any) -> None:
    """DuckDB's view of ``relation`` equals pyiceberg's view of ``tbl``."""
    ours = tbl.scan().to_arrow().sort_by("part_id")
    theirs = con.sql(f"SELECT * FROM {relation} ORDER BY part_id").to_arrow_table()
    assert theirs.num_rows == ours.num_rows > 0
    assert theirs.column("part_id").to_pylist() == ours.column("part_id").to_pylist()
    described = {name: typ for name, typ, *_ in con.sql(f"DESCRIBE SELECT * FROM {relation}").fetchall()}
    assert described == {c: DUCK_TYPES[t.rstrip("!")] for c, t in COLUMNS.items()}
    for col in COLUMNS:  # every value, cast to one Arrow type per column
        assert theirs.column(col).cast(ours.schema.field(col).type).equals(ours.column(col)), col
    # Partitions: rows per day(ts) as DuckDB computes it == the partition values pyiceberg's manifests carry.
    by_day = dict(con.sql(f"SELECT CAST(ts AS DATE), count(*) FROM {relation} GROUP BY ALL").fetchall())
    parts = tbl.inspect.partitions().to_pylist()
    assert by_day == {p["partition"]["ts_day"]: p["record_count"] for p in parts}
    assert len(by_day) > 5


def test_duckdb_reads_a_local_warehouse_table_as_pyiceberg_does(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, table_toml("app.events"))
    tbl = land(cfg, "app.events", rows(120))
    tbl = land(cfg, "app.events", rows(200)[100:])  # a second snapshot; keys 100..119 again: no doubles
    con = duckdb_connection()
    relation = f"iceberg_scan('{tbl.metadata_location}')"  # the current metadata file
    agree(con, relation, tbl)
    files = {(f["file_path"], f["record_count"]) for f in tbl.inspect.files().to_pylist()}
    listed = con.sql(f"SELECT file_path, record_count FROM iceberg_metadata('{tbl.metadata_location}')").fetchall()
    assert set(listed) == files and len(listed) == len(files)
    assert Counter(con.sql(f"SELECT part_id FROM {relation}").fetchall()) == Counter((f"k{k:04d}",) for k in range(200))


def test_duckdb_reads_a_rest_catalog_table_on_s3_as_pyiceberg_does(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    table = f"interop.t{uuid.uuid4().hex[:10]}"
    cfg = write_config(tmp_path, table_toml(table), catalog=seaweedfs.catalog_toml())
    tbl = land(cfg, table, rows(150))
    con = duckdb_connection()
    host = seaweedfs.s3_endpoint.removeprefix("http://")
    con.sql(f"CREATE SECRET s3 (TYPE s3, KEY_ID '{ACCESS_KEY}', SECRET '{SECRET_KEY}', ENDPOINT '{host}', "
            f"URL_STYLE 'path', USE_SSL false, REGION '{REGION}')")
    con.sql(f"CREATE SECRET rest (TYPE iceberg, CLIENT_ID '{ACCESS_KEY}', CLIENT_SECRET '{SECRET_KEY}', "
            f"OAUTH2_SERVER_URI '{seaweedfs.catalog_uri}/v1/oauth/tokens')")
    con.sql(f"ATTACH '{BUCKET}' AS lake (TYPE iceberg, ENDPOINT '{seaweedfs.catalog_uri}', SECRET rest)")
    agree(con, f"lake.{table}", tbl)
    assert pa.compute.sum(tbl.scan().to_arrow().column("n")).as_py() == con.sql(
        f"SELECT sum(n) FROM lake.{table}").fetchone()[0]
