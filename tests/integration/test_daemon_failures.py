"""The daemon's failure paths, each made to happen for real (issue 15): it logs, goes on, and recovers.

- a table's spool that cannot be looked at (its ``active.jsonl`` cannot be stat'ed): the other tables go on;
- an error inside a loop turn (injected into the daemon's interpreter);
- the spool root removed and made again under the running daemon;
- the file watcher failing to start (as when the inotify limits are reached);
- the state file ``.daemon.json`` that cannot be written.

The full rescan is pushed past every deadline, so the daemon must act on the
change events of a working watcher again once the failure is over.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from support.cli import run_spoold, write_config
from support.daemonproc import DaemonProc, wait_for
from support.tables import committed_keys

from spoold.config import load_config
from spoold.spool.spool import Spool

TABLE = "ev.rows"
COMMIT_S = 15.0  # as in test_daemon.py: a flush of a few rows on a loaded machine, first import included
MAX_DELAY = 2.0
FLUSH = f"[flush]\ndebounce_s = 0.3\nmax_delay_s = {MAX_DELAY}\nretry_max_s = 2\n\n[daemon]\nrescan_s = 3600\n"


def committed(cfg: Path) -> list[str]:
    return committed_keys(cfg, TABLE)


def lands(cfg: Path, keys: list[str], what: str) -> None:
    """``keys`` get committed, within max_delay_s and a commit's time of now."""
    Spool.from_config(load_config(cfg)).append(TABLE, [{"part_id": k} for k in keys])
    wait_for(lambda: set(keys) <= set(committed(cfg)), what, timeout=MAX_DELAY + COMMIT_S)


def first_look_done(d: DaemonProc, root: Path) -> None:
    import orjson

    state = root / ".daemon.json"
    wait_for(lambda: state.is_file() and orjson.loads(state.read_bytes()).get("pid") == d.proc.pid,
             "the daemon's first look at the spool")


def injected(tmp_path: Path, code: str) -> dict[str, str]:
    """The environment that loads ``code`` as ``sitecustomize`` into the daemon's interpreter only."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(code)
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(inject), os.environ.get("PYTHONPATH")) if p)}


# -- an error inside a loop turn ------------------------------------------------------------------------
# Loaded into the daemon's interpreter only: while a table's directory holds a file named UNSTATTABLE, looking
# at its spool fails with an OSError nothing expects (ELOOP), as an unforeseen failure of the filesystem would.
# (A link planted as active.jsonl no longer does: the spool refuses it and moves it aside, docs/spool-layout.md.)
UNSTATTABLE = "unstattable"
PROBE_FAILS = """
import errno, os, spoold.daemon.pending
_real = spoold.daemon.pending.Pending.probe

def probe(self, table, *args, **kwargs):
    if os.path.exists(os.path.join(self.spool.root, table, "unstattable")):
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), os.path.join(table, "active.jsonl"))
    return _real(self, table, *args, **kwargs)

spoold.daemon.pending.Pending.probe = probe
"""


def _unstattable_table(root: Path, table: str) -> Path:
    """A table whose spool cannot be looked at (the daemon runs with PROBE_FAILS); remove the file to cure it."""
    d = root / table
    d.mkdir(mode=0o700)
    (d / "active.jsonl").write_bytes(b"")
    flag = d / UNSTATTABLE
    flag.touch()
    return flag


def test_a_table_that_cannot_be_looked_at_is_logged_and_the_daemon_goes_on(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    cfg = write_config(tmp_path, FLUSH)
    root = tmp_path / "state" / "spool"
    d = daemons(cfg, env=injected(tmp_path, PROBE_FAILS))
    first_look_done(d, root)
    lands(cfg, ["before"], "a row before the error")
    active = _unstattable_table(root, "zz.bad")
    wait_for(lambda: "table zz.bad: cannot look at its spool (the daemon goes on)" in d.log(), "the error logged")
    assert "Too many levels of symbolic links" in d.log() and "loop error" not in d.log()
    active.unlink()  # the cause goes away
    lands(cfg, ["after"], "a row after the error")
    assert d.proc.poll() is None
    assert sorted(committed(cfg)) == ["after", "before"]
    assert d.stop() == 0


def test_a_table_that_keeps_failing_does_not_stall_the_others(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    """Issue 15's finding: the error used to abort the loop turn before due tables flushed, so none did."""
    cfg = write_config(tmp_path, FLUSH)
    root = tmp_path / "state" / "spool"
    d = daemons(cfg, env=injected(tmp_path, PROBE_FAILS))
    first_look_done(d, root)
    _unstattable_table(root, "zz.bad")
    wait_for(lambda: "cannot look at its spool" in d.log(), "the error logged")
    lands(cfg, ["other"], "a row of another table while one keeps failing")
    lands(cfg, ["other2"], "and another")
    assert d.log().count("table zz.bad: cannot look at its spool") == 1  # logged once a minute, not every turn
    assert d.stop() == 0


# Loaded into the daemon's interpreter only (PYTHONPATH): while the flag file exists, every loop turn
# fails (the scheduler's choice of due tables raises), as an unforeseen bug would.
LOOP_FAILS = """
import os, spoold.daemon.scheduler
_real, _flag = spoold.daemon.scheduler.due_tables, os.environ["INJECT_LOOP_FAILS"]

def due_tables(*args, **kwargs):
    if os.path.exists(_flag):
        raise RuntimeError("injected loop failure")
    return _real(*args, **kwargs)

spoold.daemon.scheduler.due_tables = due_tables
"""


