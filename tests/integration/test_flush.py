"""`spoold flush` end to end: the real CLI against a real SQLite-backed Iceberg catalog in tmp_path.

Each test is one promise of SPEC "Guarantees" or issue 3's acceptance list:
every spooled row lands (the settle-path hazard), leftovers of a crash between
commit and cleanup commit nothing twice, SIGKILL anywhere loses and doubles
nothing, two committers racing on one table double nothing, and every
malformed line is quarantined with its reason while its siblings commit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from support import zygote
from support.cli import run_spoold, write_config
from support.daemonproc import wait_for
from support.fakesink import FakeSink, fail_at
from support.paths import FIXTURES
from support.tables import committed_keys, read_table
from support.testhooks import WINDOWS, Hooks, overlapped, windows_hit

from spoold.config import load_config
from spoold.errors import CatalogError
from spoold.flush.flush import flush_table
from spoold.iceberg.sink import Sink
from spoold.spool.files import flush_name
from spoold.spool.spool import Spool

CORPUS = FIXTURES / "envelopes"
CORPUS_TABLE = "corpus.events"
EVENTS = """
[tables."app.events"]
[tables."app.events".columns]
part_id = "string!"
n = "long"
text = "string"
"""


# -- helpers ---------------------------------------------------------------------------------------------
def flush(cfg: Path, *tables: str) -> dict[str, Any]:
    """``spoold flush --json`` through the real CLI; the per-table summaries."""
    proc = run_spoold("flush", "--config", str(cfg), "--json", *tables)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)["tables"]  # type: ignore[no-any-return]


def status(cfg: Path) -> dict[str, Any]:
    proc = run_spoold("status", "--config", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def spool_of(cfg: Path) -> Spool:
    return Spool.from_config(load_config(cfg))


def rows(prefix: str, start: int, stop: int) -> list[dict[str, Any]]:
    return [{"part_id": f"{prefix}{i}", "n": i, "text": f"row {i}"} for i in range(start, stop)]


def committed(cfg: Path, table: str = "app.events") -> list[str]:
    return committed_keys(cfg, table)


def quarantine(cfg: Path, table: str) -> list[dict[str, Any]]:
    qdir = spool_of(cfg).table_dir(table) / "quarantine"
    recs = []
    for path in sorted(qdir.glob("*.jsonl")) if qdir.is_dir() else []:
        recs += [orjson.loads(line) for line in path.read_bytes().splitlines()]
    return recs


def raw_bytes(rec: dict[str, Any]) -> bytes:
    return rec["raw"].encode() if "raw" in rec else base64.b64decode(rec["raw_b64"])


def corpus_config(tmp_path: Path, extra: str = "") -> Path:
    return write_config(tmp_path, (CORPUS / "table.toml").read_text() + extra)


def place(spool: Spool, table: str, files: list[bytes]) -> list[str]:
    """Put ``files`` in the spool as rotated flush files, as rotation would leave them."""
    d = spool.table_dir(table, create=True)
    names = []
    for seq, data in enumerate(files, 1):
        (d / flush_name(seq)).write_bytes(data)
        names.append(flush_name(seq))
    return names


# -- 1. the settle-path hazard ---------------------------------------------------------------------------
def test_every_spooled_row_lands_and_only_committed_keys_deduplicate(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, EVENTS)
    batch = rows("k", 0, 2500) + rows("k", 0, 10)  # ten keys spooled twice: the second copy is a duplicate
    proc = run_spoold("append", "app.events", "--config", str(cfg),
                      input=b"".join(orjson.dumps(r) + b"\n" for r in batch))
    assert proc.returncode == 0, proc.stderr.decode()

    assert flush(cfg) == {"app.events": {"committed": 2500, "deduplicated": 10, "quarantined": 0}}
    assert Counter(committed(cfg)) == Counter(f"k{i}" for i in range(2500))

    # Spooled again: 500 already committed, 500 new. Only the committed ones are dropped.
    spool_of(cfg).append("app.events", rows("k", 2000, 3000))
    assert flush(cfg) == {"app.events": {"committed": 500, "deduplicated": 500, "quarantined": 0}}
    assert Counter(committed(cfg)) == Counter(f"k{i}" for i in range(3000))
    assert flush(cfg) == {"app.events": {"committed": 0, "deduplicated": 0, "quarantined": 0}}  # nothing pending


def test_flush_settles_against_committed_keys_never_spooled_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    """The seen flags flush hands to settle are exactly "already in the table".

    If flush ever seeded its seen-set with spooled keys, every spooled row
    would be flagged (its key is in the spool: it *is* the spool) and dropped.
    """
    import spoold.iceberg.sink

    cfg = write_config(tmp_path, EVENTS)
    config = load_config(cfg)
    spool, sink = Spool.from_config(config), Sink(config)
    spool.append("app.events", rows("c", 0, 100))
    flush_table(config, spool, sink, "app.events")

    calls: list[tuple[list[str], list[bool]]] = []
    real = spoold.iceberg.sink.settle

    def spy(keys: Any, seen: Any, *fp: Any) -> list[int]:
        calls.append((list(keys), [bool(s) for s in seen]))
        return real(keys, seen, *fp)

    monkeypatch.setattr(spoold.iceberg.sink, "settle", spy)
    spool.append("app.events", rows("c", 50, 150))  # 50 committed, 50 new
    spool.append("app.events", rows("s", 0, 30))  # spooled only
    result = flush_table(config, spool, Sink(config), "app.events")  # a cold sink: index built from the table

    (keys, seen), = calls
    assert seen == [k in {f"c{i}" for i in range(100)} for k in keys]
    assert seen.count(True) == 50 and len(seen) == 130
    assert (result.committed, result.deduplicated) == (80, 50)


# -- 2. crash between commit and cleanup -----------------------------------------------------------------
def test_leftover_flush_files_of_a_committed_flush_commit_nothing_and_are_removed(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, EVENTS)
    spool = spool_of(cfg)
    spool.append("app.events", rows("a", 0, 1200))
    spool.rotate("app.events")
    spool.append("app.events", rows("a", 1200, 2000))
    spool.rotate("app.events")
    saved = {p.name: p.read_bytes() for p in spool.flush_files("app.events")}
    assert len(saved) == 2

    assert flush(cfg) == {"app.events": {"committed": 2000, "deduplicated": 0, "quarantined": 0}}
    snapshot = status(cfg)["tables"]["app.events"]["snapshot_id"]
    # The crash: the commit is durable but the files were never deleted.
    for name, data in saved.items():
        (spool.table_dir("app.events") / name).write_bytes(data)

    assert flush(cfg) == {"app.events": {"committed": 0, "deduplicated": 2000, "quarantined": 0}}
    assert spool.flush_files("app.events") == []
    st = status(cfg)["tables"]["app.events"]
    assert st["snapshot_id"] == snapshot  # no empty commit either
    assert (st["committed_rows"], st["spooled_rows"]) == (2000, 0)
    assert sorted(committed(cfg)) == sorted(f"a{i}" for i in range(2000))


def test_leftovers_next_to_new_rows_with_a_warm_sink(tmp_path: Path) -> None:
    """The daemon's case: same process, warm index, leftovers plus new rows in one flush."""
    cfg = write_config(tmp_path, EVENTS + "\n[flush]\nchunk_rows = 300\n")
    config = load_config(cfg)
    spool, sink = Spool.from_config(config), Sink(config)
    spool.append("app.events", rows("w", 0, 1000))
    spool.rotate("app.events")
    saved = {p: p.read_bytes() for p in spool.flush_files("app.events")}
    assert flush_table(config, spool, sink, "app.events").committed == 1000
    for path, data in saved.items():
        path.write_bytes(data)
    spool.append("app.events", rows("w", 1000, 1100))

    result = flush_table(config, spool, sink, "app.events")
    assert (result.committed, result.deduplicated) == (100, 1000)
    assert spool.pending("app.events") == []
    assert Counter(committed(cfg)) == Counter(f"w{i}" for i in range(1100))


