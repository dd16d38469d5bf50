"""The Iceberg seam against a real SQLite-backed pyiceberg catalog in tmp_path.

The centre of it is the owned conflict retry: pyiceberg 0.12 would rebase a
conflicting append onto the other committer's snapshot without looking at
keys; spoold switches that off and re-settles instead. These tests make a
concurrent commit land exactly between settle and append, and show that a
locked SQLite catalog is waited out rather than failing the flush.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table.metadata import TableMetadataV2
from support.cli import write_config
from support.maintkit import TABLE_TOML
from support.maintkit import TYPES as MAINT_TYPES

from spoold.config import Config, load_config
from spoold.errors import CatalogError, CommitConflict
from spoold.iceberg.catalog import catalog_errors
from spoold.iceberg.schema import new_schema
from spoold.iceberg.sink import Sink
from spoold.iceberg.snapshots import MemoTransaction, without_auto_retry
from spoold.iceberg.tables import Tables
from spoold.keys.batch import Batch
from spoold.keys.index import KeyIndex

TABLE, TYPES = TABLE_TOML, MAINT_TYPES  # the declared app.events table (tests/support/maintkit.py)


def make_config(tmp_path: Path, catalog_query: str = "", body: str = "") -> Config:
    tmp_path.mkdir(parents=True, exist_ok=True)
    state = tmp_path / "state"
    catalog = (f'[catalog]\ntype = "sql"\nuri = "sqlite:///{state / "catalog.db"}{catalog_query}"\n'
               f'warehouse = "file://{state / "warehouse"}"\n\n')
    cfg = load_config(write_config(tmp_path, TABLE + body, catalog=catalog))
    (cfg.spool_root / "app.events").mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


def batch(keys: list[str]) -> Batch:
    b = Batch(TYPES)
    b.add_rows(keys, {"part_id": list(keys), "n": list(range(len(keys))), "ts": [1_767_225_600_000_000] * len(keys)})
    return b


def table_keys(config: Config) -> Counter[str]:
    tbl = Sink(config).load(config.table("app.events"))
    assert tbl is not None
    return Counter(tbl.scan(selected_fields=("part_id",)).to_arrow().column("part_id").to_pylist())


def keys(prefix: str, n: int, start: int = 0) -> list[str]:
    return [f"{prefix}{i}" for i in range(start, start + n)]


# -- tables --------------------------------------------------------------------------------------------------
def test_ensure_creates_the_declared_table_once_with_required_key_and_partitioning(config: Config) -> None:
    spec = config.table("app.events")
    sink = Sink(config)
    assert sink.load(spec) is None
    tbl = sink.tables.ensure(spec, TYPES)
    schema = tbl.schema()
    assert [(f.name, str(f.field_type), f.required) for f in schema.fields] == [
        ("part_id", "string", True), ("n", "long", False), ("ts", "timestamptz", False)]
    (field,) = tbl.spec().fields
    assert str(field.transform) == "day" and schema.find_column_name(field.source_id) == "ts"
    assert tbl.properties["spoold.key"] == "part_id"
    again = Sink(config).tables.ensure(spec, TYPES)
    assert again.metadata.table_uuid == tbl.metadata.table_uuid


def test_ensure_adds_new_columns_by_schema_evolution(config: Config) -> None:
    spec = config.table("app.events")
    sink = Sink(config)
    sink.commit(spec, batch(keys("e", 3)), TYPES, {})
    tbl = sink.tables.ensure(spec, {**TYPES, "extra": "double", "flag": "boolean"})
    assert [f.name for f in tbl.schema().fields] == ["part_id", "n", "ts", "extra", "flag"]
    rows = tbl.scan().to_arrow().to_pylist()
    assert len(rows) == 3 and all(r["extra"] is None and r["flag"] is None for r in rows)


def race_to_create(config: Config, n: int) -> tuple[list[str], list[Exception]]:
    sinks = [Sink(config) for _ in range(n)]
    for s in sinks:
        s.tables.catalog()
    gate = threading.Barrier(n)
    uuids: list[str] = []
    errors: list[Exception] = []

    def create(sink: Sink) -> None:
        gate.wait()
        try:
            uuids.append(str(sink.tables.ensure(config.table("app.events"), TYPES).metadata.table_uuid))
        except Exception as e:  # collected and asserted by the caller
            errors.append(e)

    threads = [threading.Thread(target=create, args=(s,)) for s in sinks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return uuids, errors


def test_concurrent_creators_of_one_new_table_all_get_it(tmp_path: Path) -> None:
    """Several writers creating the namespace and table at once: no error, one table."""
    for trial in range(4):
        uuids, errors = race_to_create(make_config(tmp_path / str(trial)), 4)
        assert errors == []
        assert len(uuids) == 4 and len(set(uuids)) == 1


def test_a_replaced_or_vanished_table_is_refused_not_written(config: Config) -> None:
    """A spool remembers the table it committed to: a drop or a re-create is not silently accepted."""
    spec = config.table("app.events")
    Sink(config).commit(spec, batch(keys("r", 2)), TYPES, {})
    cat = Sink(config).tables.catalog()
    cat.drop_table("app.events")
    with pytest.raises(CatalogError, match="vanished"):
        Sink(config).load(spec)
    cat.create_table("app.events", schema=new_schema(spec, TYPES))
    with pytest.raises(CatalogError, match="replaced"):
        Sink(config).commit(spec, batch(keys("r", 2)), TYPES, {})


def test_a_load_that_missed_a_table_another_process_then_created_and_pinned_finds_it(config: Config) -> None:
    """A reader (``spoold status``, a test waiting on the daemon) whose catalog lookup ran just before the
    daemon created the table, and whose look at the pin came just after, must not call the table vanished."""
    spec = config.table("app.events")
    reader = Sink(config)
    real = reader.tables.catalog().load_table
    Sink(config).commit(spec, batch(keys("r", 2)), TYPES, {})  # created and pinned by "the daemon"
    calls = []

    def late(identifier: Any) -> Any:
        calls.append(identifier)
        if len(calls) == 1:
            from pyiceberg.exceptions import NoSuchTableError
            raise NoSuchTableError(identifier)  # this lookup ran before the create
        return real(identifier)

    reader.tables.catalog().load_table = late  # type: ignore[method-assign]
    tbl = reader.load(spec)
    assert tbl is not None and len(calls) == 2


@pytest.mark.parametrize("replace", [False, True], ids=["dropped", "replaced"])
def test_a_sink_reusing_its_last_version_still_notices_a_dropped_or_replaced_table(
        config: Config, replace: bool) -> None:
    spec = config.table("app.events")
    sink = Sink(config)
    sink.commit(spec, batch(keys("r", 2)), TYPES, {})
    cat = Sink(config).tables.catalog()
    cat.drop_table("app.events")
    if replace:
        cat.create_table("app.events", schema=new_schema(spec, TYPES))
    assert sink.load(spec, reuse=True) is not None  # its last version, without asking the catalog
    with pytest.raises(CatalogError, match="replaced" if replace else "vanished"):
        sink.commit(spec, batch(keys("s", 2)), TYPES, {})
    with pytest.raises(CatalogError, match="replaced" if replace else "vanished"):
        sink.load(spec, reuse=True)  # the failed commit forgot the stale version


# -- commits ---------------------------------------------------------------------------------------------------
def test_commit_settles_within_the_batch_and_against_the_table_and_records_what_it_did(config: Config) -> None:
    spec = config.table("app.events")
    sink = Sink(config)
    out = sink.commit(spec, batch(["a", "b", "a", "c"]), TYPES, {"spoold.files": "flush-1"})
    assert (out.committed, out.deduplicated) == (3, 1)
    out2 = sink.commit(spec, batch(["c", "d"]), TYPES, {})
    assert (out2.committed, out2.deduplicated) == (1, 1)
    assert sink.commit(spec, batch(["a", "d"]), TYPES, {}).committed == 0  # nothing new: no empty snapshot
    assert sink.commit(spec, Batch(TYPES), TYPES, {}).snapshot_id is None
    tbl = sink.load(spec)
    assert tbl is not None and len(tbl.snapshots()) == 2
    summary = tbl.snapshot_by_id(out.snapshot_id).summary  # type: ignore[union-attr]
    assert summary is not None
    assert summary["spoold.files"] == "flush-1" and summary["spoold.rows"] == "3" and summary["spoold.host"]
    assert table_keys(config) == Counter("abcd")


def test_a_commit_landing_between_settle_and_append_is_resettled_not_doubled(
        config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = config.table("app.events")
    ours, theirs = Sink(config), Sink(config)
    ours.commit(spec, batch(keys("base", 10)), TYPES, {})
    real_arrays = Batch.arrays
    attempts = []

    def racing_arrays(self: Batch, *args: Any) -> Any:
        # arrays() runs after settle and before append: the other committer lands right here.
        attempts.append(1)
        if len(attempts) == 1 and self is mine:
            monkeypatch.setattr(Batch, "arrays", real_arrays)
            theirs.commit(spec, batch(keys("k", 300)), TYPES, {})  # k0..k299
            monkeypatch.setattr(Batch, "arrays", racing_arrays)
        return real_arrays(self, *args)

    monkeypatch.setattr(Batch, "arrays", racing_arrays)
    mine = batch(keys("k", 500, start=200))  # k200..k699: 100 overlap
    out = ours.commit(spec, mine, TYPES, {})
    assert len(attempts) == 2  # the first append conflicted; the second was re-settled
    assert (out.committed, out.deduplicated) == (400, 100)
    counts = table_keys(config)
    assert [k for k, n in counts.items() if n > 1] == []
    assert set(counts) == set(keys("base", 10)) | set(keys("k", 700))
    assert ours.committed(spec, ours.load(spec)).snapshot_id == out.snapshot_id  # type: ignore[arg-type]


def test_at_the_history_cap_a_racing_commit_still_conflicts_and_resettles(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the history at its cap every commit also expires one: the racer's commit lands between our
    settle and our append, ours conflicts, re-settles against it, and the history stays bounded."""
    config = make_config(tmp_path, body="\n[maintain]\nenabled = false\nkeep_snapshots = 1\nmax_snapshots = 3\n")
    spec = config.table("app.events")
    ours, theirs = Sink(config), Sink(config)
    for i in range(4):
        ours.commit(spec, batch(keys(f"base{i}-", 5)), TYPES, {})
    real_arrays = Batch.arrays
    attempts = []

    def racing_arrays(self: Batch, *args: Any) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            monkeypatch.setattr(Batch, "arrays", real_arrays)
            theirs.commit(spec, batch(keys("k", 30)), TYPES, {})  # k0..k29, and expires the oldest snapshot
            monkeypatch.setattr(Batch, "arrays", racing_arrays)
        return real_arrays(self, *args)

    monkeypatch.setattr(Batch, "arrays", racing_arrays)
    out = ours.commit(spec, batch(keys("k", 50, start=20)), TYPES, {})  # k20..k69: 10 overlap
    assert len(attempts) == 2 and (out.committed, out.deduplicated) == (40, 10)
    counts = table_keys(config)
    assert set(counts.values()) == {1} and len(counts) == 20 + 70
    tbl = ours.load(spec)
    assert tbl is not None and len(tbl.snapshots()) <= 3


