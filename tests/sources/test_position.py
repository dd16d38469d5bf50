"""The durable per-file position shared by tailing offsets and backfill cursors: is it still the same file?"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from spoold.sources.position import HEAD_BYTES, TAIL_BYTES, Position, PositionStore


@contextmanager
def opened(path: Path) -> Iterator[tuple[int, os.stat_result]]:
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd, os.fstat(fd)
    finally:
        os.close(fd)


def taken(path: Path, offset: int) -> Position:
    with opened(path) as (fd, st):
        pos = Position(str(path), st.st_dev, st.st_ino)
        pos.move(fd, st, offset, 7)
    return pos


def same(path: Path, pos: Position) -> bool:
    with opened(path) as (fd, st):
        return pos.same_file(fd, st)


def rewrite(path: Path, at: int, data: bytes) -> None:
    """Overwrite bytes in place: the same inode and the same size."""
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


@pytest.mark.parametrize("size", [100, HEAD_BYTES + TAIL_BYTES // 2, 10 * HEAD_BYTES])
def test_appends_keep_it_the_same_file(tmp_path: Path, size: int) -> None:
    f = tmp_path / "f"
    f.write_bytes(os.urandom(size))
    pos = taken(f, size)
    with open(f, "ab") as out:
        out.write(b"more")
    assert same(f, pos)


@pytest.mark.parametrize(("size", "at"), [
    (100, 0),  # a small file: its whole prefix counts
    (100, 50),
    (10 * HEAD_BYTES, 0),  # the head of a large file
    (10 * HEAD_BYTES, HEAD_BYTES - 1),
    (10 * HEAD_BYTES, 10 * HEAD_BYTES - 1),  # the bytes just before the offset
    (10 * HEAD_BYTES, 10 * HEAD_BYTES - TAIL_BYTES),
])
def test_a_same_size_change_before_the_offset_is_seen(tmp_path: Path, size: int, at: int) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"a" * size)
    pos = taken(f, size)
    rewrite(f, at, b"b")
    assert not same(f, pos)


def test_a_change_past_the_offset_is_not_a_rewrite(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"a" * 1000)
    pos = taken(f, 600)
    rewrite(f, 700, b"b")
    assert same(f, pos)


def test_shrunk_or_replaced_is_not_the_same_file(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"a" * 1000)
    pos = taken(f, 1000)
    with open(f, "r+b") as out:
        out.truncate(999)
    assert not same(f, pos)
    g = tmp_path / "g"
    g.write_bytes(b"a" * 1000)
    g.replace(f)  # the same bytes, another inode
    assert not same(f, pos)
    with opened(f) as (fd, st):
        assert pos.prefix_matches(fd, st.st_size)  # what a copytruncate copy is recognized by


def test_moving_along_a_large_file_rehashes_only_what_it_must(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(os.urandom(4 * HEAD_BYTES))
    pos = taken(f, HEAD_BYTES // 2)
    for offset in (HEAD_BYTES, 2 * HEAD_BYTES + 5, 4 * HEAD_BYTES):
        with opened(f) as (fd, st):
            assert pos.same_file(fd, st)
            pos.move(fd, st, offset, 1)
        assert pos.to_doc() == taken(f, offset).to_doc() | {"lineno": 1}


def test_the_store_publishes_and_forgets(tmp_path: Path) -> None:
    store = PositionStore(tmp_path / "positions")
    assert store.load() == {}
    pos = Position("/x", 1, 2, 30, 4, 1, 30, "h", "")
    store.save("k1", pos, table="t.x")
    (tmp_path / "positions" / "broken.json").write_bytes(b"{not json")
    docs = store.load()
    assert list(docs) == ["k1"] and Position.from_doc(docs["k1"]) == pos and docs["k1"]["table"] == "t.x"
    store.delete("k1")
    store.delete("k1")  # twice is fine
    assert store.load() == {}
    assert oct((tmp_path / "positions").stat().st_mode & 0o777) == "0o700"
