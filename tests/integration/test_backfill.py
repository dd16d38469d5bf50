"""`spoold backfill` through the real CLI against a real SQLite-backed Iceberg catalog."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from support import zygote
from support.cli import run_spoold, write_config
from support.fakesink import FakeSink
from support.paths import FIXTURES, REPO
from support.tables import read_table
from support.testhooks import Hooks

from spoold.backfill.run import backfill
from spoold.backfill.seen import spooled_keys
from spoold.config import load_config
from spoold.envelope import Validator, columnize
from spoold.errors import InputError
from spoold.flush.flush import flush_table
from spoold.iceberg.sink import Sink
from spoold.sources.transcript import COLUMNS as TRANSCRIPT_COLUMNS
from spoold.spool.files import flush_name
from spoold.spool.spool import Spool

CORPUS = FIXTURES / "envelopes" / "malformed"
LOCAL_CC = FIXTURES / "sources" / "claude-code"

TRANSCRIPT_TABLE = '\n[tables."chat.parts"]\n[tables."chat.parts".columns]\n' + "".join(
    f'{c} = "{t}"\n' for c, t in TRANSCRIPT_COLUMNS.items())


# -- helpers --------------------------------------------------------------------


def _ok(proc: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert proc.returncode == 0, (proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def _append(cfg: Path, table: str, rows: list[dict[str, Any]]) -> None:
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    _ok(run_spoold("--config", str(cfg), "append", table, input=data))


def _flush(cfg: Path) -> dict[str, Any]:
    return json.loads(_ok(run_spoold("--config", str(cfg), "flush", "--json")).stdout)


def _backfill(cfg: Path, table: str, *args: str, code: int = 0) -> dict[str, Any]:
    proc = run_spoold("--config", str(cfg), "backfill", table, "--json", *args)
    assert proc.returncode == code, (proc.returncode, proc.stderr.decode(errors="replace"))
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 1, proc.stdout  # exactly one JSON object on stdout
    return json.loads(lines[0])


def _keys(cfg: Path, table: str) -> list[str]:
    return read_table(cfg, table).column("part_id").to_pylist()


def _rows(prefix: str, n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"part_id": f"{prefix}:{i}", "text": f"{prefix} row {i}", "n": i, **extra} for i in range(n)]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _balanced(s: dict[str, Any]) -> None:
    """Every materialized row is accounted for exactly once."""
    landed = s["written"] if not s["dry_run"] else s["would_write"]
    assert s["materialized"] == (
        landed + s["skipped_committed"] + s["skipped_spooled"] + s["duplicates_in_source"] + s["quarantined"]
    ), s


# -- acceptance 1: committed C, spooled S, source C ∪ S ∪ N --------------------------------


@pytest.mark.slow  # 11-19 s: seven CLI runs
def test_writes_exactly_the_rows_neither_committed_nor_spooled(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    c, s, n = _rows("c", 40), _rows("s", 30), _rows("n", 50)
    _append(cfg, "chat.parts", c)
    assert _flush(cfg)["tables"]["chat.parts"]["committed"] == 40
    _append(cfg, "chat.parts", s)
    source = c + s + n
    random.Random(4).shuffle(source)
    src = _write_jsonl(tmp_path / "history.jsonl", source)

    out = _backfill(cfg, "chat.parts", "--source", str(src), "--all")
    assert {k: out[k] for k in ("scanned", "materialized", "skipped_committed", "skipped_spooled", "written",
                                "quarantined", "failed", "dry_run")} == {
        "scanned": 120, "materialized": 120, "skipped_committed": 40, "skipped_spooled": 30, "written": 50,
        "quarantined": 0, "failed": 0, "dry_run": False}
    assert sorted(_keys(cfg, "chat.parts")) == sorted(r["part_id"] for r in c + n)

    # The spool was only read: flush still commits every spooled row (nothing rotated or lost).
    assert _flush(cfg)["tables"]["chat.parts"] == {"committed": 30, "deduplicated": 0, "quarantined": 0}
    table = read_table(cfg, "chat.parts")
    keys = table.column("part_id").to_pylist()
    assert len(keys) == len(set(keys)) == 120
    assert set(keys) == {r["part_id"] for r in source}
    by_key = dict(zip(keys, table.column("text").to_pylist()))
    assert all(by_key[r["part_id"]] == r["text"] for r in source)

    again = _backfill(cfg, "chat.parts", "--source", str(src), "--all", "--restart")
    assert again["written"] == 0 and again["skipped_committed"] == 120
    assert len(_keys(cfg, "chat.parts")) == 120


# -- acceptance 2: parity with flush on every malformed-line kind ---------------------------


def _corpus_config(tmp_path: Path, extra: str = "") -> Path:
    return write_config(tmp_path, (REPO / "fixtures" / "envelopes" / "table.toml").read_text() + extra)


def _spool_corpus(cfg: Path, with_active: bool = True) -> Path:
    """The malformed corpus as rotated flush files, plus an active file with a torn tail."""
    d = load_config(cfg).spool_root / "corpus.events"
    d.mkdir(parents=True)
    for seq, name in enumerate(("lines.jsonl", "rows.jsonl", "torn.jsonl"), 1):
        shutil.copyfile(CORPUS / name, d / flush_name(seq))
    if with_active:
        (d / "active.jsonl").write_bytes(
            b'{"version":1,"columns":["part_id","kind"],"rows":[["active-ok","k"]]}\n'
            b'{"version":1,"columns":["part_id","kind"],"rows":[["active-torn","k"]]}'  # a write in progress
        )
    return d


def _expected() -> dict[str, Any]:
    return json.loads((CORPUS / "expected.json").read_text())


def _candidate_keys() -> set[str]:
    """Every string in the corpus a careless reader could take for a key ('already spooled')."""
    found: set[str] = set()
    for name in ("lines.jsonl", "rows.jsonl", "torn.jsonl"):
        text = (CORPUS / name).read_bytes().decode("utf-8", errors="replace")
        found |= {m for m in re.findall(r'"((?:[^"\\]|\\.)*)"', text) if m and "\\" not in m and "\ufffd" not in m}
    return found | {"active-ok", "active-torn"}


def test_backfill_reads_the_spool_with_flushs_verdicts(tmp_path: Path) -> None:
    """Flush's reader and backfill's reader over the same files: identical keys pass, nothing else."""
    cfg_file = _corpus_config(tmp_path)
    config = load_config(cfg_file)
    spool_dir = _spool_corpus(cfg_file)
    before = {p.name: p.read_bytes() for p in spool_dir.iterdir()}
    spec = config.table("corpus.events")

    seen = [(p.name, keys) for p, keys in spooled_keys(Spool.from_config(config), spec, Validator(spec))]
    assert [name for name, _ in seen] == [flush_name(1), flush_name(2), flush_name(3), "active.jsonl"]
    assert all(keys is not None for _, keys in seen)
    backfill_keys = [k for _, keys in seen for k in keys or []]
    assert {p.name: p.read_bytes() for p in spool_dir.iterdir()} == before  # read-only

    # Flush the very same files (a copy: flush deletes what it commits).
    copy_root = tmp_path / "copy"
    shutil.copytree(config.spool_root, copy_root)
    sink = FakeSink()  # stands in for the catalog: flush's own verdicts, compared in-process
    result = flush_table(config, Spool(copy_root), sink, "corpus.events")  # type: ignore[arg-type]

    assert sorted(backfill_keys) == sorted(sink.committed_keys)
    assert set(sink.committed_keys) == set(_expected()["committed"]) | {"active-ok"}
    # Everything flush quarantined (corpus records, plus the torn active tail cut off at
    # rotation) gave backfill no key.
    assert result.quarantined == len(_expected()["quarantined"])
    qdir = copy_root / "corpus.events" / "quarantine"
    recs = [json.loads(line) for q in qdir.glob("*.jsonl") for line in q.read_text().splitlines()]
    assert len(recs) == len(_expected()["quarantined"]) + 1
    assert any("active-torn" in r.get("raw", "") for r in recs)


def test_spooled_bad_lines_do_not_suppress_backfilled_rows(tmp_path: Path) -> None:
    cfg = _corpus_config(tmp_path)
    _spool_corpus(cfg)
    good = set(_expected()["committed"]) | {"active-ok"}
    bad = _candidate_keys() - good
    assert {"vtrue", "nocols", "coldup", "rowsstr", "torn-lost-tail", "rows-bad-cast-13", "active-torn"} <= bad
    src = _write_jsonl(tmp_path / "src.jsonl", [{"part_id": k, "kind": "src"} for k in sorted(good | bad)])

    out = _backfill(cfg, "corpus.events", "--source", str(src), "--all")
    assert out["skipped_spooled"] == len(good)
    assert out["written"] == len(bad)  # a line flush would reject is never "already captured"
    assert out["quarantined"] == 0 and out["failed"] == 0
    assert set(_keys(cfg, "corpus.events")) == bad

    flushed = _flush(cfg)["tables"]["corpus.events"]
    assert flushed == {"committed": len(good), "deduplicated": 0, "quarantined": len(_expected()["quarantined"])}
    keys = _keys(cfg, "corpus.events")
    assert len(keys) == len(set(keys)) and set(keys) == good | bad


# -- acceptance 3: legacy spooled rows --------------------------------------------------------


def _transcript_line(uuid: str, parts: list[Any], ts: str = "2026-01-02T03:04:05Z") -> dict[str, Any]:
    return {"type": "assistant", "uuid": uuid, "sessionId": "sess-1", "timestamp": ts,
            "message": {"role": "assistant", "content": parts}}


def test_legacy_spooled_rows_suppress_matching_transcript_rows(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, TRANSCRIPT_TABLE)
    # Spooled by an old producer: no part_id, only message_id + part_index.
    _append(cfg, "chat.parts", [{"message_id": "m1", "part_index": i, "kind": "text", "text": f"old {i}"}
                                for i in range(2)])
    lines = [_transcript_line("m1", [{"type": "text", "text": "a"}, {"type": "text", "text": "b"},
                                     {"type": "tool_use", "id": "t", "name": "Bash", "input": {}}]),
             _transcript_line("m2", "just a string")]
    src = _write_jsonl(tmp_path / "session.jsonl", lines)

    out = _backfill(cfg, "chat.parts", "--source", str(src), "--format", "transcript", "--all")
    assert (out["materialized"], out["skipped_spooled"], out["written"]) == (4, 2, 2)
    assert sorted(_keys(cfg, "chat.parts")) == ["m1:2", "m2:0"]

    assert _flush(cfg)["tables"]["chat.parts"]["committed"] == 2
    table = read_table(cfg, "chat.parts").to_pylist()
    by_key = {r["part_id"]: r for r in table}
    assert sorted(by_key) == ["m1:0", "m1:1", "m1:2", "m2:0"] and len(table) == 4
    assert by_key["m1:0"]["text"] == "old 0"  # the spooled row won, the source copy was skipped


# -- acceptance 4: backfill and flush at the same moment --------------------------------------


def _start(cfg: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return zygote.popen([sys.executable, "-m", "spoold", "--config", str(cfg), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def test_concurrent_flush_and_backfills_never_double_a_key(tmp_path: Path) -> None:
    """A flush and two backfills start together on overlapping rows (small chunks: many commits)."""
    cfg = write_config(tmp_path, "[flush]\nchunk_rows = 60\n")
    spooled, new = _rows("s", 240), _rows("n", 240)
    for i in range(0, 240, 80):
        _append(cfg, "chat.parts", spooled[i : i + 80])
    source = spooled + new
    random.Random(4).shuffle(source)
    src = _write_jsonl(tmp_path / "src.jsonl", source)
    # A barrier: each stops once its first commit is staged, and all are let go together, so their
    # commits race (else unequal start-up times can let one finish before the next begins).
    hooks = Hooks(tmp_path / "hooks", pause_at="commit.staged@1")
    procs = [_start(cfg, "flush", env=hooks.env()),
             _start(cfg, "backfill", "chat.parts", "--source", str(src), "--all", "--json", env=hooks.env()),
             _start(cfg, "backfill", "chat.parts", "--source", str(src), "--all", "--json", env=hooks.env())]
    for p in procs:
        hooks.wait_paused(p.pid, alive=lambda p=p: p.poll() is None)
    for p in procs:
        hooks.resume(p.pid)
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()
    for out, _ in outs[1:]:
        _balanced(json.loads(out))
    counts = Counter(_keys(cfg, "chat.parts"))
    assert [k for k, n in counts.items() if n > 1] == []
    _flush(cfg)
    keys = _keys(cfg, "chat.parts")
    assert len(keys) == len(set(keys)) and set(keys) == {r["part_id"] for r in source}


# -- acceptance 5: the peer transcript fixtures -----------------------------------------------


def _expected_parts(directory: Path) -> dict[str, dict[str, Any]]:
    """What every message part must become, worked out from the raw files (not via spoold)."""
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(directory.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            obj = json.loads(line) if line.strip() else {}
            msg = obj.get("message")
            if obj.get("type") not in ("user", "assistant") or not isinstance(msg, dict):
                continue
            content = msg["content"]
            for i, part in enumerate([content] if isinstance(content, str) else content):
                out[f"{obj['uuid']}:{i}"] = {
                    "message_id": obj["uuid"], "part_index": i, "session_id": obj.get("sessionId"),
                    "ts": datetime.fromisoformat(obj["timestamp"].replace("Z", "+00:00")),
                    "role": msg.get("role"), "kind": "text" if isinstance(part, str) else part["type"],
                    "text": part if isinstance(part, str) else part.get("text") if part["type"] == "text" else None,
                }
    return out


def test_transcript_fixtures_materialize_every_message_part(tmp_path: Path) -> None:
    directory = LOCAL_CC
    cfg = write_config(tmp_path, TRANSCRIPT_TABLE)
    expected = _expected_parts(directory)
    assert expected, directory
    out = _backfill(cfg, "chat.parts", "--source", str(directory), "--format", "transcript", "--all")
    assert out["failed"] == 0 and out["quarantined"] == 0
    assert out["materialized"] == out["written"] == len(expected)

    rows = read_table(cfg, "chat.parts").to_pylist()
    assert sorted(r["part_id"] for r in rows) == sorted(expected)
    for r in rows:
        want = expected[r["part_id"]]
        for col in ("message_id", "part_index", "session_id", "ts", "role", "kind"):
            assert r[col] == want[col], (r["part_id"], col, r[col], want[col])
        if want["text"] is not None:
            assert r["text"] == want["text"]
        else:
            assert r["text"]  # other parts keep their content as text (JSON or thinking)


# -- the rest of the command line -------------------------------------------------------------


def test_dry_run_counts_and_samples_but_writes_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    _append(cfg, "chat.parts", _rows("c", 5))
    _flush(cfg)
    _append(cfg, "chat.parts", _rows("s", 3))
    src = _write_jsonl(tmp_path / "src.jsonl", _rows("c", 5) + _rows("s", 3) + _rows("n", 7) + [{"part_id": ""}])
    spool_dir = load_config(cfg).spool_root / "chat.parts"
    before = sorted((p.name, p.read_bytes()) for p in spool_dir.iterdir() if p.is_file())

    out = _backfill(cfg, "chat.parts", "--source", str(src), "--dry-run")
    assert out["dry_run"] is True and out["written"] == 0
    assert (out["would_write"], out["skipped_committed"], out["skipped_spooled"], out["quarantined"]) == (7, 5, 3, 1)
    assert out["sample_keys"] and set(out["sample_keys"]) <= {f"n:{i}" for i in range(7)}
    _balanced(out)
    assert sorted(_keys(cfg, "chat.parts")) == [f"c:{i}" for i in range(5)]
    assert sorted((p.name, p.read_bytes()) for p in spool_dir.iterdir() if p.is_file()) == before
    assert not (spool_dir / "quarantine").exists()

    human = _ok(run_spoold("--config", str(cfg), "backfill", "chat.parts", "--source", str(src), "--dry-run"))
    assert b"would write 7" in human.stdout and b"n:" in human.stdout


def test_limit_caps_materialized_rows_and_defaults_to_1000(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    src = _write_jsonl(tmp_path / "src.jsonl", _rows("n", 1200))
    out = _backfill(cfg, "chat.parts", "--source", str(src), "--limit", "25")
    assert (out["materialized"], out["written"]) == (25, 25)
    assert sorted(_keys(cfg, "chat.parts")) == sorted(f"n:{i}" for i in range(25))
    out = _backfill(cfg, "chat.parts", "--source", str(src))  # default --limit 1000, from the cursor on
    assert (out["materialized"], out["written"], out["skipped_committed"]) == (1000, 1000, 0)
    out = _backfill(cfg, "chat.parts", "--source", str(src), "--all")
    assert (out["materialized"], out["written"], out["limit_reached"]) == (175, 175, False)
    out = _backfill(cfg, "chat.parts", "--source", str(src), "--all", "--restart")
    assert (out["materialized"], out["written"], out["skipped_committed"]) == (1200, 0, 1200)
    assert len(set(_keys(cfg, "chat.parts"))) == len(_keys(cfg, "chat.parts")) == 1200


def test_missing_source_exits_2_naming_it_and_writes_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    good = _write_jsonl(tmp_path / "good.jsonl", _rows("n", 3))
    missing = tmp_path / "nowhere" / "history.jsonl"
    proc = run_spoold("--config", str(cfg), "backfill", "chat.parts", "--source", str(good),
                      "--source", str(missing), "--all")
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert str(missing) in err and len(err.strip().splitlines()) == 1
    assert not (load_config(cfg).spool_root / "chat.parts").exists()


def test_bad_source_lines_are_counted_named_and_not_fatal(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, TRANSCRIPT_TABLE)
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(b'{"part_id": "a:0", "kind": "text"}\n{"part_id": "a:1", oops}\n\n[1, 2]\n'
                    b'{"part_id": "a:2", "part_index": "seven"}\n\xff\xfe\n{"part_id": "a:3"}')
    proc = run_spoold("--config", str(cfg), "backfill", "chat.parts", "--source", str(src), "--all", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["scanned"], out["failed"], out["materialized"], out["quarantined"], out["written"]) == (6, 3, 3, 1, 2)
    err = proc.stderr.decode()
    for lineno in (2, 4, 6):
        assert f"{src}:{lineno}:" in err
    assert sorted(_keys(cfg, "chat.parts")) == ["a:0", "a:3"]  # an unterminated last line of history counts

    # The row that could not be cast is in quarantine with its reason and where it came from.
    qdir = load_config(cfg).spool_root / "chat.parts" / "quarantine"
    recs = [json.loads(line) for q in qdir.glob("*.jsonl") for line in q.read_text().splitlines()]
    assert len(recs) == 1
    assert "part_index" in recs[0]["reason"] and recs[0]["file"] == str(src) and recs[0]["line"] == 5
    assert recs[0]["row"]["part_id"] == "a:2"


def test_a_spool_entry_that_is_not_a_file_is_moved_aside_and_named(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    _append(cfg, "chat.parts", _rows("s", 4))
    d = load_config(cfg).spool_root / "chat.parts"
    (d / flush_name(7)).mkdir()  # not a file spoold wrote (a producer of a group spool could plant it)
    src = _write_jsonl(tmp_path / "src.jsonl", _rows("s", 4) + _rows("n", 2))
    proc = run_spoold("--config", str(cfg), "backfill", "chat.parts", "--source", str(src), "--all", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["unreadable_spool_files"], out["skipped_spooled"], out["written"]) == (0, 4, 2)
    assert f"{flush_name(7)}: not a regular file" in proc.stderr.decode()
    assert not (d / flush_name(7)).exists()


def test_sources_may_be_directories_and_globs_with_duplicates_kept_once(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    (tmp_path / "hist" / "a").mkdir(parents=True)
    _write_jsonl(tmp_path / "hist" / "a" / "one.jsonl", _rows("x", 4))
    _write_jsonl(tmp_path / "hist" / "two.jsonl", _rows("x", 6))  # x:0..3 again
    out = _backfill(cfg, "chat.parts", "--source", str(tmp_path / "hist"),
                    "--source", str(tmp_path / "hist" / "*.jsonl"), "--all")
    assert (out["materialized"], out["written"], out["duplicates_in_source"]) == (10, 6, 4)
    assert sorted(_keys(cfg, "chat.parts")) == sorted(f"x:{i}" for i in range(6))


# -- Ctrl-C -------------------------------------------------------------------------------------


def test_sigint_stops_after_a_chunk_and_a_rerun_completes_without_doubles(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[flush]\nchunk_rows = 200\n")
    total = 30_000
    src = _write_jsonl(tmp_path / "src.jsonl", _rows("n", total))
    warehouse = tmp_path / "state" / "warehouse"
    proc = _start(cfg, "backfill", "chat.parts", "--source", str(src), "--all", "--json")
    deadline = time.monotonic() + 120
    while not any(warehouse.rglob("*.parquet")):  # the first chunk is committed
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    first = json.loads(out)
    assert first["interrupted"] is True and 0 < first["written"] < total, first
    _balanced(first)
    assert b"stopping after the current chunk" in err
    assert len(_keys(cfg, "chat.parts")) == first["written"]

    cfg2 = write_config(tmp_path, "", name="big-chunks.toml")
    second = _backfill(cfg2, "chat.parts", "--source", str(src), "--all")
    assert second["written"] == total - first["written"]
    # It went on after the last durable chunk: at most the chunks in flight at Ctrl-C are read again.
    assert second["skipped_committed"] < first["written"] and second["interrupted"] is False
    keys = _keys(cfg, "chat.parts")
    assert len(keys) == len(set(keys)) == total


def test_backfill_command_does_not_leave_the_sigint_handler_installed() -> None:
    """The library restores the previous SIGINT handler, so embedding it doesn't swallow Ctrl-C."""
    code = (
        "import signal, sys\n"
        "from spoold.cli.entry import main\n"
        "before = signal.getsignal(signal.SIGINT)\n"
        "rc = main(['backfill', 'chat.parts', '--source', sys.argv[1], '--limit', '5', '--dry-run',\n"
        "           '--json', '--config', sys.argv[2]])\n"
        "assert signal.getsignal(signal.SIGINT) is before, signal.getsignal(signal.SIGINT)\n"
        "sys.exit(rc)\n"
    )
    tmp = Path(os.getcwd())
    cfg = write_config(tmp)
    src = _write_jsonl(tmp / "src.jsonl", _rows("n", 3))
    proc = subprocess.run([sys.executable, "-c", code, str(src), str(cfg)], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["would_write"] == 3


# -- in-process (library) runs --------------------------------------------------------------


def test_envelope_of_rows_with_the_same_columns_keeps_their_order() -> None:
    rows = [{"part_id": "a", "n": 1, "t": "x"}, {"part_id": "b", "n": 2, "t": None}]
    assert columnize(rows) == (["part_id", "n", "t"], [["a", 1, "x"], ["b", 2, None]])


@pytest.mark.parametrize("rows", [
    [{"part_id": "a", "n": 1}, {"n": 2, "part_id": "b"}],  # same columns, another order
    [{"part_id": "a", "n": 1}, {"part_id": "b", "m": 2}],  # same length, other columns
    [{"part_id": "a"}, {"part_id": "b", "n": 2}],  # a column absent from a row
])
def test_envelope_of_mixed_rows_is_the_union_with_nulls(rows: list[dict[str, object]]) -> None:
    cols, values = columnize(rows)
    assert len(set(cols)) == len(cols)
    assert set(cols) == {c for r in rows for c in r}
    for row, vals in zip(rows, values):
        assert dict(zip(cols, vals)) == {c: row.get(c) for c in cols}


def _source(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "src.jsonl"
    path.write_text("".join(json.dumps({"part_id": f"k:{i}", "n": i}) + "\n" for i in range(n)))
    return path


def test_stop_commits_what_was_gathered_and_ends_the_run(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[flush]\nchunk_rows = 10\n")
    config = load_config(cfg)
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) >= 3  # asked before each file and after each chunk of 10 rows

    s = backfill(config, "t.rows", [str(_source(tmp_path, 100))], "jsonl", None, stop=stop)
    assert s.interrupted and (s.materialized, s.written) == (20, 20)
    tbl = Sink(config).load(config.table("t.rows"))
    assert tbl is not None and len(tbl.snapshots()) == 2  # one commit per chunk
    assert sorted(read_table(cfg, "t.rows").column("part_id").to_pylist()) == sorted(f"k:{i}" for i in range(20))
    again = backfill(config, "t.rows", [str(_source(tmp_path, 100))], "jsonl", None)
    assert not again.interrupted and (again.written, again.skipped_committed) == (80, 0)  # from the cursor


def test_limit_cuts_a_multi_part_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    src = tmp_path / "t.jsonl"
    parts = [{"type": "text", "text": str(i)} for i in range(5)]
    src.write_text(json.dumps({"type": "user", "uuid": "u1", "sessionId": "s", "timestamp": "2026-01-01T00:00:00Z",
                               "message": {"role": "user", "content": parts}}) + "\n")
    s = backfill(load_config(cfg), "t.parts", [str(src)], "transcript", 3)
    assert (s.scanned, s.materialized, s.written) == (1, 3, 3)
    assert sorted(read_table(cfg, "t.parts").column("part_id").to_pylist()) == ["u1:0", "u1:1", "u1:2"]


def test_unknown_format_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="csv"):
        backfill(load_config(write_config(tmp_path)), "t.rows", [str(_source(tmp_path, 1))], "csv")


def test_duplicates_across_chunks_are_counted_as_duplicates_in_a_run_and_a_dry_run(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[flush]\nchunk_rows = 5\n")
    config = load_config(cfg)
    _append(cfg, "t.rows", [{"part_id": "k:0"}, {"part_id": "k:1"}])
    _flush(cfg)  # k:0 and k:1 are committed
    rows = [{"part_id": f"k:{i}"} for i in range(20)]
    src = _write_jsonl(tmp_path / "src.jsonl", rows + rows[::-1] + rows[5:8])  # repeats land in later chunks
    dry = backfill(config, "t.rows", [str(src)], "jsonl", None, True)
    real = backfill(config, "t.rows", [str(src)], "jsonl", None)
    for s in (dry, real):
        assert (s.materialized, s.skipped_committed, s.duplicates_in_source) == (43, 4, 21), s
        _balanced(s.as_dict())
    assert (dry.would_write, dry.written, real.written) == (18, 0, 18)
    keys = _keys(cfg, "t.rows")
    assert len(keys) == len(set(keys)) == 20
