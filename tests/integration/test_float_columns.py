"""A declared ``float`` column (issue 21): accepted, checked against a 32-bit float's range, and widened to
``double`` in place when the config says so (the widening docs/configuration.md names), through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

from support.cli import run_spoold, write_config
from support.tables import load_table

T = "ev.f"


def cfg_with(tmp_path: Path, typ: str) -> Path:
    return write_config(tmp_path, f'[tables."{T}".columns]\npart_id = "string!"\nx = "{typ}"\n')


def test_float_is_a_column_type_that_widens_to_double(tmp_path: Path) -> None:
    cfg = cfg_with(tmp_path, "float")
    refused = run_spoold("append", T, "--config", str(cfg), input=b'{"part_id": "big", "x": 1e39}\n')
    assert refused.returncode == 2 and b"line 1" in refused.stderr and b"float" in refused.stderr, refused.stderr
    assert run_spoold("append", T, "--config", str(cfg), input=b'{"part_id": "a", "x": 1.5}\n').returncode == 0
    assert json.loads(run_spoold("flush", "--json", "--config", str(cfg)).stdout)["tables"][T]["committed"] == 1
    assert str(load_table(cfg, T).schema().find_field("x").field_type) == "float"

    cfg = cfg_with(tmp_path, "double")  # widened: the table's column is promoted at the next commit
    row = b'{"part_id": "b", "x": 1e300}\n'
    assert run_spoold("append", T, "--config", str(cfg), input=row).returncode == 0
    r = run_spoold("flush", "--json", "--config", str(cfg))
    assert r.returncode == 0 and json.loads(r.stdout)["tables"][T]["committed"] == 1, r.stderr
    tbl = load_table(cfg, T)
    assert str(tbl.schema().find_field("x").field_type) == "double"
    assert sorted(tbl.scan().to_arrow().column("x").to_pylist()) == [1.5, 1e300]
