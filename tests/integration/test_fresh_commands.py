"""Every command once in a new interpreter of its own (``SPOOLD_TEST_ZYGOTE=0``).

The rest of the suite starts most ``spoold`` processes through its worker's
zygote (tests/support/zygote.py), which has imported all of spoold already: a
command whose own lazy imports are missing, or circular in the order it takes
them, would pass there. Here each runs as a user runs it. (``run`` is started
fresh by the tests that measure the daemon's memory and threads.)
"""

from __future__ import annotations

import json
from pathlib import Path

from support.cli import run_spoold, write_config
from support.zygote import NO_ZYGOTE

from spoold.config import load_config
from spoold.spool.spool import Spool

T = "t.x"


def test_every_command_runs_in_a_new_interpreter(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f'[tables."{T}".columns]\npart_id = "string!"\nn = "long"\n')

    def ok(*args: str, input: bytes | None = None) -> str:
        r = run_spoold(*args, "--config", str(cfg), input=input, env={NO_ZYGOTE: "0"})
        assert r.returncode == 0, (args, r.stderr.decode(errors="replace"))
        return r.stdout.decode()

    ok("append", T, input=b'{"part_id": "a", "n": 1}\n')
    Spool.from_config(load_config(cfg)).append_lines(T, [b"not json\n"])
    assert json.loads(ok("flush", "--json"))["tables"][T]["committed"] == 1
    src = tmp_path / "history.jsonl"
    src.write_text('{"part_id": "b", "n": 2}\n')
    ok("backfill", T, "--source", str(src), "--format", "jsonl", "--all")
    assert json.loads(ok("status", T, "--json"))["tables"][T]["quarantined"] == 1
    assert json.loads(ok("quarantine", T, "--json"))["tables"][T]["records"] == 1
    ok("quarantine", "replay", T)
    ok("quarantine", "drop", T, "--yes")
    ok("maintain", "--older-than", "0s")
    ok("rebuild", T, "--dry-run")
    assert json.loads(ok("status", T, "--json"))["tables"][T]["committed_rows"] == 2
