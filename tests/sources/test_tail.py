"""Live tailing into a real spool: complete lines only, durable offsets, truncation and replacement."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import orjson
import pytest
from support import tables

from spoold.config import SourceSpec
from spoold.layout import TAIL_DIR
from spoold.sources.tail import Tailer
from spoold.spool.files import iter_lines
from spoold.spool.spool import Spool

TABLE = "t.src"


def spooled_keys(spool: Spool, table: str = TABLE) -> list[str]:
    """Every key in the table's pending spool files, in order (duplicates kept)."""
    return tables.spooled_keys(spool, table)


def line(key: str, **extra: object) -> bytes:
    return orjson.dumps({"part_id": key, **extra}) + b"\n"


def tailer(spool: Spool, src: Path, pattern: str = "*.jsonl", fmt: str = "jsonl", **kw: int) -> Tailer:
    t = Tailer(spool, [SourceSpec(TABLE, str(src / pattern), fmt)], **kw)
    t.discover()
    return t


def drain(t: Tailer) -> dict[str, int]:
    total: dict[str, int] = {}
    while t.has_work():
        for k, v in t.run_pass().items():
            total[k] = total.get(k, 0) + v
    return total


def test_existing_lines_are_spooled_once(spool: Spool, src: Path) -> None:
    (src / "a.jsonl").write_bytes(line("a1") + line("a2"))
    t = tailer(spool, src)
    assert drain(t) == {TABLE: 2}
    assert spooled_keys(spool) == ["a1", "a2"]
    t.discover()  # nothing new: nothing appended
    assert drain(t) == {}
    assert spooled_keys(spool) == ["a1", "a2"]


def test_appended_lines_and_a_partial_line_waiting_for_its_newline(spool: Spool, src: Path) -> None:
    f = src / "a.jsonl"
    f.write_bytes(line("a1"))
    t = tailer(spool, src)
    drain(t)
    with open(f, "ab") as out:
        out.write(line("a2") + line("a3")[:7])  # a3 is half written
    assert t.on_change(str(f))
    drain(t)
    assert spooled_keys(spool) == ["a1", "a2"]
    with open(f, "ab") as out:
        out.write(line("a3")[7:])
    t.on_change(str(f))
    drain(t)
    assert spooled_keys(spool) == ["a1", "a2", "a3"]


def test_a_restart_resumes_from_the_saved_offset(spool: Spool, src: Path) -> None:
    f = src / "a.jsonl"
    f.write_bytes(line("a1") + line("a2"))
    drain(tailer(spool, src))
    with open(f, "ab") as out:
        out.write(line("a3"))
    drain(tailer(spool, src))  # a new process: offsets come from disk
    assert spooled_keys(spool) == ["a1", "a2", "a3"]
    assert len(list((spool.root / TAIL_DIR).glob("*.json"))) == 1


def test_truncated_file_is_read_again_from_the_start(spool: Spool, src: Path) -> None:
    f = src / "a.jsonl"
    f.write_bytes(line("a1") + line("a2"))
    t = tailer(spool, src)
    drain(t)
    f.write_bytes(line("b1"))  # truncated to fewer bytes than the offset
    t.on_change(str(f))
    drain(t)
    assert spooled_keys(spool) == ["a1", "a2", "b1"]


def test_file_rewritten_past_the_old_offset_is_noticed(spool: Spool, src: Path) -> None:
    f = src / "a.jsonl"
    f.write_bytes(line("a1"))
    drain(tailer(spool, src))
    # Truncated and rewritten longer while the daemon was down: same inode, size > offset.
    f.write_bytes(line("b1", pad="x" * 40) + line("b2"))
    drain(tailer(spool, src))
    assert spooled_keys(spool) == ["a1", "b1", "b2"]


def test_replaced_file_is_read_from_the_start(spool: Spool, src: Path) -> None:
    f = src / "a.jsonl"
    f.write_bytes(line("a1") + line("a2"))
    t = tailer(spool, src)
    drain(t)
    tmp = src / "a.jsonl.new"
    tmp.write_bytes(line("a1") + line("a2") + line("a3"))
    os.replace(tmp, f)  # a new inode at the same path
    t.on_change(str(f))
    drain(t)
    # a1 and a2 are spooled again (the keys make that harmless at flush); a3 is not missed.
    assert spooled_keys(spool) == ["a1", "a2", "a1", "a2", "a3"]


def test_files_that_appear_later_are_picked_up(spool: Spool, src: Path) -> None:
    t = tailer(spool, src, pattern="**/*.jsonl")
    assert drain(t) == {}
    (src / "proj").mkdir()
    new = src / "proj" / "s1.jsonl"
    new.write_bytes(line("n1"))
    hidden = src / ".hidden.jsonl"
    hidden.write_bytes(line("h1"))
    other = src / "notes.txt"
    other.write_bytes(line("o1"))
    assert t.on_change(str(new))
    assert not t.on_change(str(hidden))  # glob skips hidden names; so does tailing
    assert not t.on_change(str(other))
    drain(t)
    assert spooled_keys(spool) == ["n1"]
    # A file whose event was missed is found by the next discovery.
    (src / "proj" / "s2.jsonl").write_bytes(line("n2"))
    t.discover()
    drain(t)
    assert spooled_keys(spool) == ["n1", "n2"]


def test_a_directory_source_means_every_jsonl_under_it(spool: Spool, src: Path) -> None:
    (src / "d").mkdir()
    (src / "d" / "x.jsonl").write_bytes(line("x1"))
    (src / "top.jsonl").write_bytes(line("t1"))
    (src / "skip.txt").write_bytes(line("s1"))
    t = Tailer(spool, [SourceSpec(TABLE, str(src), "jsonl")])
    t.discover()
    drain(t)
    assert sorted(spooled_keys(spool)) == ["t1", "x1"]
    assert t.watch_paths() == [src]


