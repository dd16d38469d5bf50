"""A shell user's first hour (issue 14): errors in spoold's terms, one daemon per spool, private state.

Through the real CLI and daemon against a real SQLite catalog (acceptance 5 and 6).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cli import run_spoold, write_config
from support.daemonproc import DaemonProc, wait_for
from support.tables import committed_keys, read_table

DEADLINE_S = 90.0
ROW = b'{"part_id": "a:0", "text": "hi"}\n'


def typo_config(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    return write_config(tmp_path, catalog=f'[catalog]\ntype = "sql"\nurii = "sqlite:///{state}/catalog.db"\n'
                                           f'warehouse = "file://{state}/warehouse"\n')


@pytest.mark.parametrize("command", [("flush",), ("status",), ("run",), ("append", "t.x"), ("quarantine",)])
def test_a_catalog_key_typo_is_refused_at_load_naming_the_key(tmp_path: Path, command: tuple[str, ...]) -> None:
    r = run_spoold(*command, "--config", str(typo_config(tmp_path)), input=ROW, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 2 and r.stdout == b"", err
    assert err.startswith("spoold: error: unknown key [catalog] urii (did you mean uri?)") and err.count("\n") == 1
    assert "--uri" not in err and "PYICEBERG" not in err


def test_a_failed_flush_says_so_once_and_never_that_it_had_nothing_to_do(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("")
    db = tmp_path / "blocker" / "catalog.db"
    cfg = write_config(tmp_path, catalog=f'[catalog]\ntype = "sql"\nuri = "sqlite:///{db}"\n'
                                         f'warehouse = "file://{tmp_path}/wh"\n')
    assert run_spoold("append", "t.x", "--config", str(cfg), input=ROW).returncode == 0
    r = run_spoold("flush", "--config", str(cfg))
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 1 and out == "", out
    assert err.count("\n") == 1 and err.startswith("spoold: error: t.x: "), err
    assert str(db) in err and "[catalog] uri" in err and "--uri" not in err
    doc = json.loads(run_spoold("flush", "--json", "--config", str(cfg)).stdout)
    assert doc["tables"] == {} and set(doc["errors"]) == {"t.x"}
    (tmp_path / "idle").mkdir()
    idle = run_spoold("flush", "--config", str(write_config(tmp_path / "idle")))
    assert idle.returncode == 0 and idle.stdout == b"nothing to flush\n"  # only when there was nothing


def test_a_failing_daemon_keeps_saying_so_at_a_bounded_rate(tmp_path: Path, daemons: Callable[..., DaemonProc]) -> None:
    """First failure at once, then again after [daemon] log_repeat_s with how many went unreported."""
    (tmp_path / "blocker").write_text("")
    cfg = write_config(tmp_path, "[flush]\ndebounce_s = 0.2\nmax_delay_s = 1\nretry_max_s = 0.5\n"
                                 "[daemon]\nlog_repeat_s = 3\n",
                       catalog=f'[catalog]\ntype = "sql"\nuri = "sqlite:///{tmp_path}/blocker/c.db"\n'
                               f'warehouse = "file://{tmp_path}/wh"\n')
    assert run_spoold("append", "t.x", "--config", str(cfg), input=ROW).returncode == 0
    d = daemons(cfg)
    failures = lambda: [ln for ln in d.log().splitlines() if "flush failed" in ln]  # noqa: E731
    wait_for(lambda: len(failures()) >= 3, "three reports of the failing flush")
    first, second = failures()[:2]
    assert "(failure 1)" in first and "[catalog] uri" in first and "blocker/c.db" in first
    assert "more since the last report)" in second
    assert d.stop() == 0


def test_a_second_daemon_on_one_spool_root_exits_1_naming_the_first(tmp_path: Path,
                                                                    daemons: Callable[..., DaemonProc]) -> None:
    cfg = write_config(tmp_path, "[flush]\ndebounce_s = 0.2\nmax_delay_s = 1\n")
    first = daemons(cfg)
    other = write_config(tmp_path, "[flush]\ndebounce_s = 5\nmax_delay_s = 10\n", name="other.toml")  # same root
    second = daemons(other, ready=False)
    assert second.proc.wait(DEADLINE_S) == 1
    err = second.log()
    assert "already running" in err and f"pid {first.proc.pid}" in err and err.count("\n") == 1, err
    assert first.proc.poll() is None  # the first goes on undisturbed
    assert run_spoold("append", "t.x", "--config", str(cfg), input=ROW).returncode == 0
    wait_for(lambda: (tmp_path / "state" / "catalog.db").exists() and _committed(cfg) == ["a:0"], "a commit")
    assert first.stop() == 0
    third = daemons(other)  # the lock went with the first daemon
    assert third.stop() == 0


def _committed(cfg: Path) -> list[str]:
    return committed_keys(cfg, "t.x")


def test_the_embedded_state_directory_is_private(tmp_path: Path) -> None:
    """No config at all: spool, catalog and warehouse live in a 0700 directory."""
    state = tmp_path / "xdg-state" / "spoold"  # $XDG_STATE_HOME is set by the test fixture
    assert not state.exists()
    old = os.umask(0o022)
    try:
        assert run_spoold("append", "t.x", input=ROW).returncode == 0
        r = run_spoold("flush")
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(state) == 0o700
    assert mode(state / "catalog.db") == 0o600 and mode(state / "warehouse") == 0o700
    assert mode(state / "spool") == 0o700
    parquet = list((state / "warehouse").rglob("*.parquet"))
    assert parquet  # readable only through the 0700 directories above them


def test_a_declared_type_change_iceberg_cannot_make_is_refused_naming_both_types(tmp_path: Path) -> None:
    decl = '[tables."t.x".columns]\npart_id = "string!"\nn = "{}"\n'
    cfg = write_config(tmp_path, decl.format("int"))
    assert run_spoold("append", "t.x", "--config", str(cfg), input=b'{"part_id": "a", "n": 1}\n').returncode == 0
    assert run_spoold("flush", "--config", str(cfg)).returncode == 0
    cfg = write_config(tmp_path, decl.format("string"))
    assert run_spoold("append", "t.x", "--config", str(cfg), input=b'{"part_id": "b", "n": "x"}\n').returncode == 0
    r = run_spoold("flush", "--config", str(cfg))
    err = r.stderr.decode()
    assert r.returncode == 2 and err.count("\n") == 1, err
    assert "column 'n' is int" in err and "declares string" in err
    status = json.loads(run_spoold("status", "t.x", "--json", "--config", str(cfg)).stdout)["tables"]["t.x"]
    assert status["spooled_rows"] == 1 and status["committed_rows"] == 1  # kept for a fixed config
    cfg = write_config(tmp_path, decl.format("long"))  # a widening: the column is promoted
    assert run_spoold("append", "t.x", "--config", str(cfg), input=b'{"part_id": "c", "n": 5000000000}\n'
                      ).returncode == 0
    r = run_spoold("flush", "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    tbl = read_table(cfg, "t.x")
    assert str(tbl.schema.field("n").type) == "int64"
    assert sorted(tbl.column("part_id").to_pylist()) == ["a", "c"]  # "b" was quarantined: "x" is no long