def test_keys_of_another_writers_commit_are_seen_even_after_a_later_commit_merged_its_manifest(
        config: Config) -> None:
    """Merging writers (Java Iceberg's default) rewrite earlier snapshots' files as EXISTING entries.

    An index refreshed over several snapshots at once must still see every
    file those snapshots added, or the next commit doubles their keys.
    """
    spec = config.table("app.events")
    ours, theirs = Sink(config), Sink(config)
    ours.commit(spec, batch(keys("base", 3)), TYPES, {})
    tbl = theirs.load(spec)
    assert tbl is not None
    with tbl.transaction() as tx:  # the other writer merges manifests as soon as there are two
        tx.set_properties({"commit.manifest-merge.enabled": "true", "commit.manifest.min-count-to-merge": "2"})
    theirs.commit(spec, batch(keys("t", 5)), TYPES, {})  # t0..t4
    theirs.commit(spec, batch(keys("u", 5)), TYPES, {})  # merges t's manifest: t's files become EXISTING
    snap = theirs.load(spec).current_snapshot()  # type: ignore[union-attr]
    assert snap is not None and len(snap.manifests(tbl.io)) == 1  # really merged
    out = ours.commit(spec, batch(keys("t", 5) + keys("u", 5) + keys("o", 2)), TYPES, {})
    assert (out.committed, out.deduplicated) == (2, 10)
    assert set(table_keys(config).values()) == {1}


