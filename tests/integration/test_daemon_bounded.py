"""No neighbour can stall the daemon (issue 13): bounded work on the loop, prompt shutdown, a fed watchdog.

The real daemon (``python -m spoold run``) against a temp spool and a real SQLite catalog.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cli import run_spoold, write_config
from support.daemonproc import DaemonProc, wait_for
from support.tables import committed_keys

from spoold.config import load_config
from spoold.spool.spool import Spool


def config(tmp_path: Path, extra: str = "", sources: str = "") -> Path:
    return write_config(tmp_path, f"[flush]\ndebounce_s = 0.5\nmax_delay_s = 3\nretry_max_s = 2\n{extra}\n{sources}")


def committed(cfg: Path, table: str) -> list[str]:
    return sorted(committed_keys(cfg, table))


def backlog(cfg: Path, table: str, n: int) -> None:
    spool = Spool.from_config(load_config(cfg))
    for i in range(0, n, 10_000):
        spool.append(table, [{"part_id": f"r{j}", "n": j} for j in range(i, min(n, i + 10_000))])


def hold_flush_lock(cfg: Path, table: str) -> subprocess.Popen[bytes]:
    """Another process holding ``table``'s flush lock, as a stopped or stuck `spoold flush` would."""
    code = (
        "import sys, time\n"
        "from spoold.config import load_config\n"
        "from spoold.spool.spool import Spool\n"
        "with Spool.from_config(load_config(sys.argv[1])).flush_lock(sys.argv[2]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(cfg), table], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
    return proc


def test_a_flush_lock_held_elsewhere_stalls_neither_other_tables_nor_tailing_nor_shutdown(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    cfg = config(tmp_path, sources=f'[[sources]]\ntable = "ev.c"\npath = "{src}/*.jsonl"\n')
    spool = Spool.from_config(load_config(cfg))
    spool.append("ev.a", [{"part_id": "a1"}])
    holder = hold_flush_lock(cfg, "ev.a")
    try:
        d = daemons(cfg)
        spool.append("ev.b", [{"part_id": "b1"}])
        (src / "c.jsonl").write_text('{"part_id": "c1"}\n')
        wait_for(lambda: committed(cfg, "ev.b") == ["b1"] and committed(cfg, "ev.c") == ["c1"],
                 "the other table and the tailed source committed while ev.a is locked")
        assert committed(cfg, "ev.a") == []
        started = time.monotonic()
        assert d.stop() == 0, d.log()
        assert holder.poll() is None  # the daemon exited while the lock was still held elsewhere
        print(f"exit took {time.monotonic() - started:.1f}s with ev.a locked")
    finally:
        holder.kill()
        holder.wait()
    out = run_spoold("flush", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert committed(cfg, "ev.a") == ["a1"]


@pytest.mark.slow
def test_sigterm_under_a_large_backlog_exits_within_the_shutdown_timeout_and_loses_nothing(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    cfg = config(tmp_path, extra="chunk_rows = 1000\nshutdown_timeout_s = 2\n")
    n = 400_000  # 400 commits: far longer than the shutdown timeout
    backlog(cfg, "ev.big", n)
    d = daemons(cfg)
    wait_for(lambda: committed(cfg, "ev.big"), "the backlog's first commits", every=0.2)
    started = time.monotonic()
    d.signal(15)
    assert d.wait() == 0, d.log()
    took = time.monotonic() - started
    print(f"SIGTERM to exit: {took:.1f}s (shutdown_timeout_s = 2)")
    left = len(committed(cfg, "ev.big"))
    assert 0 < left < n, "the flush must have been cut short, with rows committed"
    assert took < 2 + 20, d.log()  # the timeout plus one commit, with room for a loaded machine
    out = run_spoold("flush", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    keys = committed(cfg, "ev.big")
    assert len(keys) == n and len(set(keys)) == n


@pytest.mark.slow
def test_ready_comes_before_the_first_flush_and_the_watchdog_is_fed_during_a_long_one(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    cfg = config(tmp_path, extra="chunk_rows = 2000\n")
    backlog(cfg, "ev.big", 200_000)
    d = daemons(cfg, env={"WATCHDOG_USEC": "1000000"})
    got = d.notify.messages  # every datagram on the daemon's NOTIFY_SOCKET, with the time it came
    wait_for(lambda: any("last flush ev.big" in m for _, m in got), "the backlog's flush", every=0.2)
    assert d.stop() == 0
    first_at, first = got[0]
    assert first.split("\n")[0] == "READY=1"
    assert "~0 row(s) pending in 0 table(s)" in first  # sent before the spool was even looked at
    flushed_at = next(t for t, m in got if "last flush ev.big" in m)
    pings = [t for t, m in got if m == "WATCHDOG=1" and first_at < t < flushed_at]
    gaps = [b - a for a, b in zip([first_at, *pings], [*pings, flushed_at])]
    print(f"flush took {flushed_at - first_at:.1f}s, {len(pings)} watchdog pings, largest gap {max(gaps):.2f}s")
    assert len(pings) >= 2, got
    assert len(committed(cfg, "ev.big")) == 200_000
