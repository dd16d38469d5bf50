"""Compaction against a real SQLite catalog: planning, the streamed rewrite, and the one ``replace`` commit."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from support.maintkit import (
    TABLE,
    commit,
    duckdb_scan,
    files_under,
    key_counts,
    live_data_files,
    local,
    make_config,
    rows,
    table,
)

from spoold.config import Config, load_config
from spoold.iceberg.maintain import rewrite as rewrite_mod
from spoold.iceberg.maintain.compact import MIN_GROUP_FILES, SMALL_FRACTION, plan, rewrite
from spoold.iceberg.maintain.reachable import referenced
from spoold.iceberg.maintain.rewrite import commit_rewrites
from spoold.iceberg.sink import Sink

PROPS = {"spoold.op": "maintain", "spoold.host": "test", "spoold.rows": "0"}


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return load_config(make_config(tmp_path))


def append_plain(cfg: Config, keys: list[str], n: int, day: int = 0) -> None:
    """Rows appended by plain pyiceberg (another tool): nothing stops it from repeating keys."""
    tbl = table(cfg)
    schema = tbl.schema().as_arrow()
    ts = pa.array([1_767_225_600_000_000 + day * 86_400_000_000] * len(keys), pa.timestamp("us", tz="UTC"))
    tbl.append(pa.table({"part_id": keys, "n": pa.array([n] * len(keys), pa.int64()), "ts": ts}, schema=schema))


def compact(cfg: Config, target: int = 64 << 20) -> tuple[list[Any], list[Any]]:
    sink = Sink(cfg)
    spec = cfg.table(TABLE)
    tbl = sink.load(spec)
    rewrites = [rewrite(tbl, g, spec.key, target) for g in plan(tbl, target)]
    done, dropped, _ = commit_rewrites(sink.tables, spec, rewrites, PROPS)
    return done, dropped


def test_small_files_become_one_file_per_partition_in_one_replace_snapshot_one_row_per_key(cfg: Config) -> None:
    sink = Sink(cfg)
    for i in range(12):
        commit(sink, [f"k{i}a", f"k{i}b"], n=i, day=i % 2)
    append_plain(cfg, ["k3a", "k5a", "k5b", "new"], n=999, day=1)  # another tool doubles three keys
    append_plain(cfg, ["k5a"], n=998, day=1)  # ... one of them twice
    before = table(cfg)
    assert len(live_data_files(before)) == 14 and sum(key_counts(cfg).values()) == 29
    done, dropped = compact(cfg)
    assert dropped == [] and sum(r.duplicates for r in done) == 4
    tbl = table(cfg)
    snap = tbl.current_snapshot()
    assert len(tbl.snapshots()) == len(before.snapshots()) + 1
    assert snap.summary.operation.value == "replace"
    props = snap.summary.additional_properties
    assert props["spoold.op"] == "maintain" and props["spoold.keys"] == "kept"
    assert props["spoold.duplicates-removed"] == "4" and props["deleted-data-files"] == "14"
    assert props["total-records"] == "25" and props["total-data-files"] == "2" and props["added-records"] == "25"
    data = rows(cfg)
    assert Counter(data.column("part_id").to_pylist()) == Counter({f"k{i}{s}": 1 for i in range(12) for s in "ab"}
                                                                  | {"new": 1})
    kept = dict(zip(data.column("part_id").to_pylist(), data.column("n").to_pylist()))
    assert kept["k3a"] == 3 and kept["k5a"] == 5 and kept["k5b"] == 5  # the earliest committed copy stays
    assert duckdb_scan(tbl.metadata_location) == [(25, 25)]  # another reader agrees
    # The outputs keep their group's earliest data sequence number: commit order is unchanged for the next run.
    live = {t.file.file_path for t in tbl.scan().plan_files()}
    entries = [e for m in snap.manifests(tbl.io) for e in m.fetch_manifest_entry(tbl.io)
               if e.data_file.file_path in live]
    assert sorted(e.sequence_number for e in entries) == [1, 2]
    assert len(snap.manifests(tbl.io)) == 1  # the snapshot's manifests merged: readers plan from one
    refs = {local(p) for p in referenced(tbl)}
    assert [p for p in files_under(tbl) if p not in refs] == []  # nothing written that is not committed


def test_planning_packs_small_files_by_partition_up_to_the_target_and_leaves_big_ones(cfg: Config) -> None:
    sink = Sink(cfg)
    commit(sink, [f"big{i}" for i in range(20000)], day=0)  # one big file
    for i in range(9):
        commit(sink, [f"s{i}"], day=0)
    commit(sink, ["alone"], day=1)  # a partition with one small file: nothing to gain
    tbl = table(cfg)
    sizes = {f.file_path: f.file_size_in_bytes for f in live_data_files(tbl)}
    big = max(sizes.values())
    small = sorted(s for s in sizes.values() if s != big)
    target = int(big / SMALL_FRACTION)  # the big file is just not small
    groups = plan(tbl, target)
    assert sum(len(g.inputs) for g in groups) == 9 and all(len(g.inputs) >= MIN_GROUP_FILES for g in groups)
    assert all(i.file.file_size_in_bytes < big for g in groups for i in g.inputs)
    assert all(g.older and g.older[0].file.file_size_in_bytes == big for g in groups)  # the big file is older
    tight = plan(tbl, small[-1] * 3 + 1)  # at most three small files' worth per group
    assert [len(g.inputs) for g in tight] == [3, 3, 3]
    assert [len(g.inputs) for g in plan(tbl, small[-1] * 8 + 1)] == [9]  # a lone last file joins the group
    orders = [i.order for g in tight for i in g.inputs]
    assert orders == sorted(orders)  # commit order, oldest first


def test_a_file_that_would_be_most_of_its_group_waits_until_enough_new_data_gathered(cfg: Config) -> None:
    sink = Sink(cfg)
    commit(sink, [f"old{i}" for i in range(5000)])  # an earlier compaction's output, say
    for i in range(3):
        commit(sink, [f"s{i}"])
    tbl = table(cfg)
    big = max(f.file_size_in_bytes for f in live_data_files(tbl))
    [group] = plan(tbl, 64 << 20)
    assert len(group.inputs) == 3 and [o.file.file_size_in_bytes for o in group.older] == [big]
    for i in range(3, 60):
        commit(sink, [f"s{i}"])
    [group] = plan(table(cfg), 64 << 20)
    assert len(group.inputs) == 61  # 60 small files add up to over half the big one: it joins


def test_a_row_whose_key_an_older_file_outside_the_group_holds_is_dropped(cfg: Config) -> None:
    sink = Sink(cfg)
    commit(sink, [f"big{i}" for i in range(3000)])
    for i in range(3):
        commit(sink, [f"s{i}"])
    append_plain(cfg, ["big7", "s1"], n=999)  # doubles of a big-file key and of a small-file key
    big = max(f.file_size_in_bytes for f in live_data_files(table(cfg)))
    done, _ = compact(cfg, target=int(big / SMALL_FRACTION))
    assert [r.duplicates for r in done] == [2] and len(done[0].witnesses) == 1
    assert set(key_counts(cfg).values()) == {1} and len(key_counts(cfg)) == 3003
    data = rows(cfg)
    assert pc.sum(pc.equal(data["n"], 999)).as_py() in (0, None)


def test_a_group_whose_witness_changed_before_the_commit_is_dropped_and_nothing_is_lost(cfg: Config) -> None:
    sink = Sink(cfg)
    commit(sink, [f"big{i}" for i in range(3000)])
    commit(sink, ["s0"])
    append_plain(cfg, ["big7", "s0"], n=999)
    tbl = table(cfg)
    target = int(max(f.file_size_in_bytes for f in live_data_files(tbl)) / SMALL_FRACTION)
    spec = cfg.table(TABLE)
    [group] = plan(tbl, target)
    rw = rewrite(tbl, group, spec.key, target)
    assert rw.witnesses and rw.outputs
    table(cfg).delete("part_id == 'big9'")  # another writer rewrites the witness (the big file)
    done, dropped, _ = commit_rewrites(Sink(cfg).tables, spec, [rw], PROPS)
    assert done == [] and dropped == [rw]
    assert not any(os.path.exists(f.file_path.removeprefix("file://")) for f in rw.outputs)  # its files deleted
    counts = key_counts(cfg)
    assert counts["big7"] == 2 and counts["s0"] == 2 and "big9" not in counts  # nothing lost (doubles stay)


def test_a_commit_that_lands_meanwhile_is_kept_and_a_group_whose_inputs_went_is_dropped(
        cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = Sink(cfg)
    for i in range(6):
        commit(sink, [f"k{i}"])
    spec = cfg.table(TABLE)
    tbl = table(cfg)
    rw = [rewrite(tbl, g, spec.key, 64 << 20) for g in plan(tbl, 64 << 20)]
    real = rewrite_mod.live_files
    calls = []

    def flush_in_between(t: Any) -> Any:
        out = real(t)
        if not calls:  # a flush commits between our look at the table and our commit: a real conflict
            commit(Sink(cfg), ["late"])
        calls.append(1)
        return out

    monkeypatch.setattr(rewrite_mod, "live_files", flush_in_between)
    done, dropped, _ = commit_rewrites(Sink(cfg).tables, spec, rw, PROPS)
    assert len(done) == 1 and not dropped and len(calls) == 2  # retried on top of the flush
    assert key_counts(cfg) == Counter([f"k{i}" for i in range(6)] + ["late"])
    assert len(live_data_files(table(cfg))) == 2  # the compacted file and the late flush's
    monkeypatch.undo()
    # A second compaction planned on the same old state finds its inputs gone: dropped, nothing doubled.
    stale = [rewrite(tbl, g, spec.key, 64 << 20) for g in plan(tbl, 64 << 20)]
    done, dropped, _ = commit_rewrites(Sink(cfg).tables, spec, stale, PROPS)
    assert done == [] and len(dropped) == 1
    assert key_counts(cfg) == Counter([f"k{i}" for i in range(6)] + ["late"])


def test_a_table_with_delete_files_is_not_compacted(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """spoold writes no delete files, and a rewrite would have to apply another writer's: leave such a table."""
    from spoold.iceberg.maintain import compact as compact_mod

    sink = Sink(cfg)
    for i in range(3):
        commit(sink, [f"k{i}"])
    tbl = table(cfg)
    files, deletes = compact_mod.live_files(tbl)
    assert len(files) == 3 and not deletes and len(plan(tbl, 64 << 20)) == 1
    monkeypatch.setattr(compact_mod, "live_files", lambda t: (files, True))
    assert plan(tbl, 64 << 20) == []


