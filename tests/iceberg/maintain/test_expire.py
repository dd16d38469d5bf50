"""Snapshot expiry that deletes exactly the files only expired snapshots referenced (real SQLite catalog)."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support.maintkit import TABLE, commit, files_under, key_counts, live_data_files, local, make_config, table

from spoold.config import Config, load_config
from spoold.iceberg.maintain.compact import plan, rewrite
from spoold.iceberg.maintain.expire import Retention, expirable, expire_snapshots, retention
from spoold.iceberg.maintain.reachable import files_of, manifests_of, metadata_files, referenced
from spoold.iceberg.maintain.rewrite import commit_rewrites
from spoold.iceberg.sink import Sink
from spoold.settings import MaintainSettings

ALL = Retention(max_age_ms=0, keep=1)


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return load_config(make_config(tmp_path))


def compacted(cfg: Config, n: int = 6) -> None:
    """``n`` flushes of one key each, then one compaction of them."""
    sink = Sink(cfg)
    for i in range(n):
        commit(sink, [f"k{i}"])
    spec = cfg.table(TABLE)
    tbl = sink.load(spec)
    rws = [rewrite(tbl, g, spec.key, 64 << 20) for g in plan(tbl, 64 << 20)]
    commit_rewrites(sink.tables, spec, rws, {"spoold.op": "maintain"})


def missing_referenced(tbl: Any) -> list[str]:
    """Files some kept snapshot reads, or the metadata names, that are not on disk (must be none)."""
    snaps = tbl.metadata.snapshots
    manifests = manifests_of(tbl.io, snaps)
    needed = {s.manifest_list for s in snaps} | set(manifests) | set(files_of(tbl.io, manifests.values(), live=True))
    return [p for p in needed | metadata_files(tbl) if not os.path.exists(local(p))]


def test_retention_comes_from_arguments_then_config_then_the_tables_properties(cfg: Config) -> None:
    commit(Sink(cfg), ["a"])
    tbl = table(cfg)
    assert retention(tbl) == Retention(86_400_000, 10, 100)  # what spoold sets at create
    with tbl.transaction() as tx:
        tx.set_properties({"history.expire.max-snapshot-age-ms": "60000", "history.expire.min-snapshots-to-keep": "3",
                           "spoold.history.max-snapshots": "oops"})  # untrusted: counts as unset
    assert retention(tbl, MaintainSettings()) == Retention(60000, 3)
    assert retention(tbl, MaintainSettings(max_snapshot_age_s=7200, keep_snapshots=9, max_snapshots=5)) == \
        Retention(7_200_000, 9, 9)  # the cap never goes below the newest kept
    assert retention(tbl, MaintainSettings(max_snapshot_age_s=7200), older_than_s=0, keep=2) == Retention(0, 2)
    with tbl.transaction() as tx:
        tx.remove_properties("history.expire.max-snapshot-age-ms", "history.expire.min-snapshots-to-keep",
                             "spoold.history.max-snapshots")
    assert retention(tbl) == Retention(5 * 86_400_000, 1)  # Iceberg's defaults, no cap


def test_branches_keep_their_newest_ancestors_and_tags_their_snapshot(cfg: Config) -> None:
    sink = Sink(cfg)
    for i in range(6):
        commit(sink, [f"k{i}"])
    tbl = table(cfg)
    ids = [s.snapshot_id for s in tbl.snapshots()]
    tbl.manage_snapshots().create_tag(ids[1], "audit").create_branch(ids[3], "side").commit()
    now = int(time.time() * 1000) + 10_000
    assert expirable(tbl.metadata, Retention(0, 1), now) == [ids[0], ids[2], ids[4]]  # heads 5 and 3, tag 1
    assert expirable(tbl.metadata, Retention(0, 2), now) == [ids[0]]  # main keeps 5, 4; the branch 3, 2
    assert expirable(tbl.metadata, Retention(10**9, 1), now) == []  # everything is young
    assert expirable(tbl.metadata, Retention(10**9, 1, 1), now) == [ids[0], ids[2], ids[4]]  # ... but over the cap


def test_expiry_deletes_the_compacted_files_and_old_manifests_but_nothing_a_kept_snapshot_reads(cfg: Config) -> None:
    compacted(cfg)
    tbl = table(cfg)
    before = files_under(tbl, "data")
    assert len(before) == 7 and len(tbl.snapshots()) == 7
    out = expire_snapshots(tbl, ALL)
    assert out.snapshots == 6 and len(tbl.snapshots()) == 1
    left = files_under(tbl, "data")
    assert list(left) == [local(f.file_path) for f in live_data_files(tbl)]  # the six small files are gone
    assert out.files_deleted >= 6 + 6  # those six, and at least each expired snapshot's manifest list
    assert missing_referenced(tbl) == []
    assert key_counts(cfg) == Counter(f"k{i}" for i in range(6))
    assert set(files_under(tbl, "metadata")) >= {local(p) for p in referenced(tbl) if "/metadata/" in p}


def test_a_tagged_old_snapshot_keeps_every_file_it_reads(cfg: Config) -> None:
    sink = Sink(cfg)
    for i in range(4):
        commit(sink, [f"k{i}"])
    tbl = table(cfg)
    old = tbl.current_snapshot().snapshot_id
    tbl.manage_snapshots().create_tag(old, "audit").commit()
    compacted(cfg, 0)  # compacts the four files (the tag still reads them)
    commit(Sink(cfg), ["k9"])
    tbl = table(cfg)
    out = expire_snapshots(tbl, ALL)
    assert out.snapshots >= 3 and tbl.snapshot_by_id(old) is not None
    assert missing_referenced(tbl) == []
    assert sorted(tbl.scan(snapshot_id=old).to_arrow().column("part_id").to_pylist()) == ["k0", "k1", "k2", "k3"]
    assert key_counts(cfg) == Counter(["k0", "k1", "k2", "k3", "k9"])


def test_gc_disabled_shrinks_history_but_deletes_no_file(cfg: Config) -> None:
    compacted(cfg)
    tbl = table(cfg)
    with tbl.transaction() as tx:
        tx.set_properties({"gc.enabled": "false"})
    before = files_under(tbl, "data")
    out = expire_snapshots(tbl, ALL)
    assert out.snapshots == 6 and out.files_deleted == 0 and files_under(tbl, "data") == before


def test_a_dry_run_changes_nothing_and_counts_what_the_run_then_does(cfg: Config) -> None:
    compacted(cfg)
    tbl = table(cfg)
    everything = files_under(tbl)
    dry = expire_snapshots(tbl, ALL, dry_run=True)
    assert files_under(table(cfg)) == everything and len(table(cfg).snapshots()) == 7
    real = expire_snapshots(table(cfg), ALL)
    assert (dry.snapshots, dry.files_deleted, dry.bytes_deleted) == (real.snapshots, real.files_deleted,
                                                                      real.bytes_deleted)


@pytest.mark.parametrize(("maintain", "left"), [("every_commits = 3", 6), ("enabled = false", 2)])
def test_a_flush_expires_in_batches_and_frees_the_expired_manifest_lists(tmp_path: Path, maintain: str,
                                                                         left: int) -> None:
    """Maintenance enabled: flushes expire only once it fell 2 x every_commits behind; else a tenth at a time."""
    cfg = load_config(make_config(tmp_path, f"\n[maintain]\nmax_snapshot_age_s = 0.001\nkeep_snapshots = 2\n"
                                            f"{maintain}\n"))
    sink = Sink(cfg)
    for i in range(12):
        commit(sink, [f"k{i}"])
        time.sleep(0.002)
        assert len(sink.load(cfg.table(TABLE), reuse=True).snapshots()) <= 2 + 6
    tbl = table(cfg)
    assert len(tbl.snapshots()) == left
    lists = [p for p in files_under(tbl, "metadata") if os.path.basename(p).startswith("snap-")]
    assert sorted(lists) == sorted(local(s.manifest_list) for s in tbl.snapshots())
    assert missing_referenced(tbl) == [] and key_counts(cfg) == Counter(f"k{i}" for i in range(12))
