"""SIGKILL inside each crash window that matters, deterministically (issue 15).

Random kill times rarely land in the narrow windows where a crash could lose
or double rows (between a commit and its cleanup is a few microseconds). Here
the process under test is started with ``spoold._testhooks`` on: it pauses at
the named point, the test sees the pause marker, kills it there, and checks
that the state it left proves the window was hit (rows committed while their
flush files remain, rows spooled while the offset did not move, ...) before
checking that the next run loses nothing and doubles nothing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from support import zygote
from support.cli import run_spoold, write_config
from support.daemonproc import DaemonProc, wait_for
from support.tables import committed_counts, load_table, validated_keys
from support.testhooks import Hooks

from spoold.config import load_config
from spoold.envelope import Validator
from spoold.iceberg.sink import Sink
from spoold.layout import BACKFILL_DIR, TAIL_DIR
from spoold.spool.files import read_validated
from spoold.spool.spool import Spool

TABLE = "app.events"
EVENTS = """
[tables."app.events"]
[tables."app.events".columns]
part_id = "string!"
n = "long"
"""


def spool_of(cfg: Path) -> Spool:
    return Spool.from_config(load_config(cfg))


def table(cfg: Path) -> Any:
    return load_table(cfg, TABLE)


def snapshots(cfg: Path) -> int:
    tbl = table(cfg)
    return 0 if tbl is None else len(tbl.snapshots())


def committed(cfg: Path) -> Counter[str]:
    return committed_counts(cfg, TABLE)


def spooled_keys(cfg: Path) -> list[str]:
    """Every key waiting in the spool (flush files and active), as flush's reader sees them."""
    return validated_keys(cfg, TABLE, strict=False)


def flush_json(cfg: Path) -> dict[str, int]:
    proc = run_spoold("flush", "--json", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)["tables"][TABLE]  # type: ignore[no-any-return]


def start_flush(cfg: Path, hooks: Hooks) -> subprocess.Popen[bytes]:
    return zygote.popen([sys.executable, "-m", "spoold", "flush", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **hooks.env()})


def dedup_counts(log: str) -> list[int]:
    """The ``deduplicated`` figure of every flush a daemon logged."""
    return [int(n) for n in re.findall(r"committed \d+ row\(s\), (\d+) deduplicated", log)]


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def three_files(cfg: Path, prefix: str = "") -> set[str]:
    """Three rotated flush files of 200 rows (one envelope each); with chunk_rows = 300 a file ends a chunk."""
    spool = spool_of(cfg)
    keys: set[str] = set()
    for f in range(3):
        rows = [{"part_id": f"{prefix}f{f}-{i}", "n": i} for i in range(200)]
        spool.append(TABLE, rows)
        spool.rotate(TABLE)
        keys |= {r["part_id"] for r in rows}
    return keys


# -- flush: after the catalog accepted a commit, before its flush files are deleted -----------------------
def test_flush_killed_between_commit_and_cleanup_commits_nothing_twice(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, EVENTS + "\n[flush]\nchunk_rows = 300\n")
    keys: set[str] = set()
    for nth in (1, 2):  # killed after the first commit of a flush, then after the second of another
        keys |= three_files(cfg, f"r{nth}-")
        hooks = Hooks(tmp_path / f"hooks{nth}", pause_at=f"flush.committed@{nth}")
        before = snapshots(cfg)
        proc = start_flush(cfg, hooks)
        hooks.wait_paused(proc.pid, alive=lambda p=proc: p.poll() is None)
        kill(proc)

        # The window was hit: the catalog holds the killed flush's commits, and rows it
        # committed still wait in flush files that were not deleted.
        got = committed(cfg)
        assert [m.point for m in hooks.marks(proc.pid)].count("commit.staged") == nth
        assert snapshots(cfg) - before == nth and max(got.values()) == 1
        left = spooled_keys(cfg)
        again = set(left) & set(got)
        assert again, "no committed row was left in the spool: the kill missed the window"

        out = flush_json(cfg)
        assert out == {"committed": len(set(left) - set(got)), "deduplicated": len(again), "quarantined": 0}
        assert committed(cfg) == Counter(keys) and spool_of(cfg).pending(TABLE) == []


# -- flush: inside a commit, after its files were written, before the catalog accepted it ------------------
def test_flush_killed_inside_a_commit_before_the_catalog_took_it_loses_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, EVENTS + "\n[flush]\nchunk_rows = 300\n")
    keys = three_files(cfg)
    hooks = Hooks(tmp_path / "hooks", pause_at="commit.staged@2")
    proc = start_flush(cfg, hooks)
    hooks.wait_paused(proc.pid, alive=lambda: proc.poll() is None)
    kill(proc)

    # The window was hit: the second commit's data file is on disk, yet the table has one snapshot.
    tbl = table(cfg)
    assert snapshots(cfg) == 1
    referenced = {t.file.file_path.removeprefix("file://") for t in tbl.scan().plan_files()}
    on_disk = {str(p) for p in (tmp_path / "state" / "warehouse").rglob("*.parquet")}
    assert referenced < on_disk, "no orphaned data file: the kill did not land inside the second commit"
    first = committed(cfg)
    left = spooled_keys(cfg)

    out = flush_json(cfg)
    assert out == {"committed": len(set(left) - set(first)), "deduplicated": len(set(left) & set(first)),
                   "quarantined": 0}
    assert committed(cfg) == Counter(keys)
    assert spool_of(cfg).pending(TABLE) == []


