"""Changing your mind in the config: ``partition_by`` evolves an existing table's spec; a type Iceberg cannot
change is refused naming the way through (``spoold rebuild``). Through ``spoold flush`` against SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import write_config
from support.tables import load_table, read_table

from spoold.cli.entry import main

T = "ev.t"
COLUMNS = f'[tables."{T}".columns]\npart_id = "string!"\nts = "timestamptz"\n'


def flush_rows(cfg: Path, capsys: pytest.CaptureFixture[str], *rows: str) -> tuple[int, str]:
    """Append ``rows`` (JSON lines) through the CLI, then flush; (flush's exit code, its stdout and stderr)."""
    path = cfg.parent / "rows.jsonl"
    path.write_text("".join(r + "\n" for r in rows))
    assert main(["append", T, str(path), "--config", str(cfg)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    rc = main(["flush", "--config", str(cfg)])
    out = capsys.readouterr()
    return rc, out.out + out.err


def spec_of(cfg: Path) -> list[str]:
    tbl = load_table(cfg, T)
    return [f"{f.transform}({tbl.schema().find_column_name(f.source_id)})" for f in tbl.spec().fields]


def row(key: str, hour: int) -> str:
    return f'{{"part_id": "{key}", "ts": "2026-03-0{1 + hour // 24}T{hour % 24:02d}:00:00Z"}}'


def test_a_partition_by_change_evolves_the_table_and_old_files_keep_their_spec(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, f'[tables."{T}"]\n' + COLUMNS)
    assert flush_rows(cfg, capsys, row("a", 1))[0] == 0
    assert spec_of(cfg) == []
    steps = [('partition_by = ["day(ts)"]\n', ["day(ts)"], "from [] to [day(ts)]"),
             ('partition_by = ["hour(ts)", "bucket[4](part_id)"]\n', ["hour(ts)", "bucket[4](part_id)"],
              "from [day(ts)] to [hour(ts), bucket[4](part_id)]"),
             ("", ["hour(ts)", "bucket[4](part_id)"], None),  # no partition_by: the table's spec is left alone
             ("partition_by = []\n", [], "from [hour(ts), bucket[4](part_id)] to []")]
    for i, (partition_by, spec, logged) in enumerate(steps):
        write_config(tmp_path, f'[tables."{T}"]\n{partition_by}' + COLUMNS)
        rc, err = flush_rows(cfg, capsys, row(f"k{i}", 25 + i))
        assert rc == 0, err
        assert spec_of(cfg) == spec
        said = [ln for ln in err.splitlines() if "partition spec" in ln]
        assert said == ([f"INFO table {T}: partition spec changed {logged}, as the config declares (new data is "
                         "written under it; existing files keep theirs)"] if logged else []), err
    tbl = load_table(cfg, T)
    by_spec = sorted((f.file.spec_id, len(f.file.partition)) for f in tbl.scan().plan_files())
    assert by_spec == [(0, 0), (0, 0), (1, 1), (2, 2), (2, 2)]  # each file as its spec was when it was written
    assert sorted(read_table(cfg, T).column("part_id").to_pylist()) == ["a", "k0", "k1", "k2", "k3"]


def test_a_type_change_iceberg_cannot_make_is_refused_naming_rebuild(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    assert flush_rows(cfg, capsys, '{"part_id": "a", "ts": "yesterday"}')[0] == 0  # ts: string, inferred
    write_config(tmp_path, f'[tables."{T}"]\npartition_by = ["day(ts)"]\n' + COLUMNS)
    rc, err = flush_rows(cfg, capsys, row("b", 1))
    assert rc == 2 and err.count("\n") == 1, err
    assert err == (f"spoold: error: {T}: tables.'{T}'.columns.ts: the table's column 'ts' is string, the config "
                   "declares timestamptz; Iceberg can only widen int to long and float to double (declare string "
                   f"again, or run `spoold rebuild {T}` to re-create the table with the config's types)\n")
    assert read_table(cfg, T).column("part_id").to_pylist() == ["a"]  # b stays spooled


def test_partition_field_names_clash_with_no_column_nor_kept_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Iceberg refuses a partition field named like a column or like a field the spec keeps: ``day(ts)`` beside a
    column ``ts_day``, ``bucket[8]`` replacing ``bucket[4]`` of one column. Such names get a suffix instead, and a
    row bringing a new column named like a partition field is quarantined saying so; the others commit."""
    columns = COLUMNS + 'ts_day = "string"\n'
    write_config(tmp_path, f'[tables."{T}"]\npartition_by = ["day(ts)", "bucket[4](part_id)"]\n' + columns)
    cfg = tmp_path / "spoold.toml"
    rc, err = flush_rows(cfg, capsys, row("a", 1)[:-1] + ', "ts_day": "x"}')
    assert rc == 0 and "quarantined 0" in err, err
    assert [f.name for f in load_table(cfg, T).spec().fields] == ["ts_day_2", "part_id_bucket"]

    write_config(tmp_path, f'[tables."{T}"]\npartition_by = ["day(ts)", "bucket[8](part_id)"]\n' + columns)
    rc, err = flush_rows(cfg, capsys, row("b", 2), row("c", 3)[:-1] + ', "part_id_bucket": 1}')
    assert rc == 0 and "committed 1, deduplicated 0, quarantined 1" in err, err
    assert spec_of(cfg) == ["day(ts)", "bucket[8](part_id)"]
    assert [f.name for f in load_table(cfg, T).spec().fields] == ["ts_day_2", "part_id_bucket_8"]
    assert "column 'part_id_bucket' has the name of the table's partition field bucket[4](part_id)" in err, err
    assert sorted(read_table(cfg, T).column("part_id").to_pylist()) == ["a", "b"]
