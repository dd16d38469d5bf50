"""What maintenance takes as its table's: the path check, the owner marker, the private warehouse chain."""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

import orjson
from pyiceberg.io.pyarrow import PyArrowFileIO
from support.cli import run_spoold, write_config
from support.maintkit import TABLE, age, commit, files_under, local, make_config, table

from spoold.config import load_config
from spoold.iceberg.maintain import owner
from spoold.iceberg.maintain.confine import Confine, resolve
from spoold.iceberg.maintain.orphans import delete_orphans
from spoold.iceberg.sink import Sink

DAYS = 86400.0


def test_paths_are_resolved_before_they_are_compared(tmp_path: Path) -> None:
    c = load_config(make_config(tmp_path))
    commit(Sink(c), ["a"])
    tbl = table(c)
    root = local(tbl.location())
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", f"{root}/data/link")
    confine = Confine(tbl)
    assert confine.allows(f"{root}/data/x.parquet") and confine.allows(f"file://{root}/metadata/m.avro")
    for bad in (f"{root}/data/../../x", f"{root}/data/link/x.parquet", root, f"{root}-sibling/data/x", "relative/x",
                "/etc/passwd", f"s3://bucket{root}/data/x"):
        assert not confine.allows(bad), bad
    io = PyArrowFileIO()
    s3 = resolve(io, "s3://lake/wh/t")
    assert s3 is not None and s3.holds(resolve(io, "s3a://lake/wh/t/data/x"))  # type: ignore[arg-type]
    assert resolve(io, "s3://lake/wh/t/data/../../u/x") is None  # a dot segment: not trusted at all
    assert not s3.holds(resolve(io, "s3://other/wh/t/data/x"))  # type: ignore[arg-type]
    assert not s3.holds(resolve(io, "s3://lake/wh/t2/x"))  # type: ignore[arg-type]


def test_spoold_marks_the_tables_it_creates_and_refuses_a_location_holding_another_tables_metadata(
        tmp_path: Path) -> None:
    c = load_config(make_config(tmp_path))
    commit(Sink(c), ["a"])
    tbl = table(c)
    assert owner.marked(tbl) and owner.markers_at(tbl) == {str(tbl.metadata.table_uuid)}
    root = Path(local(tbl.location()))
    meta = orjson.loads(Path(local(tbl.metadata_location)).read_bytes())
    nested = root / "data" / "inner" / "metadata" / "00000-x.gz.metadata.json"  # a table located in our data/
    nested.parent.mkdir(parents=True)
    nested.write_bytes(gzip.compress(orjson.dumps({**meta, "table-uuid": "6d2f1c34-0000-4000-8000-000000000001"})))
    age(files_under(tbl), 10 * DAYS)
    age([str(nested)], 10 * DAYS)
    out = delete_orphans(tbl, lambda: table(c), min_age_s=1)
    assert out.deleted == 0 and "6d2f1c34-0000-4000-8000-000000000001" in out.refused and nested.exists()
    nested.write_bytes(b"")  # an empty one (a write cut short, long ago) is nobody's: the sweep goes on
    stray = root / "data" / "stray.parquet"
    stray.write_bytes(b"junk")
    age([str(nested), str(stray)], 10 * DAYS)
    out = delete_orphans(tbl, lambda: table(c), min_age_s=1)
    assert not out.refused and out.deleted == 2 and not stray.exists() and not nested.exists()
    nested.write_bytes(b"not json")  # one whose table uuid cannot be read may be another table's
    age([str(nested)], 10 * DAYS)
    assert "no table uuid" in delete_orphans(tbl, lambda: table(c), min_age_s=1).refused and nested.exists()
    nested.unlink()
    os.remove(local(owner.marker_location(tbl)))  # a marker lost (another tool's cleanup) comes back at the next sweep
    assert delete_orphans(tbl, lambda: table(c), min_age_s=1, dry_run=True).refused == "" and not owner.marked(tbl)
    delete_orphans(tbl, lambda: table(c), min_age_s=1)
    assert owner.marked(tbl)


def test_the_warehouse_chain_is_created_0700(tmp_path: Path) -> None:
    wh = tmp_path / "a" / "b" / "warehouse"
    cfg = write_config(tmp_path, catalog=f'[catalog]\ntype = "sql"\nuri = "sqlite:///{tmp_path / "c.db"}"\n'
                                         f'warehouse = "file://{wh}"\n\n')
    out = run_spoold("append", TABLE, "-", "--config", str(cfg), input=b'{"part_id": "a"}\n')
    assert out.returncode == 0, out.stderr.decode()
    out = run_spoold("flush", "--config", str(cfg))
    assert out.returncode == 0, out.stderr.decode()
    for d in (tmp_path / "a", tmp_path / "a" / "b", wh):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    assert table(load_config(cfg)).scan().to_arrow().num_rows == 1
