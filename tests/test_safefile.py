"""spoold.safefile: spool files are opened without following links and only when they are what spoold made."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spoold.durable import write_atomic
from spoold.layout import temp_name
from spoold.locks import FileLocks
from spoold.safefile import UnsafeFile, open_file, private_dir, read_file
from spoold.spool.files import iter_lines
from spoold.spool.spool import Spool


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    p = tmp_path / "outside"
    p.write_bytes(b"not the spool's\n")
    return p


def test_a_symbolic_link_is_refused_naming_it(tmp_path: Path, outside: Path) -> None:
    link = tmp_path / "flush-00000000000000000001.jsonl"
    link.symlink_to(outside)
    with pytest.raises(UnsafeFile, match=f"{link}: is a symbolic link"):
        open_file(link)
    with pytest.raises(UnsafeFile, match="symbolic link"):
        list(iter_lines(link))
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UnsafeFile, match="symbolic link"):  # O_CREAT does not create through it either
        open_file(tmp_path / "dangling", os.O_RDWR | os.O_CREAT)
    assert not (tmp_path / "nowhere").exists()


def test_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "active.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeFile, match="not a regular file"):
        open_file(fifo)
    with pytest.raises(UnsafeFile, match="not a regular file"):
        open_file(fifo, os.O_RDWR | os.O_APPEND)


def test_a_hard_link_and_a_directory_are_refused(tmp_path: Path, outside: Path) -> None:
    os.link(outside, tmp_path / "linked")
    with pytest.raises(UnsafeFile, match="has 2 hard links"):
        open_file(tmp_path / "linked")
    (tmp_path / "d").mkdir()
    with pytest.raises(UnsafeFile, match="not a regular file"):
        open_file(tmp_path / "d")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file another user's")
def test_a_file_of_another_user_is_refused_where_an_owner_is_expected(tmp_path: Path) -> None:
    p = tmp_path / "offset.json"
    p.write_bytes(b"{}")
    os.chown(p, 65534, -1)
    with pytest.raises(UnsafeFile, match="owned by uid 65534, not 0"):
        read_file(p, owner=0)
    assert read_file(p) == b"{}"  # a file producers may create: no owner expected


def test_a_regular_file_opens_blocking(tmp_path: Path) -> None:
    p = tmp_path / "f"
    fd = open_file(p, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert os.get_blocking(fd)  # O_NONBLOCK was for the open only
    finally:
        os.close(fd)


def test_temp_names_cannot_be_guessed() -> None:
    names = {temp_name("active.jsonl") for _ in range(100)}
    assert len(names) == 100 and all(n.startswith(".active.jsonl.") and n.endswith(".tmp") for n in names)


def test_publishing_replaces_a_planted_link_and_never_writes_through_it(tmp_path: Path, outside: Path) -> None:
    target = tmp_path / ".daemon.json"
    target.symlink_to(outside)
    write_atomic(target, b"{}")
    assert outside.read_bytes() == b"not the spool's\n"
    assert not target.is_symlink() and target.read_bytes() == b"{}"


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_untouched(tmp_path: Path, outside: Path) -> None:
    outside.chmod(0o600)
    (tmp_path / ".lock").symlink_to(outside)
    locks = FileLocks(0o660, lambda fd: os.fchmod(fd, 0o660))
    with pytest.raises(UnsafeFile, match="symbolic link"), locks.hold(tmp_path / ".lock"):
        pass
    assert outside.stat().st_mode & 0o777 == 0o600


def test_a_planted_flush_link_is_moved_aside_and_never_read(tmp_path: Path, outside: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append("t.x", [{"part_id": "a"}])
    link = spool.table_dir("t.x") / "flush-00000000000000000007.jsonl"
    link.symlink_to(outside)
    assert spool.flush_files("t.x") == []
    assert not link.is_symlink()
    assert [p.name for p in spool.table_dir("t.x").iterdir() if p.name.startswith(".refused-flush-")]


def test_a_planted_active_link_is_moved_aside_and_appends_go_on(tmp_path: Path, outside: Path) -> None:
    spool = Spool(tmp_path / "spool")
    d = spool.table_dir("t.x", create=True)
    (d / "active.jsonl").symlink_to(outside)
    spool.append("t.x", [{"part_id": "a"}])
    assert outside.read_bytes() == b"not the spool's\n"
    assert not (d / "active.jsonl").is_symlink() and b'"a"' in (d / "active.jsonl").read_bytes()


def test_private_dir_replaces_a_planted_link_and_tightens_its_own(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / ".tail").symlink_to(elsewhere)
    notes = private_dir(tmp_path / ".tail")
    assert notes and "symbolic link" in notes[0]
    assert (tmp_path / ".tail").is_dir() and not (tmp_path / ".tail").is_symlink()
    (tmp_path / ".backfill").mkdir(mode=0o770)
    os.chmod(tmp_path / ".backfill", 0o770)
    assert private_dir(tmp_path / ".backfill") == []
    assert (tmp_path / ".backfill").stat().st_mode & 0o777 == 0o700