def test_a_loop_error_is_logged_and_the_daemon_goes_on(tmp_path: Path, daemons: Callable[..., DaemonProc]) -> None:
    fails = tmp_path / "loop-fails"
    cfg = write_config(tmp_path, FLUSH)
    root = tmp_path / "state" / "spool"
    d = daemons(cfg, env={**injected(tmp_path, LOOP_FAILS), "INJECT_LOOP_FAILS": str(fails)})
    first_look_done(d, root)
    lands(cfg, ["before"], "a row before the error")
    fails.touch()
    Spool.from_config(load_config(cfg)).append(TABLE, [{"part_id": "during"}])
    wait_for(lambda: "loop error (the daemon goes on): RuntimeError: injected loop failure" in d.log(),
             "the loop error logged")
    assert "during" not in committed(cfg) and d.proc.poll() is None
    fails.unlink()  # the cause goes away: the row appended meanwhile lands, and later ones
    wait_for(lambda: "during" in committed(cfg), "the row appended during the errors", timeout=MAX_DELAY + COMMIT_S)
    lands(cfg, ["after"], "a row after the error")
    assert d.log().count("loop error") == 1  # every turn failed, logged once a minute
    assert sorted(committed(cfg)) == ["after", "before", "during"]
    assert d.stop() == 0


# -- the spool root replaced ------------------------------------------------------------------------------
def test_a_replaced_spool_root_is_taken_up_and_watched(tmp_path: Path, daemons: Callable[..., DaemonProc]) -> None:
    cfg = write_config(tmp_path, FLUSH)
    root = tmp_path / "state" / "spool"
    d = daemons(cfg)
    first_look_done(d, root)
    lands(cfg, ["old1"], "a row under the first root")
    root.rename(tmp_path / "state" / "spool.moved")
    root.mkdir(mode=0o700)
    wait_for(lambda: "was replaced; starting over on the new one" in d.log(), "the replacement noticed")
    lands(cfg, ["new1"], "a row under the new root (seen by a watcher on it)")
    first_look_done(d, root)  # the daemon's state is published under the new root
    assert sorted(committed(cfg)) == ["new1", "old1"]
    assert d.stop() == 0


# -- the watcher failing ------------------------------------------------------------------------------------
# Loaded into the daemon's interpreter only (PYTHONPATH): while the flag file exists, starting a watcher
# fails as it does when the inotify limits are reached; once a watcher runs again, its second turn
# (after the full look every new watcher starts with) touches the "watching" file.
SITECUSTOMIZE = """
import errno, os, watchfiles
_real, _flag, _watching = watchfiles.watch, os.environ["INJECT_WATCH_FAILS"], os.environ["INJECT_WATCHING"]

def watch(*args, **kwargs):
    if os.path.exists(_flag):
        raise OSError(errno.ENOSPC, "OS file watch limit reached")

    def changes():
        for n, batch in enumerate(_real(*args, **kwargs)):
            if n == 1:
                open(_watching, "w").close()
            yield batch
    return changes()

watchfiles.watch = watch
"""


def test_a_failing_watcher_is_retried_and_rows_land_meanwhile(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    fails, watching = tmp_path / "watch-fails", tmp_path / "watching"
    fails.touch()
    cfg = write_config(tmp_path, FLUSH)
    d = daemons(cfg, env={**injected(tmp_path, SITECUSTOMIZE), "INJECT_WATCH_FAILS": str(fails),
                          "INJECT_WATCHING": str(watching)})
    wait_for(lambda: "file watcher failed, retrying: OSError: [Errno 28] OS file watch limit reached" in d.log(),
             "the watcher's failure logged")
    # Without a watcher the daemon still looks at the spool (each retry starts with a full look).
    lands(cfg, ["w1"], "a row while no watcher runs")
    assert not watching.exists() and d.proc.poll() is None

    fails.unlink()
    wait_for(watching.exists, "a watcher running again")
    lands(cfg, ["w2"], "a row seen by the new watcher's change events")
    assert d.log().count("file watcher failed") == 1  # retried every second, logged once a minute
    assert sorted(committed(cfg)) == ["w1", "w2"]
    assert d.stop() == 0


# -- the state file cannot be written -----------------------------------------------------------------------
def test_an_unwritable_state_file_is_logged_and_costs_nothing_else(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    cfg = write_config(tmp_path, FLUSH)
    root = tmp_path / "state" / "spool"
    root.mkdir(parents=True, mode=0o700)
    (root / ".daemon.json").mkdir()  # its atomic replace fails: a directory is in the way
    d = daemons(cfg)
    wait_for(lambda: "cannot write" in d.log() and ".daemon.json" in d.log(), "the failed write logged")
    lands(cfg, ["s1"], "a row while the state file cannot be written")
    lands(cfg, ["s2"], "and another")
    log = d.log()
    assert log.count("cannot write") == 1 and "file watcher failed" not in log and "loop error" not in log, log
    out = run_spoold("status", "--json", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert d.stop() == 0
