"""Backfill for a shell user (issue 14): --format auto, limits that say so, cursors that walk the history,
exit 2 when everything was quarantined, and poison lines that never stop a run (issue 13, item 1).

Through the real CLI against a real SQLite-backed Iceberg catalog.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.cli import run_spoold, write_config
from support.fakesink import FakeSink, fail_at
from support.paths import FIXTURES
from support.tables import read_table

from spoold.backfill.run import backfill as backfill_library
from spoold.config import load_config
from spoold.errors import CatalogError
from spoold.iceberg.sink import Sink
from spoold.sources import read_lines

CLAUDE_CODE = FIXTURES / "sources" / "claude-code"


def backfill(cfg: Path, table: str, *args: str, code: int = 0) -> tuple[dict[str, Any], str]:
    proc = run_spoold("--config", str(cfg), "backfill", table, "--json", *args)
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == code, (proc.returncode, err)
    (line,) = proc.stdout.decode().splitlines()  # exactly one JSON object on stdout
    return json.loads(line), err


def keys(cfg: Path, table: str) -> list[str]:
    return read_table(cfg, table).column("part_id").to_pylist()


def rows(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"part_id": f"{prefix}:{i}", "n": i, "text": f"row {i}"} for i in range(n)]


def write(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in items))
    return path


def transcript_line(uuid: str, *parts: object) -> bytes:
    return orjson.dumps({"type": "assistant", "uuid": uuid, "sessionId": "s1", "timestamp": "2026-01-01T00:00:00Z",
                         "message": {"role": "assistant", "content": list(parts)}}) + b"\n"


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


# -- acceptance 14.1: limited runs walk the whole history -------------------------------------------


@pytest.mark.slow  # ~16 s: many backfill runs
def test_default_limited_runs_walk_through_the_history_and_say_when_the_limit_stopped_them(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    src = write(tmp_path / "history.jsonl", rows("h", 2500))
    written = []
    for i in range(4):
        out, err = backfill(cfg, "t.hist", "--source", str(src))
        written.append(out["written"])
        assert out["limit_reached"] is (i < 2), out
        assert ("stopped at --limit 1000: run again to continue, or use --all" in err) is (i < 2), err
    assert written == [1000, 1000, 500, 0]
    assert sorted(keys(cfg, "t.hist")) == sorted(f"h:{i}" for i in range(2500))
    out, _ = backfill(cfg, "t.hist", "--source", str(src), "--restart")
    assert (out["materialized"], out["written"], out["skipped_committed"]) == (1000, 0, 1000)
    out, _ = backfill(cfg, "t.hist", "--source", str(src), "--restart", "--all")  # the cursor moved again
    assert (out["materialized"], out["written"], out["limit_reached"]) == (2500, 0, False)


def test_a_line_cut_by_the_limit_is_taken_up_where_it_was_cut(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    src = tmp_path / "a.jsonl"
    src.write_bytes(transcript_line("u1", *({"type": "text", "text": str(i)} for i in range(5))))
    dry, _ = backfill(cfg, "t.parts", "--source", str(src), "--limit", "3", "--dry-run")
    assert (dry["would_write"], dry["limit_reached"]) == (3, True)
    first, _ = backfill(cfg, "t.parts", "--source", str(src), "--limit", "3")  # the dry run moved nothing
    assert (first["written"], first["limit_reached"]) == (3, True)
    second, _ = backfill(cfg, "t.parts", "--source", str(src), "--limit", "3")
    assert (second["materialized"], second["written"], second["limit_reached"]) == (2, 2, False)
    assert sorted(keys(cfg, "t.parts")) == [f"u1:{i}" for i in range(5)]


def test_the_limit_spans_files(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    d = tmp_path / "hist"
    d.mkdir()
    write(d / "a.jsonl", rows("a", 4))
    write(d / "b.jsonl", rows("b", 3))
    runs = [backfill(cfg, "t.files", "--source", str(d), "--limit", "3")[0] for _ in range(3)]
    assert [(r["written"], r["limit_reached"]) for r in runs] == [(3, True), (3, True), (1, False)]
    assert sorted(keys(cfg, "t.files")) == sorted([f"a:{i}" for i in range(4)] + [f"b:{i}" for i in range(3)])


def test_a_replaced_or_truncated_file_is_read_from_its_start(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    src = write(tmp_path / "h.jsonl", rows("a", 10))
    out, _ = backfill(cfg, "t.re", "--source", str(src), "--limit", "6")
    assert out["written"] == 6
    write(tmp_path / "new.jsonl", rows("b", 8)).replace(src)  # another inode at the same path
    out, _ = backfill(cfg, "t.re", "--source", str(src), "--all")
    assert (out["materialized"], out["written"]) == (8, 8)
    write(src, rows("c", 3))  # truncated in place: shorter than the cursor
    out, _ = backfill(cfg, "t.re", "--source", str(src), "--all")
    assert (out["materialized"], out["written"]) == (3, 3)
    same_size = src.read_bytes().replace(b'"c:0"', b'"d:0"')  # rewritten in place, same size
    src.write_bytes(same_size)
    out, _ = backfill(cfg, "t.re", "--source", str(src), "--all")
    assert (out["materialized"], out["written"]) == (3, 1)


def test_a_cursor_moves_only_past_rows_a_durable_commit_holds(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, "[flush]\nchunk_rows = 10\n"))
    src = write(tmp_path / "h.jsonl", rows("c", 35))

    with pytest.raises(CatalogError):
        backfill_library(config, "t.fail", [str(src)], "auto", None,
                         sink=FakeSink(Sink(config), commit=fail_at(3, CatalogError("catalog down"))))
    assert len(keys(config.path, "t.fail")) == 20  # two chunks of 10 landed, the third did not
    again = backfill_library(config, "t.fail", [str(src)], "auto", None)
    assert (again.materialized, again.written, again.skipped_committed) == (15, 15, 0)  # on after the 20
    assert sorted(keys(config.path, "t.fail")) == sorted(f"c:{i}" for i in range(35))


def test_an_unterminated_last_line_is_read_again_once_it_grows(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    src = tmp_path / "live.jsonl"
    src.write_bytes(orjson.dumps({"part_id": "x:0"}) + b"\n" + orjson.dumps({"part_id": "x:1"}))
    out, _ = backfill(cfg, "t.live", "--source", str(src), "--all")
    assert out["written"] == 2
    with open(src, "ab") as f:
        f.write(b"\n" + orjson.dumps({"part_id": "x:2"}) + b"\n")
    out, _ = backfill(cfg, "t.live", "--source", str(src), "--all")
    assert (out["materialized"], out["written"], out["skipped_committed"]) == (2, 1, 1)


# -- acceptance 14.2: real transcripts with --format auto ----------------------------------------


def test_real_transcripts_backfill_with_no_format_and_then_nothing_more(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    d = tmp_path / "projects" / "p1"
    shutil.copytree(CLAUDE_CODE, d)
    files = sorted(d.glob("*.jsonl"))
    assert len(files) == 23
    expected = {row["part_id"] for f in files for line in read_lines(f, "transcript", include_partial=True)
                for row in line.rows}
    out, _ = backfill(cfg, "chat.cc", "--source", str(tmp_path / "projects"), "--all")
    assert (out["quarantined"], out["failed"], out["formats"]) == (0, 0, {"transcript": 23}), out
    assert out["written"] == len(expected) > 0
    assert set(keys(cfg, "chat.cc")) == expected
    out, _ = backfill(cfg, "chat.cc", "--source", str(tmp_path / "projects"), "--format", "transcript", "--all")
    assert (out["materialized"], out["written"]) == (0, 0)
    out, _ = backfill(cfg, "chat.cc", "--source", str(tmp_path / "projects"), "--format", "transcript", "--all",
                      "--restart")
    assert (out["written"], out["skipped_committed"]) == (0, len(expected))


def test_auto_takes_the_format_of_the_tables_sources_entry(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f'[[sources]]\ntable = "t.ev"\npath = "{tmp_path}/live/*.jsonl"\nformat = "jsonl"\n')
    # Its first line looks like a transcript's, but the table's [[sources]] says jsonl.
    src = write(tmp_path / "ev.jsonl", [{"part_id": "e:0", "type": "x", "sessionId": "s"}, {"part_id": "e:1"}])
    out, _ = backfill(cfg, "t.ev", "--source", str(src), "--all")
    assert (out["formats"], out["written"]) == ({"jsonl": 1}, 2)
    # Without a [[sources]] entry the key column decides: this is jsonl too.
    out, _ = backfill(cfg, "t.other", "--source", str(src), "--all")
    assert (out["formats"], out["written"]) == ({"jsonl": 1}, 2)


# -- acceptance 14.3: every row quarantined ------------------------------------------------------------


def test_a_source_whose_every_row_lacks_a_key_exits_2_naming_the_reason(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    src = write(tmp_path / "nokey.jsonl", [{"id": i, "text": "no part_id"} for i in range(5)])
    for again in ([], ["--restart"]):
        out, err = backfill(cfg, "t.nokey", "--source", str(src), "--all", *again, code=2)
        assert (out["materialized"], out["quarantined"], out["written"]) == (5, 5, 0)
        (error,) = [line for line in err.splitlines() if line.startswith("spoold: error:")]
        assert "all 5 row(s)" in error and "no usable key" in error and "--restart" in error
    write(src, [{"part_id": f"k:{i}", "text": "fixed"} for i in range(5)])  # fixed in place, same inode
    out, _ = backfill(cfg, "t.nokey", "--source", str(src), "--all")
    assert out["written"] == 5


def test_a_partly_quarantined_run_exits_0(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    src = write(tmp_path / "mixed.jsonl", [{"part_id": "ok:0"}, {"id": 1}])
    out, _ = backfill(cfg, "t.mixed", "--source", str(src), "--all")
    assert (out["written"], out["quarantined"]) == (1, 1)


# -- the run in the snapshot summary ------------------------------------------------------------------


def test_each_backfill_commit_records_its_run(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[flush]\nchunk_rows = 10\n")
    src = write(tmp_path / "h.jsonl", rows("r", 25))
    out, _ = backfill(cfg, "t.runs", "--source", str(src), "--source", str(tmp_path / "*.jsonl"), "--all")
    config = load_config(cfg)
    tbl = Sink(config).load(config.table("t.runs"))
    assert tbl is not None
    summaries = [s.summary.additional_properties for s in tbl.snapshots() if s.summary is not None]
    assert len(summaries) == 3
    for props in summaries:
        assert props["spoold.op"] == "backfill" and props["spoold.run"] == out["run_id"]
        assert props["spoold.sources"] == f"{src}, {tmp_path}/*.jsonl" and props["spoold.host"]


# -- issue 13, item 1: poison lines never stop a backfill -----------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "transcript"])
def test_deeply_nested_lines_are_reported_and_the_run_goes_on(tmp_path: Path, fmt: str) -> None:
    cfg = write_config(tmp_path)
    src = tmp_path / "poison.jsonl"
    if fmt == "jsonl":
        poison = b'{"part_id": "deep", "v": ' + deep(300) + b"}\n"
        src.write_bytes(orjson.dumps({"part_id": "a"}) + b"\n" + poison + orjson.dumps({"part_id": "b"}) + b"\n")
        good = ["a", "b"]
    else:
        poison = transcript_line("u2", {"type": "tool_use", "name": "x", "input": None}).replace(b"null", deep(300))
        src.write_bytes(transcript_line("u1", "hi") + poison + transcript_line("u3", "yo"))
        good = ["u1:0", "u3:0"]
    out, err = backfill(cfg, "t.poison", "--source", str(src), "--all", "--format", fmt)
    assert out["written"] == 2 and out["failed"] + out["quarantined"] == 1, out
    assert sorted(keys(cfg, "t.poison")) == good
    assert "Traceback" not in err and "nested too deeply" in err
