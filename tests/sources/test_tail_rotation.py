"""Tailing that survives rotation, rewrites and bad lines (issue 13: items 1, 6, 7, 8).

Each rotation is done as logrotate does it: a rename and a new file (its
default, ``create``), or a copy and a truncate (``copytruncate``), both while
the tailer runs (one Tailer) and while it is stopped (a new Tailer reading the
offsets from disk). Every line must be spooled; nothing may be missed.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections import Counter
from pathlib import Path

import orjson
import pytest
from support.tables import spooled_keys

from spoold.config import SourceSpec
from spoold.layout import TAIL_DIR
from spoold.sources import reader
from spoold.sources.position import HEAD_BYTES, file_key
from spoold.sources.tail import Tailer
from spoold.spool.files import QUARANTINE
from spoold.spool.spool import Spool

TABLE = "t.src"


def spooled(spool: Spool, table: str = TABLE) -> list[str]:
    return spooled_keys(spool, table)


def quarantined(spool: Spool) -> list[dict]:
    qdir = spool.root / TABLE / QUARANTINE
    return [orjson.loads(line) for q in sorted(qdir.glob("*.jsonl")) for line in q.read_bytes().splitlines()]


def line(key: str, **extra: object) -> bytes:
    return orjson.dumps({"part_id": key, **extra}) + b"\n"


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def tailer(spool: Spool, pattern: str, fmt: str = "jsonl", **kw: float) -> Tailer:
    t = Tailer(spool, [SourceSpec(TABLE, pattern, fmt)], **kw)  # type: ignore[arg-type]
    t.discover()
    return t


def drain(t: Tailer, *changed: Path) -> None:
    for p in changed:
        t.on_change(str(p))
    while t.has_work():
        t.run_pass()


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def saved_offsets(spool: Spool) -> list[int]:
    return [orjson.loads(p.read_bytes())["offset"] for p in offsets(spool)]


def offsets(spool: Spool) -> list[Path]:
    d = spool.root / TAIL_DIR
    return sorted(d.glob("*.json")) if d.is_dir() else []


# -- rename and create (logrotate's default) -------------------------------------------------


def test_rename_while_running_reads_the_old_inode_to_its_end(spool: Spool, src: Path) -> None:
    app, old = src / "app.jsonl", src / "app.jsonl.0"
    app.write_bytes(line("a1"))
    t = tailer(spool, str(src / "*.jsonl"))
    drain(t)
    producer = open(app, "ab")  # noqa: SIM115 - a producer keeps its descriptor across the rename
    producer.write(line("a2") + line("a3"))
    producer.flush()
    os.rename(app, old)
    app.write_bytes(line("b1"))
    producer.write(line("a4"))  # a late write through the old descriptor
    producer.close()
    drain(t, app, old)
    assert Counter(spooled(spool)) == Counter(["a1", "a2", "a3", "a4", "b1"])
    append(old, line("a5"))  # still followed under its new name while it is not quiet
    drain(t, old)
    assert spooled(spool).count("a5") == 1


def test_a_quiet_rotated_file_is_forgotten_with_its_offset(spool: Spool, src: Path) -> None:
    app = src / "app.jsonl"
    app.write_bytes(line("a1"))
    t = tailer(spool, str(src / "*.jsonl"), rotated_quiet_s=0)
    drain(t)
    append(app, line("a2") + line("a3")[:-1])  # the last line's newline never came
    os.rename(app, src / "app.jsonl.0")
    app.write_bytes(b"")
    drain(t, app)
    t.discover()
    drain(t)
    # The rotated file is finished, so its unterminated last line counts too.
    assert sorted(spooled(spool)) == ["a1", "a2", "a3"]
    assert t.lag()[0]["files"] == 1 and len(offsets(spool)) == 1  # only app.jsonl's own


@pytest.mark.parametrize("rotations", [1, 2])
def test_rename_while_stopped_is_found_by_inode_at_start(spool: Spool, src: Path, rotations: int) -> None:
    app = src / "app.jsonl"
    app.write_bytes(line("a1"))
    drain(tailer(spool, str(src / "*.jsonl")))
    append(app, line("a2"))
    for r in range(rotations):  # app.jsonl → .0 → .1 ...
        for k in range(r, 0, -1):
            os.rename(src / f"app.jsonl.{k - 1}", src / f"app.jsonl.{k}")
        os.rename(app, src / "app.jsonl.0")
        app.write_bytes(b"")
    append(app, line("n1"))
    drain(tailer(spool, str(src / "*.jsonl")))  # a new process: offsets from disk
    assert Counter(spooled(spool)) == Counter(["a1", "a2", "n1"])


def test_repeated_rotations_capture_every_line_once(spool: Spool, src: Path) -> None:
    app, first, second = src / "app.jsonl", src / "app.jsonl.0", src / "app.jsonl.1"
    app.write_bytes(b"")
    t = tailer(spool, str(src / "*.jsonl"), rotated_quiet_s=0)
    expected = []
    for r in range(8):
        keys = [f"r{r}-{i}" for i in range(3)]
        expected += keys
        append(app, line(keys[0]) + line(keys[1]))
        if r % 2:
            drain(t, app)  # sometimes read before the rotation, sometimes not
        if second.exists() and r % 3 == 0:
            second.unlink()
        if first.exists():
            os.rename(first, second)
        os.rename(app, first)
        append(first, line(keys[2]))  # a late write through the old descriptor
        app.write_bytes(b"")
        if r % 3 == 2:
            t = tailer(spool, str(src / "*.jsonl"), rotated_quiet_s=0)  # stopped during the rotation
        drain(t, app, first)
    t.discover()
    drain(t)
    got = Counter(spooled(spool))
    assert set(got) == set(expected) and max(got.values()) == 1, got


# -- copytruncate -----------------------------------------------------------------------------


@pytest.mark.parametrize("stopped", [False, True])
def test_copytruncate_reads_the_rest_from_the_copy(spool: Spool, src: Path, stopped: bool) -> None:
    app = src / "app.jsonl"
    app.write_bytes(line("a1") + line("a2"))
    t = tailer(spool, str(src / "*.jsonl"))
    drain(t)
    append(app, line("a3") + line("a4"))  # not read yet
    shutil.copyfile(app, src / "app.jsonl.1")
    with open(app, "r+b") as f:
        f.truncate(0)
    append(app, line("b1"))
    if stopped:
        t = tailer(spool, str(src / "*.jsonl"))
    drain(t, app)
    assert Counter(spooled(spool)) == Counter(["a1", "a2", "a3", "a4", "b1"])


def test_copytruncate_onto_the_copy_of_the_last_rotation(spool: Spool, src: Path) -> None:
    """cp writes over the last copy in place (same inode): it is a new copy all the same."""
    app, copy = src / "app.jsonl", src / "app.jsonl.1"

    def copytruncate(then: bytes) -> None:
        shutil.copyfile(app, copy)
        with open(app, "r+b") as f:
            f.truncate(0)
        append(app, then)

    app.write_bytes(line("a1"))
    t = tailer(spool, str(src / "*.jsonl"))
    drain(t)
    append(app, line("a2"))
    copytruncate(line("b1"))
    drain(t, app)
    append(app, line("b2"))  # spoold is stopped from here
    copytruncate(line("c1"))
    drain(tailer(spool, str(src / "*.jsonl")))
    assert Counter(spooled(spool)) == Counter(["a1", "a2", "b1", "b2", "c1"])


def test_copytruncate_with_the_new_file_already_longer_than_the_offset(spool: Spool, src: Path) -> None:
    app = src / "app.jsonl"
    app.write_bytes(line("a1"))
    t = tailer(spool, str(src / "*.jsonl"))
    drain(t)
    append(app, line("a2"))
    shutil.copyfile(app, src / "app.jsonl-20260101")
    app.write_bytes(line("b1", pad="x" * 50) + line("b2"))  # truncated, then outgrew the old offset
    drain(t, app)
    assert sorted(spooled(spool)) == ["a1", "a2", "b1", "b2"]


# -- rewrites the old 64-byte check missed ------------------------------------------------------


@pytest.mark.parametrize("size", [200, 3 * HEAD_BYTES])
def test_same_size_rewrite_of_the_first_line_is_read_again(spool: Spool, src: Path, size: int) -> None:
    f = src / "a.jsonl"
    footer = line("footer", pad="f" * 40)
    body = b"".join(line(f"m{i:05d}") for i in range(size // 20))
    f.write_bytes(line("old01") + body + footer)
    t = tailer(spool, str(src / "*.jsonl"))
    drain(t)
    f.write_bytes(line("new01") + body + footer)  # same size, same last bytes, same inode
    drain(t, f)
    assert "new01" in spooled(spool)
    drain(tailer(spool, str(src / "*.jsonl")))  # and nothing more on a restart
    assert spooled(spool).count("new01") == 1


# -- symlinks ---------------------------------------------------------------------------------


def test_a_symlinked_source_is_watched_at_its_target(spool: Spool, src: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "real.log"
    target.write_bytes(line("s1"))
    (src / "link.jsonl").symlink_to(target)
    t = Tailer(spool, [SourceSpec(TABLE, str(src / "*.jsonl"), "jsonl", follow_symlinks_outside=True)])
    t.discover()
    assert t.watch_paths() == sorted([src, elsewhere])
    drain(t)
    append(target, line("s2"))
    assert t.covers(str(target)) and t.on_change(str(target))  # the event the target's directory reports
    drain(t)
    assert spooled(spool) == ["s1", "s2"]


# -- poison lines (item 1) ----------------------------------------------------------------------


@pytest.mark.parametrize("levels", [252, 300, 1000])
def test_a_deeply_nested_jsonl_line_is_quarantined_and_tailing_goes_on(spool: Spool, src: Path, levels: int) -> None:
    f = src / "a.jsonl"
    bad = b'{"part_id": "deep", "v": ' + deep(levels).encode() + b"}\n"
    f.write_bytes(line("a1") + bad + line("a2"))
    t = tailer(spool, str(src / "*.jsonl"))
    drain(t)
    append(f, line("a3"))
    drain(t, f)
    assert spooled(spool) == ["a1", "a2", "a3"]
    (rec,) = quarantined(spool)
    assert (rec["file"], rec["line"], rec["source"]) == (str(f), 2, "tail")
    assert (rec["kind"], rec["format"]) == ("source", "jsonl")  # what `spoold quarantine replay` reads again
    assert "nested too deeply" in rec["reason"] and rec["raw"].encode() == bad[:-1]


def test_a_deeply_nested_transcript_tool_use_is_quarantined(spool: Spool, src: Path) -> None:
    def message(uuid: str, part: object) -> bytes:
        return orjson.dumps({"type": "assistant", "uuid": uuid, "sessionId": "s", "timestamp": "2026-01-01T00:00:00Z",
                             "message": {"role": "assistant", "content": [part]}}) + b"\n"

    tool = {"type": "tool_use", "name": "x", "input": orjson.loads(deep(300))}
    f = src / "s.jsonl"
    raw = message("u2", {"type": "tool_use", "name": "x", "input": None}).replace(b"null", deep(300).encode())
    f.write_bytes(message("u1", {"type": "text", "text": "hi"}) + raw + message("u3", {"type": "text", "text": "yo"}))
    assert tool["input"]
    drain(tailer(spool, str(src / "*.jsonl"), "transcript"))
    assert spooled(spool) == ["u1:0", "u3:0"]
    (rec,) = quarantined(spool)
    assert rec["line"] == 2 and "nested too deeply" in rec["reason"]


def test_anything_a_reader_raises_quarantines_that_line_only(
    spool: Spool, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = reader._MATERIALIZERS["jsonl"]

    def buggy(raw: bytes) -> list[dict[str, object]]:
        if b"boom" in raw:
            raise RuntimeError("a bug in a reader")
        return plain(raw)

    monkeypatch.setitem(reader._MATERIALIZERS, "jsonl", buggy)
    (src / "a.jsonl").write_bytes(line("a1") + line("boom") + b"{not json\n" + line("a2"))
    drain(tailer(spool, str(src / "*.jsonl")))
    assert spooled(spool) == ["a1", "a2"]
    reasons = {r["line"]: r["reason"] for r in quarantined(spool)}
    assert set(reasons) == {2, 3} and "RuntimeError: a bug in a reader" in reasons[2]


def test_a_failing_spool_disk_keeps_the_offset_and_retries(
    spool: Spool, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error of the spool (not a full spool, which parks the file: test_tail_full.py)."""
    f = src / "a.jsonl"
    f.write_bytes(line("a1") + b'{"part_id": "q", "v": ' + deep(300).encode() + b"}\n")
    t = tailer(spool, str(src / "*.jsonl"))
    real = Spool.append_lines
    monkeypatch.setattr(Spool, "append_lines", lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    t.run_pass()
    assert saved_offsets(spool) == [0] and not t.has_work()  # not moved; waiting out the backoff
    monkeypatch.setattr(Spool, "append_lines", real)
    t._retry = dict.fromkeys(t._retry, 0.0)  # the backoff is over
    assert t.has_work()
    drain(t)
    assert spooled(spool) == ["a1"] and len(quarantined(spool)) == 1  # the retry replaced, not doubled, it


# -- offsets on disk ------------------------------------------------------------------------------


def test_stale_offsets_are_pruned(spool: Spool, src: Path, tmp_path: Path) -> None:
    (src / "a.jsonl").write_bytes(line("a1"))
    (src / "b.jsonl").write_bytes(line("b1"))
    drain(tailer(spool, str(src / "*.jsonl")))
    assert len(offsets(spool)) == 2
    (src / "b.jsonl").unlink()  # gone while stopped
    drain(tailer(spool, str(src / "*.jsonl")))
    assert len(offsets(spool)) == 1
    other = tmp_path / "other"
    other.mkdir()
    tailer(spool, str(other / "*.jsonl"))  # the old source is no longer configured
    assert offsets(spool) == []


def test_offsets_of_an_older_spoold_are_kept(spool: Spool, src: Path) -> None:
    f = src / "a.jsonl"
    f.write_bytes(line("a1") + line("a2"))
    st = f.stat()
    old_key = file_key(TABLE, str(f))  # the old name: a hash of table and path
    (spool.root / TAIL_DIR).mkdir(parents=True)
    doc = {"path": str(f), "table": TABLE, "dev": st.st_dev, "ino": st.st_ino, "offset": len(line("a1")),
           "lineno": 2, "check": "0123456789abcdef", "at": 0}
    (spool.root / TAIL_DIR / f"{old_key}.json").write_bytes(orjson.dumps(doc))
    drain(tailer(spool, str(src / "*.jsonl")))
    assert spooled(spool) == ["a2"]
    assert [p.stem for p in offsets(spool)] == [file_key(TABLE, st.st_dev, st.st_ino)]
