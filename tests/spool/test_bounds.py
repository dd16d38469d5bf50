"""The spool's bounds ([spool] max_bytes, min_free_bytes) and all-or-nothing appends on a failing disk."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from spoold import durable
from spoold.config import ConfigError, parse_config
from spoold.envelope import envelopes
from spoold.errors import SpoolError, SpoolFull
from spoold.settings import SpoolLimits
from spoold.spool import spool as spool_module
from spoold.spool.bounds import AUTO_FREE_MAX, min_free
from spoold.spool.files import ACTIVE, flush_name, quarantine_record
from spoold.spool.spool import Spool

T = "t.events"


def rows(n: int, start: int = 0, pad: int = 100) -> list[dict[str, object]]:
    return [{"part_id": f"k{i}", "text": "x" * pad} for i in range(start, start + n)]


def envelope_size(n: int, start: int = 0) -> int:
    return sum(len(line) for line, _ in envelopes(rows(n, start)))


def pending(spool: Spool, table: str = T) -> bytes:
    """Every pending byte of ``table``, in order."""
    return b"".join(p.read_bytes() for p in spool.pending(table))


# --- config -----------------------------------------------------------------------------------


def test_limits_are_read_from_the_spool_section() -> None:
    cfg = parse_config({"spool": {"root": "/s", "max_bytes": 1000, "min_free_bytes": 0}})
    assert cfg.spool_limits == SpoolLimits(max_bytes=1000, min_free_bytes=0)
    assert parse_config({}).spool_limits == SpoolLimits()  # no per-table bound, the automatic free space
    assert Spool.from_config(cfg).bounds.limits.max_bytes == 1000


@pytest.mark.parametrize("spool", [{"max_bytes": -1}, {"min_free_bytes": -5}, {"max_bytes": "1G"},
                                   {"max_bytes": 1.5}, {"max_byte": 1}])
def test_bad_limits_are_refused_naming_the_key(spool: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"spool\.max_byte|spool\.min_free_bytes"):
        parse_config({"spool": spool})


def test_the_default_free_space_is_a_small_share_of_the_filesystem_capped() -> None:
    auto = SpoolLimits()
    assert min_free(auto, 1 << 30) == int((1 << 30) * 0.02)  # 1 GiB disk: ~20 MiB kept free
    assert min_free(auto, 1 << 40) == AUTO_FREE_MAX == 256 << 20  # 1 TiB disk: 256 MiB
    assert min_free(SpoolLimits(min_free_bytes=0), 1 << 40) == 0
    assert min_free(SpoolLimits(min_free_bytes=123), 1 << 40) == 123


# --- max_bytes --------------------------------------------------------------------------------


def test_an_append_that_would_cross_max_bytes_is_refused_whole(tmp_path: Path) -> None:
    limit = envelope_size(10) + envelope_size(10, 10) + envelope_size(10, 20) + 30  # ("at" varies in length)
    spool = Spool(tmp_path / "spool", limits=SpoolLimits(max_bytes=limit))
    spool.append(T, rows(10))
    spool.append(T, rows(10, 10))
    before = pending(spool)
    with pytest.raises(SpoolFull) as e:
        spool.append(T, rows(20, 20))
    assert e.value.retryable and isinstance(e.value, SpoolError)
    msg = str(e.value)
    assert msg.startswith("spool full:") and T in msg and str(len(before)) in msg and f"max_bytes = {limit}" in msg
    assert pending(spool) == before  # nothing of it was written
    assert spool.bounds.full(T)  # what this process last tried does not fit
    spool.append(T, rows(10, 20))  # what still fits goes in
    assert len(pending(spool)) <= limit


def test_flush_files_count_and_a_flush_frees_room(tmp_path: Path) -> None:
    size = envelope_size(10, 10)
    spool = Spool(tmp_path / "spool", limits=SpoolLimits(max_bytes=2 * size + 10))
    spool.append(T, rows(10))
    first = spool.rotate(T)
    spool.append(T, rows(10, 10))  # one flush file and active: at the limit now
    second = spool.rotate(T)
    assert first and second
    with pytest.raises(SpoolFull):
        spool.append(T, rows(10, 20))  # counted though nothing is in active.jsonl
    # Rotation and quarantine are never refused: a flush is what frees room.
    spool.quarantine(T, "q", [quarantine_record("test", ACTIVE, 1, b"raw")])
    assert spool.rotate(T) is None  # (nothing to rotate; it does not raise)
    spool.remove([first])  # a flush committed these rows
    assert not spool.bounds.full(T)
    spool.append(T, rows(10, 20))


def test_the_flush_files_total_is_listed_again_when_a_change_may_hide_in_the_same_mtime(tmp_path: Path) -> None:
    """Directory mtimes come from a coarse clock: two changes within one tick leave one mtime.

    A listing taken moments after the directory changed must not be trusted again on
    an unchanged mtime, or a flush file rotated in the same tick would go uncounted.
    """
    spool = Spool(tmp_path / "spool")
    d = spool.table_dir(T, create=True)
    (d / flush_name(1)).write_bytes(b"a" * 100)
    assert spool.bounds.rotated_bytes(T) == 100  # listed right after a change: not cached
    mtime = os.stat(d).st_mtime_ns
    (d / flush_name(2)).write_bytes(b"b" * 50)
    os.utime(d, ns=(mtime, mtime))  # the second change within the same tick of the coarse clock
    assert spool.bounds.rotated_bytes(T) == 150
    old = mtime - 10**9  # a directory untouched for a second is listed once, then trusted
    os.utime(d, ns=(old, old))
    assert spool.bounds.rotated_bytes(T) == 150
    (d / flush_name(2)).unlink()
    os.utime(d, ns=(old, old))
    assert spool.bounds.rotated_bytes(T) == 150  # the cache, as the mtime promised
    (d / flush_name(3)).write_bytes(b"c")  # any real change moves the mtime
    assert spool.bounds.rotated_bytes(T) == 101


def test_a_large_staged_append_is_bounded_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An append stream past STAGE_BYTES is staged in a file and published by rename: the same bounds apply,
    and it gives up as soon as what it staged cannot fit, leaving neither rows nor its temp file."""
    monkeypatch.setattr(spool_module, "STAGE_BYTES", 5_000)
    monkeypatch.setattr(spool_module, "READ_BLOCK", 5_000)
    spool = Spool(tmp_path / "spool", limits=SpoolLimits(max_bytes=60_000))
    spool.append(T, rows(10))
    before = pending(spool)
    produced = []

    def lines(n: int, start: int) -> Iterator[bytes]:
        for i in range(start, start + n):
            produced.append(i)
            yield from (line for line, _ in envelopes(rows(1, i)))

    with pytest.raises(SpoolFull, match=rf"spool full: .*table {T} .*max_bytes = 60000"):
        spool.append_stream(T, lines(2000, 100))  # ~250 KB
    assert pending(spool) == before
    assert len(produced) < 1000  # it stopped staging early
    assert not [p for p in spool.table_dir(T).iterdir() if p.name.endswith(".tmp")]
    real = Spool._rotate_locked

    def another_producer_first(self: Spool, table: str, d: Path) -> Path | None:
        with open(d / ACTIVE, "ab") as f:  # it appended while ours was staging, before we took the lock
            f.write(b"".join(line for line, _ in envelopes(rows(200, 9000))))
        return real(self, table, d)

    monkeypatch.setattr(Spool, "_rotate_locked", another_producer_first)
    with pytest.raises(SpoolFull):
        spool.append_stream(T, lines(300, 5000))  # ~37 KB: fitted while staged, not with the other's ~25 KB
    monkeypatch.setattr(Spool, "_rotate_locked", real)
    assert b"k5000" not in pending(spool) and b"k9000" in pending(spool)
    spool.remove(spool.flush_files(T))  # a flush
    spool.append_stream(T, lines(300, 5000))  # staged and published
    assert b"k5000" in pending(spool) and len(spool.flush_files(T)) == 1


