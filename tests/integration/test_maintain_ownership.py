"""``spoold maintain`` deletes only what is provably its table's (issue 19, acceptance 2): real CLI, SQLite catalogs.

Two catalogs sharing a warehouse put their ``chat.parts`` at one location;
a ``write.data.path`` may point at any directory; an expired manifest may
name files anywhere. Every file is made older than the orphan safety age, so
only the ownership checks stand between maintenance and the other's files.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.cli import run_spoold, write_config
from support.maintkit import local

from spoold.config import Config, load_config
from spoold.iceberg.maintain.owner import metadata_uuid
from spoold.iceberg.maintain.reachable import referenced
from spoold.iceberg.sink import Sink

TABLE = "chat.parts"
DAYS = 86400.0
# The orphan safety age at its minimum: any positive number (0 is refused); every file is aged far past it.
MAINTAIN = "\n[maintain]\norphan_age_s = 0.001\n"


def catalog(db: Path, warehouse: Path, name: str = "") -> str:
    named = f'name = "{name}"\n' if name else ""
    return f'[catalog]\n{named}type = "sql"\nuri = "sqlite:///{db}"\nwarehouse = "file://{warehouse}"\n\n'


def config(tmp_path: Path, host: str, cat: str, extra: str = "") -> Path:
    d = tmp_path / host
    d.mkdir()
    return write_config(d, MAINTAIN + extra, catalog=cat, spool=str(d / "spool"))


def flush(cfg: Path, keys: list[str]) -> None:
    rows = b"".join(orjson.dumps({"part_id": k, "msg": f"hello {k}"}) + b"\n" for k in keys)
    out = run_spoold("append", TABLE, "-", "--config", str(cfg), input=rows)
    assert out.returncode == 0, out.stderr.decode()
    out = run_spoold("flush", "--config", str(cfg))
    assert out.returncode == 0, out.stderr.decode()


def maintain(cfg: Path, *args: str) -> dict[str, Any]:
    out = run_spoold("maintain", "--config", str(cfg), "--json", "--older-than", "0s", *args, timeout=600)
    assert out.returncode == 0, out.stderr.decode()
    return orjson.loads(out.stdout)["tables"][TABLE]


def table(cfg: Path) -> Any:
    c: Config = load_config(cfg)
    tbl = Sink(c).load(c.table(TABLE))
    assert tbl is not None
    return tbl


def keys(cfg: Path) -> list[str]:
    return sorted(table(cfg).scan().to_arrow().column("part_id").to_pylist())


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too): path → sha256 of its content."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p):
                out[p] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def age_all(root: Path, seconds: float = 10 * DAYS) -> None:
    for p in tree(root):
        st = os.stat(p)
        os.utime(p, (st.st_atime - seconds, st.st_mtime - seconds))


def provably(tbl: Any, files: dict[str, str]) -> set[str]:
    """The files that are ``tbl``'s: referenced by it, its metadata files, its owner marker."""
    uuid = str(tbl.metadata.table_uuid)
    refs = {local(p) for p in referenced(tbl)}
    return {p for p in files if p in refs or p.endswith(f".spoold-owner-{uuid}")
            or (p.endswith(".metadata.json") and metadata_uuid(tbl, p) == uuid)}


@pytest.mark.parametrize("shared", ["two catalog files", "two catalog names"])
def test_two_catalogs_sharing_a_warehouse_never_delete_each_others_files(tmp_path: Path, shared: str) -> None:
    wh = tmp_path / "warehouse"
    if shared == "two catalog files":
        a = config(tmp_path, "a", catalog(tmp_path / "a.db", wh))
        b = config(tmp_path, "b", catalog(tmp_path / "b.db", wh))
    else:
        a = config(tmp_path, "a", catalog(tmp_path / "one.db", wh, "lake_a"))
        b = config(tmp_path, "b", catalog(tmp_path / "one.db", wh, "lake_b"))
    want = {}
    for cfg, host in ((a, "a"), (b, "b")):
        for i in range(3):
            flush(cfg, [f"{host}{i}-{j}" for j in range(4)])
        want[cfg] = sorted(f"{host}{i}-{j}" for i in range(3) for j in range(4))
    ta, tb = table(a), table(b)
    assert ta.location() == tb.location()  # pyiceberg puts both at <warehouse>/chat/parts: one location
    assert ta.metadata.table_uuid != tb.metadata.table_uuid
    stray = wh / "chat" / "parts" / "data" / "nobodys.parquet"  # no table references it: not provably A's
    stray.write_bytes(b"junk")

    for me, other in ((a, b), (b, a)):
        age_all(wh)
        files = tree(wh)
        theirs = {p: h for p, h in files.items() if p not in provably(table(me), files)}
        assert any(p.endswith(".parquet") for p in theirs) and any(p.endswith(".metadata.json") for p in theirs)

        report = maintain(me, "--keep", "1")

        assert report["orphans_refused"] == 1 and report["orphans_deleted"] == 0, report
        after = tree(wh)
        assert {p: after.get(p) for p in theirs} == theirs  # not one of the other's files deleted or changed
        assert keys(me) == want[me] and keys(other) == want[other]
    assert stray.exists()


