"""Typed by default: a table the config does not declare gets typed columns where its rows say what they are.

Zone-carrying RFC 3339 strings create a ``timestamptz`` column (a later non-timestamp is quarantined naming the
column); a transcript source creates its table with the transcript's own types, by backfill and by the daemon's
tailer alike. Through the real CLI and daemon against SQLite.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.cli import run_spoold, write_config
from support.daemonproc import DaemonProc, wait_for
from support.tables import committed_keys, load_table, read_table

from spoold.cli.entry import main
from spoold.config import load_config

REPO = Path(__file__).resolve().parents[2]
TRANSCRIPT = REPO / "fixtures" / "sources" / "transcript.jsonl"
TRANSCRIPT_TYPES = {"part_id": "string", "message_id": "string", "part_index": "int", "session_id": "string",
                    "ts": "timestamptz", "role": "string", "kind": "string", "text": "string"}


def types(cfg: Path, table: str) -> dict[str, str]:
    return {f.name: str(f.field_type) for f in load_table(cfg, table).schema().fields}


def append_flush(cfg: Path, table: str, rows: list[dict[str, object]], capsys: pytest.CaptureFixture[str]) \
        -> dict[str, int]:
    """``spoold append`` the rows, then ``spoold flush --json``: the table's counts."""
    path = cfg.parent / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["append", table, str(path), "--config", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["flush", "--json", "--config", str(cfg)]) == 0
    return json.loads(capsys.readouterr().out)["tables"][table]


def test_zoned_timestamp_strings_create_a_timestamptz_column_and_a_later_non_timestamp_is_quarantined(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path)
    first = [{"part_id": "a", "at": "2026-01-01T00:00:00Z", "naive": "2026-01-01T00:00:00",
              "mixed": "2026-01-01T00:00:00Z", "day": "2026-01-01", "odd": "2026-02-30T00:00:00Z"},
             {"part_id": "b", "at": "2026-01-02T10:00:00.5+01:00", "naive": "2026-01-02T00:00:00", "mixed": "soon",
              "day": "2026-01-02", "odd": "2026-03-01T00:00:00Z"}]
    assert append_flush(cfg, "ev.j", first, capsys)["committed"] == 2
    assert types(cfg, "ev.j") == {"part_id": "string", "at": "timestamptz", "naive": "string", "mixed": "string",
                                  "day": "string", "odd": "string"}  # Feb 30 is no timestamp: string
    at = {r["part_id"]: r["at"] for r in read_table(cfg, "ev.j").to_pylist()}
    assert at == {"a": datetime(2026, 1, 1, tzinfo=UTC), "b": datetime(2026, 1, 2, 9, 0, 0, 500000, tzinfo=UTC)}

    later = [{"part_id": "c", "at": "yesterday"}, {"part_id": "d", "at": "2026-01-03T00:00:00-05:00"}]
    assert append_flush(cfg, "ev.j", later, capsys) == {"committed": 1, "deduplicated": 0, "quarantined": 1}
    assert main(["quarantine", "--json", "--config", str(cfg)]) == 0
    q = json.loads(capsys.readouterr().out)
    assert q["tables"]["ev.j"]["reasons"] == {"column 'at': cannot cast a value to timestamptz": 1}
    assert sorted(committed_keys(cfg, "ev.j")) == ["a", "b", "d"]


def test_spoold_append_leaves_timestamps_to_flush_which_sees_the_table(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """append cannot see the table (its column may be a string): a non-timestamp after an envelope of timestamps
    is appended, and flush, whose first envelope made the column timestamptz, quarantines it naming the column."""
    cfg = write_config(tmp_path)
    rows: list[dict[str, object]] = [{"part_id": f"k{i}", "at": f"2026-01-01T00:00:{i % 60:02d}Z"} for i in range(1000)]
    rows.append({"part_id": "late", "at": "n/a"})
    assert append_flush(cfg, "ev.a", rows, capsys) == {"committed": 1000, "deduplicated": 0, "quarantined": 1}
    assert types(cfg, "ev.a")["at"] == "timestamptz"
    assert main(["quarantine", "--json", "--config", str(cfg)]) == 0
    assert json.loads(capsys.readouterr().out)["tables"]["ev.a"]["reasons"] == {
        "column 'at': cannot cast a value to timestamptz": 1}


def test_backfill_of_a_transcript_creates_the_table_with_the_transcripts_types(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    r = run_spoold("backfill", "chat.parts", "--source", str(TRANSCRIPT), "--format", "transcript", "--all",
                   "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert types(cfg, "chat.parts") == TRANSCRIPT_TYPES
    assert str(load_table(cfg, "chat.parts").schema().find_field("part_id").required) == "True"


def test_a_tailed_transcript_source_creates_the_table_with_the_transcripts_types(
        tmp_path: Path, daemons: Callable[..., DaemonProc]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    cfg = write_config(tmp_path, "[flush]\ndebounce_s = 0.2\nmax_delay_s = 1\n"
                                 f'[[sources]]\ntable = "chat.tail"\npath = "{src}/*.jsonl"\nformat = "transcript"\n')
    shutil.copy(TRANSCRIPT, src / "session.jsonl")
    d = daemons(cfg)
    wait_for(lambda: load_table(cfg, "chat.tail") is not None and committed_keys(cfg, "chat.tail"),
             "the tailed transcript committed")
    assert d.stop() == 0
    assert types(cfg, "chat.tail") == TRANSCRIPT_TYPES
    assert not list((load_config(cfg).spool_root / "chat.tail" / "quarantine").glob("*"))
