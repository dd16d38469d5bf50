"""A table that can take no row whatever the rows (an earlier spoold made ``day(ts)`` of a string column) fails
the flush naming the table (exit 1), the rows stay spooled (never quarantined as bad rows), and the daemon
retries and says so on /health; no library message reaches the terminal or a quarantine reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
from support.cli import run_spoold, write_config
from support.daemonproc import DaemonProc, http_get, wait_for
from support.tables import spooled_keys

from spoold.config import load_config

T = "chat.parts"
ROWS = b'{"part_id": "a:0", "ts": "2026-01-01T00:00:00Z", "text": "hi"}\n{"part_id": "a:1", "text": "ho"}\n'


def broken_table(cfg: Path) -> None:
    """``ts`` a string partitioned by ``day(ts)``: what spoold made of an undeclared ``ts`` before it refused such
    a config at load."""
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.transforms import DayTransform
    from pyiceberg.types import NestedField, StringType

    from spoold.iceberg.sink import Sink

    catalog = Sink(load_config(cfg)).tables.catalog()
    catalog.create_namespace("chat")
    schema = Schema(NestedField(1, "part_id", StringType(), required=True), NestedField(2, "ts", StringType()),
                    NestedField(3, "text", StringType()))
    catalog.create_table(T, schema=schema, partition_spec=PartitionSpec(PartitionField(2, 1000, DayTransform(),
                                                                                       "ts_day")))


def listening(cfg: Path) -> str | None:
    try:
        return orjson.loads((load_config(cfg).spool_root / ".daemon.json").read_bytes()).get("listen")
    except (OSError, orjson.JSONDecodeError):
        return None


def quarantined(cfg: Path) -> list[Path]:
    return list((load_config(cfg).spool_root / T / "quarantine").glob("*"))


def test_a_table_no_row_can_be_written_into_fails_the_flush_and_keeps_the_rows(
        tmp_path: Path, daemons: Callable[..., DaemonProc]) -> None:
    cfg = write_config(tmp_path, "[flush]\ndebounce_s = 0.2\nmax_delay_s = 1\nretry_max_s = 0.5\n"
                                 '[daemon]\nlisten = "127.0.0.1:0"\n')
    broken_table(cfg)
    assert run_spoold("append", T, "--config", str(cfg), input=ROWS).returncode == 0
    r = run_spoold("flush", "--config", str(cfg))
    err = r.stderr.decode()
    assert r.returncode == 1 and r.stdout == b"", err
    assert err == (f"spoold: error: {T}: table {T}: its partition field day(ts) cannot take column 'ts', which the "
                   f"table holds as string, so no row can be written; the rows stay spooled until `spoold rebuild {T}` "
                   "re-creates it under the config's schema and partition_by\n")
    assert sorted(spooled_keys(cfg, T)) == ["a:0", "a:1"] and quarantined(cfg) == []

    d = daemons(cfg)
    address = wait_for(lambda: listening(cfg), "the listener's address")
    code, body = wait_for(lambda: (lambda c, b: (c, b) if c == 503 else None)(*http_get(address, "/health")),
                          "/health to fail once the rows waited past max_delay_s")
    assert b"table cannot take rows" in body and b"LargeUtf8" not in body, body
    assert sorted(spooled_keys(cfg, T)) == ["a:0", "a:1"] and quarantined(cfg) == []
    assert d.stop() == 0
    log = d.log()
    assert "flush failed, rows stay spooled" in log and "LargeUtf8" not in log and "quarantined" not in log, log

    # A config that asks for another spec gets the same answer: Iceberg cannot evolve a spec it finds invalid.
    write_config(tmp_path, f'[tables."{T}"]\npartition_by = []\n')
    r = run_spoold("flush", "--config", str(cfg))
    assert r.returncode == 1 and r.stderr.decode() == err, r.stderr
