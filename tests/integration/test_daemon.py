"""The real daemon (``python -m spoold run``) against a temp spool and a real SQLite catalog.

Every wait polls until a deadline; the deadlines are generous so a loaded
machine only makes the tests slower, never wrong.
"""

from __future__ import annotations

import random
import re
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.cli import run_spoold, write_config
from support.daemonproc import DaemonProc, wait_for
from support.tables import committed_keys, load_table
from support.testhooks import WINDOWS, Hooks, windows_hit

from spoold.config import load_config
from spoold.daemon.loop import REPEATED_SIGNAL_S
from spoold.spool.spool import Spool

TABLE = "ev.rows"
# The longest a flush of a few rows may take here, first import of the flush stack included (~1 s on an
# idle machine; the suite runs on a shared one). Upper bounds derived from the config add it.
COMMIT_S = 15.0
# The daemon's full rescan (its safety net for missed change events) is pushed far past every deadline
# of a test given it: there, only the daemon acting on change events can meet the deadline.
NO_RESCAN = 3600.0


def config(tmp_path: Path, debounce: float = 0.5, max_delay: float = 3.0, extra: str = "",
           rescan: float | None = None) -> Path:
    daemon = f"\n[daemon]\nrescan_s = {rescan}\n" if rescan is not None else ""
    return write_config(tmp_path, f"[flush]\ndebounce_s = {debounce}\nmax_delay_s = {max_delay}\n"
                                  f"retry_max_s = 2\n{extra}{daemon}")


def first_look_done(d: DaemonProc) -> None:
    """Wait until the daemon's first full look at the spool is behind it (it publishes its state after).

    Rows appended later reach it only through change events (or a rescan).
    """
    state = d.cfg.parent / "state" / "spool" / ".daemon.json"
    wait_for(lambda: state.exists() and orjson.loads(state.read_bytes()).get("pid") == d.proc.pid,
             "the daemon's first look at the spool")


def landed_at(cfg: Path, name: str = TABLE) -> dict[str, float]:
    """When each committed key landed: the commit time of the first snapshot holding it."""
    tbl = table(cfg, name)
    out: dict[str, float] = {}
    for snap in sorted(tbl.snapshots(), key=lambda s: s.sequence_number):
        for key in tbl.scan(snapshot_id=snap.snapshot_id).to_arrow().column("part_id").to_pylist():
            out.setdefault(key, snap.timestamp_ms / 1000)
    return out


def table(cfg: Path, name: str = TABLE) -> Any:
    """The committed table, or None while it does not exist."""
    return load_table(cfg, name)


def committed(cfg: Path, name: str = TABLE) -> list[str]:
    return committed_keys(cfg, name)


def has_all(cfg: Path, keys: set[str], name: str = TABLE) -> Callable[[], bool]:
    return lambda: keys <= set(committed(cfg, name))


def append(cfg: Path, keys: list[str], name: str = TABLE) -> None:
    Spool.from_config(load_config(cfg)).append(name, [{"part_id": k, "n": i} for i, k in enumerate(keys)])