# -- 3. SIGKILL at random points of a large flush ---------------------------------------------------------
def test_a_warm_sink_with_a_stale_schema_fails_one_flush_then_judges_like_a_fresh_one(tmp_path: Path) -> None:
    """A daemon's Sink reuses the table version it last saw; another writer adds a column meanwhile.

    The stale version surfaces at commit (nothing lost, nothing doubled), and
    the next flush validates against the table as it is now.
    """
    cfg = write_config(tmp_path, EVENTS)
    config = load_config(cfg)
    spool, sink = Spool.from_config(config), Sink(config)
    spool.append("app.events", rows("a", 0, 3))
    flush_table(config, spool, sink, "app.events")
    Sink(config).tables.ensure(config.table("app.events"), {"x": "string"})  # the other writer
    spool.append("app.events", [{"part_id": "b0", "x": 5}, {"part_id": "b1", "x": None}])
    with pytest.raises(CatalogError, match="'x' is string in the table but was validated as long"):
        flush_table(config, spool, sink, "app.events")
    assert spool.flush_files("app.events") and sorted(committed(cfg)) == ["a0", "a1", "a2"]
    result = flush_table(config, spool, sink, "app.events")
    assert (result.committed, result.quarantined) == (1, 1)
    assert quarantine(cfg, "app.events")[0]["reason"] == "column 'x': cannot cast 5 to string"
    assert sorted(committed(cfg)) == ["a0", "a1", "a2", "b1"]


