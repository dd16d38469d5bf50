"""The tailer against a full spool: the offset stays, the file waits without being re-read, and it reads on by
itself once a flush freed room."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from support import tables

from spoold.config import SourceSpec
from spoold.settings import SpoolLimits
from spoold.sources import tail as tail_module
from spoold.sources.tail import Tailer
from spoold.spool.spool import Spool

TABLE = "t.src"


def line(key: str) -> bytes:
    return orjson.dumps({"part_id": key, "text": "y" * 200}) + b"\n"


def spooled_keys(spool: Spool) -> list[str]:
    return tables.spooled_keys(spool, TABLE)


def drain(t: Tailer) -> None:
    while t.has_work():
        t.run_pass()


def test_a_full_spool_parks_the_file_at_its_offset_until_a_flush_frees_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    f = src / "a.jsonl"
    f.write_bytes(b"".join(line(f"a{i}") for i in range(8)))  # ~1.9 KB of rows
    spool = Spool(tmp_path / "spool", limits=SpoolLimits(max_bytes=4000))
    t = Tailer(spool, [SourceSpec(TABLE, str(src / "*.jsonl"), "jsonl")])
    assert t.max_bytes == 1000  # a pass is a quarter of max_bytes: it fits in an emptied spool
    t.discover()
    drain(t)
    assert spooled_keys(spool) == [f"a{i}" for i in range(8)]

    with open(f, "ab") as out:  # more than the room left
        out.write(b"".join(line(f"b{i}") for i in range(12)))
    t.on_change(str(f))
    drain(t)  # some passes fit, then the spool is full: the file is parked
    spooled = spooled_keys(spool)
    assert len(spooled) < 20 and spool.bounds.full(TABLE)
    assert not t.has_work()
    [lag] = t.lag()
    assert lag["lag_bytes"] > 0  # the source keeps the rows; the offset did not pass them

    reads = []
    real = tail_module.read_lines
    monkeypatch.setattr(tail_module, "read_lines", lambda *a, **k: reads.append(a) or real(*a, **k))
    with open(f, "ab") as out:
        out.write(line("c0"))
    t.on_change(str(f))  # the file grows while parked: not read again (it would only be refused again)
    t.discover()  # nor by the periodic rescan
    assert not t.has_work() and reads == []

    assert spool.rotate(TABLE) is not None
    flushed = spooled_keys(spool)
    spool.remove(spool.flush_files(TABLE))  # a flush committed them: room again
    assert t.has_work()  # at the next look, without any event
    drain(t)
    # Every source row once: those flushed, then the rest from where the offset had stopped.
    assert flushed + spooled_keys(spool) == [f"a{i}" for i in range(8)] + [f"b{i}" for i in range(12)] + ["c0"]
    assert t.lag()[0]["lag_bytes"] == 0
