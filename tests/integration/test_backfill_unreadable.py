"""A backfill source that fails while being read (issue 15): named, counted, the others still backfilled,
and the run exits 1.

The failure is real: ``/proc/self/mem`` is a regular file that every read at
offset 0 fails with EIO (no page is mapped there), as a file on a failing disk
would; permissions cannot make a file unreadable for root, which tests may run as.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support.cli import run_spoold, write_config
from support.tables import read_table

TABLE = "chat.parts"
MEM = Path("/proc/self/mem")


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_text("".join(json.dumps({"part_id": f"a{i}", "text": "x"}) + "\n" for i in range(5)))
    (src / "b.jsonl").symlink_to(MEM)  # matched by the glob, opened fine, every read fails
    (src / "c.jsonl").write_text("".join(json.dumps({"part_id": f"c{i}", "text": "x"}) + "\n" for i in range(5)))
    return src


def test_an_unreadable_source_file_is_named_and_counted_and_the_others_land(tmp_path: Path, sources: Path) -> None:
    assert MEM.is_file(), "this test needs Linux's /proc"
    with pytest.raises(OSError):
        with open(MEM, "rb") as f:
            f.read(1)
    cfg = write_config(tmp_path)
    proc = run_spoold("backfill", TABLE, "--source", f"{sources}/*.jsonl", "--all", "--json", "--config", str(cfg))
    assert proc.returncode == 1, proc.stderr  # a runtime failure, though every readable row landed
    out = json.loads(proc.stdout)
    assert out["unreadable_sources"] == 1 and out["written"] == 10 and out["failed"] == 0
    err = proc.stderr.decode()
    assert f"cannot read source {sources / 'b.jsonl'}" in err and os.strerror(5) in err, err
    keys = read_table(cfg, TABLE).column("part_id").to_pylist()
    assert sorted(keys) == [*(f"a{i}" for i in range(5)), *(f"c{i}" for i in range(5))]


def test_a_source_line_over_the_configured_max_line_bytes_is_named_by_backfill(tmp_path: Path) -> None:
    """Backfill reads with `[spool] max_line_bytes` as the tailer does: a longer line is not read whole; like
    any source line that cannot be materialized it is counted as failed and named (the file keeps it), and
    the lines around it land."""
    src = tmp_path / "src"
    src.mkdir()
    long_text = "y" * 5000
    (src / "h.jsonl").write_text(json.dumps({"part_id": "before"}) + "\n"
                                 + json.dumps({"part_id": "long", "text": long_text}) + "\n"
                                 + json.dumps({"part_id": "after"}) + "\n")
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("[spool]\n", "[spool]\nmax_line_bytes = 1024\n", 1))
    proc = run_spoold("backfill", TABLE, "--source", str(src / "h.jsonl"), "--all", "--json", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["written"] == 2 and out["failed"] == 1, out
    assert sorted(read_table(cfg, TABLE).column("part_id").to_pylist()) == ["after", "before"]
    assert f"{src / 'h.jsonl'}:2: line longer than max_line_bytes (1024 bytes)" in proc.stderr.decode()
