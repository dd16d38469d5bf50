"""Bounded history at the defaults: the retention spoold sets at create, its overrides, and what status shows.

Through the real CLI against a real SQLite catalog (docs/maintenance.md, "Retention").
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from support.cli import run_spoold, write_config

from spoold.cli import main
from spoold.config import load_config
from spoold.iceberg.sink import Sink

DEFAULT = {"max_age_s": 86400, "min_snapshots": 10, "max_snapshots": 100}


def ok(proc: subprocess.CompletedProcess[bytes]) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stderr.decode(errors="replace"))
    return proc.stdout.decode()


def flushes(cfg: Path, n: int, start: int = 0) -> None:
    """``n`` flushes of one new row each, through the CLI in this process (a subprocess each would be slow)."""
    for i in range(start, start + n):
        src = cfg.parent / f"rows{i}.jsonl"
        src.write_text(json.dumps({"part_id": f"p{i}", "n": i}) + "\n")
        assert main(["append", "t.x", str(src), "--config", str(cfg)]) == 0
        assert main(["flush", "--config", str(cfg)]) == 0


def table_status(cfg: Path) -> dict[str, Any]:
    return json.loads(ok(run_spoold("status", "t.x", "--json", "--config", str(cfg))))["tables"]["t.x"]


def properties(cfg: Path) -> dict[str, str]:
    return dict(Sink(load_config(cfg)).tables.catalog().load_table("t.x").properties)


def test_created_tables_carry_a_bounded_retention_and_status_shows_it(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    flushes(cfg, 3)
    props = properties(cfg)
    assert {k: props.get(k) for k in ("history.expire.max-snapshot-age-ms", "history.expire.min-snapshots-to-keep",
                                      "spoold.history.max-snapshots", "write.metadata.previous-versions-max",
                                      "write.metadata.delete-after-commit.enabled")} == {
        "history.expire.max-snapshot-age-ms": "86400000", "history.expire.min-snapshots-to-keep": "10",
        "spoold.history.max-snapshots": "100", "write.metadata.previous-versions-max": "20",
        "write.metadata.delete-after-commit.enabled": "true"}
    info = table_status(cfg)
    assert (info["snapshots"], info["retention"]) == (3, DEFAULT)
    text = ok(run_spoold("status", "--config", str(cfg)))
    assert "3 snapshot(s) kept (retention: at most 100, none older than 1d but the newest 10)" in text


def test_maintain_keys_override_the_tables_retention_and_expiry_holds_the_cap(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[maintain]\nenabled = false\nkeep_snapshots = 1\nmax_snapshots = 3\n")
    flushes(cfg, 6)  # a flush expires by itself once a batch is due (maintenance is off)
    info = table_status(cfg)
    assert info["retention"] == {"max_age_s": 86400, "min_snapshots": 1, "max_snapshots": 3}
    assert info["snapshots"] <= 3 and info["committed_rows"] == 6
    assert properties(cfg)["spoold.history.max-snapshots"] == "100"  # the config overrides; the table is untouched


def test_an_existing_table_keeps_its_own_retention(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    flushes(cfg, 1)
    tbl = Sink(load_config(cfg)).tables.catalog().load_table("t.x")
    with tbl.transaction() as tx:  # as a table created before spoold set a retention
        tx.remove_properties("history.expire.max-snapshot-age-ms", "history.expire.min-snapshots-to-keep",
                             "spoold.history.max-snapshots")
    flushes(cfg, 2, start=1)
    assert "spoold.history.max-snapshots" not in properties(cfg)
    info = table_status(cfg)
    assert (info["snapshots"], info["retention"]) == (3, {"max_age_s": 5 * 86400, "min_snapshots": 1,
                                                          "max_snapshots": None})
    text = ok(run_spoold("status", "--config", str(cfg)))
    assert "3 snapshot(s) kept (retention: none older than 5d but the newest 1)" in text


def test_a_commit_that_merges_manifests_leaves_none_unreferenced(tmp_path: Path) -> None:
    """pyiceberg lists only the merged manifest; the append's own one would wait days for orphan cleanup."""
    cfg = write_config(tmp_path)
    flushes(cfg, 18)  # the tables spoold creates merge manifests once there are 16
    tbl = Sink(load_config(cfg)).tables.catalog().load_table("t.x")
    listed = {m.manifest_path for s in tbl.snapshots() for m in s.manifests(tbl.io)}
    assert len(tbl.current_snapshot().manifests(tbl.io)) < 16  # type: ignore[union-attr]  (it did merge)
    on_disk = {f"file://{p}" for p in Path(tbl.location().removeprefix("file://"), "metadata").glob("*-m*.avro")}
    assert on_disk == listed
