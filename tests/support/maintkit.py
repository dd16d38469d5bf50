"""Helpers for the maintenance tests: a real SQLite catalog in tmp_path, commits made the way flushes make them."""

from __future__ import annotations

import glob
import os
from collections import Counter
from pathlib import Path
from typing import Any

from spoold.config import Config, load_config
from spoold.iceberg.sink import Sink
from spoold.keys.batch import Batch
from support.cli import write_config

TABLE = "app.events"
TABLE_TOML = """
[tables."app.events"]
partition_by = ["day(ts)"]
[tables."app.events".columns]
part_id = "string!"
n = "long"
ts = "timestamptz"
"""
TYPES = {"part_id": "string", "n": "long", "ts": "timestamptz"}
DAY_US = 86_400_000_000
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


def make_config(tmp_path: Path, extra: str = "") -> Path:
    """A config (the app.events table plus ``extra`` TOML) whose spool directory for the table exists."""
    path = write_config(tmp_path, TABLE_TOML + extra)
    cfg = load_config(path)
    (cfg.spool_root / TABLE).mkdir(parents=True, exist_ok=True)
    return path


def commit(sink: Sink, keys: list[str], n: int = 0, day: int = 0) -> None:
    """One commit of ``keys`` (column n = ``n``) into ``day``'s partition, through spoold's commit path."""
    b = Batch(TYPES)
    b.add_rows(keys, {"part_id": list(keys), "n": [n] * len(keys), "ts": [T0 + day * DAY_US] * len(keys)})
    sink.commit(sink.config.table(TABLE), b, TYPES, {"spoold.op": "flush"})


def table(cfg: Config) -> Any:
    """The table, loaded afresh."""
    tbl = Sink(cfg).load(cfg.table(TABLE))
    assert tbl is not None
    return tbl


def rows(cfg: Config) -> Any:
    return table(cfg).scan().to_arrow()


def key_counts(cfg: Config) -> Counter[str]:
    return Counter(rows(cfg).column("part_id").to_pylist())


def local(location: str) -> str:
    return location.removeprefix("file://")


def files_under(tbl: Any, sub: str = "") -> dict[str, int]:
    """Every file under the table's location (or its ``sub`` directory): path → size."""
    root = os.path.join(local(tbl.location()), sub)
    return {p: os.path.getsize(p) for p in glob.glob(f"{root}/**/*", recursive=True) if os.path.isfile(p)}


def live_data_files(tbl: Any) -> list[Any]:
    """The current snapshot's data files (DataFile objects)."""
    return [t.file for t in tbl.scan().plan_files()]


def age(paths: list[str] | dict[str, int], seconds: float) -> None:
    """Set the files' mtime ``seconds`` into the past."""
    for p in paths:
        st = os.stat(p)
        os.utime(p, (st.st_atime - seconds, st.st_mtime - seconds))


def duckdb_scan(metadata_location: str, sql: str = "count(*), count(DISTINCT part_id)") -> Any:
    """``SELECT sql FROM iceberg_scan(...)`` with DuckDB's iceberg extension, loaded offline from its wheel."""
    import duckdb
    import duckdb_extension_avro  # type: ignore[import-not-found]
    import duckdb_extension_iceberg  # type: ignore[import-not-found]

    con = duckdb.connect()
    for mod, name in ((duckdb_extension_avro, "avro"), (duckdb_extension_iceberg, "iceberg")):
        found = glob.glob(f"{os.path.dirname(mod.__file__)}/**/{name}.duckdb_extension", recursive=True)
        con.execute(f"LOAD '{found[0]}'")
    return con.execute(f"SELECT {sql} FROM iceberg_scan('{metadata_location}')").fetchall()