def test_pyiceberg_own_retry_would_double_keys_so_ours_is_switched_off(config: Config) -> None:
    """Why spoold owns the retry: a stale append is rebased blindly by pyiceberg, refused by our view."""
    spec = config.table("app.events")
    sink = Sink(config)
    sink.commit(spec, batch(["x"]), TYPES, {})
    stale = sink.load(spec)
    assert stale is not None
    Sink(config).commit(spec, batch(["y"]), TYPES, {})  # lands after `stale` was loaded
    data = pa.Table.from_pylist([{"part_id": "y", "n": 1, "ts": None}],
                                schema=stale.schema().as_arrow())
    with pytest.raises(CommitFailedException):
        without_auto_retry(stale).append(data)
    assert stale.properties.get("commit.retry.num-retries") is None  # the catalog's copy is untouched
    stale.append(data)  # pyiceberg's default: retried by rebasing, keys unchecked
    assert table_keys(config)["y"] == 2


def test_commit_computes_staged_metadata_a_few_times_not_once_per_access(
        config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyiceberg replays and deep-copies the whole metadata (O(history)) on every access, ~18 per append."""
    spec = config.table("app.events")
    sink = Sink(config)
    for i in range(5):
        sink.commit(spec, batch([f"h{i}"]), TYPES, {})
    copies: list[int] = []
    real = TableMetadataV2.__deepcopy__
    monkeypatch.setattr(TableMetadataV2, "__deepcopy__", lambda self, memo=None: copies.append(1) or real(self, memo))
    out = sink.commit(spec, batch(keys("k", 50)), TYPES, {"spoold.files": "7"})
    assert out.committed == 50 and len(copies) <= 1  # a plain Transaction: 18 (O(history) each); was 3
    tbl = sink.load(spec)
    assert tbl is not None and tbl.current_snapshot().snapshot_id == out.snapshot_id  # type: ignore[union-attr]
    assert tbl.current_snapshot().summary["spoold.files"] == "7"  # type: ignore[union-attr]
    assert len(tbl.snapshots()) == 6 and sum(table_keys(config).values()) == 55


def test_a_sink_commits_from_its_last_version_and_a_stale_one_only_costs_a_conflict(
        config: Config, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    spec = config.table("app.events")
    ours, other = Sink(config), Sink(config)
    ours.commit(spec, batch(keys("a", 5)), TYPES, {})
    loads: list[int] = []  # metadata reads by `ours` (each one checks the table's uuid)
    real = Tables._check_uuid
    monkeypatch.setattr(Tables, "_check_uuid",
                        lambda self, *a: (self is ours.tables and loads.append(1)) or real(self, *a))
    assert ours.commit(spec, batch(keys("a", 3, 5)), TYPES, {}).committed == 3
    assert loads == []  # the sole writer: no reload of the metadata before each commit
    other.commit(spec, batch(keys("b", 5)), TYPES, {})  # ours now holds a stale version
    with caplog.at_level(logging.INFO, logger="spoold.iceberg.sink"):
        out = ours.commit(spec, batch(keys("b", 5) + keys("c", 5)), TYPES, {})
        assert (out.committed, out.deduplicated) == (5, 5) and loads == [1]  # conflict, reload, re-settle
        Sink(config).commit(spec, batch(keys("d", 5)), TYPES, {})  # another writer again
        assert ours.commit(spec, batch(keys("d", 5) + keys("e", 1)), TYPES, {}).committed == 1
    assert loads == [1, 1]  # a table with another writer: loaded before each commit from then on
    assert sum("commit conflict" in r.getMessage() for r in caplog.records) == 1  # so no second conflict
    counts = table_keys(config)
    assert set(counts.values()) == {1} and len(counts) == 24


def test_memo_transaction_sees_each_staged_change(config: Config) -> None:
    tbl = Sink(config).tables.ensure(config.table("app.events"), TYPES)
    tx = MemoTransaction(tbl)
    first = tx.table_metadata
    assert tx.table_metadata is first is tbl.metadata  # nothing staged: the base itself, no copy
    tx.set_properties(owner="ops")
    staged = tx.table_metadata
    assert staged is not first and staged.properties["owner"] == "ops" and tx.table_metadata is staged
    tx.commit_transaction()
    assert tbl.properties["owner"] == "ops" and tx.table_metadata is tbl.metadata


def test_staged_metadata_is_pyicebergs_without_the_deep_copy(config: Config) -> None:
    from pyiceberg.table.update import update_table_metadata
    from pyiceberg.types import StringType

    from spoold.iceberg.snapshots import staged_metadata

    sink = Sink(config)
    spec = config.table("app.events")
    for i in range(3):
        sink.commit(spec, batch([f"s{i}"]), TYPES, {})
    tbl = sink.load(spec)
    assert tbl is not None
    tx = MemoTransaction(tbl)
    tx.set_properties(owner="ops")
    with tx.update_schema() as upd:
        upd.add_column("extra", StringType())
    tx.append(tbl.scan().to_arrow().append_column("extra", pa.array(["x"] * 3)).select(
        [f.name for f in tx.table_metadata.schema().fields]))
    base, updates = tbl.metadata, tx._updates
    assert len(updates) >= 4
    ours, theirs = staged_metadata(base, updates), update_table_metadata(base, updates)
    assert ours.model_dump(exclude={"last_updated_ms"}) == theirs.model_dump(exclude={"last_updated_ms"})
    assert ours.last_updated_ms > base.last_updated_ms


def test_a_locked_sqlite_catalog_is_retried_not_fatal(tmp_path: Path) -> None:
    """Another process holding SQLite's write lock longer than the busy timeout (here 50 ms)."""
    config = make_config(tmp_path, "?timeout=0.05")
    spec = config.table("app.events")
    sink = Sink(config)
    sink.commit(spec, batch(["before"]), TYPES, {})
    holder = sqlite3.connect(tmp_path / "state" / "catalog.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        started = time.monotonic()
        out = sink.commit(spec, batch(["during"]), TYPES, {})
        assert time.monotonic() - started >= 0.4  # it really waited for the lock
    finally:
        release.join()
        holder.close()
    assert out.committed == 1
    assert table_keys(config) == Counter(["before", "during"])


def test_locked_and_conflict_errors_are_retryable_commit_conflicts() -> None:
    locked = sqlite3.OperationalError("database is locked")
    with pytest.raises(CommitConflict) as info, catalog_errors("cannot commit"):
        raise RuntimeError("wrapped") from locked
    assert info.value.retryable
    with pytest.raises(CommitConflict), catalog_errors("cannot commit"):
        raise CommitFailedException("Requirement failed: branch main has changed")
    with pytest.raises(CatalogError) as other, catalog_errors("cannot load"):
        raise OSError("no route to host")
    assert type(other.value) is CatalogError and other.value.retryable


def test_a_batch_validated_with_other_column_types_is_refused_not_truncated(config: Config) -> None:
    """Arrow would store 2.5 in a long column as 2: the sink refuses, the next flush re-validates."""
    spec = config.table("app.events")
    sink = Sink(config)
    sink.commit(spec, batch(["t0"]), TYPES, {})
    validated = {**TYPES, "n": "double"}
    b = Batch(validated)
    b.add_rows(["t1"], {"part_id": ["t1"], "n": [2.5]})
    with pytest.raises(CatalogError, match="'n' is long in the table but was validated as double"):
        sink.commit(spec, b, validated, {})
    assert table_keys(config) == Counter(["t0"])


# -- the committed-key index --------------------------------------------------------------------------------------
def test_index_advances_by_reading_only_the_new_snapshots(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = config.table("app.events")
    ours, theirs = Sink(config), Sink(config)
    for i in range(5):
        ours.commit(spec, batch(keys(f"o{i}-", 200)), TYPES, {})
    read: list[int] = []
    real_add = KeyIndex.add
    monkeypatch.setattr(KeyIndex, "add", lambda self, k: (read.append(len(k)), real_add(self, k))[1])

    theirs.commit(spec, batch(keys("t", 7)), TYPES, {})  # a cold sink reads the whole table once...
    assert sum(read) == 1000
    read.clear()
    ours.commit(spec, batch(keys("t", 7) + ["mine"]), TYPES, {})  # ...a warm one only what was added since
    assert sum(read) == 7
    tbl = ours.load(spec)
    assert tbl is not None
    idx = ours.committed(spec, tbl)
    assert len(idx) == 1008
    assert idx.contains(["t3", "o4-199", "mine", "absent"]).tolist() == [True, True, True, False]


def test_index_is_rebuilt_after_a_delete_so_deleted_keys_can_land_again(config: Config) -> None:
    spec = config.table("app.events")
    sink = Sink(config)
    sink.commit(spec, batch(["a", "b", "c"]), TYPES, {})
    tbl = sink.load(spec)
    assert tbl is not None
    tbl.delete("part_id == 'b'")  # a user's delete: not an append, so the index starts over
    out = sink.commit(spec, batch(["a", "b"]), TYPES, {})
    assert (out.committed, out.deduplicated) == (1, 1)
    assert table_keys(config) == Counter("abc")


# -- snapshot expiry -------------------------------------------------------------------------------------------
def test_commits_expire_snapshots_past_the_tables_own_history_properties(tmp_path: Path) -> None:
    # (With [maintain] enabled, flushes leave history to maintenance until it falls behind:
    # tests/iceberg/maintain/test_expire.py.)
    config = load_config(write_config(tmp_path, TABLE + "\n[maintain]\nenabled = false\n"))
    (config.spool_root / "app.events").mkdir(parents=True, exist_ok=True)
    spec = config.table("app.events")
    sink = Sink(config)
    for i in range(4):
        sink.commit(spec, batch([f"k{i}"]), TYPES, {})
    tbl = sink.load(spec)
    assert tbl is not None and len(tbl.snapshots()) == 4  # default: 5 days, nothing that old yet
    with tbl.transaction() as tx:  # the table's owner shortens its history
        tx.set_properties({"history.expire.max-snapshot-age-ms": "1", "history.expire.min-snapshots-to-keep": "2"})
    time.sleep(0.01)
    sink.commit(spec, batch(["k4"]), TYPES, {})
    tbl = sink.load(spec)
    assert tbl is not None and len(tbl.snapshots()) == 2  # the newest two kept, the head among them
    assert table_keys(config) == Counter(f"k{i}" for i in range(5))  # no data lost with the history
    sink2 = Sink(config)  # a fresh index is rebuilt from the current snapshot: the keys still dedupe
    assert sink2.commit(spec, batch(["k0", "k4"]), TYPES, {}).committed == 0


def test_tables_spoold_creates_drop_old_metadata_files_and_merge_manifests(config: Config) -> None:
    spec = config.table("app.events")
    sink = Sink(config)
    sink.commit(spec, batch(["m0"]), TYPES, {})
    tbl = sink.load(spec)
    assert tbl is not None and tbl.properties["write.metadata.delete-after-commit.enabled"] == "true"
    assert tbl.properties["write.metadata.previous-versions-max"] == "20"
    assert tbl.properties["commit.manifest.min-count-to-merge"] == "16"
    with tbl.transaction() as tx:
        tx.set_properties({"write.metadata.previous-versions-max": "2", "commit.manifest.min-count-to-merge": "3"})
    for i in range(1, 6):
        sink.commit(spec, batch([f"m{i}"]), TYPES, {})
    tbl = sink.load(spec)
    assert tbl is not None
    current = Path(tbl.metadata_location.removeprefix("file://"))
    assert len(list(current.parent.glob("*.metadata.json"))) == 3 and current.exists()  # current + the previous 2
    assert len(tbl.current_snapshot().manifests(tbl.io)) < 3  # type: ignore[union-attr]  # 6 commits, merged
    assert table_keys(config) == Counter(f"m{i}" for i in range(6))


def test_snapshot_expiry_can_be_switched_off(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, TABLE + "\n[flush]\nexpire_snapshots = false\n"))
    (cfg.spool_root / "app.events").mkdir(parents=True, exist_ok=True)
    spec = cfg.table("app.events")
    sink = Sink(cfg)
    sink.commit(spec, batch(["a"]), TYPES, {})
    tbl = sink.load(spec)
    assert tbl is not None
    with tbl.transaction() as tx:
        tx.set_properties({"history.expire.max-snapshot-age-ms": "1"})
    time.sleep(0.01)
    sink.commit(spec, batch(["b"]), TYPES, {})
    tbl = sink.load(spec)
    assert tbl is not None and len(tbl.snapshots()) == 2


def test_the_one_fake_fits_the_seam_contract() -> None:
    """tests/support's FakeSink has every TableSink member with the same parameters (and nothing the seam lacks)."""
    import inspect

    from support.fakesink import FakeSink

    from spoold.iceberg.sink import TableSink

    members = {n for n, v in vars(TableSink).items() if callable(v) and not n.startswith("_")}
    assert members == {"load", "verified", "pin", "index", "committed", "commit"}
    for name in members:
        assert list(inspect.signature(getattr(FakeSink, name)).parameters) == \
            list(inspect.signature(getattr(TableSink, name)).parameters), name
        assert callable(getattr(Sink, name))
