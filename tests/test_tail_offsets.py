"""The tailer's saved offsets when they are wrong (issue 15): corrupt, stale, or not writable.

A corrupt offset file makes its source file be read again from the start
(keys make that harmless) and never stops the tailer; the offset of a file
that vanished while no daemon ran is deleted; a spool that refuses an append
leaves the offset where it was, so the lines are read again.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import orjson
import pytest

from spoold.config import SourceSpec
from spoold.envelope import parse_envelope
from spoold.errors import SpoolFull
from spoold.sources.tail import OFFSETS_DIR, Tailer
from spoold.spool import Spool, iter_lines

TABLE = "t.src"


def spooled_keys(spool: Spool) -> list[str]:
    keys = []
    for path in spool.pending(TABLE):
        for _, raw, terminated in iter_lines(path):
            env, err = parse_envelope(raw, terminated)
            assert err is None, err
            keys += [row[env["columns"].index("part_id")] for row in env["rows"]]
    return keys


def line(key: str) -> bytes:
    return orjson.dumps({"part_id": key}) + b"\n"


def tailer(spool: Spool, src: Path) -> Tailer:
    t = Tailer(spool, [SourceSpec(TABLE, str(src / "*.jsonl"), "jsonl")])
    t.discover()
    return t


def drain(t: Tailer) -> None:
    while t.has_work():
        t.run_pass()


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    return d


@pytest.mark.parametrize("garbage", [b"{not json", b'{"path": 1}', b'{"path": "/x", "table": "t.src", "dev": 1, '
                                     b'"ino": "not a number", "offset": 0, "lineno": 1}', b""])
def test_a_corrupt_offset_file_means_reading_that_file_again(
    spool: Spool, src: Path, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    (src / "a.jsonl").write_bytes(line("a1") + line("a2"))
    (src / "b.jsonl").write_bytes(line("b1"))
    drain(tailer(spool, src))
    offsets = sorted((spool.root / OFFSETS_DIR).glob("*.json"))
    assert len(offsets) == 2
    by_path = {orjson.loads(p.read_bytes())["path"]: p for p in offsets}
    by_path[str(src / "a.jsonl")].write_bytes(garbage)  # e.g. a disk that lost the rename's data

    with caplog.at_level(logging.WARNING, logger="spoold.sources.tail"):
        t = tailer(spool, src)  # a restarted daemon
        drain(t)
    assert "unreadable" in caplog.text and "that file will be re-read" in caplog.text
    assert sorted(spooled_keys(spool)) == ["a1", "a1", "a2", "a2", "b1"]  # a.jsonl again, b.jsonl not
    # and the offset is whole again: another restart reads nothing
    drain(tailer(spool, src))
    assert sorted(spooled_keys(spool)) == ["a1", "a1", "a2", "a2", "b1"]
    assert orjson.loads(by_path[str(src / "a.jsonl")].read_bytes())["offset"] == len(line("a1") + line("a2"))


def test_the_offset_of_a_file_gone_while_no_daemon_ran_is_deleted(spool: Spool, src: Path) -> None:
    (src / "a.jsonl").write_bytes(line("a1"))
    (src / "b.jsonl").write_bytes(line("b1"))
    drain(tailer(spool, src))
    offsets = spool.root / OFFSETS_DIR
    assert len(list(offsets.glob("*.json"))) == 2
    (src / "a.jsonl").unlink()  # while no daemon runs

    drain(tailer(spool, src))
    (left,) = offsets.glob("*.json")
    assert orjson.loads(left.read_bytes())["path"] == str(src / "b.jsonl")
    # A file of that name made later is new: read from its start, not from the old offset.
    (src / "a.jsonl").write_bytes(line("a2") + line("a3"))
    drain(tailer(spool, src))
    assert sorted(spooled_keys(spool)) == ["a1", "a2", "a3", "b1"]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), SpoolFull("spool full")])
def test_a_refused_append_keeps_the_offset_and_the_lines_are_read_again(
    spool: Spool, src: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    (src / "a.jsonl").write_bytes(line("a1"))
    t = tailer(spool, src)
    drain(t)
    with open(src / "a.jsonl", "ab") as f:
        f.write(line("a2"))

    def refuse(*args: object, **kwargs: object) -> None:
        raise error

    with monkeypatch.context() as m:
        m.setattr(spool, "append", refuse)
        assert t.on_change(str(src / "a.jsonl"))
        assert t.run_pass() == {}
    assert spooled_keys(spool) == ["a1"]
    assert t.on_change(str(src / "a.jsonl"))  # the next change event (or rescan) tries again
    drain(t)
    assert spooled_keys(spool) == ["a1", "a2"]
