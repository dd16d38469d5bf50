"""A table that can take no row whatever the rows (an earlier spoold made ``day(ts)`` of a string column) fails
the flush naming the table (exit 1), the rows stay spooled (never quarantined as bad rows), and the daemon
retries and says so on /health; no library message reaches the terminal or a quarantine reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
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


def test_a_write_the_table_refuses_whatever_the_rows_fails_the_flush_and_quarantines_nothing(tmp_path: Path) -> None:
    """Another tool set a table property the writer refuses (an unknown compression codec): no row is at fault,
    so none is quarantined; the flush exits 1 naming the table and the property, until it is fixed."""
    from support.tables import committed_keys, load_table

    cfg = write_config(tmp_path)
    assert run_spoold("append", T, "--config", str(cfg), input=ROWS).returncode == 0
    assert run_spoold("flush", "--config", str(cfg)).returncode == 0
    with load_table(cfg, T).transaction() as tx:
        tx.set_properties({"write.parquet.compression-codec": "bogus"})
    more = b"".join(b'{"part_id": "b:%d", "text": "x"}\n' % i for i in range(5))
    assert run_spoold("append", T, "--config", str(cfg), input=more).returncode == 0
    r = run_spoold("flush", "--config", str(cfg))
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1, err
    assert err.startswith(f"spoold: error: {T}: cannot commit to {T}: the table refused it (") and err.endswith(
        "whatever the rows; the rows stay spooled (check the table properties 'write.parquet.compression-codec')\n")
    assert sorted(spooled_keys(cfg, T)) == [f"b:{i}" for i in range(5)] and quarantined(cfg) == []

    with load_table(cfg, T).transaction() as tx:
        tx.remove_properties("write.parquet.compression-codec")
    assert run_spoold("flush", "--config", str(cfg)).returncode == 0
    assert sorted(committed_keys(cfg, T)) == ["a:0", "a:1"] + [f"b:{i}" for i in range(5)] and quarantined(cfg) == []


def test_rows_of_which_none_commits_for_a_reason_not_proven_theirs_stay_spooled(tmp_path: Path) -> None:
    """Halving a refused batch down to single rows, none of which commits, for a reason that is not certainly the
    rows' (a value Arrow refuses): the table's fault, nothing quarantined. One row failing among others that
    commit is that row's: quarantined. (The seam's fake, around a real sink, refuses the chosen rows.)"""
    from support.fakesink import FakeSink

    from spoold.errors import DataError, TableError
    from spoold.flush.flush import flush_table
    from spoold.iceberg.sink import Sink
    from spoold.spool.spool import Spool

    cfg = write_config(tmp_path)
    config = load_config(cfg)
    spool = Spool.from_config(config)

    def refusing(bad: Callable[[str], bool]) -> FakeSink:
        def commit(fake: FakeSink, spec: object, batch: Any, *args: object) -> Any:
            if any(bad(k) for k in batch.keys):
                raise DataError("cannot convert rows: a value does not fit its column's type in the table",
                                "a value does not fit its column's type in the table")
            return fake.inner.commit(spec, batch, *args)
        return FakeSink(Sink(config), commit=commit)

    spool.append(T, [{"part_id": f"k{i}", "text": "x"} for i in range(6)])
    with pytest.raises(TableError, match=f"table {T}: none of 6 row"):
        flush_table(config, spool, refusing(lambda k: True), T)
    assert sorted(spooled_keys(cfg, T)) == [f"k{i}" for i in range(6)] and quarantined(cfg) == []

    result = flush_table(config, spool, refusing(lambda k: k == "k3"), T)
    assert (result.committed, result.quarantined) == (5, 1)
    assert [p.name.startswith("commit-") for p in quarantined(cfg) if p.suffix == ".jsonl"] == [True]


def test_a_table_with_two_partition_fields_of_one_column_fails_until_the_config_gives_it_one(tmp_path: Path) -> None:
    """Another tool partitioned the table by ``day(ts)`` and ``hour(ts)``, which pyiceberg writes no row into: the
    flush fails naming the table (rows stay spooled) until ``partition_by`` evolves it to one field per column."""
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.schema import Schema
    from pyiceberg.transforms import DayTransform, HourTransform
    from pyiceberg.types import NestedField, StringType, TimestamptzType

    from spoold.iceberg.sink import Sink

    columns = f'[tables."{T}".columns]\npart_id = "string!"\nts = "timestamptz"\ntext = "string"\n'
    cfg = write_config(tmp_path, f'[tables."{T}"]\n' + columns)
    catalog = Sink(load_config(cfg)).tables.catalog()
    catalog.create_namespace("chat")
    schema = Schema(NestedField(1, "part_id", StringType(), required=True), NestedField(2, "ts", TimestamptzType()),
                    NestedField(3, "text", StringType()))
    catalog.create_table(T, schema=schema, partition_spec=PartitionSpec(
        PartitionField(2, 1000, DayTransform(), "ts_day"), PartitionField(2, 1001, HourTransform(), "ts_hour")))
    assert run_spoold("append", T, "--config", str(cfg), input=ROWS).returncode == 0
    r = run_spoold("flush", "--config", str(cfg))
    assert r.returncode == 1 and r.stderr.decode() == (
        f"spoold: error: {T}: table {T}: its partition fields day(ts) and hour(ts) both partition column 'ts', which "
        "spoold cannot write; the rows stay spooled until partition_by in the config gives it one field per column, "
        f"or `spoold rebuild {T}` re-creates it\n")
    assert sorted(spooled_keys(cfg, T)) == ["a:0", "a:1"] and quarantined(cfg) == []

    write_config(tmp_path, f'[tables."{T}"]\npartition_by = ["day(ts)"]\n' + columns)
    r = run_spoold("flush", "--config", str(cfg))
    assert r.returncode == 0 and b"committed 2, deduplicated 0, quarantined 0" in r.stdout, r.stderr
