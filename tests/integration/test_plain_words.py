"""What spoold says to every user is in words a user knows (issue 21): a backfill's log and summary name no
internal notion ("seen-set", "materialized", "verified (uuid ...)"); the --json keys stay as they are."""

from __future__ import annotations

import json
from pathlib import Path

from support.cli import run_spoold, write_config

JARGON = ("seen-set", "seen set", "materializ", "verified (uuid")


def test_a_backfill_speaks_plainly_and_keeps_its_json_keys(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    src = tmp_path / "history.jsonl"
    src.write_text("".join(json.dumps({"part_id": f"h{i}", "n": i}) + "\n" for i in range(5)))
    r = run_spoold("backfill", "t.plain", "--source", str(src), "--all", "--config", str(cfg))
    said = (r.stdout + r.stderr).decode()
    assert r.returncode == 0, said
    assert "read 5 source line(s) giving 5 row(s)" in said, said
    assert not [w for w in JARGON if w in said.lower()], said
    again = run_spoold("backfill", "t.plain", "--source", str(src), "--restart", "--json", "--config", str(cfg))
    out = json.loads(again.stdout)
    assert (out["scanned"], out["materialized"], out["skipped_committed"]) == (5, 5, 5)  # SPEC's keys
