"""The on-disk spool: durable appends, atomic rotation, torn tails, permissions, concurrency, crashes."""

from __future__ import annotations

import base64
import grp
import hashlib
import multiprocessing
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.daemonproc import wait_for

from spoold.config import TableSpec
from spoold.envelope import MAX_ENVELOPE_ROWS, Validator, encode
from spoold.errors import SpoolError, UsageError
from spoold.settings import SpoolLimits
from spoold.spool.files import ACTIVE, QUARANTINE, iter_lines, quarantine_record, read_validated
from spoold.spool.spool import Spool, write_atomic

T = "t.events"


@pytest.fixture
def umask022() -> Iterator[None]:
    """A common umask, so modes prove spoold sets them rather than inheriting them."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def spooled(spool: Spool, table: str = T) -> tuple[list[str], list[Path]]:
    """Every key in the pending files, read with THE rules; asserts no line or row is bad."""
    keys: list[str] = []
    files = spool.pending(table)
    v = Validator(TableSpec(table))
    for path in files:
        for lineno, _, verdict in read_validated(path, v):
            assert verdict.error is None, f"{path.name}:{lineno}: {verdict.error}"
            assert not verdict.rejects, f"{path.name}:{lineno}: {verdict.rejects[0].reason}"
            keys.extend(verdict.keys)
        assert path.read_bytes().endswith(b"\n"), f"{path.name} has a torn tail"
    return keys, files


def quarantined(spool: Spool, table: str = T) -> list[dict[str, Any]]:
    qdir = spool.table_dir(table) / QUARANTINE
    if not qdir.is_dir():
        return []
    return [orjson.loads(line) for q in sorted(qdir.iterdir()) for line in q.read_bytes().splitlines()]


def rows(prefix: str, n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"part_id": f"{prefix}{i}", "n": i, **extra} for i in range(n)]


# -- appends --------------------------------------------------------------------------

def test_append_writes_envelopes_readable_with_the_rules(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.append(T, rows("a", 3)) == 3
    assert spool.append(T, [{"part_id": "b", "text": "x"}, {"message_id": "m", "part_index": 2}]) == 2
    keys, files = spooled(spool)
    assert keys == ["a0", "a1", "a2", "b", "m:2"]
    assert files == [spool.table_dir(T) / ACTIVE]
    lines = files[0].read_bytes().splitlines()
    assert len(lines) == 2  # one envelope per call here
    env = orjson.loads(lines[1])
    assert env["version"] == 1 and env["columns"] == ["part_id", "text", "message_id", "part_index"]
    assert env["rows"] == [["b", "x", None, None], [None, None, "m", 2]]
    assert isinstance(env["at"], float)  # extra key: when it was written


def test_append_groups_rows_into_bounded_envelopes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    n = MAX_ENVELOPE_ROWS * 2 + 5
    assert spool.append(T, rows("k", n)) == n
    sizes = [len(orjson.loads(line)["rows"]) for _, line, _ in iter_lines(spool.table_dir(T) / ACTIVE)]
    assert sizes == [MAX_ENVELOPE_ROWS, MAX_ENVELOPE_ROWS, 5]
    big = [{"part_id": f"b{i}", "blob": "x" * 100_000} for i in range(30)]  # ~3 MB
    spool.append(T, big)
    lines = list(iter_lines(spool.table_dir(T) / ACTIVE))[3:]
    assert len(lines) >= 3 and all(len(raw) < 2 << 20 for _, raw, _ in lines)
    keys, _ = spooled(spool)
    assert len(keys) == n + 30 and len(set(keys)) == n + 30


def test_append_lines_writes_pre_encoded_envelopes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append_lines(T, [encode(["part_id"], [["a"]]), (encode(["part_id"], [["b"], ["c"]]), 2)])
    spool.append_lines(T, [])
    assert spooled(spool)[0] == ["a", "b", "c"]


def test_append_refuses_non_mapping_rows_and_writes_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(SpoolError, match="mapping"):
        spool.append(T, [{"part_id": "a"}, ["not", "a", "row"]])  # type: ignore[list-item]
    assert spool.pending(T) == []


@pytest.mark.parametrize("row", [{"part_id": "a", "": 1}, {"part_id": "a", 3: "x"}])
def test_append_refuses_column_names_flush_would_reject(tmp_path: Path, row: dict[Any, Any]) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(SpoolError, match="column names must be non-empty strings"):
        spool.append(T, [{"part_id": "good"}, row])
    with pytest.raises(SpoolError, match="at least one column"):
        spool.append(T, [{}, {}])
    assert spool.pending(T) == []


def test_rows_with_different_columns_share_an_envelope(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append(T, [{"part_id": "a", "x": 1}, {"x": 2, "part_id": "b"}, {"part_id": "c", "y": True}, {"part_id": "d"}])
    (line,) = (spool.table_dir(T) / ACTIVE).read_bytes().splitlines()
    env = orjson.loads(line)
    assert env["columns"] == ["part_id", "x", "y"]
    assert env["rows"] == [["a", 1, None], ["b", 2, None], ["c", None, True], ["d", None, None]]
    spool.rotate(T)
    spool.append(T, [{"part_id": "e", "x": 1}, {"x": 2, "part_id": "f"}])  # same columns, another order
    (line,) = (spool.table_dir(T) / ACTIVE).read_bytes().splitlines()
    assert orjson.loads(line)["rows"] == [["e", 1], ["f", 2]]


@pytest.mark.parametrize("ident", ["../x", "a", ".a.b", "a..b", "a/b", "a.b/../../c", "", "a.b\n"])
def test_bad_table_identifiers_are_refused_and_nothing_is_created(tmp_path: Path, ident: str) -> None:
    spool = Spool(tmp_path / "spool")
    for op in (lambda: spool.append(ident, rows("a", 1)), lambda: spool.rotate(ident),
               lambda: spool.pending(ident)):
        with pytest.raises(UsageError, match="bad table identifier"):
            op()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]  # not even the spool root


def test_tables_lists_only_valid_identifiers(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append("a.b", rows("x", 1))
    spool.append("a.b.c", rows("x", 1))
    for junk in (".hidden.x", "nodot", "bad-name.x"):
        (spool.root / junk).mkdir()
    (spool.root / "file.x").write_text("")
    assert spool.tables() == ["a.b", "a.b.c"]
    assert Spool(tmp_path / "nowhere").tables() == []


# -- permissions ---------------------------------------------------------------------------

def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def _fill(spool: Spool) -> None:
    """Create every kind of spool file: active, flush, quarantine, internal ones."""
    spool.append(T, rows("a", 2))
    spool.rotate(T)
    spool.append(T, rows("b", 2))
    with open(spool.table_dir(T) / ACTIVE, "ab") as f:
        f.write(b'{"torn')
    spool.append(T, rows("c", 1))  # repairs the tail: quarantine/
    with spool.flush_lock(T):
        pass


def test_spool_directories_are_0700_and_files_0600_by_default(tmp_path: Path, umask022: None) -> None:
    spool = Spool(tmp_path / "spool")
    _fill(spool)
    modes = _modes(spool.root)
    assert {"t.events/active.jsonl", "t.events/flush-00000000000000000001.jsonl", "t.events/quarantine"} <= set(modes)
    for name, mode in modes.items():
        is_dir = (spool.root / name).is_dir()
        assert mode == (0o700 if is_dir else 0o600), f"{name}: {oct(mode)}"


def test_group_option_gives_3770_directories_and_0660_files(tmp_path: Path, umask022: None) -> None:
    group = grp.getgrgid(os.getgid()).gr_name  # the current user's primary group
    spool = Spool(tmp_path / "spool", group=group)
    _fill(spool)
    for name, mode in _modes(spool.root).items():
        p = spool.root / name
        assert p.stat().st_gid == os.getgid(), name
        # setgid + sticky: producers share the directories but cannot rename or delete each other's files
        assert mode == (0o3770 if p.is_dir() else 0o660), f"{name}: {oct(mode)}"


def test_unknown_group_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="no such group 'no-such-group-xyz'"):
        Spool(tmp_path / "spool", group="no-such-group-xyz")


# -- rotation ------------------------------------------------------------------------------

def test_rotation_names_are_20_digit_strictly_increasing_sequences(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.rotate(T) is None  # nothing spooled yet
    names = []
    for i in range(3):
        spool.append(T, rows(f"r{i}-", 2))
        target = spool.rotate(T)
        assert target is not None and not (spool.table_dir(T) / ACTIVE).exists()
        names.append(target.name)
    assert names == [f"flush-{i:020d}.jsonl" for i in (1, 2, 3)]
    assert [p.name for p in spool.flush_files(T)] == names
    assert spool.rotate(T) is None  # active is gone: nothing to rotate
    spool.remove(spool.flush_files(T))  # flushed and deleted...
    spool.append(T, rows("late", 1))
    target = spool.rotate(T)
    assert target is not None and target.name == f"flush-{4:020d}.jsonl"  # ...a new number, never a reused one
    spool.remove([target])
    spool.append(T, rows("later", 1))
    assert Spool(tmp_path / "spool").rotate(T).name == f"flush-{5:020d}.jsonl"  # type: ignore[union-attr]


def test_rotation_never_numbers_below_an_existing_flush_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append(T, rows("a", 1))
    spool.rotate(T)
    for p in spool.table_dir(T).iterdir():  # internal files (the sequence counter) lost
        if p.name.startswith(".") and p.name != ".lock":
            p.unlink()
    spool.append(T, rows("b", 1))
    assert spool.rotate(T).name == f"flush-{2:020d}.jsonl"  # type: ignore[union-attr]


def test_rotate_of_an_empty_active_file_does_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.table_dir(T, create=True)
    (spool.table_dir(T) / ACTIVE).write_bytes(b"")
    assert spool.rotate(T) is None and spool.flush_files(T) == []


def test_pending_is_flush_files_oldest_first_then_active(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.pending(T) == []
    for i in range(3):
        spool.append(T, rows(f"p{i}-", 1))
        spool.rotate(T)
    spool.append(T, rows("act", 1))
    assert [p.name for p in spool.pending(T)] == [f"flush-{i:020d}.jsonl" for i in (1, 2, 3)] + [ACTIVE]
    assert spooled(spool)[0] == ["p0-0", "p1-0", "p2-0", "act0"]


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"", p.stat().st_mtime_ns)
            for p in root.rglob("*")}


def test_reader_changes_nothing_and_is_never_locked_out_by_producers(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append(T, rows("a", 2))
    spool.rotate(T)
    spool.append(T, rows("b", 2))
    with open(spool.table_dir(T) / ACTIVE, "ab") as f:
        f.write(b'{"version": 1, "columns": ["part_id"], "rows": [["in-prog')  # a write in progress
    before = _tree(spool.root)
    # another process holds the producers' lock for as long as it likes
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, os, sys, time
            fd = os.open({str(spool.table_dir(T) / '.lock')!r}, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            print("locked", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        started = time.monotonic()
        keys = [k for p in spool.pending(T) for _, _, v in read_validated(p, Validator(TableSpec(T))) for k in v.keys]
        assert keys == ["a0", "a1", "b0", "b1"]  # the write in progress is not read yet, nor rejected
        assert spool.flush_files(T) and spool.tables() == [T]
        assert time.monotonic() - started < 30  # did not wait for the 60 s lock
    finally:
        holder.kill()
        holder.wait()
    assert _tree(spool.root) == before


def test_read_validated_rejects_the_torn_tail_of_a_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "flush-00000000000000000001.jsonl"
    path.write_bytes(encode(["part_id"], [["a"]]) + encode(["part_id"], [["b"]])[:-1])
    verdicts = [(n, v.error, v.keys) for n, _, v in read_validated(path, Validator(TableSpec(T)))]
    assert verdicts[0] == (1, None, ["a"])
    assert verdicts[1][0] == 2 and "torn write" in (verdicts[1][1] or "") and verdicts[1][2] == []


# -- torn tails ---------------------------------------------------------------------------------

TORN = b'{"version": 1, "columns": ["part_id", "text"], "rows": [["torn", "half a li'


@pytest.mark.parametrize("op", ["append", "rotate"])
def test_torn_tail_is_quarantined_with_its_reason_by_the_next_append_or_rotate(tmp_path: Path, op: str) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append(T, rows("before", 3))
    active = spool.table_dir(T) / ACTIVE
    good = active.read_bytes()
    with open(active, "ab") as f:  # a producer died mid-write
        f.write(TORN)
    if op == "append":
        spool.append(T, rows("after", 2))
        assert active.read_bytes().startswith(good + b'{"version"')  # not glued onto the torn bytes
    else:
        flushed = spool.rotate(T)
        assert flushed is not None and flushed.read_bytes() == good
        spool.append(T, rows("after", 2))
    (rec,) = quarantined(spool)
    assert rec["reason"].startswith("torn write") and rec["raw"] == TORN.decode()
    assert rec["file"] == ACTIVE and rec["offset"] == len(good)
    keys, _ = spooled(spool)
    assert keys == ["before0", "before1", "before2", "after0", "after1"]


@pytest.mark.parametrize("max_line", [1 << 20, 32 << 20])
def test_torn_tail_with_no_complete_line_and_binary_garbage(tmp_path: Path, max_line: int) -> None:
    spool = Spool(tmp_path / "spool", limits=SpoolLimits(max_line_bytes=max_line))
    spool.table_dir(T, create=True)
    garbage = b"\xff\xfe" + os.urandom(3 * (1 << 20)).replace(b"\n", b"") + b"\xc3"  # > one read block
    (spool.table_dir(T) / ACTIVE).write_bytes(garbage)
    spool.append(T, rows("ok", 1))
    (rec,) = quarantined(spool)
    if max_line < len(garbage):  # longer than max_line_bytes: never read whole; its head exact, length and hash
        assert "raw" not in rec and "raw_b64" not in rec and rec["truncated"] is True
        assert base64.b64decode(rec["raw_head_b64"]) == garbage[:4096]
        assert rec["raw_bytes"] == len(garbage) and rec["raw_sha256"] == hashlib.sha256(garbage).hexdigest()
    else:  # read whole: kept whole (its readable rendering only starts it)
        assert base64.b64decode(rec["raw_b64"]) == garbage and "truncated" not in rec
        assert rec["raw_escaped"].startswith("\\xff\\xfe") and len(rec["raw_escaped"]) < 4 * (64 << 10)
    assert spooled(spool)[0] == ["ok0"]


@pytest.mark.parametrize("max_line", [1000, 1 << 20])
def test_a_spool_line_is_quarantined_whole_up_to_max_line_bytes_and_as_head_length_hash_past_it(
        tmp_path: Path, max_line: int) -> None:
    big = b'{"version": 1, "rows": "' + b"x" * 300_000  # not JSON, far over 64 KiB
    path = tmp_path / "flush-1.jsonl"
    path.write_bytes(b"short\n" + big + b"\n" + b"z" * 3_000_000 + b"\n")
    validator = Validator(TableSpec(identifier=T))
    recs = [quarantine_record(v.error, path.name, n, raw) for n, raw, v in read_validated(path, validator, max_line)]
    by_line = {r["line"]: r for r in recs}
    assert by_line[1]["raw"] == "short"
    if max_line > len(big):  # read whole: kept whole, however long
        assert by_line[2]["raw"] == big.decode() and "truncated" not in by_line[2]
    else:
        assert by_line[2]["raw_bytes"] == len(big) and by_line[2]["raw_sha256"] == hashlib.sha256(big).hexdigest()
        assert big.startswith(by_line[2]["raw_head"].encode()) and by_line[2]["truncated"] is True
    third = by_line[3]
    assert third["raw_bytes"] == 3_000_000 and third["raw_sha256"] == hashlib.sha256(b"z" * 3_000_000).hexdigest()
    assert third["raw_head"] == "z" * 4096 and third["truncated"] is True and "raw" not in third


def test_quarantine_record_keeps_raw_bytes_and_replaces_on_retry(tmp_path: Path) -> None:
    rec = quarantine_record("why", "flush-1.jsonl", 7, b"caf\xc3\xa9", row_index=2)
    assert rec["raw"] == "café" and rec["line"] == 7 and rec["row_index"] == 2 and rec["reason"] == "why"
    spool = Spool(tmp_path / "spool")
    spool.quarantine(T, "flush-1-7", [rec])
    spool.quarantine(T, "flush-1-7", [rec])  # a retried flush replaces, never doubles
    assert spool.quarantine(T, "empty", []) is None
    assert len(quarantined(spool)) == 1


def test_write_atomic_publishes_whole_files(tmp_path: Path, umask022: None) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, b"one")
    write_atomic(path, b"two", 0o640)
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "state.json"]  # no temp file left behind
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# -- concurrency -----------------------------------------------------------------------------------

PRODUCER = """
import sys
from spoold.spool.spool import Spool
root, table, who, calls, per_call = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
spool = Spool(root)
for c in range(calls):
    spool.append(table, [{"part_id": f"{who}-{c}-{r}", "who": who, "pad": "x" * (c % 7) * 100}
                         for r in range(per_call)])
