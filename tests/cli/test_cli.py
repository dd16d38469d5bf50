"""The command line's contract: help, --config anywhere, exit codes 0/1/2, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support.cli import run_spoold, write_config

COMMANDS = ("run", "append", "flush", "backfill", "status")
ROW = b'{"part_id": "a"}\n'


def one_line(r: subprocess.CompletedProcess[bytes], code: int) -> str:
    err = r.stderr.decode()
    assert r.returncode == code, (r.returncode, err)
    assert err.count("\n") == 1 and err.startswith("spoold: error: ") and "Traceback" not in err, err
    return err


def test_help_lists_every_command_and_the_config_lookup() -> None:
    r = run_spoold("--help")
    out = r.stdout.decode()
    assert r.returncode == 0 and r.stderr == b""
    for cmd in COMMANDS:
        assert cmd in out
    assert "--config" in out and "SPOOLD_CONFIG" in out and "spoold.toml" in out


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd: str) -> None:
    r = run_spoold(cmd, "--help")
    assert r.returncode == 0 and b"--config" in r.stdout and r.stdout.startswith(f"usage: spoold {cmd}".encode())


def test_the_console_script_and_python_m_are_the_same_program(config_path: Callable[..., Path]) -> None:
    script = Path(sys.executable).parent / "spoold"
    assert script.is_file(), "the package should install a 'spoold' console script"
    cfg = config_path()
    r = subprocess.run([str(script), "append", "t.x", "--config", str(cfg), "--json"], input=ROW,
                       capture_output=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout) == {"table": "t.x", "appended": 1}
    r = subprocess.run([str(script), "--help"], capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout == run_spoold("--help").stdout


def test_config_works_before_and_after_the_command(config_path: Callable[..., Path]) -> None:
    cfg = config_path(name="elsewhere.toml")  # (./spoold.toml in the cwd is never read without --config)
    assert run_spoold("--config", str(cfg), "append", "t.x", input=ROW).returncode == 0
    assert run_spoold("append", "t.x", "--config", str(cfg), input=b'{"part_id": "b"}').returncode == 0
    before = run_spoold("--config", str(cfg), "status", "--json")
    after = run_spoold("status", "--json", "--config", str(cfg))
    assert before.returncode == 0 and after.returncode == 0, (before.stderr, after.stderr)
    for r in (before, after):
        assert json.loads(r.stdout)["tables"]["t.x"]["spooled_rows"] == 2
    # with no --config at all, the same command reads the embedded defaults: nothing spooled there
    r = run_spoold("status", "--json")
    assert r.returncode == 0 and "t.x" not in json.loads(r.stdout)["tables"]


def test_json_flag_works_before_and_after_the_command(config_path: Callable[..., Path]) -> None:
    cfg = config_path()
    for args in (("--json", "append", "t.x"), ("append", "t.x", "--json")):
        r = run_spoold(*args, "--config", str(cfg), input=ROW)
        assert r.returncode == 0 and json.loads(r.stdout)["appended"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "required: COMMAND"),
        (("bogus",), "invalid choice: 'bogus'"),
        (("append",), "required: table"),
        (("append", "a.b", "f1", "f2"), "unrecognized arguments"),
        (("status", "--bogus"), "unrecognized arguments: --bogus"),
        (("backfill", "a.b"), "--source"),
        (("backfill", "a.b", "--source", "x", "--limit", "0"), "--limit"),
        (("backfill", "a.b", "--source", "x", "--limit", "ten"), "--limit"),
        (("backfill", "a.b", "--source", "x", "--limit", "5", "--all"), "not allowed with"),
        (("backfill", "a.b", "--source", "x", "--format", "csv"), "--format"),
        (("--log-format", "xml", "status"), "--log-format"),
        (("--config",), "--config"),
    ],
)
def test_bad_usage_exits_2_with_one_line(args: tuple[str, ...], message: str) -> None:
    err = one_line(run_spoold(*args), 2)
    assert message in err, err


@pytest.mark.parametrize("cmd", [("append", "a/b"), ("status", "..x"), ("flush", "a"), ("backfill", "a..b",
                                                                                           "--source", "x")])
def test_bad_table_identifier_exits_2_for_every_command(cmd: tuple[str, ...],
                                                         config_path: Callable[..., Path]) -> None:
    err = one_line(run_spoold(*cmd, "--config", str(config_path()), input=ROW), 2)
    assert "bad table identifier" in err


def test_runtime_failure_exits_1_with_one_line(config_path: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    cfg = config_path(spool=str(tmp_path / "not-a-dir" / "spool"))
    err = one_line(run_spoold("append", "t.x", "--config", str(cfg), input=ROW), 1)
    assert "not-a-dir" in err


def test_flush_against_an_unreachable_catalog_exits_1(config_path: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("")
    cfg = config_path(catalog=f'[catalog]\ntype = "sql"\nuri = "sqlite:///{tmp_path}/blocker/cat.db"\n'
                              f'warehouse = "file://{tmp_path}/wh"\n')
    assert run_spoold("append", "t.x", "--config", str(cfg), input=ROW).returncode == 0
    r = run_spoold("flush", "--config", str(cfg))
    assert r.returncode == 1
    assert "spoold: error: t.x:" in r.stderr.decode() and "Traceback" not in r.stderr.decode()
    status = json.loads(run_spoold("status", "--json", "--config", str(cfg)).stdout)
    assert status["tables"]["t.x"]["spooled_rows"] == 1  # nothing lost: still in the spool


def test_main_is_callable_in_process(config_path: Callable[..., Path], capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from spoold.cli.entry import main

    cfg = config_path()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(ROW)))
    assert main(["append", "t.x", "--config", str(cfg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"table": "t.x", "appended": 1}
    assert main(["append", "t/x", "--config", str(cfg)]) == 2
    assert "bad table identifier" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def test_version_prints_the_package_version() -> None:
    import spoold

    r = run_spoold("--version")
    assert r.returncode == 0 and r.stdout.decode().strip() == f"spoold {spoold.__version__}"


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path: Path) -> None:
    """`spoold quarantine | head -1`: no "Broken pipe" traceback or error line, exit 141 (128 + SIGPIPE)."""
    from spoold.config import load_config
    from spoold.spool.spool import Spool

    cfg = write_config(tmp_path)
    spool = Spool.from_config(load_config(cfg))
    for i in range(300):  # a long listing: many tables, each a line
        spool.quarantine(f"t.q{i}", "x", [{"reason": "bad", "kind": "line", "file": "f", "line": 1, "at": 0.0}])
    proc = subprocess.run(f"{sys.executable} -m spoold quarantine --config {cfg} | head -1; "
                          "echo \"rc=${PIPESTATUS[0]}\" >&2", shell=True, executable="/bin/bash",
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.count("\n") == 1
    assert "Broken pipe" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "rc=141" in proc.stderr, proc.stderr


def test_status_before_the_spool_exists_does_not_call_a_declared_table_full(tmp_path: Path) -> None:
    """A fresh install: the spool root is made at the first append; until then no table is "spool full"."""
    cfg = write_config(tmp_path, '[tables."chat.parts".columns]\npart_id = "string!"\n')
    root = tmp_path / "state" / "spool"
    assert not root.exists()
    doc = json.loads(run_spoold("status", "--json", "--config", str(cfg)).stdout)
    assert doc["tables"]["chat.parts"]["spool_full"] is False
    text = run_spoold("status", "--config", str(cfg))
    assert text.returncode == 0 and b"SPOOL FULL" not in text.stdout, text.stdout
    assert not root.exists()  # status made nothing


def test_flush_of_an_unknown_table_is_bad_usage_and_an_idle_flush_says_so(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    unknown = run_spoold("flush", "no.such", "--config", str(cfg))
    assert unknown.returncode == 2 and b"table no.such: not in the config and nothing spooled" in unknown.stderr
    appended = run_spoold("append", "t.x", "--config", str(cfg), input=b'{"part_id": "a"}\n')
    assert appended.returncode == 0, appended.stderr
    first = run_spoold("flush", "--config", str(cfg))
    assert first.returncode == 0 and b"t.x: committed 1" in first.stdout
    again = run_spoold("flush", "--config", str(cfg))  # the table's spool is empty now
    assert again.returncode == 0 and again.stdout.strip() == b"nothing to flush", again.stdout


def test_an_unquoted_glob_gets_one_line_saying_to_quote_it(tmp_path: Path) -> None:
    """`spoold backfill t --source ~/x/*.jsonl`: the shell hands spoold every path; say what happened."""
    cfg = write_config(tmp_path)
    paths = []
    for i in range(50):
        (p := tmp_path / f"h{i:02d}.jsonl").write_text("{}\n")
        paths.append(str(p))
    r = run_spoold("backfill", "t.x", "--config", str(cfg), "--source", *paths)
    err = r.stderr.decode()
    assert r.returncode == 2 and err.count("\n") == 1, err
    assert "49 unexpected path(s)" in err and "and 46 more" in err and "unquoted glob" in err, err
    assert "--source '~/x/*.jsonl'" in err and "repeat --source" in err and paths[-1] not in err, err


def test_status_says_when_no_daemon_ever_ran(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, '[tables."chat.parts".columns]\npart_id = "string!"\n')
    text = run_spoold("status", "--config", str(cfg)).stdout.decode()
    assert text.startswith("chat.parts: spooled 0 row(s)"), text
    assert text.splitlines()[-1] == "daemon: not running (none has run on this spool root)", text
    empty = write_config(tmp_path / "empty")
    assert run_spoold("status", "--config", str(empty)).stdout.decode().splitlines() == [
        "no tables", "daemon: not running (none has run on this spool root)"]