def status(cfg: Path) -> dict[str, Any]:
    out = run_spoold("status", "--json", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    return orjson.loads(out.stdout)


# --- 1. debounce and max_delay ------------------------------------------------------------------


def test_rows_commit_after_the_debounce_of_quiet(tmp_path: Path, daemons: Callable[..., DaemonProc]) -> None:
    debounce, max_delay = 1.0, 30.0
    cfg = config(tmp_path, debounce=debounce, max_delay=max_delay, rescan=NO_RESCAN)
    d = daemons(cfg, fresh=True)  # the first commit's time includes loading the flush stack, as in production
    first_look_done(d)
    t0 = time.time()
    append(cfg, ["a1", "a2", "a3"])
    t1 = time.time()
    wait_for(has_all(cfg, {"a1", "a2", "a3"}), "rows committed a debounce after the append",
             timeout=debounce + COMMIT_S)  # well before max_delay_s and the rescan
    snaps = table(cfg).snapshots()
    assert len(snaps) == 1
    # Not before a quiet debounce_s, and within debounce_s plus a commit's time of it.
    assert t0 + debounce - 0.05 <= snaps[0].timestamp_ms / 1000 <= t1 + debounce + COMMIT_S
    assert sorted(committed(cfg)) == ["a1", "a2", "a3"]
    wait_for(lambda: status(cfg)["tables"][TABLE]["spooled_rows"] == 0, "the flush file removed after its commit")
    assert d.stop() == 0


@pytest.mark.slow  # a 20 s trickle is the point of the test
def test_a_steady_trickle_lands_within_max_delay(tmp_path: Path, daemons: Callable[..., DaemonProc]) -> None:
    debounce, max_delay, trickle = 1.0, 2.0, 20.0
    # A row every 0.2 s is never a quiet debounce_s: only max_delay_s can flush during the trickle. A
    # daemon that waited for quiet would keep its first row trickle + debounce = 21 s, past the bound.
    assert trickle + debounce > max_delay + COMMIT_S
    cfg = config(tmp_path, debounce=debounce, max_delay=max_delay, rescan=NO_RESCAN)
    d = daemons(cfg)
    first_look_done(d)
    append(cfg, ["warm"])  # the first flush loads pyiceberg; keep that out of the measured window
    wait_for(has_all(cfg, {"warm"}), "warm-up row committed", timeout=debounce + COMMIT_S)
    sent: dict[str, float] = {}
    start = time.time()
    while time.time() - start < trickle:
        key = f"t{len(sent)}"
        sent[key] = time.time()
        append(cfg, [key])
        time.sleep(0.2)
    trickle_end = time.time()
    wait_for(has_all(cfg, set(sent)), "all trickled rows committed", timeout=max_delay + COMMIT_S)
    assert sorted(committed(cfg)) == sorted(["warm", *sent])
    landed = landed_at(cfg)
    late = {k: round(landed[k] - t, 1) for k, t in sent.items() if landed[k] - t > max_delay + COMMIT_S}
    assert not late, f"rows waited longer than max_delay_s + {COMMIT_S}s: {late}"
    assert landed["t0"] < trickle_end, "nothing was committed during a never-quiet trickle"
    assert d.stop() == 0


def test_max_delay_counts_from_rows_spooled_before_start(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    from spoold.envelope import encode

    cfg = config(tmp_path, debounce=20.0, max_delay=20.0)
    spool = Spool.from_config(load_config(cfg))
    hour_ago = time.time() - 3600  # spooled an hour ago, while no daemon ran
    with open(spool.table_dir(TABLE, create=True) / "active.jsonl", "wb") as f:
        f.write(encode(["part_id"], [["old1"], ["old2"]], at=hour_ago))
    started = time.time()
    d = daemons(cfg)
    wait_for(has_all(cfg, {"old1", "old2"}), "overdue rows committed")
    # Overdue at start-up: flushed at once, not max_delay_s (20 s) after the daemon first saw them.
    assert table(cfg).snapshots()[0].timestamp_ms / 1000 < started + 15.0
    assert d.stop() == 0


# --- 2. signals and crashes ------------------------------------------------------------------------


def test_sigterm_commits_pending_rows_then_exits_0(tmp_path: Path, daemons: Callable[..., DaemonProc]) -> None:
    cfg = config(tmp_path, debounce=300.0, max_delay=600.0)
    d = daemons(cfg)
    keys = [f"k{i}" for i in range(500)]
    append(cfg, keys)
    wait_for(lambda: status(cfg)["tables"].get(TABLE, {}).get("spooled_rows") == 500, "rows spooled")
    d.signal(signal.SIGTERM)
    assert d.wait() == 0, d.log()
    assert sorted(committed(cfg)) == sorted(keys)
    assert status(cfg)["tables"][TABLE]["spooled_rows"] == 0
    assert "flushing 1 table(s)" in d.log()


@pytest.mark.slow  # crash test: four daemon lifetimes
def test_sigkill_then_restart_loses_nothing_doubles_nothing(
    tmp_path: Path, daemons: Callable[..., DaemonProc], rng: random.Random
) -> None:
    """A soak on top of test_crash_windows.py: daemons killed at random times, before or inside a flush
    (timed from the start, or from the first commit it staged); the marks say which window each hit."""
    cfg = config(tmp_path, debounce=0.3, max_delay=2.0)
    hooks = Hooks(tmp_path / "hooks")
    all_keys: set[str] = set()
    killed: list[int] = []
    for rnd in range(3):
        d = daemons(cfg, env=hooks.env())
        batch = [f"r{rnd}-{i}" for i in range(2000)]
        append(cfg, batch + rng.sample(sorted(all_keys), min(50, len(all_keys))))  # plus some re-sent keys
        all_keys.update(batch)
        if rnd == 1:  # inside the flush: a random moment after its first commit was staged
            wait_for(lambda d=d: any(m.point == "commit.staged" for m in hooks.marks(d.proc.pid)), "a commit staged")
            delay = rng.uniform(0.0, 0.3)
        else:
            delay = rng.uniform(0.0, 1.5)  # the kill lands before, during or after a flush
        print(f"lifetime {rnd}: killed {delay:.2f}s after {'its first commit' if rnd == 1 else 'the append'}")
        time.sleep(delay)
        d.kill()
        killed.append(d.proc.pid)
    hits = windows_hit(hooks, killed)
    print(f"kills by window: {dict(hits)}")
    assert sum(hits.values()) == len(killed)
    assert hits[WINDOWS[None]] < len(killed), f"no kill landed inside or after a commit: {dict(hits)}"
    d = daemons(cfg)
    wait_for(has_all(cfg, all_keys), "every key committed after the last restart")
    got = committed(cfg)
    assert len(got) == len(set(got)) == len(all_keys)
    assert d.stop() == 0


def test_second_signal_exits_at_once_and_loses_nothing(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    cfg = config(tmp_path, debounce=300.0, max_delay=600.0)
    append(cfg, ["seed"])
    assert run_spoold("flush", "--config", str(cfg)).returncode == 0  # the table exists
    d = daemons(cfg)
    append(cfg, ["p1", "p2"])
    db = sqlite3.connect(tmp_path / "state" / "catalog.db", isolation_level=None)
    db.execute("BEGIN EXCLUSIVE")  # the shutdown flush now hangs on the catalog
    try:
        first = time.monotonic()
        d.signal(signal.SIGTERM)
        d.signal(signal.SIGTERM)  # delivered twice at once (as a parent-death signal can be): one request
        wait_for(lambda: "flushing 1 table(s)" in d.log(), "shutdown flush started")
        assert "second signal" not in d.log()
        # a second request is one that comes later than REPEATED_SIGNAL_S after the first
        time.sleep(max(0.0, first + REPEATED_SIGNAL_S + 0.1 - time.monotonic()))
        d.signal(signal.SIGTERM)
        assert d.wait() == 128 + signal.SIGTERM, d.log()
        assert "second signal" in d.log()
    finally:
        db.execute("ROLLBACK")
        db.close()
    assert run_spoold("flush", "--config", str(cfg)).returncode == 0
    assert sorted(committed(cfg)) == ["p1", "p2", "seed"]


def test_sighup_reloads_the_config_and_keeps_the_old_one_if_bad(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    cfg = config(tmp_path, debounce=300.0, max_delay=600.0)
    d = daemons(cfg)
    good = cfg.read_text()
    cfg.write_text(good + "\n[bogus]\nx = 1\n")
    d.signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in d.log(), "bad reload refused")
    assert d.proc.poll() is None
    cfg.write_text(good.replace("debounce_s = 300.0", "debounce_s = 0.3"))
    d.signal(signal.SIGHUP)
    wait_for(lambda: "reloaded configuration" in d.log(), "reload")
    append(cfg, ["h1"])
    wait_for(has_all(cfg, {"h1"}), "row committed on the reloaded 0.3 s debounce")
    assert d.stop() == 0


def test_size_threshold_flushes_without_waiting(tmp_path: Path, daemons: Callable[..., DaemonProc]) -> None:
    cfg = config(tmp_path, debounce=300.0, max_delay=600.0, extra="max_rows = 200\n", rescan=NO_RESCAN)
    d = daemons(cfg)
    first_look_done(d)
    append(cfg, [f"m{i}" for i in range(1000)])
    wait_for(has_all(cfg, {f"m{i}" for i in range(1000)}), "rows over max_rows committed long before the debounce",
             timeout=COMMIT_S)
    assert d.stop() == 0


def test_bad_spool_lines_are_quarantined_and_the_daemon_runs_on(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    debounce, max_delay = 0.3, 2.0
    cfg = config(tmp_path, debounce=debounce, max_delay=max_delay, rescan=NO_RESCAN)
    d = daemons(cfg)
    first_look_done(d)
    append(cfg, ["g1"])
    active = tmp_path / "state" / "spool" / TABLE / "active.jsonl"
    with open(active, "ab") as f:
        f.write(b"{this is not json\n")
        f.write(b'{"version": 1, "columns": ["part_id"], "rows": [["g2"], [null], "x"]}\n')
    wait_for(has_all(cfg, {"g1", "g2"}), "good rows committed", timeout=max_delay + COMMIT_S)
    # The flush file goes after the commit and the quarantine: until then status still counts its lines.
    doc = wait_for(lambda: (s := status(cfg))["tables"][TABLE]["quarantined"] >= 3
                   and s["tables"][TABLE]["spooled_rows"] == 0 and s, "quarantined, and the flush file gone")
    assert doc["tables"][TABLE]["quarantined"] == 3
    append(cfg, ["g3"])
    wait_for(has_all(cfg, {"g3"}), "the daemon keeps going", timeout=max_delay + COMMIT_S)
    assert d.proc.poll() is None
    assert sorted(committed(cfg)) == ["g1", "g2", "g3"]
    assert d.stop() == 0


# --- 3. tailing --------------------------------------------------------------------------------------


def line(key: str) -> bytes:
    return orjson.dumps({"part_id": key, "src": "tail"}) + b"\n"


def flushes_logged(log: str) -> list[tuple[int, int]]:
    """(committed, deduplicated) of every flush a daemon logged."""
    return [(int(c), int(n)) for c, n in re.findall(r"committed (\d+) row\(s\), (\d+) deduplicated", log)]


@pytest.mark.slow  # two daemon lifetimes, seven waits
def test_tailing_captures_every_line_once(tmp_path: Path, daemons: Callable[..., DaemonProc]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    a = src / "a.jsonl"
    a.write_bytes(line("a1") + line("a2"))
    source = f'\n[[sources]]\ntable = "{TABLE}"\npath = "{src}/**/*.jsonl"\nformat = "jsonl"\n'
    cfg = config(tmp_path, debounce=0.2, max_delay=1.0, extra=source)
    d = daemons(cfg)
    wait_for(has_all(cfg, {"a1", "a2"}), "lines present at start")

    with open(a, "ab") as f:  # appended later, plus a partial line
        f.write(line("a3") + line("a4")[:9])
    wait_for(has_all(cfg, {"a3"}), "appended line")
    # A line in another file, written after the partial one: once it is committed, the tailer has
    # read a.jsonl's partial line too (a file is read when it changes, in the order of the changes),
    # and a partial line it had captured would have been committed with it or before it.
    (src / "m.jsonl").write_bytes(line("m1"))
    wait_for(has_all(cfg, {"m1"}), "a line written after the partial one")
    assert "a4" not in committed(cfg)
    with open(a, "ab") as f:
        f.write(line("a4")[9:])
    wait_for(has_all(cfg, {"a4"}), "completed line")

    (src / "later").mkdir()  # a new file in a new directory
    (src / "later" / "b.jsonl").write_bytes(line("b1"))
    wait_for(has_all(cfg, {"b1"}), "line of a file created later")

    a.write_bytes(line("c1"))  # truncated below its offset
    wait_for(has_all(cfg, {"c1"}), "line written after truncation")
    expected = ["a1", "a2", "a3", "a4", "b1", "c1", "m1"]
    assert sorted(committed(cfg)) == expected
    assert d.stop() == 0

    d = daemons(cfg)  # a restart must not spool anything again
    wait_for(lambda: _state(tmp_path).get("pid") == d.proc.pid, "restarted daemon state")
    # A new line, committed only after the restarted tailer went through every file it tails: had it
    # spooled old lines again, a flush would have met them (as duplicates) by then.
    (src / "z.jsonl").write_bytes(line("z1"))
    wait_for(has_all(cfg, {"z1"}), "a line written after the restart")
    wait_for(lambda: flushes_logged(d.log()), "the restarted daemon's flush logged")
    assert flushes_logged(d.log()) == [(1, 0)], d.log()
    doc = status(cfg)
    assert doc["tables"][TABLE]["spooled_rows"] == 0
    assert [s["lag_bytes"] for s in doc["sources"]] == [0]
    assert d.stop() == 0
    assert sorted(committed(cfg)) == [*expected, "z1"]

    out = run_spoold("backfill", TABLE, "--source", str(src), "--all", "--json", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout)["written"] == 0


def _state(tmp_path: Path) -> dict[str, Any]:
    try:
        return orjson.loads((tmp_path / "state" / "spool" / ".daemon.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}


# --- 4. catalog outage ---------------------------------------------------------------------------------


def test_catalog_outage_backs_off_and_commits_everything_after(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    cfg = config(tmp_path, debounce=0.3, max_delay=2.0)
    d = daemons(cfg)
    append(cfg, ["before"])
    wait_for(has_all(cfg, {"before"}), "first commit")

    db = tmp_path / "state" / "catalog.db"
    away = tmp_path / "catalog.db.away"
    shutil.move(db, away)
    db.mkdir()  # the catalog cannot be opened at all
    try:
        append(cfg, ["o1", "o2"])
        doc = wait_for(lambda: (s := status(cfg))["tables"][TABLE].get("backoff_s") and s, "backoff shown")
        assert "catalog_error" in doc  # status answers without the catalog
        assert doc["tables"][TABLE]["spooled_rows"] >= 2
        append(cfg, ["o3"])  # producers keep spooling during the outage
        wait_for(lambda: _state(tmp_path).get("tables", {}).get(TABLE, {}).get("failures", 0) >= 2,
                 "more than one retry")
        assert d.proc.poll() is None
    finally:
        db.rmdir()
        shutil.move(away, db)
    wait_for(has_all(cfg, {"before", "o1", "o2", "o3"}), "commit after recovery")
    assert sorted(committed(cfg)) == ["before", "o1", "o2", "o3"]
    wait_for(lambda: status(cfg)["tables"][TABLE].get("backoff_s") is None, "backoff cleared")
    log = d.log()
    assert "flush failed" in log and "succeeded again" in log
    assert d.stop() == 0


# --- 5. systemd notify ------------------------------------------------------------------------------------


def test_notify_socket_gets_ready_watchdog_and_stopping(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    cfg = config(tmp_path)
    d = daemons(cfg, env={"WATCHDOG_USEC": "400000"})  # its NOTIFY_SOCKET is the harness's (support/daemonproc.py)
    wait_for(lambda: sum(m == "WATCHDOG=1" for _, m in d.notify.messages) >= 3, "watchdog pings")
    assert d.stop() == 0
    wait_for(lambda: any(m.startswith("STOPPING=1") for _, m in d.notify.messages), "STOPPING=1")
    fields = [f for _, m in d.notify.messages for f in m.split("\n")]
    assert fields.index("READY=1") < fields.index("WATCHDOG=1") < fields.index("STOPPING=1")
    assert any(f.startswith("STATUS=") and "pending" in f for f in fields)
    # every field is KEY=VALUE, the READY=1 datagram's status text too (systemd drops a bare line)
    ready = next(m for _, m in d.notify.messages if "READY=1" in m.split("\n"))
    assert all(f.split("=", 1)[0] in ("READY", "STATUS") and "=" in f for f in ready.split("\n")), ready
    assert all("=" in f and f.split("=", 1)[0].isupper() for f in fields), fields


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_an_idle_daemon_restarts_itself_lean_and_keeps_working(tmp_path: Path, daemons: Any) -> None:
    """After idle_restart_s with nothing to do, the daemon re-executes itself (same pid) and
    hands back the flush stack's memory; rows appended afterwards still land, once."""
    cfg = config(tmp_path, extra="idle_restart_s = 2\n")
    d = daemons(cfg, fresh=True)  # it measures what the daemon imports and holds
    append(cfg, ["a1", "a2"])
    wait_for(has_all(cfg, {"a1", "a2"}), "first rows committed")
    assert _rss_mb(d.proc.pid) > 80  # the flush stack is loaded
    wait_for(lambda: "restarting to hand back" in d.log(), "idle restart")
    wait_for(lambda: d.log().count("spoold running") == 2, "the fresh image running")
    assert d.proc.poll() is None
    assert _rss_mb(d.proc.pid) < 60, d.log()
    append(cfg, ["b1"])
    wait_for(has_all(cfg, {"a1", "a2", "b1"}), "rows after the restart committed")
    assert sorted(committed(cfg)) == ["a1", "a2", "b1"]
    assert d.stop() == 0


@pytest.mark.parametrize(("idle_restart_s", "restarts"), [(0, False), (1, True), (10**7, False)])
def test_idle_restart_s_0_means_never(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, idle_restart_s: int,
                                      restarts: bool) -> None:
    """The loop's decision after a long idle time (10**6 s): 0 must mean "never", not "the default"
    (300 s, which 10**6 s of idleness would pass) nor "at once"; a positive value is honoured."""
    import spoold.daemon.loop as daemon

    cfg = config(tmp_path, extra=f"idle_restart_s = {idle_restart_s}\n")
    calls: list[int] = []
    monkeypatch.setattr(daemon, "restart_lean", lambda: calls.append(1))
    monkeypatch.setattr(daemon, "loaded", lambda: True)  # the flush stack is in memory
    d = daemon.Daemon(load_config(cfg), cfg, may_restart=True)
    d._root_id = daemon._file_id(d.root)  # as the watcher's start records it
    d._busy_at = time.monotonic() - 10**6
    d._step()
    assert calls == ([1] if restarts else [])
