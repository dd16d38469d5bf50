"""The committed-key index survives spoold's own compactions without a key-column rescan (acceptance 5)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyiceberg.table import Table
from support.maintkit import TABLE, key_counts, make_config, table

from spoold.config import Config, load_config
from spoold.iceberg.maintain.compact import plan, rewrite
from spoold.iceberg.maintain.rewrite import commit_rewrites
from spoold.iceberg.maintain.run import MaintenanceReport, Options, run_steps
from spoold.iceberg.sink import Sink
from spoold.iceberg.tables import Tables
from spoold.keys.batch import Batch

TYPES = {"part_id": "string", "n": "long", "ts": "timestamptz"}


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return load_config(make_config(tmp_path))


@pytest.fixture
def full_scans(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every full table scan made from now on (the index's rebuild is one; its incremental reads are not)."""
    seen: list[Any] = []
    real: Callable[..., Any] = Table.scan

    def scan(self: Table, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("selected_fields"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Table, "scan", scan)
    return seen


def flush(sink: Sink, keys: list[str]) -> tuple[int, int]:
    b = Batch(TYPES)
    b.add_rows(keys, {"part_id": list(keys), "n": [0] * len(keys), "ts": [1_767_225_600_000_000] * len(keys)})
    out = sink.commit(sink.config.table(TABLE), b, TYPES, {"spoold.op": "flush"})
    return out.committed, out.deduplicated


def maintain(cfg: Config, sink: Sink | None = None, **opts: Any) -> MaintenanceReport:
    """A maintenance run: another process's, or (with ``sink``) the daemon's own, which keeps its index in step."""
    report, spec = MaintenanceReport(), cfg.table(TABLE)
    index = (lambda tbl: sink.committed(spec, tbl)) if sink else None
    for _ in run_steps(sink.tables if sink else Tables(cfg), cfg, spec, Options(**opts), report, index=index):
        pass
    return report


def test_a_flush_right_after_spoolds_compaction_does_no_full_key_scan(cfg: Config, full_scans: list[Any]) -> None:
    sink = Sink(cfg)  # the daemon's: its index is built by its first commit
    for i in range(6):
        assert flush(sink, [f"k{i}"]) == (1, 0)
    full_scans.clear()
    report = maintain(cfg)  # another process compacts (so the daemon's next commit even conflicts first)
    assert report.files_compacted == 6 and table(cfg).current_snapshot().summary.operation.value == "replace"
    assert full_scans == []
    assert flush(sink, ["k0", "k3", "new"]) == (1, 2)  # the index still knows every key
    assert full_scans == []
    maintain(cfg, sink)  # the daemon's own run, through its Sink
    assert flush(sink, ["k1", "newer"]) == (1, 1) and full_scans == []
    assert key_counts(cfg) == Counter([f"k{i}" for i in range(6)] + ["new", "newer"])


def test_another_writers_rewrite_or_delete_rebuilds_the_index(cfg: Config, full_scans: list[Any]) -> None:
    sink = Sink(cfg)
    for i in range(3):
        flush(sink, [f"k{i}"])
    spec = cfg.table(TABLE)
    tbl = table(cfg)
    rws = [rewrite(tbl, g, spec.key, 64 << 20) for g in plan(tbl, 64 << 20)]
    from spoold.iceberg.maintain import rewrite as rewrite_mod

    unmarked = ("spoold.keys", "other")  # a rewrite that does not vouch for the key set (another tool's)
    original = rewrite_mod.KEYS_KEPT
    rewrite_mod.KEYS_KEPT = unmarked
    try:
        commit_rewrites(Tables(cfg), spec, rws, {})
    finally:
        rewrite_mod.KEYS_KEPT = original
    full_scans.clear()
    assert flush(sink, ["k1", "x"]) == (1, 1)
    assert full_scans == [("part_id",)]  # one rebuild
    table(cfg).delete("part_id == 'k2'")
    assert flush(sink, ["k2"]) == (1, 0)  # a deleted key may come back: the index forgot it
    assert len(full_scans) == 2


def test_the_daemons_own_run_keeps_its_index_off_the_snapshots_it_expires(
        tmp_path: Path, full_scans: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from spoold.daemon import maintainer as maintainer_mod
    from spoold.iceberg.sink import NoEvents

    monkeypatch.setattr(maintainer_mod, "SLICE_S", 0.0)  # one step per call
    cfg = load_config(make_config(tmp_path, "\n[maintain]\nevery_commits = 4\nmax_snapshot_age_s = 0.001\n"
                                            "keep_snapshots = 1\n"))
    daemon = maintainer_mod.Maintainer(cfg)

    class Counted(NoEvents):
        def committed(self, table: str) -> None:
            daemon.committed(table)

    sink = Sink(cfg, events=Counted())  # the daemon's
    for i in range(4):
        flush(sink, [f"k{i}"])
    flush(Sink(cfg), ["other"])  # another writer: the daemon's index is one snapshot behind
    steps = 0
    while daemon.step(sink.tables, time.time(), sink.committed):  # as the daemon does, until done
        steps += 1
    tbl = table(cfg)
    assert steps >= 4 and len(tbl.snapshots()) == 1 and tbl.current_snapshot().summary.operation.value == "replace"
    full_scans.clear()
    assert flush(sink, ["k0", "other", "new"]) == (1, 2) and full_scans == []
