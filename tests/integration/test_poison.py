"""No row can wedge a table (issue 13): poison rows go to quarantine with their reason, the rest lands once.

Each test reproduces one way a single bad input used to stop a table for good
(every flush failing, nothing quarantined), through the real CLI against a
real SQLite catalog.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.cli import run_spoold, write_config
from support.tables import read_table
from support.zygote import NO_ZYGOTE

from spoold.config import load_config
from spoold.spool.files import ACTIVE
from spoold.spool.spool import Spool

DECLARED = """
[tables."app.s"]
partition_by = ["identity(session_id)"]
[tables."app.s".columns]
part_id = "string!"
session_id = "string"
n = "long"
"""


def deep(levels: int) -> bytes:
    """A JSON array nested ``levels`` deep (orjson reads 1,024 levels but writes at most ~253)."""
    return b"[" * levels + b"]" * levels


def envelope_line(columns: list[str], rows: list[bytes]) -> bytes:
    """An envelope written by hand, so it can hold values orjson could not write."""
    return b'{"version":1,"columns":' + orjson.dumps(columns) + b',"rows":[' + b",".join(rows) + b"]}\n"


def spool_raw(cfg: Path, table: str, lines: list[bytes]) -> None:
    """Put envelope lines into the table's active spool file as a producer with another JSON library would."""
    d = Spool.from_config(load_config(cfg)).table_dir(table, create=True)
    with open(d / ACTIVE, "ab") as f:
        f.write(b"".join(lines))


