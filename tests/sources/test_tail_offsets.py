"""A tail offset file that cannot be read (issue 15): its source file is read again from the start.

(Stale offsets and a spool that refuses the tailer's append are covered in
test_tail_rotation.py and test_tail.py.) The reread is harmless: the rows'
keys settle it at flush; the tailer neither stops nor skips the other files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest
from support import tables

from spoold.config import SourceSpec
from spoold.layout import TAIL_DIR
from spoold.sources.tail import Tailer
from spoold.spool.spool import Spool

TABLE = "t.src"


def spooled_keys(spool: Spool) -> list[str]:
    return tables.spooled_keys(spool, TABLE)


def line(key: str) -> bytes:
    return orjson.dumps({"part_id": key}) + b"\n"


def drain(spool: Spool, src: Path) -> None:
    """A tailer as a (re)started daemon makes one, run until it has read everything."""
    t = Tailer(spool, [SourceSpec(TABLE, str(src / "*.jsonl"), "jsonl")])
    t.discover()
    while t.has_work():
        t.run_pass()


@pytest.mark.parametrize("garbage", [
    b"{not json", b'{"path": 1}', b"",
    b'{"path": "/x", "table": "t.src", "dev": 1, "ino": "not a number", "offset": 0, "lineno": 1}',
], ids=["not-json", "fields-missing", "empty", "bad-number"])
def test_a_corrupt_offset_file_means_reading_that_file_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    spool = Spool(tmp_path / "spool")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_bytes(line("a1") + line("a2"))
    (src / "b.jsonl").write_bytes(line("b1"))
    drain(spool, src)
    by_path = {orjson.loads(p.read_bytes())["path"]: p for p in (spool.root / TAIL_DIR).glob("*.json")}
    assert sorted(by_path) == [str(src / "a.jsonl"), str(src / "b.jsonl")]
    by_path[str(src / "a.jsonl")].write_bytes(garbage)  # e.g. a disk that lost the rename's data

    with caplog.at_level(logging.WARNING):
        drain(spool, src)  # a restarted daemon
    assert "unreadable" in caplog.text and "will be read from its start" in caplog.text
    assert sorted(spooled_keys(spool)) == ["a1", "a1", "a2", "a2", "b1"]  # a.jsonl again, b.jsonl not
    # and its offset is whole again: another restart reads nothing
    drain(spool, src)
    assert sorted(spooled_keys(spool)) == ["a1", "a1", "a2", "a2", "b1"]
    docs = [orjson.loads(p.read_bytes()) for p in (spool.root / TAIL_DIR).glob("*.json")]
    assert sorted((d["path"], d["offset"]) for d in docs) == [
        (str(src / "a.jsonl"), len(line("a1") + line("a2"))), (str(src / "b.jsonl"), len(line("b1")))]