# -- the daemon: killed after a commit, before cleanup; the next daemon doubles nothing ------------------
def daemon_config(tmp_path: Path, extra: str = "") -> Path:
    return write_config(tmp_path, EVENTS + "\n[flush]\ndebounce_s = 0.3\nmax_delay_s = 2\nchunk_rows = 300\n"
                                           "retry_max_s = 2\n" + extra)


def test_daemon_killed_between_commit_and_cleanup_then_restarted(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    cfg = daemon_config(tmp_path)
    keys = three_files(cfg)
    hooks = Hooks(tmp_path / "hooks", pause_at="flush.committed@2")
    d = daemons(cfg, env=hooks.env())
    hooks.wait_paused(d.proc.pid, alive=lambda: d.proc.poll() is None)
    d.kill()
    got = committed(cfg)
    assert snapshots(cfg) == 2 and max(got.values()) == 1
    spooled_before = spooled_keys(cfg)
    assert set(spooled_before) & set(got), "the kill did not land between commit and cleanup"

    d = daemons(cfg)
    wait_for(lambda: set(committed(cfg)) == keys, "every row committed by the restarted daemon")
    # every row the killed daemon committed but did not clean up was met again, and dropped
    again = len(set(spooled_before) & set(got))
    wait_for(lambda: sum(dedup_counts(d.log())) == again, f"{again} rows deduplicated")
    assert spool_of(cfg).pending(TABLE) == []
    assert committed(cfg) == Counter(keys)
    assert d.stop() == 0


# -- the tailer: rows durably spooled, offset not saved --------------------------------------------------
def line(key: str) -> bytes:
    return orjson.dumps({"part_id": key, "n": 1}) + b"\n"


def test_tailer_killed_between_spool_append_and_offset_save(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_bytes(b"".join(line(f"t{i}") for i in range(50)))
    source = f'\n[[sources]]\ntable = "{TABLE}"\npath = "{src}/*.jsonl"\nformat = "jsonl"\n'
    cfg = daemon_config(tmp_path, source + "\n[daemon]\nrescan_s = 3600\n")
    hooks = Hooks(tmp_path / "hooks", pause_at="tail.appended@1")
    d = daemons(cfg, env=hooks.env())
    hooks.wait_paused(d.proc.pid, alive=lambda: d.proc.poll() is None)
    d.kill()

    # The window was hit: the rows are in the spool, the offset on disk has not moved past them.
    assert sorted(spooled_keys(cfg)) == sorted(f"t{i}" for i in range(50))
    offsets = tmp_path / "state" / "spool" / TAIL_DIR
    assert [orjson.loads(p.read_bytes())["offset"] for p in offsets.glob("*.json")] in ([], [0])
    assert table(cfg) is None

    d = daemons(cfg)
    wait_for(lambda: len(committed(cfg)) == 50, "tailed rows committed after the restart")
    wait_for(lambda: sum(dedup_counts(d.log())) == 50, "each tailed row spooled twice, deduplicated once")
    assert spool_of(cfg).pending(TABLE) == []
    assert committed(cfg) == Counter(f"t{i}" for i in range(50))  # re-read from offset 0, kept once
    wait_for(lambda: offsets.is_dir() and len(list(offsets.glob("*.json"))) == 1, "the offset saved")
    assert orjson.loads(next(offsets.glob("*.json")).read_bytes())["offset"] == (src / "a.jsonl").stat().st_size
    assert d.stop() == 0


# -- shutdown: a commit that outlives shutdown_timeout_s ------------------------------------------------
@pytest.mark.slow  # waits out shutdown_timeout_s + 5 s
def test_shutdown_past_its_timeout_exits_0_and_leaves_the_rows_spooled(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    cfg = write_config(tmp_path, EVENTS + "\n[flush]\ndebounce_s = 0.5\nmax_delay_s = 600\nshutdown_timeout_s = 3\n")
    hooks = Hooks(tmp_path / "hooks", pause_at="commit.staged@2")
    d = daemons(cfg, env=hooks.env())
    spool_of(cfg).append(TABLE, [{"part_id": "warm", "n": 0}])  # the flush stack loaded, the table made
    wait_for(lambda: "warm" in committed(cfg), "the warm-up row committed")
    spool_of(cfg).append(TABLE, [{"part_id": f"s{i}", "n": i} for i in range(20)])
    d.signal(signal.SIGTERM)  # long before the 0.5 s debounce: the shutdown flush takes these rows
    hooks.wait_paused(d.proc.pid, alive=lambda: d.proc.poll() is None)  # and hangs inside its commit
    assert d.wait(60) == 0, d.log()
    log = d.log()
    assert "shutdown flush still running after 3.0s; exiting, rows stay in the spool: app.events" in log, log
    assert log.rstrip().endswith("stopped"), log
    assert snapshots(cfg) == 1  # the second commit never reached the catalog
    assert flush_json(cfg) == {"committed": 20, "deduplicated": 0, "quarantined": 0}
    assert committed(cfg) == Counter(["warm"] + [f"s{i}" for i in range(20)])


# -- quarantine replay: rows re-spooled, their records not removed yet --------------------------------
def test_replay_killed_between_respool_and_record_removal(tmp_path: Path) -> None:
    declared = '[tables."ev.q".columns]\npart_id = "string!"\nn = "{}"\n'
    cfg = write_config(tmp_path, declared.format("int"))
    Spool.from_config(load_config(cfg)).append("ev.q", [{"part_id": f"w{i}", "n": 3_000_000_000} for i in range(50)])
    assert json.loads(run_spoold("flush", "--json", "--config", str(cfg)).stdout)["tables"]["ev.q"]["quarantined"] == 50
    cfg = write_config(tmp_path, declared.format("long"))  # widened: the records pass now
    hooks = Hooks(tmp_path / "hooks", pause_at="replay.respooled@1")
    proc = zygote.popen([sys.executable, "-m", "spoold", "quarantine", "replay", "ev.q", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **hooks.env()})
    hooks.wait_paused(proc.pid, alive=lambda: proc.poll() is None)
    kill(proc)

    # The window was hit: each row is both re-spooled and still in quarantine.
    config = load_config(cfg)
    spool = Spool.from_config(config)
    validator = Validator(config.table("ev.q"))
    respooled = [k for p in spool.pending("ev.q") for _, _, v in read_validated(p, validator) for k in v.keys]
    qfiles = list((spool.table_dir("ev.q") / "quarantine").glob("*.jsonl"))
    records = [orjson.loads(line) for q in qfiles for line in q.read_bytes().splitlines()]
    assert sorted(respooled) == sorted(r["row"][0] for r in records) == sorted(f"w{i}" for i in range(50))

    out = run_spoold("quarantine", "replay", "ev.q", "--json", "--config", str(cfg))
    assert out.returncode == 0 and json.loads(out.stdout)["replayed"] == 50  # the same records again
    flushed = run_spoold("flush", "--json", "--config", str(cfg))
    assert json.loads(flushed.stdout)["tables"]["ev.q"] == {"committed": 50, "deduplicated": 50, "quarantined": 0}
    tbl = Sink(config).load(config.table("ev.q"))
    assert Counter(tbl.scan().to_arrow().column("part_id").to_pylist()) == Counter(f"w{i}" for i in range(50))
    assert not list((spool.table_dir("ev.q") / "quarantine").glob("*.jsonl"))


# -- backfill: a chunk committed, the source cursor not moved past it yet ------------------------------
def test_backfill_killed_between_its_commit_and_its_cursor_save(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    src = tmp_path / "history.jsonl"
    src.write_bytes(b"".join(orjson.dumps({"part_id": f"h{i}", "n": i}) + b"\n" for i in range(300)))
    args = ("backfill", "app.rows", "--source", str(src), "--limit", "100", "--json", "--config", str(cfg))
    hooks = Hooks(tmp_path / "hooks", pause_at="backfill.committed@1")
    proc = zygote.popen([sys.executable, "-m", "spoold", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, **hooks.env()})
    hooks.wait_paused(proc.pid, alive=lambda: proc.poll() is None)
    kill(proc)

    # The window was hit: the first 100 rows are committed, the cursor has not moved past them.
    config = load_config(cfg)
    tbl = Sink(config).load(config.table("app.rows"))
    assert len(tbl.scan().to_arrow()) == 100
    cursors = config.spool_root / BACKFILL_DIR / "app.rows"
    assert [orjson.loads(p.read_bytes())["offset"] for p in cursors.glob("*.json")] in ([], [0])

    runs = []
    for _ in range(4):
        out = run_spoold(*args)
        assert out.returncode == 0, out.stderr
        runs.append({k: json.loads(out.stdout)[k] for k in ("written", "skipped_committed")})
    # The first run reads the committed rows again and keeps none; the next ones go on from there.
    assert runs == [{"written": 0, "skipped_committed": 100}, {"written": 100, "skipped_committed": 0},
                    {"written": 100, "skipped_committed": 0}, {"written": 0, "skipped_committed": 0}]
    keys = Sink(config).load(config.table("app.rows")).scan().to_arrow().column("part_id").to_pylist()
    assert Counter(keys) == Counter(f"h{i}" for i in range(300))