def test_bad_lines_are_quarantined_and_logged_never_fatal(
    spool: Spool, src: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (src / "a.jsonl").write_bytes(line("a1") + b"{not json\n" + b"[1, 2]\n" + line("a2"))
    t = tailer(spool, src)
    with caplog.at_level(logging.WARNING, logger="spoold.sources.tail"):
        drain(t)
    assert spooled_keys(spool) == ["a1", "a2"]
    warnings = [r.getMessage() for r in caplog.records]
    assert any("line 2" in m and "not valid JSON" in m for m in warnings)
    assert len(warnings) == 1  # one read, one line of log
    recs = [orjson.loads(x) for q in (spool.root / TABLE / "quarantine").iterdir() for x in q.read_bytes().splitlines()]
    assert [(r["line"], r["raw"]) for r in recs] == [(2, "{not json"), (3, "[1, 2]")]
    assert all(r["file"] == str(src / "a.jsonl") for r in recs)


def test_transcript_lines_become_one_row_per_part(spool: Spool, src: Path) -> None:
    msg = {"type": "assistant", "uuid": "u1", "sessionId": "s", "timestamp": "2026-01-01T00:00:00Z",
           "message": {"role": "assistant", "content": [{"type": "text", "text": "hi"},
                                                        {"type": "tool_use", "name": "x"}]}}
    (src / "s.jsonl").write_bytes(orjson.dumps(msg) + b"\n" + orjson.dumps({"type": "system"}) + b"\n")
    drain(tailer(spool, src, fmt="transcript"))
    assert spooled_keys(spool) == ["u1:0", "u1:1"]


def test_offset_does_not_move_when_the_spool_append_fails(spool: Spool, src: Path) -> None:
    (src / "a.jsonl").write_bytes(line("a1"))
    spool.root.mkdir()
    (spool.root / TABLE).write_text("in the way")  # the table's spool directory cannot be made
    t = tailer(spool, src)
    drain(t)
    assert [orjson.loads(p.read_bytes())["offset"] for p in (spool.root / TAIL_DIR).iterdir()] == [0]
    (spool.root / TABLE).unlink()
    t.discover()  # the rescan retries the file
    drain(t)
    assert spooled_keys(spool) == ["a1"]


def test_work_per_pass_is_bounded(spool: Spool, src: Path) -> None:
    (src / "big.jsonl").write_bytes(b"".join(line(f"b{i}") for i in range(10)))
    (src / "small.jsonl").write_bytes(line("s0"))
    t = tailer(spool, src, max_lines=4)
    assert sum(t.run_pass().values()) == 4
    assert t.has_work()
    passes = 1
    while t.has_work():
        t.run_pass()
        passes += 1
    assert passes == 3
    assert sorted(spooled_keys(spool)) == sorted([f"b{i}" for i in range(10)] + ["s0"])


def test_lag_reports_unread_bytes_per_source(spool: Spool, src: Path) -> None:
    f = src / "a.jsonl"
    f.write_bytes(line("a1"))
    t = tailer(spool, src)
    drain(t)
    with open(f, "ab") as out:
        out.write(line("a2")[:-1])  # partial: not read yet
    t.on_change(str(f))
    drain(t)
    (lag,) = t.lag()
    assert lag["files"] == 1 and lag["offset_bytes"] == len(line("a1"))
    assert lag["lag_bytes"] == len(line("a2")) - 1


def test_deleted_file_is_forgotten_with_its_offset(spool: Spool, src: Path) -> None:
    f = src / "a.jsonl"
    f.write_bytes(line("a1"))
    t = tailer(spool, src)
    drain(t)
    f.unlink()
    t.on_change(str(f), deleted=True)
    drain(t)
    assert t.lag()[0]["files"] == 0
    assert not any((spool.root / TAIL_DIR).iterdir())
    shutil.rmtree(src)
    t.discover()  # a vanished source directory is not an error
    assert t.watch_paths() == []


def test_a_glob_reaching_into_the_spool_never_tails_it(spool: Spool, tmp_path: Path) -> None:
    spool.append("t.other", [{"part_id": "spooled"}])
    (tmp_path / "mine.jsonl").write_bytes(line("m1"))
    t = Tailer(spool, [SourceSpec(TABLE, str(tmp_path / "**" / "*.jsonl"), "jsonl")])
    t.discover()
    assert not t.on_change(str(spool.root / "t.other" / "active.jsonl"))
    drain(t)
    assert spooled_keys(spool) == ["m1"]
    assert t.lag()[0]["files"] == 1


def test_a_row_with_an_empty_column_name_is_skipped_not_blocking_the_file(tmp_path: Path) -> None:
    """One bad line must not hold back the lines after it (the offset moves past it)."""
    from spoold.spool.spool import Spool

    src = tmp_path / "src" / "a.jsonl"
    src.parent.mkdir()
    src.write_bytes(b'{"part_id": "a1"}\n{"": 1, "part_id": "bad"}\n{}\n{"part_id": "a3"}\n')
    spool = Spool(tmp_path / "spool")
    tailer = Tailer(spool, (SourceSpec("t.rows", str(src.parent / "*.jsonl"), "jsonl"),))
    tailer.discover()
    while tailer.has_work():
        tailer.run_pass()
    keys = []
    for path in spool.pending("t.rows"):
        for _, raw, _ in iter_lines(path):
            keys += [r[0] for r in orjson.loads(raw)["rows"]]
    assert keys == ["a1", "a3"]
