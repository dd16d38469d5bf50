"""``spoold quarantine drop`` (issue 21): records that can never pass are discarded, counted, and said so.

Through the real CLI on a real spool and SQLite catalog: the hints tell a
replay (a cure by config) from a drop (never passes); a drop without --yes
asks on a terminal and refuses (exit 2) elsewhere; ``--reason`` picks records;
status counts what went; a kill between two files leaves every record whole.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
from support import zygote
from support.cli import run_spoold, write_config
from support.testhooks import Hooks

from spoold.config import load_config
from spoold.spool.spool import Spool

T = "ev.drop"
DECLARED = f'[tables."{T}".columns]\npart_id = "string!"\nn = "int"\n'


def ok(proc: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert proc.returncode == 0, (proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def quarantine_some(cfg: Path, tag: str) -> None:
    """Spool a line that is not JSON, a bad envelope, a row whose value does not cast and a good row; flush."""
    Spool.from_config(load_config(cfg)).append_lines(T, [
        f"not json {tag}\n".encode(),
        b'{"version":2,"columns":["part_id"],"rows":[["v-' + tag.encode() + b'"]]}\n',
        b'{"version":1,"columns":["part_id","n"],"rows":[["c-' + tag.encode() + b'","seven"],["g-'
        + tag.encode() + b'",7]]}\n',
    ])
    ok(run_spoold("flush", "--config", str(cfg)))


def records(cfg: Path) -> list[dict[str, Any]]:
    """Every quarantine record on disk; each line must be a whole record."""
    qdir = Spool.from_config(load_config(cfg)).table_dir(T) / "quarantine"
    return [orjson.loads(line) for p in sorted(qdir.glob("*.jsonl")) for line in p.read_bytes().splitlines()]


def status(cfg: Path) -> dict[str, Any]:
    return json.loads(ok(run_spoold("status", "--json", "--config", str(cfg))).stdout)["tables"][T]


def test_drop_by_reason_then_all_counted_in_status_and_hinted(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, DECLARED)
    quarantine_some(cfg, "a")
    text = ok(run_spoold("quarantine", T, "--config", str(cfg))).stdout.decode()
    # The cast failure may pass after a config change: replay; the other two never can: drop.
    assert "1  column 'n': cannot cast a value to int\n" in text and "1  version must be the integer 1  (can " \
           "never pass)\n" in text and "1  not valid UTF-8 JSON  (can never pass)\n" in text, text
    assert f"fix the cause (config, table), then `spoold quarantine replay {T}` (it keeps" in text, text
    assert f"`spoold quarantine drop {T} --reason 'not valid UTF-8 JSON'`; `spoold quarantine drop {T} " \
           "--reason 'version must be'` discards them" in text, text

    refused = run_spoold("quarantine", "drop", T, "--config", str(cfg), input=b"y\n")  # stdin is no terminal
    assert refused.returncode == 2 and b"pass --yes" in refused.stderr and refused.stderr.count(b"\n") == 1
    assert len(records(cfg)) == 3

    out = ok(run_spoold("quarantine", "drop", T, "--reason", "not valid UTF-8 JSON", "--yes", "--json",
                        "--config", str(cfg)))
    assert json.loads(out.stdout) == {"table": T, "dropped": 1, "kept": 2}
    assert sorted(r["reason"][:9] for r in records(cfg)) == ["column 'n", "version m"]
    s = status(cfg)
    assert (s["quarantined"], s["dropped"]) == (2, 1)
    assert "quarantined 2 (1 dropped before)" in ok(run_spoold("status", "--config", str(cfg))).stdout.decode()

    out = ok(run_spoold("quarantine", "drop", T, "--yes", "--config", str(cfg)))
    assert out.stdout.decode().startswith(f"{T}: dropped 2 quarantined record(s); kept 0")
    s = status(cfg)
    assert (s["quarantined"], s["dropped"]) == (0, 3) and records(cfg) == []


def test_drop_asks_on_a_terminal(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, DECLARED)
    quarantine_some(cfg, "a")
    for answer, rc, left in ((b"n\n", 1, 3), (b"y\n", 0, 0)):
        master, slave = os.openpty()
        try:
            proc = zygote.popen([sys.executable, "-m", "spoold", "quarantine", "drop", T, "--config", str(cfg)],
                                    stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            os.close(slave)
            os.write(master, answer)
            out, err = proc.communicate(timeout=60)
        finally:
            os.close(master)
        assert proc.returncode == rc, err
        assert b"drop 3 quarantined record(s) of ev.drop? They cannot be brought back. [y/N]" in err
        assert len(records(cfg)) == left


def test_a_drop_killed_between_two_files_leaves_every_record_whole(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, DECLARED)
    quarantine_some(cfg, "a")
    quarantine_some(cfg, "b")  # a second flush: a second quarantine file
    assert len(records(cfg)) == 6
    hooks = Hooks(tmp_path / "hooks", pause_at="drop.rewritten@1")
    proc = zygote.popen([sys.executable, "-m", "spoold", "quarantine", "drop", T, "--reason", "not valid",
                             "--yes", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **hooks.env()})
    try:
        hooks.wait_paused(proc.pid, alive=lambda: proc.poll() is None)
    finally:
        proc.kill()
        proc.wait()
    left = records(cfg)  # parses every line: no record is half there
    assert sum(r["reason"].startswith("not valid") for r in left) == 1 and len(left) == 5
    out = ok(run_spoold("quarantine", "drop", T, "--reason", "not valid", "--yes", "--json", "--config", str(cfg)))
    assert json.loads(out.stdout) == {"table": T, "dropped": 1, "kept": 4}
    assert not any(r["reason"].startswith("not valid") for r in records(cfg)) and len(records(cfg)) == 4