def test_a_write_data_path_outside_the_location_is_not_swept(tmp_path: Path) -> None:
    cfg = config(tmp_path, "a", catalog(tmp_path / "a.db", tmp_path / "warehouse"))
    flush(cfg, ["k0", "k1"])
    unrelated = tmp_path / "unrelated"
    (unrelated / "sub").mkdir(parents=True)
    for p in ("notes.txt", "sub/old.parquet", "sub/00001-x.metadata.json"):
        (unrelated / p).write_bytes(b"precious " + p.encode())
    with table(cfg).transaction() as tx:
        tx.set_properties({"write.data.path": f"file://{unrelated}"})
    flush(cfg, ["k2"])
    flush(cfg, ["k3"])  # data files in the unrelated directory, referenced by the table
    # A symlink inside the table's data directory leading to the unrelated one: resolved, it is outside.
    os.symlink(unrelated, Path(local(table(cfg).location())) / "data" / "link")
    age_all(tmp_path)
    before = tree(unrelated)

    report = maintain(cfg, "--keep", "1")

    assert report["orphan_paths_outside"] == 1 and report["orphans_refused"] == 0, report
    after = tree(unrelated)
    assert {p: after.get(p) for p in before} == before  # nothing there deleted (the compaction may add a file)
    assert keys(cfg) == ["k0", "k1", "k2", "k3"]


def test_expiry_never_deletes_files_outside_the_location(tmp_path: Path) -> None:
    cfg = config(tmp_path, "a", catalog(tmp_path / "a.db", tmp_path / "warehouse"))
    flush(cfg, ["k0"])
    outside = tmp_path / "outside"
    with table(cfg).transaction() as tx:
        tx.set_properties({"write.data.path": f"file://{outside}"})
    flush(cfg, ["k1"])
    flush(cfg, ["k2"])
    with table(cfg).transaction() as tx:  # back inside: the compaction's output lands in the location
        tx.remove_properties("write.data.path")
    before = tree(outside)
    assert len(before) == 2
    age_all(tmp_path)

    report = maintain(cfg, "--keep", "1")

    # The compaction replaced all three files; expiry freed the two outside, and left them.
    assert report["files_compacted"] == 3 and report["expired_outside"] == 2, report
    assert report["orphan_paths_outside"] == 0  # (the table writes inside its location again)
    assert set(tree(outside)) == set(before)
    tbl = table(cfg)
    assert not set(before) & {local(t.file.file_path) for t in tbl.scan().plan_files()}  # not read any more
    assert keys(cfg) == ["k0", "k1", "k2"]


def test_a_compacted_unpartitioned_table_keeps_its_rows_through_orphan_cleanup(tmp_path: Path) -> None:
    """Compaction used to name its output ``data//file`` in an unpartitioned table, the listing said
    ``data/file``, and the same run's orphan cleanup deleted the table's only data file."""
    cfg = config(tmp_path, "a", catalog(tmp_path / "a.db", tmp_path / "warehouse"))
    for i in range(3):
        flush(cfg, [f"k{i}"])
    assert not table(cfg).spec().fields
    report = maintain(cfg, "--keep", "1")
    assert report["files_compacted"] == 3 and report["files_after"] == 1, report
    assert keys(cfg) == ["k0", "k1", "k2"]
    assert all("//" not in t.file.file_path.removeprefix("file://") for t in table(cfg).scan().plan_files())