@pytest.mark.slow  # ten flushes of 33,000 rows
def test_sigkill_at_random_points_of_large_flushes_loses_and_doubles_nothing(tmp_path: Path, rng: random.Random
                                                                            ) -> None:
    """A soak on top of the deterministic crash windows (test_crash_windows.py): ten flushes killed at
    random times, each kill placed in its window by the marks the flush wrote (spoold._testhooks)."""
    cfg = write_config(tmp_path, EVENTS + "\n[flush]\nchunk_rows = 5000\n")
    spool = spool_of(cfg)
    hooks = Hooks(tmp_path / "hooks")
    expected: set[str] = set()
    killed: list[int] = []
    completed = 0
    to_commit = None  # how long the last flush took from its start to its first commit: aims "early" kills
    window = 2.0  # "anywhere" kills land in here; narrowed to the length of a flush that got to finish
    for rnd in range(10):
        new = rows(f"r{rnd}-", 0, 30_000)
        old = rng.sample(sorted(expected), min(len(expected), 3000))  # re-sent keys: already committed or not
        spool.append("app.events", new + [{"part_id": k, "n": -1, "text": "again"} for k in old])
        expected |= {r["part_id"] for r in new}
        # Random times, from three anchors, so the soak covers the windows before and inside the commits
        # (timed from the start alone, on a loaded machine every kill can land before the first commit).
        anchor = ("in commits", "anywhere", "early")[rnd % 3]
        anchor = "in commits" if anchor == "early" and to_commit is None else anchor
        delay = {"early": rng.uniform(0.1, 0.9) * (to_commit or 0), "in commits": rng.uniform(0.0, 0.3),
                 "anywhere": rng.uniform(0.3, window)}[anchor]
        print(f"round {rnd}: kill {delay:.2f}s after {'the first commit' if anchor == 'in commits' else 'start'}")
        snaps_before = len(table_of(cfg).snapshots()) if table_of(cfg) is not None else 0
        started, started_at = time.monotonic(), time.time()
        proc = zygote.popen([sys.executable, "-m", "spoold", "flush", "--config", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **hooks.env()})
        if anchor == "in commits":
            wait_for(lambda p=proc: p.poll() is not None or any(m.point == "commit.staged" for m in hooks.marks(p.pid)),
                     "the flush's first commit")
        try:
            proc.wait(timeout=delay)
            window = max(0.5, time.monotonic() - started)
            completed += 1
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            killed.append(proc.pid)
            # The marks agree with the catalog: each commit staged became a snapshot, but maybe the one
            # the kill cut short (and a kill before any commit added none).
            staged = sum(m.point == "commit.staged" for m in hooks.marks(proc.pid))
            added = len(table_of(cfg).snapshots()) - snaps_before if table_of(cfg) is not None else 0
            assert staged - 1 <= added <= staged, (added, staged)
        marks = hooks.marks(proc.pid)
        if staged_at := [m.at for m in marks if m.point == "commit.staged"]:
            to_commit = staged_at[0] - started_at
        if marks:  # a flush killed late still says how far it got: "anywhere" reaches that far
            window = max(window, marks[-1].at - started_at + 0.5)
    hits = windows_hit(hooks, killed)
    print(f"{len(killed)} flushes killed, {completed} completed; kills by window: {dict(hits)}")
    assert sum(hits.values()) == len(killed)
    assert hits[WINDOWS[None]] >= 1, f"no kill landed before a commit: {dict(hits)}"
    assert len(killed) - hits[WINDOWS[None]] >= 1, f"no kill landed inside or after a commit: {dict(hits)}"
    assert flush(cfg)  # the survivor flush finishes whatever the kills left
    keys = Counter(committed(cfg))
    doubled = [k for k, n in keys.items() if n > 1]
    assert not doubled, f"doubled keys {doubled[:5]}"
    assert set(keys) == expected, f"lost {len(expected - set(keys))} row(s)"
    assert quarantine(cfg, "app.events") == []
    assert spool.pending("app.events") == []