"""

ROTATOR = """
import os, sys, time
from spoold.spool.spool import Spool
root, table, stop, log = sys.argv[1:5]
spool = Spool(root)
with open(log, "w") as out:
    while not os.path.exists(stop):
        target = spool.rotate(table)
        if target is not None:
            out.write(f"{target.name} {target.stat().st_size}\\n")
            out.flush()
"""


def _check_sealed(log: Path, table_dir: Path) -> int:
    """Every rotated file still has the size it had when rotated: no late write reached it."""
    sealed = 0
    for line in log.read_text().splitlines():
        name, size = line.split()
        assert (table_dir / name).stat().st_size == int(size), f"{name} was written after rotation"
        sealed += 1
    return sealed


def test_concurrent_producers_and_a_rotator_lose_and_tear_nothing(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    producers, calls, per_call = 5, 150, 20
    stop, log = tmp_path / "stop", tmp_path / "rotations.log"
    rotator = subprocess.Popen([sys.executable, "-c", ROTATOR, str(root), T, str(stop), str(log)])
    # The producers start once the rotator is in its loop (it opens its log right before): started together,
    # they could finish while it still imports, and then it rotates once only.
    wait_for(lambda: log.exists() or rotator.poll() is not None, "the rotator started", timeout=60)
    procs = [subprocess.Popen([sys.executable, "-c", PRODUCER, str(root), T, f"p{i}", str(calls), str(per_call)])
             for i in range(producers)]
    try:
        for p in procs:
            assert p.wait(timeout=240) == 0
    finally:
        stop.touch()
        assert rotator.wait(timeout=60) == 0
    spool = Spool(root)
    keys, files = spooled(spool)
    expected = {f"p{i}-{c}-{r}" for i in range(producers) for c in range(calls) for r in range(per_call)}
    dups = [k for k, n in Counter(keys).items() if n > 1]
    assert not dups, f"{len(dups)} rows in more than one place, e.g. {dups[:3]}"
    assert len(keys) == len(expected) and set(keys) == expected
    assert quarantined(spool) == []
    rotations = _check_sealed(log, spool.table_dir(T))
    assert rotations == len(spool.flush_files(T)) and rotations >= 2, "the rotator should have rotated a few times"


def _fork_producer(spool: Spool, who: str, calls: int) -> None:
    for c in range(calls):
        spool.append(T, [{"part_id": f"{who}-{c}-{r}"} for r in range(5)])


def _fork_rotator(spool: Spool, stop: Any, log: str) -> None:
    with open(log, "w") as out:
        while not stop.is_set():
            target = spool.rotate(T)
            if target is not None:
                out.write(f"{target.name} {target.stat().st_size}\n")
                out.flush()


def test_a_spool_shared_across_fork_still_locks_out_late_writes(tmp_path: Path) -> None:
    """flock belongs to the open file: children forked from a parent that used the Spool must not share it."""
    ctx = multiprocessing.get_context("fork")
    spool = Spool(tmp_path / "spool")
    spool.append(T, [{"part_id": "parent"}])  # the parent has opened (and cached) the lock file
    stop = ctx.Event()
    log = tmp_path / "rotations.log"
    rotator = ctx.Process(target=_fork_rotator, args=(spool, stop, str(log)))
    rotator.start()
    procs = [ctx.Process(target=_fork_producer, args=(spool, f"f{i}", 150)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    stop.set()
    rotator.join(timeout=60)
    assert rotator.exitcode == 0
    _check_sealed(log, spool.table_dir(T))
    keys, _ = spooled(spool)
    assert sorted(keys) == sorted(["parent"] + [f"f{i}-{c}-{r}" for i in range(4) for c in range(150)
                                                for r in range(5)])


BIG_PRODUCER = """
import os, sys
from spoold.envelope import encode
from spoold.spool.spool import Spool
root, table, ack = sys.argv[1:4]
spool = Spool(root)
blob = "y" * (6 << 20)
with open(ack, "a") as out:
    for i in range(10**6):
        key = f"big-{os.getpid()}-{i}"
        spool.append_lines(table, [encode(["part_id", "blob"], [[key, blob]])])
        out.write(key + "\\n")
        out.flush()
