"""A ``partition_by`` no table could take is refused when the config loads (exit 2, one line), never at a flush."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import write_config

from spoold.cli.entry import main

TS = '[tables."chat.parts".columns]\npart_id = "string!"\nts = "timestamptz"\n'


def status(cfg: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["status", "--config", str(cfg)])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(("table", "says"), [
    # no columns at all: the source column is undeclared (its inferred type is known only once rows arrive)
    ('partition_by = ["day(ts)"]\n', "day(ts) names column 'ts', which tables.'chat.parts'.columns does not "
                                    "declare (declare its type there, e.g. ts = \"timestamptz\")"),
    ('partition_by = ["day(ts)"]\n[tables."chat.parts".columns]\npart_id = "string!"\ntext = "string"\n',
     "day(ts) names column 'ts', which"),
    ('partition_by = ["day(ts)"]\n[tables."chat.parts".columns]\npart_id = "string!"\nts = "string"\n',
     "day(ts) cannot partition column 'ts', declared string: day takes timestamptz, date"),
    ('partition_by = ["hour(d)"]\n[tables."chat.parts".columns]\npart_id = "string!"\nd = "date"\n',
     "hour(d) cannot partition column 'd', declared date: hour takes timestamptz"),
    ('partition_by = ["bucket[8](ok)"]\n[tables."chat.parts".columns]\npart_id = "string!"\nok = "boolean"\n',
     "bucket[8](ok) cannot partition column 'ok', declared boolean"),
    ('partition_by = ["truncate[4](x)"]\n[tables."chat.parts".columns]\npart_id = "string!"\nx = "double"\n',
     "truncate[4](x) cannot partition column 'x', declared double: truncate takes int, long, string"),
    ('partition_by = ["day(ts)", "day(ts)"]\n' + TS, "day(ts) is named twice"),
    # Iceberg refuses two time transforms of a column; pyiceberg writes no row into two fields of one column
    ('partition_by = ["day(ts)", "hour(ts)"]\n' + TS, "day(ts) and hour(ts) both partition column 'ts': a table is "
                                                      "partitioned one way per column (keep one)"),
    ('partition_by = ["bucket[4](part_id)", "bucket[8](part_id)"]\n', "bucket[4](part_id) and bucket[8](part_id) "
                                                                     "both partition column 'part_id'"),
    ('partition_by = ["identity(part_id)", "bucket[16](part_id)"]\n', "both partition column 'part_id'"),
    ('partition_by = ["day(ts"]\n' + TS, "bad transform 'day(ts'"),
    ('partition_by = ["bucket[0](part_id)"]\n', "bad transform 'bucket[0](part_id)'"),
    ('partition_by = ["days(ts)"]\n' + TS, "bad transform"),
])
def test_a_partition_by_no_table_could_take_is_refused_at_load(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                table: str, says: str) -> None:
    rc, err = status(write_config(tmp_path, '[tables."chat.parts"]\n' + table), capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("spoold: error: tables.'chat.parts'.partition_by: ") and says in err, err


@pytest.mark.parametrize("table", [
    'partition_by = ["bucket[16](part_id)"]\n',  # the key column is a string, declared or not
    'partition_by = ["day(ts)", "truncate[2](n)", "kind"]\n[tables."chat.parts".columns]\npart_id = "string!"\n'
    'ts = "timestamptz"\nn = "long"\nkind = "string"\n',
    'partition_by = ["month(d)", "void(y)", "identity(x)"]\n[tables."chat.parts".columns]\npart_id = "string!"\n'
    'd = "date"\nx = "double"\ny = "string"\n',
])
def test_a_partition_by_every_table_can_take_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   table: str) -> None:
    rc, err = status(write_config(tmp_path, '[tables."chat.parts"]\n' + table), capsys)
    assert rc == 0, err
