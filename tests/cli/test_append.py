"""``spoold append`` and ``spoold status`` through the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.cli import run_spoold
from support.tables import validated_keys

from spoold.config import TableSpec, load_config
from spoold.envelope import Validator
from spoold.spool.files import ACTIVE
from spoold.spool.spool import Spool

T = "chat.parts"
DECLARED = f"""
[tables."{T}".columns]
part_id = "string!"
message_id = "string"
part_index = "int"
ts = "timestamptz"
text = "string"
"""


def spooled_keys(cfg: Path, table: str = T) -> list[str]:
    return validated_keys(cfg, table)  # every line and row must pass


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(r: subprocess.CompletedProcess[bytes]) -> str:
    err = r.stderr.decode()
    assert r.returncode == 2, (r.returncode, err)
    assert err.count("\n") == 1 and err.startswith("spoold: error: "), err
    return err


@pytest.fixture
def cfg(config_path: Callable[..., Path]) -> Path:
    return config_path(DECLARED)


# -- append -------------------------------------------------------------------------------

def test_append_from_a_file_and_from_stdin(cfg: Path, tmp_path: Path) -> None:
    src = tmp_path / "rows.jsonl"
    src.write_text('{"part_id": "a", "text": "hi", "ts": "2026-01-01T00:00:00Z"}\n\n'
                   '{"message_id": "m", "part_index": 0, "text": {"rich": true}}\n')
    r = run_spoold("append", T, str(src), "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == f"appended 2 row(s) to {T}\n"
    r = run_spoold("--config", str(cfg), "append", T, "-", "--json", input=b'{"part_id": "b"}')  # no final newline
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"table": T, "appended": 1}
    r = run_spoold("append", T, "--config", str(cfg), input=b'{"part_id": "c"}\r\n')  # FILE defaults to stdin
    assert r.returncode == 0, r.stderr
    assert spooled_keys(cfg) == ["a", "m:0", "b", "c"]


def test_empty_input_appends_nothing(cfg: Path) -> None:
    r = run_spoold("append", T, "--config", str(cfg), "--json", input=b"\n\n")
    assert r.returncode == 0 and json.loads(r.stdout) == {"table": T, "appended": 0}
    assert not (load_config(cfg).spool_root / T / ACTIVE).exists()


def test_a_big_input_is_spooled_whole(cfg: Path) -> None:
    data = b"".join(b'{"part_id": "k%d", "part_index": %d}\n' % (i, i) for i in range(5000))
    r = run_spoold("append", T, "--config", str(cfg), input=data)
    assert r.returncode == 0, r.stderr
    assert spooled_keys(cfg) == [f"k{i}" for i in range(5000)]


BAD_INPUTS = [
    (b'{"part_id": "a"}\n{"part_id": "b"\n{"part_id": "c"}\n', "line 2: not valid JSON"),
    (b'{"part_id": "a"}\n\n{"part_id": "b"}\n[1, 2]\n', "line 4: not a JSON object"),
    (b'"just a string"\n', "line 1: not a JSON object"),
    (b'{"part_id": "a"}\nnull\n', "line 2: not a JSON object"),
    (b'{"part_id": "a"}\n42\n', "line 2: not a JSON object"),
    (b'{"part_id": "a"}\n{"part_id": "\xff"}\n', "line 2: not valid JSON"),
    (b'{"part_id": "a"}\n{}\n', "line 2: empty object"),
    (b'{"text": "no key"}\n', "line 1: no usable key"),
    (b'{"part_id": ""}\n', "line 1: no usable key"),
    (b'{"part_id": "a", "part_index": "zero"}\n', "line 1: column 'part_index': cannot cast"),
    (b'{"part_id": "a", "part_index": 2147483648}\n', "line 1: column 'part_index': cannot cast"),
    (b'{"part_id": "a", "ts": "noon"}\n', "line 1: column 'ts': cannot cast"),
    (b'{"part_id": "a", "text": 5}\n', "line 1: column 'text': cannot cast"),
    (b'{"part_id": "a", "": 5}\n', "line 1: empty column name"),
]


@pytest.mark.parametrize(("data", "message"), BAD_INPUTS)
def test_bad_input_exits_2_naming_the_line_and_appends_nothing(cfg: Path, data: bytes, message: str) -> None:
    assert run_spoold("append", T, "--config", str(cfg), input=b'{"part_id": "before"}\n').returncode == 0
    root = load_config(cfg).spool_root
    before = tree(root)
    r = run_spoold("append", T, "--config", str(cfg), input=data)
    err = one_line_error(r)
    assert message in err, err
    assert tree(root) == before
    assert spooled_keys(cfg) == ["before"]


def test_every_line_of_good_append_input_is_accepted_by_flush_rules(cfg: Path) -> None:
    """What append accepts, the flush rules accept: nothing it acknowledges ends up quarantined."""
    data = b"\n".join([
        b'{"part_id": "a", "extra": {"nested": [1, 2]}}',
        b'{"part_id": "b", "extra": null, "n": 1}',
        b'{"message_id": "m", "part_index": 3, "n": 3}',
        b'{"part_id": "c", "ts": "2026-01-01T00:00:00+02:00", "flag": true}',
    ])
    r = run_spoold("append", T, "--config", str(cfg), input=data)
    assert r.returncode == 0, r.stderr
    assert spooled_keys(cfg) == ["a", "b", "m:3", "c"]  # asserts no line and no row is rejected


@pytest.mark.parametrize("table", ["../x", "a", ".a.b", "a..b", "a/b", "a.b.", "a.b c"])
def test_bad_table_name_exits_2_and_creates_nothing(cfg: Path, tmp_path: Path, table: str) -> None:
    before = sorted(p for p in tmp_path.rglob("*"))
    r = run_spoold("append", table, "--config", str(cfg), input=b'{"part_id": "a"}\n')
    err = one_line_error(r)
    assert "bad table identifier" in err and repr(table) in err
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_missing_file_exits_2_naming_it(cfg: Path, tmp_path: Path) -> None:
    before = sorted(tmp_path.rglob("*"))
    err = one_line_error(run_spoold("append", T, str(tmp_path / "nope.jsonl"), "--config", str(cfg)))
    assert "no such file" in err and "nope.jsonl" in err
    err = one_line_error(run_spoold("append", T, str(tmp_path), "--config", str(cfg)))
    assert "cannot read" in err
    assert sorted(tmp_path.rglob("*")) == before


def test_append_does_not_import_pyarrow_or_pyiceberg(cfg: Path) -> None:
    code = (
        "import sys, io\n"
        "from spoold.cli.entry import main\n"
        "sys.stdin = io.TextIOWrapper(io.BytesIO(b'{\"part_id\": \"light\"}\\n'))\n"
        f"assert main(['append', {T!r}, '--config', {str(cfg)!r}]) == 0\n"
        "heavy = sorted(m for m in sys.modules if m.startswith(('pyarrow', 'pyiceberg', 'numpy', 'sqlalchemy')))\n"
        "assert not heavy, heavy\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert spooled_keys(cfg) == ["light"]


def test_the_python_api_appends_with_the_same_layout(cfg: Path) -> None:
    import spoold

    spool = spoold.Spool.from_config(spoold.load_config(cfg))
    assert spool.append(T, [{"part_id": "api"}]) == 1
    assert run_spoold("append", T, "--config", str(cfg), input=b'{"part_id": "cli"}').returncode == 0
    assert spooled_keys(cfg) == ["api", "cli"]


# -- status ---------------------------------------------------------------------------------

def status(cfg: Path, *tables: str) -> dict[str, Any]:
    r = run_spoold("status", *tables, "--json", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(b"\n") == 1
    return json.loads(r.stdout)


FIELDS = {"spooled_rows", "spooled_files", "oldest_pending_s", "quarantined", "committed_rows", "snapshot_id"}


def test_status_of_an_empty_spool(cfg: Path) -> None:
    doc = status(cfg)
    assert set(doc["tables"]) == {T}  # declared tables are listed even before any row
    info = doc["tables"][T]
    assert FIELDS <= set(info)
    assert (info["spooled_rows"], info["spooled_files"], info["oldest_pending_s"], info["quarantined"]) == (0, 0,
                                                                                                          None, 0)
    assert info["snapshot_id"] is None and info["committed_rows"] in (0, None)


def test_status_counts_spooled_rows_files_age_and_quarantine(cfg: Path) -> None:
    config = load_config(cfg)
    spool = Spool.from_config(config)
    spool.append(T, [{"part_id": f"a{i}"} for i in range(3)])
    spool.rotate(T)
    spool.append("other.table", [{"part_id": "x"}])
    time.sleep(1.1)  # the oldest row is now over a second old
    r = run_spoold("append", T, "--config", str(cfg), input=b'{"part_id": "b0"}\n{"part_id": "b1"}\n')
    assert r.returncode == 0
    with open(spool.table_dir(T) / ACTIVE, "ab") as f:
        f.write(b'{"version": 1, "columns": ["part_id"], "rows": [["torn')  # a producer died mid-write
    before = tree(config.spool_root)
    doc = status(cfg)
    assert tree(config.spool_root) == before  # status never changes the spool
    info = doc["tables"][T]
    assert info["spooled_rows"] == 5 and info["spooled_files"] == 2 and info["quarantined"] == 0
    assert 1.0 <= info["oldest_pending_s"] < 600
    assert doc["tables"]["other.table"]["spooled_rows"] == 1
    spool.append(T, [{"part_id": "c"}])  # repairs the torn tail: one quarantined record
    info = status(cfg, T)["tables"][T]
    assert set(status(cfg, T)["tables"]) == {T}
    assert info["spooled_rows"] == 6 and info["quarantined"] == 1


def test_status_after_a_flush_shows_committed_rows_and_snapshot(cfg: Path) -> None:
    assert run_spoold("append", T, "--config", str(cfg),
                      input=b'{"part_id": "a"}\n{"part_id": "b"}\n{"part_id": "c"}\n').returncode == 0
    r = run_spoold("flush", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    info = status(cfg)["tables"][T]
    assert info["committed_rows"] == 3 and isinstance(info["snapshot_id"], int)
    assert (info["spooled_rows"], info["spooled_files"], info["oldest_pending_s"]) == (0, 0, None)


def test_status_without_a_reachable_catalog_still_answers(config_path: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where the catalog's directory should be")
    cfg = config_path(DECLARED, catalog=f'[catalog]\ntype = "sql"\nuri = "sqlite:///{tmp_path}/blocker/cat.db"\n'
                                        f'warehouse = "file://{tmp_path}/wh"\n')
    Spool.from_config(load_config(cfg)).append(T, [{"part_id": "a"}])
    doc = status(cfg)
    info = doc["tables"][T]
    assert info["spooled_rows"] == 1
    assert info["committed_rows"] is None and info["snapshot_id"] is None
    assert isinstance(doc["catalog_error"], str) and doc["catalog_error"]
    r = run_spoold("status", "--config", str(cfg))
    assert r.returncode == 0 and "catalog unreachable" in r.stdout.decode()


def test_status_text_output_is_one_line_per_table(cfg: Path) -> None:
    Spool.from_config(load_config(cfg)).append(T, [{"part_id": "a"}, {"part_id": "b"}])
    r = run_spoold("status", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert out.startswith(f"{T}: spooled 2 row(s) in 1 file(s)")


def test_status_of_a_bad_table_name_exits_2(cfg: Path) -> None:
    err = one_line_error(run_spoold("status", "a/b", "--config", str(cfg)))
    assert "bad table identifier" in err


def test_validator_used_by_append_is_the_shared_one(cfg: Path) -> None:
    """The append path rejects exactly what the shared rules reject (same message)."""
    v = Validator(TableSpec(T))
    verdict = v.rows(["part_id"], [[5]])
    r = run_spoold("append", "x.y", "--config", str(cfg), input=b'{"part_id": 5}\n')
    assert verdict.rejects[0].reason in one_line_error(r)