def table_of(cfg: Path) -> Any:
    config = load_config(cfg)
    return Sink(config).load(config.table("app.events"))


# -- 4. two committers racing on one table -----------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_flushing_overlapping_keys_to_one_table(tmp_path: Path) -> None:
    body = EVENTS + "\n[flush]\nchunk_rows = 700\n"
    cfg_a = write_config(tmp_path, body, name="a.toml", spool=str(tmp_path / "spool-a"))
    cfg_b = write_config(tmp_path, body, name="b.toml", spool=str(tmp_path / "spool-b"))
    spool_a, spool_b = spool_of(cfg_a), spool_of(cfg_b)
    expected: set[str] = set()
    for rnd in range(4):  # round 0 also races to create the namespace and the table
        a, b = rows(f"x{rnd}-", 0, 4000), rows(f"x{rnd}-", 2000, 6000)
        spool_a.append("app.events", a)
        spool_b.append("app.events", b)
        expected |= {r["part_id"] for r in a + b}
        # A barrier: each stops once its first commit is staged; both are let go together, so they race
        # (their imports and reads take unequal times, and would let one finish before the other began).
        hooks = Hooks(tmp_path / f"hooks{rnd}", pause_at="commit.staged@1")
        procs = [zygote.popen([sys.executable, "-m", "spoold", "flush", "--config", str(c), "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **hooks.env()})
                 for c in (cfg_a, cfg_b)]
        for p in procs:
            hooks.wait_paused(p.pid, alive=lambda p=p: p.poll() is None)
        for p in procs:
            hooks.resume(p.pid)
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (_out, err) in zip(procs, outs):
            assert p.returncode == 0, err.decode()  # a conflict or a locked catalog is retried, not fatal
        summaries = [json.loads(out)["tables"]["app.events"] for out, _ in outs]
        assert sum(s["committed"] for s in summaries) == 6000
        assert sum(s["deduplicated"] for s in summaries) == 2000
        keys = Counter(committed(cfg_a))
        assert [k for k, n in keys.items() if n > 1] == []
        assert set(keys) == expected
        assert spool_a.pending("app.events") == spool_b.pending("app.events") == []
        spans = [hooks.span(p.pid) for p in procs]
        assert overlapped(*spans), spans  # (certain after the barrier; says so if the barrier breaks)


def test_a_commit_overtaken_by_another_committer_is_resettled_not_doubled(tmp_path: Path) -> None:
    """The race made certain: A has written its files and is about to commit when B commits overlapping keys."""
    cfg_a = write_config(tmp_path, EVENTS, name="a.toml", spool=str(tmp_path / "spool-a"))
    cfg_b = write_config(tmp_path, EVENTS, name="b.toml", spool=str(tmp_path / "spool-b"))
    spool_of(cfg_a).append("app.events", rows("y", 0, 4000))
    spool_of(cfg_b).append("app.events", rows("y", 2000, 6000))
    hooks = Hooks(tmp_path / "hooks", pause_at="commit.staged@1")
    a = zygote.popen([sys.executable, "-m", "spoold", "flush", "--json", "--config", str(cfg_a)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **hooks.env()})
    hooks.wait_paused(a.pid, alive=lambda: a.poll() is None)
    assert flush(cfg_b) == {"app.events": {"committed": 4000, "deduplicated": 0, "quarantined": 0}}
    hooks.resume(a.pid)
    out, err = a.communicate(timeout=120)
    assert a.returncode == 0, err.decode()
    # A's first commit was based on a table without B's rows: it conflicted, was settled again, and
    # committed only the keys B had not.
    assert json.loads(out)["tables"]["app.events"] == {"committed": 2000, "deduplicated": 2000, "quarantined": 0}
    assert [m.point for m in hooks.marks(a.pid)].count("commit.staged") == 2
    assert b"commit conflict" in err, err.decode()
    assert Counter(committed(cfg_a)) == Counter(f"y{i}" for i in range(6000))


# -- 5. the malformed corpus -------------------------------------------------------------------------------
def huge_file() -> tuple[bytes, list[dict[str, Any]], str]:
    """5 MB lines: one garbage, one valid (commits), one valid JSON with a bad version."""
    big = "y" * (5 << 20)
    good = orjson.dumps({"version": 1, "columns": ["part_id", "kind", "text"], "rows": [["huge-ok", "k", big]]})
    bad_version = orjson.dumps({"version": 2, "columns": ["part_id", "kind", "text"], "rows": [["huge-v2", "k", big]]})
    data = b"x" * (5 << 20) + b"\n" + good + b"\n" + bad_version + b"\n"
    expect = [{"line": 1, "row": None, "reason": "not valid UTF-8 JSON"},
              {"line": 3, "row": None, "reason": "version must be the integer 1"}]
    return data, expect, "huge-ok"


def test_malformed_corpus_valid_rows_commit_bad_ones_are_quarantined_with_reason_and_raw_bytes(
        tmp_path: Path) -> None:
    cfg = corpus_config(tmp_path)
    manifest = json.loads((CORPUS / "malformed" / "expected.json").read_text())
    sources = ["lines.jsonl", "rows.jsonl", "torn.jsonl"]
    huge, huge_expect, huge_key = huge_file()
    names = place(spool_of(cfg), CORPUS_TABLE, [(CORPUS / "malformed" / s).read_bytes() for s in sources] + [huge])
    fixture_of = dict(zip(names, [*sources, "huge"]))
    want = {(q["file"], q["line"], q["row"]): q["reason"] for q in manifest["quarantined"]}
    want |= {("huge", q["line"], q["row"]): q["reason"] for q in huge_expect}

    out = flush(cfg)[CORPUS_TABLE]
    assert out == {"committed": len(manifest["committed"]) + 1, "deduplicated": 0, "quarantined": len(want)}

    got = {}
    for rec in quarantine(cfg, CORPUS_TABLE):
        where = (fixture_of[rec["file"]], rec["line"], rec.get("row_index"))
        assert where not in got, f"quarantined twice: {where}"
        got[where] = rec
    assert set(got) == set(want)
    for where, reason in want.items():
        rec = got[where]
        assert reason in rec["reason"], (where, rec["reason"])
        lines = (huge if where[0] == "huge" else (CORPUS / "malformed" / where[0]).read_bytes()).split(b"\n")
        line = lines[where[1] - 1]
        if where[2] is None and rec.get("truncated"):  # a huge line: its head, length and hash
            assert where[0] == "huge" and rec["raw_bytes"] == len(line)
            assert rec["raw_sha256"] == hashlib.sha256(line).hexdigest() and line.startswith(rec["raw_head"].encode())
        elif where[2] is None:  # a whole line: its exact bytes, even when they are not UTF-8
            assert raw_bytes(rec) == line
        else:  # a row: the row as written, and the envelope's columns to read it by
            env = orjson.loads(line)
            assert rec["row"] == env["rows"][where[2]] and rec["columns"] == env["columns"]
    assert sorted(committed(cfg, CORPUS_TABLE)) == sorted([*manifest["committed"], huge_key])
    assert spool_of(cfg).pending(CORPUS_TABLE) == []
    assert status(cfg)["tables"][CORPUS_TABLE]["quarantined"] == len(want)


def test_daemon_facing_flush_call_never_raises_on_the_malformed_corpus(tmp_path: Path) -> None:
    cfg = corpus_config(tmp_path, "\n[flush]\nchunk_rows = 3\n")  # many small commits across bad lines
    config = load_config(cfg)
    spool = Spool.from_config(config)
    files = sorted((CORPUS / "malformed").glob("*.jsonl"))
    place(spool, CORPUS_TABLE, [f.read_bytes() for f in files] + [huge_file()[0]])
    spool.append_lines(CORPUS_TABLE, [(CORPUS / "malformed" / "lines.jsonl").read_bytes()])  # bad lines in active
    manifest = json.loads((CORPUS / "malformed" / "expected.json").read_text())
    n_lines = sum(1 for q in manifest["quarantined"] if q["file"] == "lines.jsonl")

    result = flush_table(config, spool, Sink(config), CORPUS_TABLE)
    assert result.quarantined == len(manifest["quarantined"]) + 2 + n_lines
    assert result.committed == len(manifest["committed"]) + 1
    assert result.deduplicated == 2  # lines.jsonl's two good rows, again from active
    assert spool.pending(CORPUS_TABLE) == []


def test_valid_corpus_commits_every_row_with_the_right_values(tmp_path: Path) -> None:
    cfg = corpus_config(tmp_path)
    expected = json.loads((CORPUS / "valid" / "expected.json").read_text())
    place(spool_of(cfg), CORPUS_TABLE, [p.read_bytes() for p in sorted((CORPUS / "valid").glob("*.jsonl"))])

    out = flush(cfg)[CORPUS_TABLE]
    assert out == {"committed": len(expected["rows"]), "deduplicated": expected["deduplicated"], "quarantined": 0}
    table = read_table(cfg, CORPUS_TABLE)
    assert str(table.schema.field("ts").type) == "timestamp[us, tz=UTC]"
    got = sorted(table.to_pylist(), key=lambda r: r["part_id"])
    for row in got:
        row["ts"] = row["ts"].isoformat() if row["ts"] is not None else None
        row["day"] = row["day"].isoformat() if row["day"] is not None else None
    assert got == expected["rows"]


# -- 6. schema inference, evolution, partitioning -----------------------------------------------------------
def test_undeclared_table_schema_is_inferred_then_evolved(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[flush]\nchunk_rows = 1\n")  # one commit per envelope line
    spool = spool_of(cfg)
    spool.append("free.events", [
        {"part_id": "i0", "s": "text", "i": 1, "f": 0.5, "b": True, "o": {"a": [1]}, "arr": [1, "x"], "nul": None},
        {"part_id": "i1", "s": "more", "i": 2, "f": 2, "b": False, "o": None, "arr": [], "nul": None},
    ])
    spool.append("free.events", [{"part_id": "i2", "i": 3, "w": 1}])  # w: inferred long, then committed...
    spool.append("free.events", [{"part_id": "i3", "i": 4, "w": 2.5}])  # ...so 2.5 cannot be cast any more
    out = flush(cfg)["free.events"]
    assert (out["committed"], out["quarantined"]) == (3, 1)
    (rej,) = quarantine(cfg, "free.events")
    assert rej["row"][rej["columns"].index("part_id")] == "i3" and "cannot cast 2.5 to long" in rej["reason"]

    table = read_table(cfg, "free.events")
    types = {f.name: str(f.type).replace("large_", "") for f in table.schema}
    assert types == {"part_id": "string", "s": "string", "i": "int64", "f": "double", "b": "bool",
                     "o": "struct<a: list<element: int64>>", "arr": "string", "w": "int64"}  # all-null: not created
    assert not table.schema.field("part_id").nullable  # the key column is required
    by_key = {r["part_id"]: r for r in table.to_pylist()}
    assert by_key["i0"]["o"] == {"a": [1]} and by_key["i0"]["arr"] == '[1,"x"]'  # a mixed array: JSON text
    assert by_key["i1"]["f"] == 2.0 and by_key["i1"]["o"] is None

    # A later envelope adds a column: it is added; rows committed before read it as null.
    spool.append("free.events", [{"part_id": "i4", "extra": "new", "i": 5}])
    assert flush(cfg)["free.events"]["committed"] == 1
    by_key = {r["part_id"]: r for r in read_table(cfg, "free.events").to_pylist()}
    assert by_key["i4"]["extra"] == "new"
    assert [by_key[k]["extra"] for k in ("i0", "i1", "i2")] == [None, None, None]


def test_an_inferred_column_takes_its_first_values_type_whatever_the_chunking(tmp_path: Path) -> None:
    # 1 then 2.5: the column is long (SPEC: integer -> long) and 2.5 is quarantined, in one
    # chunk or two, so flush never depends on where a chunk boundary falls (and backfill's
    # spool scan, which reads it all at once, agrees).
    for chunk_rows in (1, 100):
        cfg = write_config(tmp_path / str(chunk_rows), f"[flush]\nchunk_rows = {chunk_rows}\n")
        spool_of(cfg).append("free.nums", [{"part_id": "a", "v": 1}])
        spool_of(cfg).append("free.nums", [{"part_id": "b", "v": 2.5}])
        assert flush(cfg)["free.nums"] == {"committed": 1, "deduplicated": 0, "quarantined": 1}
        table = read_table(cfg, "free.nums")
        assert str(table.schema.field("v").type) == "int64"
        assert table.column("v").to_pylist() == [1]


def test_partitioned_table_is_written_by_day_and_reads_back(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, """
[tables."chat.parts"]
partition_by = ["day(ts)"]
[tables."chat.parts".columns]
part_id = "string!"
ts = "timestamptz"
text = "string"
""")
    stamps = ["2026-01-01T00:00:00Z", "2026-01-01T23:59:59.999999Z", "2026-01-02T00:30:00+01:00",
              "2026-01-02T12:00:00Z", "2026-01-03T08:00:00-05:00"]
    spool_of(cfg).append("chat.parts", [{"part_id": f"p{i}", "ts": ts, "text": "t"} for i, ts in enumerate(stamps)])
    assert flush(cfg)["chat.parts"]["committed"] == 5

    config = load_config(cfg)
    tbl = Sink(config).load(config.table("chat.parts"))
    assert tbl is not None
    (field,) = tbl.spec().fields
    assert (str(field.transform), tbl.schema().find_column_name(field.source_id)) == ("day", "ts")
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    files = {}
    for task in tbl.scan().plan_files():  # every data file holds rows of its partition's day only
        in_file = pq.read_table(task.file.file_path.removeprefix("file://")).to_pylist()
        assert {(r["ts"] - epoch).days for r in in_file} == {task.file.partition[0]}
        files[task.file.partition[0]] = sorted(r["part_id"] for r in in_file)
    day = {d: (datetime(2026, 1, d, tzinfo=UTC) - epoch).days for d in (1, 2, 3)}
    assert files == {day[1]: ["p0", "p1", "p2"], day[2]: ["p3"], day[3]: ["p4"]}  # p2 is the 1st in UTC
    got = {r["part_id"]: r["ts"] for r in read_table(cfg, "chat.parts").to_pylist()}
    assert got["p2"] == datetime(2026, 1, 1, 23, 30, tzinfo=UTC)
    assert got["p4"] == datetime(2026, 1, 3, 13, 0, tzinfo=UTC)


# -- quarantine, status -------------------------------------------------------------------------------------
def test_a_retried_flush_does_not_double_quarantine_entries(tmp_path: Path) -> None:
    """A flush that dies half way (here: the catalog fails on the second commit) and is retried."""
    cfg = write_config(tmp_path, EVENTS + "\n[flush]\nchunk_rows = 400\n")
    config = load_config(cfg)
    spool = Spool.from_config(config)
    bad = orjson.dumps({"version": 2, "columns": ["part_id"], "rows": [["lost"]]}) + b"\n"
    for part in range(3):  # three rotated files, each with good rows and two bad lines
        spool.append_lines("app.events", [bad])
        spool.append("app.events", rows(f"q{part}-", 0, 300))
        spool.append_lines("app.events", [b"not json\n"])
        spool.rotate("app.events")

    with pytest.raises(CatalogError):
        flush_table(config, spool, FakeSink(Sink(config), commit=fail_at(2, CatalogError("catalog went away"))),
                    "app.events")
    # The first commit covered file 1 and half of file 2; file 1 is gone, 2 and 3 wait.
    assert [p.name for p in spool.flush_files("app.events")] == [flush_name(2), flush_name(3)]
    result = flush_table(config, spool, Sink(config), "app.events")
    assert (result.committed, result.deduplicated) == (300, 300)

    where = Counter((r["file"], r["line"]) for r in quarantine(cfg, "app.events"))
    assert where == Counter({(flush_name(f), line): 1 for f in (1, 2, 3) for line in (1, 3)})
    assert status(cfg)["tables"]["app.events"]["quarantined"] == 6
    assert Counter(committed(cfg)) == Counter(f"q{p}-{i}" for p in range(3) for i in range(300))


def test_status_after_flush_shows_committed_rows_and_snapshot(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, EVENTS)
    spool_of(cfg).append("app.events", rows("s", 0, 42))
    st = status(cfg)["tables"]["app.events"]
    assert (st["spooled_rows"], st["committed_rows"], st["snapshot_id"]) == (42, 0, None)  # no table yet
    flush(cfg)
    st = status(cfg)["tables"]["app.events"]
    config = load_config(cfg)
    tbl = Sink(config).load(config.table("app.events"))
    assert tbl is not None and tbl.current_snapshot() is not None
    assert (st["spooled_rows"], st["committed_rows"]) == (0, 42)
    assert st["snapshot_id"] == tbl.current_snapshot().snapshot_id  # type: ignore[union-attr]


@pytest.mark.parametrize("catalog", [
    '[catalog]\ntype = "sql"\nuri = "sqlite:////nonexistent-dir/sub/catalog.db"\nwarehouse = "file:///tmp/w"\n',
    '[catalog]\ntype = "rest"\nuri = "http://127.0.0.1:9"\n',
], ids=["sqlite-in-a-missing-dir", "rest-on-a-closed-port"])
def test_status_and_flush_with_an_unreachable_catalog(tmp_path: Path, catalog: str) -> None:
    cfg = write_config(tmp_path, EVENTS, catalog=catalog)
    spool_of(cfg).append("app.events", rows("u", 0, 5))
    doc = status(cfg)
    st = doc["tables"]["app.events"]
    assert (st["spooled_rows"], st["committed_rows"], st["snapshot_id"]) == (5, None, None)
    assert doc["catalog_error"]

    proc = run_spoold("flush", "--config", str(cfg), "--json")
    assert proc.returncode == 1
    assert "app.events" in json.loads(proc.stdout)["errors"]
    assert status(cfg)["tables"]["app.events"]["spooled_rows"] == 5  # kept for the next try


def test_catalog_outage_keeps_rows_then_commits_them_once(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, EVENTS)
    spool_of(cfg).append("app.events", rows("o", 0, 10))
    flush(cfg)
    db = tmp_path / "state" / "catalog.db"
    spool_of(cfg).append("app.events", rows("o", 5, 20))
    shutil.move(db, tmp_path / "away.db")  # a fresh empty catalog would appear in its place
    proc = run_spoold("flush", "--config", str(cfg))
    assert proc.returncode == 1 and b"vanished" in proc.stderr  # not silently re-created empty
    shutil.move(tmp_path / "away.db", db)
    assert flush(cfg) == {"app.events": {"committed": 10, "deduplicated": 5, "quarantined": 0}}
    assert Counter(committed(cfg)) == Counter(f"o{i}" for i in range(20))
