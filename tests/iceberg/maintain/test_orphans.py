"""Orphan cleanup never deletes a referenced file nor a fresh one (acceptance 4), real SQLite catalog."""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support.maintkit import TABLE, age, commit, files_under, key_counts, local, make_config, table

from spoold.config import Config, load_config
from spoold.iceberg.maintain.compact import plan, rewrite
from spoold.iceberg.maintain.expire import Retention, expire_snapshots
from spoold.iceberg.maintain.orphans import delete_orphans
from spoold.iceberg.maintain.reachable import referenced
from spoold.iceberg.maintain.rewrite import commit_rewrites
from spoold.iceberg.sink import Sink

DAYS = 86400.0


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return load_config(make_config(tmp_path))


def history(cfg: Config, rng: random.Random) -> None:
    """Flushes over two days' partitions, a compaction, a partial expiry, more flushes: every kind of reference."""
    sink = Sink(cfg)
    for i in range(rng.randint(4, 9)):
        commit(sink, [f"a{i}"], day=i % 2)
    spec = cfg.table(TABLE)
    tbl = sink.load(spec)
    commit_rewrites(sink.tables, spec, [rewrite(tbl, g, spec.key, 64 << 20) for g in plan(tbl, 64 << 20)], {})
    expire_snapshots(table(cfg), Retention(max_age_ms=0, keep=rng.randint(2, 4)))
    for i in range(rng.randint(1, 3)):
        commit(sink, [f"b{i}"], day=i % 2)


def plant(path: Path, data: bytes = b"junk") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def readable_everywhere(tbl: Any) -> None:
    for snap in tbl.snapshots():  # every snapshot still reads (time travel included)
        tbl.scan(snapshot_id=snap.snapshot_id).to_arrow()


def test_only_old_unreferenced_files_go(cfg: Config, rng: random.Random) -> None:
    history(cfg, rng)
    tbl = table(cfg)
    root = Path(local(tbl.location()))
    keys = key_counts(cfg)
    refs = {local(p) for p in referenced(tbl)}
    referenced_on_disk = {p for p in files_under(tbl) if p in refs}
    # A flush whose first attempt conflicted (with the compaction) left its data file behind: an orphan too.
    pre = [p for p in files_under(tbl) if p not in refs]
    size = sum(files_under(tbl)[p] for p in pre)
    old = pre + [plant(root / "data" / f"ts_day=2026-01-0{rng.randint(1, 2)}" / f"crashed-{i}.parquet")
            for i in range(rng.randint(1, 4))]
    old.append(plant(root / "metadata" / "deadbeef-m0.avro"))  # a manifest of a failed commit
    planted = len(old) - len(pre)
    # Left the metadata log (a metadata file is an orphan only when it names this table's uuid: see
    # test_ownership.py).
    meta = Path(local(tbl.metadata_location)).read_bytes()
    old.append(plant(root / "metadata" / "00001-dropped.metadata.json", meta))
    size += len(meta)
    outside = plant(root / "notes.txt")  # not in data/ or metadata/: not the table's to judge
    age(files_under(tbl), 10 * DAYS)  # every file is old now, the referenced ones included
    fresh = [plant(root / "data" / f"in-flight-{i}.parquet") for i in range(rng.randint(1, 3))]
    fresh.append(plant(root / "metadata" / "99999-in-flight.metadata.json", meta))

    out = delete_orphans(tbl, lambda: table(cfg), min_age_s=3 * DAYS)

    left = set(files_under(tbl))
    assert out.deleted == len(old) and out.bytes == size + 4 * planted
    assert not left & set(old)
    assert set(fresh) <= left and outside in left  # fresh ones wait out the safety age
    assert referenced_on_disk <= left  # not one referenced file touched
    readable_everywhere(table(cfg))
    assert key_counts(cfg) == keys


def test_the_safety_age_decides_and_a_dry_run_deletes_nothing(cfg: Config, rng: random.Random) -> None:
    history(cfg, rng)
    tbl = table(cfg)
    orphan = plant(Path(local(tbl.location())) / "data" / "orphan.parquet")
    age([orphan], 2 * DAYS)
    assert delete_orphans(tbl, lambda: table(cfg), min_age_s=3 * DAYS).deleted == 0
    before = files_under(tbl)
    dry = delete_orphans(tbl, lambda: table(cfg), min_age_s=1 * DAYS, dry_run=True)
    assert dry.deleted == 1 and files_under(tbl) == before
    assert delete_orphans(tbl, lambda: table(cfg), min_age_s=1 * DAYS).deleted == 1
    assert not os.path.exists(orphan)


def test_a_table_with_gc_disabled_is_left_alone(cfg: Config, rng: random.Random) -> None:
    history(cfg, rng)
    tbl = table(cfg)
    with tbl.transaction() as tx:
        tx.set_properties({"gc.enabled": "false"})
    orphan = plant(Path(local(tbl.location())) / "data" / "orphan.parquet")
    age([orphan], 10 * DAYS)
    assert delete_orphans(tbl, lambda: table(cfg), min_age_s=1).deleted == 0 and os.path.exists(orphan)


def test_a_commit_landing_after_the_listing_is_seen_before_anything_is_deleted(cfg: Config) -> None:
    sink = Sink(cfg)
    commit(sink, ["a"])
    tbl = table(cfg)

    def reload_after_a_commit() -> Any:
        commit(Sink(cfg), ["b"])  # lands between the listing and the metadata read
        age(files_under(tbl), 10 * DAYS)  # (and its files look old, as a slow writer's would)
        return table(cfg)

    age(files_under(tbl), 10 * DAYS)
    out = delete_orphans(tbl, reload_after_a_commit, min_age_s=3 * DAYS)
    assert out.deleted == 0
    readable_everywhere(table(cfg))
    assert key_counts(cfg) == Counter(["a", "b"])
