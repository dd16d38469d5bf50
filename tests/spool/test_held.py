"""Held spool files (spoold/spool/held.py) and what a commit's outcome makes of spool files (Keeper, verify.py).

No catalog here: the outcomes are built by hand, as the Sink returns them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.cli import write_config

from spoold.config import Config, load_config
from spoold.daemon.pending import Pending
from spoold.flush.verify import Keeper, recheck
from spoold.iceberg.sink import CommitOutcome, Sink
from spoold.spool import held
from spoold.spool.files import ACTIVE
from spoold.spool.spool import Spool

T = "app.events"


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(write_config(tmp_path, "[flush]\nverify_after_s = 30\n"))


def flush_file(spool: Spool, rows: int, tag: str = "r") -> Path:
    spool.append(T, [{"part_id": f"{tag}{i}", "at": i} for i in range(rows)])
    path = spool.rotate(T)
    assert path is not None
    return path


def out(snapshot: int, *, uuid: str = "u1", verified: bool = False, committed: int = 1) -> CommitOutcome:
    return CommitOutcome(committed, 0, snapshot, uuid, f"file:///m/{snapshot}.metadata.json", verified)


def test_a_verified_commit_deletes_its_files_an_unverified_one_holds_them(config: Config) -> None:
    spool = Spool.from_config(config)
    a, b = flush_file(spool, 3, "a"), flush_file(spool, 2, "b")
    keeper = Keeper(config, spool, T)
    keeper.commit_done([a.stem], [a], out(1, verified=True))
    assert not a.exists()
    before = time.time()
    keeper.commit_done([b.stem], [b], out(2))
    assert not b.exists() and spool.flush_files(T) == []
    ((path, rec),) = held.entries(spool, T)
    assert path.name == b.name and rec is not None
    assert rec.commits == (held.Commit("u1", 2, "file:///m/2.metadata.json"),)
    assert before + 30 <= rec.due <= time.time() + 30
    assert held.spooled(spool, T) == [path]  # still the spool's rows: status and backfill count them


def test_a_file_split_across_chunks_is_held_with_every_chunks_commit(config: Config) -> None:
    spool = Spool.from_config(config)
    f = flush_file(spool, 5)
    keeper = Keeper(config, spool, T)
    keeper.commit_done([f.stem], [], out(1, uuid="u1"))  # its first rows, in a table later replaced
    keeper.commit_done([f.stem], [f], out(2, uuid="u2"))
    ((_, rec),) = held.entries(spool, T)
    assert rec is not None and [(c.table_uuid, c.snapshot_id) for c in rec.commits] == [("u1", 1), ("u2", 2)]


def test_a_split_file_finished_once_the_table_is_verified_is_deleted_only_if_every_commit_was_there(
        config: Config) -> None:
    spool = Spool.from_config(config)
    f, g = flush_file(spool, 2, "f"), flush_file(spool, 2, "g")
    keeper = Keeper(config, spool, T)
    keeper.commit_done([f.stem, g.stem], [], out(1, uuid="u1"))
    keeper.commit_done([f.stem], [f], out(2, uuid="u1", verified=True))  # verified table, same one: trusted
    assert not f.exists() and held.entries(spool, T) == []
    keeper.commit_done([g.stem], [g], out(3, uuid="u2", verified=True))  # verified, but its first rows went elsewhere
    assert [p.name for p, _ in held.entries(spool, T)] == [g.name]


def test_requeue_puts_rows_back_where_flush_reads_them(config: Config) -> None:
    spool = Spool.from_config(config)
    f = flush_file(spool, 3)
    Keeper(config, spool, T).commit_done([f.stem], [f], out(1))
    copy = held.write_copy(spool, T, [{"part_id": "c0"}, {"part_id": "c1"}]).path  # a backfill's copy: no record
    entries = dict(held.entries(spool, T))
    assert entries[copy] is None and entries[spool.table_dir(T) / held.HELD / f.name] is not None
    for path in entries:
        held.requeue(spool, T, path)
    assert spool.flush_files(T) == [f]  # a held flush file goes back under its own name
    assert b'"c1"' in (spool.table_dir(T) / ACTIVE).read_bytes()  # a copy is appended for the next rotation
    assert held.entries(spool, T) == [] and list((spool.table_dir(T) / held.HELD).iterdir()) == []


def test_a_copy_whose_backfill_still_commits_it_is_left_alone_until_its_lock_is_dropped(config: Config) -> None:
    """A flush looking at held files while a backfill commits must not take that backfill's copy away
    (it re-queued it, and the backfill then failed holding a file that was gone)."""
    spool = Spool.from_config(config)
    copy = held.write_copy(spool, T, [{"part_id": "c0"}, {"part_id": "c1"}])
    assert Pending(spool).probe(T) == (None, 0)  # in flight: nothing for the scheduler either
    assert recheck(config, spool, Sink(config), T, now=time.time() + 10**6) == 0 and copy.path.exists()
    copy.close()  # its backfill died before the commit returned: the next look re-queues the rows
    assert Pending(spool).probe(T)[1] == 2
    assert recheck(config, spool, Sink(config), T) == 1 and not copy.path.exists()
    assert b'"c1"' in (spool.table_dir(T) / ACTIVE).read_bytes()


def test_the_daemon_counts_held_files_as_pending_only_once_their_look_is_due(config: Config) -> None:
    spool = Spool.from_config(config)
    f = flush_file(spool, 4)
    Keeper(config, spool, T).commit_done([f.stem], [f], out(1))
    pending = Pending(spool)
    assert pending.probe(T) == (None, 0)  # held, not due: nothing for the scheduler
    ((path, rec),) = held.entries(spool, T)
    assert rec is not None
    held.postpone(path, rec, time.time() - 1, None)
    first, rows = pending.probe(T)
    assert first is not None and rows > 0  # due: the table is flushed, and the flush looks


def test_a_damaged_record_makes_its_file_due_and_re_queued(config: Config) -> None:
    spool = Spool.from_config(config)
    f = flush_file(spool, 1)
    Keeper(config, spool, T).commit_done([f.stem], [f], out(1))
    ((path, _),) = held.entries(spool, T)
    path.with_suffix(".json").write_bytes(b"{not json")
    assert held.entries(spool, T) == [(path, None)]
    assert held.due(spool, T, 0.0) == [path]
