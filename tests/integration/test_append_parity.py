"""``spoold append`` and ``Spool.append`` judge a row alike (issue 21): the CLI refuses a value that does not
fit a declared column; the Python API spools it (flush quarantines it, with its reason, replayable) unless
asked to check, and then refuses it with the CLI's very reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli import run_spoold, write_config

from spoold.config import load_config
from spoold.errors import InputError
from spoold.spool.spool import Spool

T = "ev.parity"


def test_the_cli_and_spool_append_check_give_the_same_verdict(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f'[tables."{T}".columns]\npart_id = "string!"\nn = "int"\n')
    good, bad = {"part_id": "a", "n": 1}, {"part_id": "b", "n": "seven"}
    cli = run_spoold("append", T, "--config", str(cfg),
                     input=b"".join(json.dumps(r).encode() + b"\n" for r in (good, bad)))
    assert cli.returncode == 2
    cli_reason = cli.stderr.decode().strip().removeprefix("spoold: error: line 2: ")

    spool = Spool.from_config(load_config(cfg))
    with pytest.raises(InputError) as e:
        spool.append(T, [good, bad], check=True)
    assert str(e.value) == f"table {T}: row 2: {cli_reason}"
    assert spool.pending(T) == []  # nothing appended

    assert spool.append(T, [good, bad]) == 2  # unchecked: spooled, and the flush quarantines it with that reason
    out = json.loads(run_spoold("flush", "--json", "--config", str(cfg)).stdout)["tables"][T]
    assert (out["committed"], out["quarantined"]) == (1, 1)
    reasons = json.loads(run_spoold("quarantine", T, "--json", "--config", str(cfg)).stdout)["tables"][T]["reasons"]
    assert list(reasons) == ["column 'n': cannot cast a value to int"]