def test_a_rewrite_cut_short_at_any_step_leaves_no_file_behind(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    from spoold.iceberg.maintain import compact as compact_mod
    from spoold.iceberg.maintain.compact import Rewrite, rewrite_steps

    monkeypatch.setattr(compact_mod, "_ROW_GROUP_BYTES", 1)  # every batch written at once: files exist mid-way
    sink = Sink(cfg)
    for i in range(4):
        commit(sink, [f"k{i}-{j}" for j in range(200)])
    tbl = table(cfg)
    spec = cfg.table(TABLE)
    before = set(files_under(tbl, "data"))
    [group] = plan(tbl, 64 << 20)
    for stop in range(1, 9):  # 4 files' keys read, then 4 files copied
        rw = Rewrite(group)
        steps = rewrite_steps(tbl, rw, spec.key, 64 << 20)
        for _ in range(stop):
            next(steps)
        assert stop <= 4 or len(set(files_under(tbl, "data")) - before) == 1  # one output being written
        steps.close()  # the daemon dropped the run (reload, shutdown) or it failed
        assert set(files_under(tbl, "data")) == before and rw.outputs == []
    rw = rewrite(tbl, group, spec.key, 64 << 20)  # and uninterrupted it completes
    assert len(rw.outputs) == 1 and set(files_under(tbl, "data")) - before == {local(rw.outputs[0].file_path)}


@pytest.mark.parametrize("failing", ["load", "sync"])
def test_a_compaction_that_landed_keeps_its_files_when_a_step_after_its_commit_fails(
    cfg: Config, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The catalog took the replace, then the reload (or the fsync) after it failed: the new files are the
    table's data now. They used to be deleted as 'not committed', leaving a snapshot that pointed at
    missing files (every scan and every fresh key index failed)."""
    from spoold.errors import CatalogError
    from spoold.iceberg.maintain import run as maintain_mod
    from spoold.iceberg.tables import Tables

    sink = Sink(cfg)
    for i in range(4):
        commit(sink, [f"k{i}-{j}" for j in range(50)])
    tables, landed = Tables(cfg), []
    real_load, real_sync = Tables.load, rewrite_mod.sync_local_files

    def load(self: Tables, spec: Any, **kw: Any) -> Any:
        if landed and failing == "load":
            raise CatalogError("cannot load app.events: timed out (injected, after the commit landed)")
        return real_load(self, spec, **kw)

    def sync(paths: list[str]) -> None:
        landed.append(True)
        if failing == "sync":
            raise OSError(5, "Input/output error (injected)")
        real_sync(paths)

    monkeypatch.setattr(Tables, "load", load)
    monkeypatch.setattr(rewrite_mod, "sync_local_files", sync)
    steps = maintain_mod.run_steps(tables, cfg, cfg.table(TABLE), maintain_mod.Options(orphans=False),
                                   maintain_mod.MaintenanceReport())
    if failing == "sync":
        with pytest.raises(CatalogError, match="it was committed"):
            for _ in steps:
                pass
    else:
        with pytest.raises(CatalogError):  # the expiry after the compaction cannot load the table either
            for _ in steps:
                pass
    monkeypatch.undo()
    assert landed
    tbl = table(cfg)
    assert tbl.current_snapshot().summary.operation.value == "replace"
    assert key_counts(cfg) == Counter(f"k{i}-{j}" for i in range(4) for j in range(50))  # every file is there
    commit(Sink(cfg), ["new", "k0-0"])  # a fresh key index reads the whole table: flushing goes on
    assert sum(key_counts(cfg).values()) == 201