"""

SMALL_PRODUCER = """
import os, sys
from spoold.spool.spool import Spool
root, table, ack, stop = sys.argv[1:5]
spool = Spool(root)
with open(ack, "a") as out:
    i = 0
    while not os.path.exists(stop):
        key = f"small-{i}"
        spool.append(table, [{"part_id": key}])
        out.write(key + "\\n")
        out.flush()
        i += 1
"""


def _acked(path: Path) -> list[str]:
    if not path.exists():
        return []
    data = path.read_text()
    return data.split("\n")[:-1]  # a line cut by the kill is not an acknowledgement


@pytest.mark.slow
def test_sigkill_of_a_producer_mid_append_never_corrupts_other_rows(tmp_path: Path, rng: random.Random) -> None:
    """Kill -9 a producer writing 6 MiB envelopes, over and over, next to a steady small producer."""
    root = tmp_path / "spool"
    spool = Spool(root)
    stop, small_ack = tmp_path / "stop", tmp_path / "small.ack"
    small = subprocess.Popen([sys.executable, "-c", SMALL_PRODUCER, str(root), T, str(small_ack), str(stop)])
    big_acked: list[str] = []
    torn_seen = 0
    in_flight = set()
    try:
        rounds = 0
        deadline = time.monotonic() + 60
        # at least 12 kills, and more until one of them has torn a line (most rounds do; ~40% here)
        while (rounds < 12 or (not torn_seen and rounds < 60)) and time.monotonic() < deadline:
            rounds += 1
            ack = tmp_path / f"big-{rounds}.ack"
            big = subprocess.Popen([sys.executable, "-c", BIG_PRODUCER, str(root), T, str(ack)])
            until = time.monotonic() + 15
            while len(_acked(ack)) < 1 and time.monotonic() < until and big.poll() is None:
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.08))
            big.send_signal(signal.SIGKILL)
            big.wait()
            done = _acked(ack)
            big_acked += done
            in_flight.add(f"big-{big.pid}-{len(done)}")
            active = spool.table_dir(T) / ACTIVE
            with open(active, "rb") as f:  # look, without changing anything
                f.seek(max(0, active.stat().st_size - 1))
                torn_seen += f.read(1) not in (b"\n", b"")
            if rounds % 4 == 0:
                spool.rotate(T)
    finally:
        stop.touch()
        assert small.wait(timeout=60) == 0
    spool.rotate(T)  # repairs a tail the small producer has not seen yet
    keys, _ = spooled(spool)
    counts = Counter(keys)
    assert all(n == 1 for n in counts.values()), "a row was doubled"
    small_keys = _acked(small_ack)
    assert len(small_keys) > 0 and all(counts[k] == 1 for k in small_keys), "an acknowledged small row was lost"
    assert all(counts[k] == 1 for k in big_acked), "an acknowledged big row was lost"
    assert set(counts) <= set(small_keys) | set(big_acked) | in_flight | {f"small-{len(small_keys)}"}
    torn = [q for q in quarantined(spool) if q["reason"].startswith("torn write")]
    assert torn_seen >= 1, "no kill tore a line: the quarantine path was not exercised"
    assert len(torn) >= torn_seen  # every torn tail we saw went to quarantine, with its bytes
    for q in torn:  # a big torn tail is kept truncated (its head, length and hash)
        assert q.get("raw", q.get("raw_head")).startswith('{"version":1,"columns":["part_id","blob"],"rows":[["big-')
    print(f"{rounds} kills, {len(big_acked)} big envelopes acknowledged, {torn_seen} torn tails seen, "
          f"{len(torn)} quarantined, {len(small_keys)} small rows")


def test_old_temp_files_of_a_killed_writer_are_swept_recent_ones_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append("t.rows", [{"part_id": "a"}])
    d = spool.table_dir("t.rows")
    (d / "quarantine").mkdir()
    old = [d / ".seq.123.456.tmp", d / "quarantine" / ".x.jsonl.9.9.tmp"]
    fresh = d / ".last-flush.json.1.1.tmp"
    for p in [*old, fresh]:
        p.write_bytes(b"partial")
    for p in old:
        os.utime(p, (time.time() - 7200, time.time() - 7200))
    assert spool.sweep_temp("t.rows") == 2
    assert not any(p.exists() for p in old) and fresh.exists()
    assert (d / "active.jsonl").exists()
    root_old = [spool.root / ".daemon.json.5.5.tmp", spool.root / ".tail" / ".t.rows-ab.json.5.5.tmp"]
    root_old[1].parent.mkdir()
    for p in root_old:
        p.write_bytes(b"partial")
        os.utime(p, (time.time() - 7200, time.time() - 7200))
    assert spool.sweep_temp() == 2 and not any(p.exists() for p in root_old)
    assert (d / "active.jsonl").exists() and fresh.exists()