def flush(cfg: Path, *tables: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    proc = run_spoold("flush", "--config", str(cfg), "--json", *tables, env=env)
    return proc.returncode, json.loads(proc.stdout), proc.stderr.decode()


def keys(cfg: Path, table: str) -> list[str]:
    return sorted(read_table(cfg, table).column("part_id").to_pylist())


def quarantine(cfg: Path, table: str) -> list[dict[str, Any]]:
    qdir = Spool.from_config(load_config(cfg)).table_dir(table) / "quarantine"
    return [json.loads(line) for p in sorted(qdir.glob("*.jsonl")) for line in p.read_text().splitlines()]


def test_a_value_nested_too_deeply_in_a_spool_envelope_is_quarantined_and_every_table_flushes(
    tmp_path: Path,
) -> None:
    cfg = write_config(tmp_path)
    spool_raw(cfg, "app.deep", [envelope_line(["part_id", "x"], [b'["k1",' + deep(300) + b"]", b'["k2","ok"]']),
                                envelope_line(["part_id", "n"], [b'["k4",4]', b'["k3",' + deep(300) + b"]"])])
    Spool.from_config(load_config(cfg)).append("app.other", [{"part_id": "o1"}])
    rc, doc, err = flush(cfg, "app.deep", "app.other")
    assert rc == 0, err
    assert doc["tables"] == {"app.deep": {"committed": 2, "deduplicated": 0, "quarantined": 2},
                             "app.other": {"committed": 1, "deduplicated": 0, "quarantined": 0}}
    assert keys(cfg, "app.deep") == ["k2", "k4"] and keys(cfg, "app.other") == ["o1"]
    reasons = sorted(r["reason"] for r in quarantine(cfg, "app.deep"))
    assert "nested too deeply" in reasons[1] and "cannot cast" in reasons[0], reasons


def test_spoold_append_refuses_a_value_nested_too_deeply_naming_the_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    for levels in (252, 300):  # fits alone but not in an envelope; too deep for the rules themselves
        data = b'{"part_id": "a"}\n{"part_id": "b", "x": ' + deep(levels) + b"}\n"
        proc = run_spoold("append", "app.deep", "--config", str(cfg), input=data)
        assert proc.returncode == 2, proc.stderr
        err = proc.stderr.decode()
        assert err.count("\n") == 1 and "line 2" in err and "nested too deeply" in err, err
    assert not (Spool.from_config(load_config(cfg)).table_dir("app.deep") / ACTIVE).exists()


def test_a_column_name_with_a_dot_is_one_column_never_a_path(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    spool = Spool.from_config(load_config(cfg))
    spool.append("app.dots", [{"part_id": "a", "n": 1}])
    assert flush(cfg)[0] == 0
    spool.append("app.dots", [{"part_id": "b", "meta.src": "web", "n": 2}])  # a new column on an existing table
    rc, doc, err = flush(cfg)
    assert rc == 0 and doc["tables"]["app.dots"] == {"committed": 1, "deduplicated": 0, "quarantined": 0}, err
    rows = {r["part_id"]: r for r in read_table(cfg, "app.dots").to_pylist()}
    assert rows["b"]["meta.src"] == "web" and rows["a"]["meta.src"] is None


def test_a_partition_value_too_long_for_a_file_name_quarantines_that_row_only(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, DECLARED)
    spool = Spool.from_config(load_config(cfg))
    rows = [{"part_id": f"k{i}", "session_id": f"s{i % 3}", "n": i} for i in range(40)]
    rows[17]["session_id"] = "x" * 300  # identity(session_id) makes it a 300-byte directory name
    spool.append("app.s", rows)
    rc, doc, err = flush(cfg)
    assert rc == 0, err
    assert doc["tables"]["app.s"] == {"committed": 39, "deduplicated": 0, "quarantined": 1}
    assert keys(cfg, "app.s") == sorted(f"k{i}" for i in range(40) if i != 17)
    [rec] = quarantine(cfg, "app.s")
    assert rec["key"] == "k17"  # the reason in spoold's words: no library text, no path, the same for every row
    assert rec["reason"] == "cannot commit: a partition value makes a file name longer than the file system allows"
    assert dict(zip(rec["columns"], rec["row"])) == {"part_id": "k17", "session_id": "x" * 300, "n": 17}
    # The table is not wedged: later rows flush as usual, and a retry re-quarantines nothing twice.
    spool.append("app.s", [{"part_id": "k40", "session_id": "s1", "n": 40}])
    rc, doc, err = flush(cfg)
    assert rc == 0 and doc["tables"]["app.s"]["committed"] == 1, err
    assert len(quarantine(cfg, "app.s")) == 1


def test_a_flush_killed_while_isolating_a_poison_row_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """The halves that committed are settled away on the retry; the poison row is quarantined once."""
    cfg = write_config(tmp_path, DECLARED)
    spool = Spool.from_config(load_config(cfg))
    rows = [{"part_id": f"k{i}", "session_id": "y" * 300 if i in (3, 11) else "s", "n": i} for i in range(16)]
    spool.append("app.s", rows)
    code = (
        "import sys\n"
        "from spoold.config import load_config\n"
        "from spoold.iceberg.sink import Sink\n"
        "from spoold.spool.spool import Spool\n"
        "from spoold.flush.flush import flush_table\n"
        "real, n = Sink.commit, [0]\n"
        "def commit(self, *a, **k):\n"
        "    out = real(self, *a, **k)\n"
        "    n[0] += out.committed > 0\n"
        "    if n[0] == 2: import os; os._exit(9)  # killed after two halves committed\n"
        "    return out\n"
        "Sink.commit = commit\n"
        "c = load_config(sys.argv[1])\n"
        "flush_table(c, Spool.from_config(c), Sink(c), 'app.s')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()
    assert 0 < len(keys(cfg, "app.s")) < 14  # it died half-way through the isolation
    rc, doc, err = flush(cfg)
    assert rc == 0, err
    assert keys(cfg, "app.s") == sorted(f"k{i}" for i in range(16) if i not in (3, 11))
    assert sorted(r["key"] for r in quarantine(cfg, "app.s")) == ["k11", "k3"]


@pytest.mark.slow
def test_flushing_rows_of_a_megabyte_each_stays_within_a_memory_bound(tmp_path: Path) -> None:
    """Chunks are cut by bytes as well as rows: 400 rows of 1 MB never sit in memory at once."""
    cfg = write_config(tmp_path)
    spool = Spool.from_config(load_config(cfg))
    for i in range(0, 400, 20):
        spool.append("app.big", [{"part_id": f"b{j}", "text": f"{j:07d}" * 150_000} for j in range(i, i + 20)])
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    rc, doc, err = flush(cfg, env={NO_ZYGOTE: "0"})  # a child of this process, for RUSAGE_CHILDREN
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert rc == 0 and doc["tables"]["app.big"]["committed"] == 400, err
    assert peak_mb > before / 1024  # the flush was the largest child so far: the figure is its own
    print(f"peak RSS of `spoold flush` of 400 rows of 1 MB: {peak_mb:.0f} MB")
    assert peak_mb < 700, f"peak RSS {peak_mb:.0f} MB"
