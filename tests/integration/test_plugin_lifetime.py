"""A test's daemon never outlives its test (issue 19, "the rest").

A ``spoold_env`` daemon of a pytest killed with SIGKILL (no teardown runs) must
die with it, not run on; and a ``spoold run`` whose config file vanished with its
temporary tree must stop (exit 0) instead of making that tree again, while one
whose config file alone went runs on.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.cli import write_config
from support.daemonproc import wait_for
from support.tables import committed_keys

from spoold.config import load_config
from spoold.daemon.loop import _GONE_GRACE_S as GONE_GRACE_S
from spoold.spool.spool import Spool

BOUND_S = 30.0  # SIGTERM's shutdown flush of an empty spool takes well under a second

INNER = """
import os, time

def test_runs_until_killed(spoold_env):
    spoold_env.append("t.x", [{"part_id": "a"}])
    with spoold_env.daemon() as d:
        d.wait_committed("t.x", 1)
        tmp = os.environ["LIFETIME_PIDFILE"] + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{d.pid} {spoold_env.base}")
        os.replace(tmp, os.environ["LIFETIME_PIDFILE"])
        time.sleep(600)  # the outer test kills this pytest here
"""


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaped counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_killed_pytest_takes_its_daemon_with_it(tmp_path: Path) -> None:
    where = tmp_path / "project"
    where.mkdir()
    (where / "pytest.ini").write_text("[pytest]\n")
    (where / "test_inner.py").write_text(INNER)
    pidfile = tmp_path / "daemon.pid"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["LIFETIME_PIDFILE"] = str(pidfile)
    inner = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                              f"--basetemp={tmp_path / 'inner-tmp'}"], cwd=where, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = None
    try:
        wait_for(lambda: pidfile.exists() or inner.poll() is not None, "the inner test's daemon to run")
        assert inner.poll() is None, "the inner pytest ended before its daemon ran"
        pid_text, base = pidfile.read_text().split(" ", 1)
        pid = int(pid_text)
        assert not gone(pid)
        inner.send_signal(signal.SIGKILL)  # no teardown, no fixture finalizer
        inner.wait(30)
        wait_for(lambda: gone(pid), f"the daemon (pid {pid}) to exit after its pytest was killed", timeout=BOUND_S)
        log = (Path(base) / "daemon-1.log").read_text()
        assert "stopped" in log and "Traceback" not in log, log  # SIGTERM's orderly shutdown
        shutil.rmtree(base)
        time.sleep(1.0)  # nothing left that could make the tree again: a look after a moment finds nothing
        assert not Path(base).exists()
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.wait()
        if pid is not None and not gone(pid):
            os.kill(pid, signal.SIGKILL)


def start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "spoold", "run", "--config", str(cfg)],
                                stdout=out, stderr=subprocess.STDOUT)
    wait_for(lambda: "spoold running" in log.read_text() or proc.poll() is not None, "daemon start-up")
    assert proc.poll() is None, log.read_text()
    return proc


def stopped(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait(BOUND_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"spoold run (pid {proc.pid}) still ran {BOUND_S:.0f}s after its world went") from None


def test_a_daemon_whose_tree_was_deleted_stops_instead_of_making_it_again(tmp_path: Path) -> None:
    world = tmp_path / "world"
    cfg = write_config(world, "[flush]\ndebounce_s = 0.1\nmax_delay_s = 1.0\n")
    log = tmp_path / "daemon.log"  # outside the tree that goes
    proc = start(cfg, log)
    wait_for(lambda: (world / "state" / "spool" / ".daemon.json").exists(), "the daemon's first turn")
    shutil.rmtree(world)
    assert stopped(proc) == 0, log.read_text()
    assert "is gone with the spool root: stopping" in log.read_text()
    assert not world.exists()


def test_a_config_file_deleted_alone_stops_nothing_but_deleted_with_the_spool_root_it_stops(tmp_path: Path) -> None:
    # A config moved aside to be edited (or removed and rewritten by config management) must not stop a
    # production daemon: an exit 0 is never restarted by Restart=on-failure. Only the config together
    # with the spool root gone (a test's deleted temporary tree) stops it, and it makes nothing again.
    cfg = write_config(tmp_path / "world", '[flush]\ndebounce_s = 0.1\nmax_delay_s = 1.0\n\n'
                       '[tables."t.x"]\n[tables."t.x".columns]\npart_id = "string!"\n', name="gone.toml")
    config = load_config(cfg)  # read before the file goes: where the spool and the catalog are
    log = tmp_path / "daemon.log"  # outside the tree that goes
    proc = start(cfg, log)
    cfg.unlink()
    wait_for(lambda: f"config file {cfg} is missing" in log.read_text(), "the missing config logged")
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(GONE_GRACE_S + 2)  # the old rule stopped it after 2 s
    Spool.from_config(config).append("t.x", [{"part_id": "after"}])
    wait_for(lambda: committed_keys(config, "t.x") == ["after"], "rows committed with the config file gone")
    assert proc.poll() is None, log.read_text()
    assert log.read_text().count("is missing") == 1  # logged once, not at every turn

    # The daemon may still be writing in the tree (its last commit's clean-up) while rmtree empties it: again
    # until the root is gone, as a user's second `rm -rf` would.
    wait_for(lambda: not (shutil.rmtree(config.spool_root, ignore_errors=True) or config.spool_root.exists()),
             "the spool root removed")
    assert stopped(proc) == 0, log.read_text()
    text = log.read_text()
    assert f"config file {cfg} is gone with the spool root: stopping" in text and "stopped" in text, text
    assert not config.spool_root.exists()