# --- min_free_bytes -----------------------------------------------------------------------------


def test_an_append_that_would_leave_less_than_min_free_bytes_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    root.mkdir()
    fs = os.statvfs(root)
    free = fs.f_bavail * fs.f_frsize
    spool = Spool(root, limits=SpoolLimits(min_free_bytes=free + (1 << 30)))  # more than there is
    with pytest.raises(SpoolFull, match=rf"spool full: .* free .*table {T} .*min_free_bytes = \d+"):
        spool.append(T, rows(10))
    assert pending(spool) == b""
    assert spool.bounds.full(T)
    # a margin far above what other processes on this machine write meanwhile
    Spool(root, limits=SpoolLimits(min_free_bytes=max(0, free - (256 << 20)))).append(T, rows(10))


# --- a disk that fails ------------------------------------------------------------------------


def _failing_write(after: int, err: int = errno.ENOSPC) -> Callable[[int, object], int]:
    """os.write that writes ``after`` bytes in all (the last write short), then fails with ``err``."""
    left = [after]
    real = os.write

    def write(fd: int, data: object) -> int:
        if left[0] <= 0:
            raise OSError(err, os.strerror(err))
        view = memoryview(data)[: left[0]]  # type: ignore[arg-type]
        n = real(fd, view)
        left[0] -= n
        return n

    return write


@pytest.mark.parametrize("after", [0, 1, 150, 5000])
def test_enospc_mid_append_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 after: int) -> None:
    spool = Spool(tmp_path / "spool", limits=SpoolLimits(min_free_bytes=0))
    spool.append(T, rows(5))
    before = pending(spool)
    lines = [line for line, _ in envelopes(rows(100, 5))] + [line for line, _ in envelopes(rows(100, 105))]
    monkeypatch.setattr(durable.os, "write", _failing_write(after))
    with pytest.raises(SpoolFull, match=rf"spool full: no space left .* table {T}"):
        spool.append_lines(T, lines)
    monkeypatch.undo()
    assert pending(spool) == before  # cut back: not one complete line of the refused append
    spool.append(T, rows(1, 500))  # and the file goes on cleanly
    assert pending(spool).count(b"\n") == before.count(b"\n") + 1


def test_a_failed_fsync_cuts_the_append_back_and_is_not_spool_full(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append(T, rows(5))
    before = pending(spool)

    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(durable.os, "fsync", fsync)
    with pytest.raises(OSError) as e:
        spool.append(T, rows(5, 5))
    assert not isinstance(e.value, SpoolFull) and e.value.errno == errno.EIO
    monkeypatch.undo()
    assert pending(spool) == before


def test_write_atomic_removes_its_temp_file_when_the_disk_is_full(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "d" / "state.json"
    target.parent.mkdir()
    target.write_bytes(b"old")
    monkeypatch.setattr(durable.os, "write", _failing_write(3))
    with pytest.raises(OSError, match="No space"):
        durable.write_atomic(target, orjson.dumps({"big": "x" * 1000}))
    monkeypatch.undo()
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]
    assert target.read_bytes() == b"old"
