"""A held table lock never stops other tables: the real daemon, three tables, one of them locked by a stranger.

Another process holds ``flock`` on table A's append lock (``<spool>/<A>/.lock``), as a producer stuck
mid-append would. Rotation takes that lock with a bound and skips A when it cannot: rows appended to B
and C are committed within ``max_delay_s``, ``/health`` names A and its held lock, and once the lock is
released A's rows are committed too. The same holds when A is fed by many tailed source files (one
bounded wait per pass for A, not one per file), and a flush still commits A's files rotated before.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from support.cli import run_spoold, write_config
from support.daemonproc import DaemonProc, http_get, wait_for
from support.tables import read_table

from spoold.config import load_config
from spoold.spool.spool import Spool

A, B, C = "stuck.a", "free.b", "free.c"
MAX_DELAY_S = 4.0

# Holds flock on the file named by argv[1] until its stdin closes; says "held" once it has it.
_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def _config(tmp_path: Path) -> Path:
    tables = "".join(f'[tables."{t}"]\n[tables."{t}".columns]\npart_id = "string!"\nn = "long"\n' for t in (A, B, C))
    return write_config(tmp_path, f'[flush]\ndebounce_s = 0.3\nmax_delay_s = {MAX_DELAY_S}\n\n'
                                  f'[daemon]\nlisten = "127.0.0.1:0"\n\n{tables}')


@contextmanager
def _held(lock: Path) -> Iterator[None]:
    """``lock`` flock'ed by another process for the block, as a producer stuck mid-append holds it."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        yield
    finally:
        holder.communicate(b"", timeout=30)  # closing its stdin releases the lock


def _keys(cfg: Path, table: str) -> list[str]:
    try:
        return sorted(read_table(cfg, table).column("part_id").to_pylist())
    except AssertionError:
        return []  # not created yet


def _health(cfg: Path) -> tuple[int, dict[str, object]]:
    state = orjson.loads((load_config(cfg).spool_root / ".daemon.json").read_bytes())
    code, body = http_get(state["listen"], "/health")
    return code, orjson.loads(body)


@pytest.mark.slow  # waits out max_delay_s with the lock held
def test_a_held_table_lock_stops_only_its_table(tmp_path: Path, daemons: Callable[..., DaemonProc]) -> None:
    cfg = _config(tmp_path)
    spool = Spool.from_config(load_config(cfg))
    spool.append(A, [{"part_id": "a0", "n": 0}])  # A has rows pending, then a stranger takes its lock
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(spool.table_dir(A) / ".lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        d = daemons(cfg)
        wait_for(lambda: (load_config(cfg).spool_root / ".daemon.json").exists(), "the daemon's state file")
        appended = time.monotonic()
        spool.append(B, [{"part_id": f"b{i}", "n": i} for i in range(3)])
        spool.append(C, [{"part_id": f"c{i}", "n": i} for i in range(3)])
        wait_for(lambda: _keys(cfg, B) == ["b0", "b1", "b2"] and _keys(cfg, C) == ["c0", "c1", "c2"],
                 "B and C committed while A's lock is held")
        # within max_delay_s (plus commit time: the first commit creates the tables and loads pyiceberg)
        assert time.monotonic() - appended < MAX_DELAY_S + 10, d.log()
        code, doc = wait_for(lambda: (h := _health(cfg))[0] == 503 and h, "/health naming the stuck table")
        assert A in str(doc["reason"]) and "spool lock held" in str(doc["reason"]), doc
        assert _keys(cfg, A) == []
        assert "spool lock held" in d.log()
    finally:
        holder.communicate(b"", timeout=30)  # closing its stdin releases the lock
    wait_for(lambda: _keys(cfg, A) == ["a0"], "A committed once its lock is released")
    wait_for(lambda: _health(cfg)[0] == 200, "/health 200 again")
    assert "spool lock is free again" in d.log()
    assert d.stop() == 0


@pytest.mark.slow  # a daemon committing two tables, and waiting out a held lock
def test_many_source_files_of_a_held_table_stall_neither_the_loop_nor_other_tables(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    # 30 tailed files feed A, whose lock is held: each append waits up to a second for it, so tailing them
    # one after another would take 30 s a pass (past the watchdog with more files). One wait per pass for A.
    src_a, src_b = tmp_path / "src-a", tmp_path / "src-b"
    src_a.mkdir()
    src_b.mkdir()
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text() + f'\n[[sources]]\ntable = "{A}"\npath = "{src_a}/*.jsonl"\nformat = "jsonl"\n'
                   f'\n[[sources]]\ntable = "{B}"\npath = "{src_b}/*.jsonl"\nformat = "jsonl"\n')
    spool = Spool.from_config(load_config(cfg))
    spool.append(A, [{"part_id": "pre", "n": -1}])  # (makes A's lock file for the stranger to hold)
    with _held(spool.table_dir(A) / ".lock"):
        for i in range(30):
            (src_a / f"a{i:02d}.jsonl").write_bytes(orjson.dumps({"part_id": f"a{i:02d}", "n": i}) + b"\n")
        d = daemons(cfg)
        started = time.monotonic()
        (src_b / "b.jsonl").write_bytes(b"".join(orjson.dumps({"part_id": f"b{i}", "n": i}) + b"\n" for i in range(3)))
        wait_for(lambda: _keys(cfg, B) == ["b0", "b1", "b2"], "B's tailed rows committed while A's lock is held")
        # within max_delay_s plus commit time (the first commit creates the table and loads pyiceberg)
        assert time.monotonic() - started < MAX_DELAY_S + 10, d.log()
        assert d.proc.poll() is None, d.log()
        assert _keys(cfg, A) == []
    every = [*(f"a{i:02d}" for i in range(30)), "pre"]
    wait_for(lambda: _keys(cfg, A) == every, "A's rows committed once its lock is free")
    assert d.proc.poll() is None and "loop error" not in d.log(), d.log()
    assert d.stop() == 0


def test_a_flush_commits_the_files_rotated_before_while_the_lock_is_held(tmp_path: Path) -> None:
    # Files rotated earlier (other producers' rows, a flush cut short) need no append lock: a lock held
    # now keeps only the rows appended since waiting, and the flush still says the lock is held.
    cfg = _config(tmp_path)
    spool = Spool.from_config(load_config(cfg))
    spool.append(A, [{"part_id": "rotated", "n": 1}])
    assert spool.rotate(A) is not None
    spool.append(A, [{"part_id": "active", "n": 2}])
    with _held(spool.table_dir(A) / ".lock"):
        r = run_spoold("flush", "--config", str(cfg))
        assert _keys(cfg, A) == ["rotated"], r.stderr.decode()
        assert r.returncode != 0 and b"spool lock held" in r.stderr, r.stderr.decode()
    r = run_spoold("flush", "--config", str(cfg))
    assert r.returncode == 0, r.stderr.decode()
    assert _keys(cfg, A) == ["active", "rotated"]
