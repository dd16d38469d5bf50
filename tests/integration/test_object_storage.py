"""Object storage (a REST catalog on S3, SeaweedFS): what is durable when, and when spool files may go.

On a non-local FileIO, a file is durable once its upload returned and the
catalog's acknowledgement of the commit is the commit point: nothing is
fsynced locally (and the manifests are not read back to list files to sync),
and a spool file is deleted only after that acknowledgement.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pyiceberg.catalog.rest import RestCatalog
from support.cli import write_config
from support.servers import SeaweedFS

import spoold.iceberg.snapshots
from spoold.config import Config, load_config
from spoold.errors import CatalogError
from spoold.flush.flush import flush_table
from spoold.iceberg.sink import Sink
from spoold.spool.spool import Spool


def config_for(tmp_path: Path, table: str, catalog: str | None) -> Config:
    body = (f'[tables."{table}"]\n[tables."{table}".columns]\npart_id = "string!"\nn = "long"\n\n'
            "[flush]\nverify_after_s = 0\n")
    return load_config(write_config(tmp_path, body, catalog=catalog))


def rows(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"part_id": f"{prefix}{i}", "n": i} for i in range(n)]


def keys(config: Config, table: str) -> Counter[str]:
    tbl = Sink(config).load(config.table(table))
    assert tbl is not None
    return Counter(tbl.scan().to_arrow().column("part_id").to_pylist())


def test_on_object_storage_nothing_is_fsynced_locally(
        seaweedfs: SeaweedFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fsynced: list[str] = []
    listed: list[str] = []
    real_fsync, real_files = os.fsync, spoold.iceberg.snapshots.snapshot_files
    monkeypatch.setattr(os, "fsync", lambda fd: fsynced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
    monkeypatch.setattr(spoold.iceberg.snapshots, "snapshot_files", lambda t: listed.append(t) or real_files(t))

    def flush_twice(config: Config, table: str) -> None:  # the second flush releases what the first held
        spool = Spool.from_config(config)
        spool.append(table, rows("o", 40))
        sink = Sink(config)
        assert flush_table(config, spool, sink, table).committed == 40
        flush_table(config, spool, sink, table)
        assert keys(config, table) == Counter(f"o{i}" for i in range(40)) and spool.flush_files(table) == []

    table = f"objects.t{uuid.uuid4().hex[:10]}"
    remote = config_for(tmp_path / "s3", table, seaweedfs.catalog_toml())
    fsynced.clear()
    flush_twice(remote, table)
    state = str(remote.spool_root.parent)  # the host's own state: its spool and the directory holding it
    assert fsynced and all(p.startswith(state) for p in fsynced), fsynced
    assert not [p for p in fsynced if p.endswith((".parquet", ".avro", ".metadata.json"))]
    assert listed == []  # and no manifest was read back to find files to sync

    local = config_for(tmp_path / "local", "app.events", None)  # the same on a local warehouse: synced
    fsynced.clear()
    flush_twice(local, "app.events")
    warehouse = str(tmp_path / "local" / "state" / "warehouse")
    assert any(p.startswith(warehouse) and p.endswith(".parquet") for p in fsynced) and listed


@pytest.mark.parametrize("lost", ["request", "acknowledgement"])
def test_spool_files_go_only_once_the_catalog_acknowledged_the_commit(
        seaweedfs: SeaweedFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lost: str) -> None:
    """The commit request is lost (nothing committed), or its answer is (committed, but never acknowledged)."""
    table = f"objects.t{uuid.uuid4().hex[:10]}"
    config = config_for(tmp_path, table, seaweedfs.catalog_toml())
    spool = Spool.from_config(config)
    spool.append(table, rows("a", 10))
    flush_table(config, spool, Sink(config), table)
    flush_table(config, spool, Sink(config), table)  # verified: from now on a commit's files go at once

    real = RestCatalog.commit_table

    def failing(self: RestCatalog, tbl: Any, requirements: Any, updates: Any) -> Any:
        if lost == "acknowledgement":
            real(self, tbl, requirements, updates)
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(RestCatalog, "commit_table", failing)
    spool.append(table, rows("b", 25))
    if lost == "request":
        with pytest.raises(CatalogError, match="connection reset"):
            flush_table(config, spool, Sink(config), table)
        assert len(spool.flush_files(table)) == 1  # not acknowledged: the rows stay spooled
        monkeypatch.setattr(RestCatalog, "commit_table", real)
        assert flush_table(config, spool, Sink(config), table).committed == 25
    else:  # the owned retry loads the table afresh, finds every row committed, and commits nothing twice
        result = flush_table(config, spool, Sink(config), table)
        assert (result.committed, result.deduplicated) == (0, 25)
    assert spool.flush_files(table) == []
    assert keys(config, table) == Counter(f"a{i}" for i in range(10)) + Counter(f"b{i}" for i in range(25))
