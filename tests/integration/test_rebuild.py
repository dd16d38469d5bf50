"""`spoold rebuild TABLE`: a table committed as `ts: string` re-created under `timestamptz` + `day(ts)`.

Through the real CLI against a SQLite catalog: every row that passes the new
schema is committed once, the rest are quarantined as replayable rows, the old
table is kept as a backup until `--drop-backup`; flushes wait meanwhile; a
kill -9 anywhere in a rebuild loses and doubles nothing once it is run again.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from support import zygote
from support.cli import write_config
from support.daemonproc import DaemonProc, wait_for
from support.tables import committed_counts, load_table, spooled_keys
from support.testhooks import Hooks

from spoold.cli import main
from spoold.config import load_config
from spoold.layout import QUARANTINE, rebuild_state

OLD = """
[tables."{t}".columns]
part_id = "string!"
ts = "string"
"""
NEW = """
[tables."{t}"]
partition_by = ["day(ts)"]
[tables."{t}".columns]
part_id = "string!"
ts = "timestamptz"
"""


def configs(tmp_path: Path, tables: list[str], extra: str = "") -> tuple[Path, Path]:
    old = write_config(tmp_path, extra + "".join(OLD.format(t=t) for t in tables), name="old.toml")
    new = write_config(tmp_path, extra + "".join(NEW.format(t=t) for t in tables), name="new.toml")
    return old, new


def rows(n: int, prefix: str = "k") -> tuple[list[dict[str, Any]], set[str], set[str]]:
    """``n`` rows; one in 37 has a `ts` that is no timestamp: (rows, keys that pass, keys that do not)."""
    out, good, bad = [], set(), set()
    for i in range(n):
        key = f"{prefix}{i:05d}"
        if i % 37 == 5:
            out.append({"part_id": key, "ts": f"not a time {i}", "n": i})
            bad.add(key)
        else:
            out.append({"part_id": key, "ts": f"2026-01-{1 + i % 28:02d}T{i % 24:02d}:00:00Z", "n": i})
            good.add(key)
    return out, good, bad


def spoold(*args: str) -> Any:
    """The real CLI, in this process; it must succeed: its stdout (bytes) as ``.stdout``."""
    code, out, err = cli(*args)
    assert code == 0, (args, err)
    return types.SimpleNamespace(stdout=out.encode())


def land(cfg: Path, table: str, batch: list[dict[str, Any]]) -> None:
    path = cfg.parent / "rows.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in batch))
    spoold("append", table, str(path), "--config", str(cfg))


def committed_old(tmp_path: Path, table: str, n: int) -> tuple[Path, Path, set[str], set[str]]:
    """The old and new configs, with ``n`` rows of :func:`rows` committed to ``table`` under the old one:
    (old, new, keys that pass the new types, keys that do not)."""
    old, new = configs(tmp_path, [table])
    batch, good, bad = rows(n)
    land(old, table, batch)
    spoold("flush", "--config", str(old))
    return old, new, good, bad


def quarantined_keys(cfg: Path, table: str) -> Counter[str]:
    qdir = load_config(cfg).spool_root / table / QUARANTINE
    out: Counter[str] = Counter()
    for path in qdir.glob("*.jsonl"):
        for line in path.read_bytes().splitlines():
            rec = orjson.loads(line)
            assert rec["kind"] == "row" and "ts" in rec["reason"], rec
            out[rec["key"]] += 1
    return out


def test_a_string_column_is_rebuilt_as_timestamptz_partitioned_by_day(tmp_path: Path) -> None:
    from integration.test_duckdb import duckdb_connection

    table = "app.events"
    old, new, good, bad = committed_old(tmp_path, table, 10_000)
    assert str(load_table(old, table).schema().find_field("ts").field_type) == "string"

    dry = orjson.loads(spoold("rebuild", table, "--dry-run", "--json", "--config", str(new)).stdout)
    assert (dry["dry_run"], dry["rows"], dry["copied"], dry["quarantined"]) == (True, 10_000, len(good), len(bad))
    assert dry["reasons"] == {"column 'ts': cannot cast a value to timestamptz": len(bad)}
    assert str(load_table(new, table).schema().find_field("ts").field_type) == "string"  # the dry run changed nothing
    assert quarantined_keys(new, table) == Counter()

    proc = spoold("rebuild", table, "--json", "--config", str(new))
    report = orjson.loads(proc.stdout)
    assert (report["copied"], report["quarantined"], report["deduplicated"]) == (len(good), len(bad), 0)
    tbl = load_table(new, table)
    assert str(tbl.schema().find_field("ts").field_type) == "timestamptz"
    assert [str(f.transform) for f in tbl.spec().fields] == ["day"]
    assert committed_counts(new, table) == Counter(good)  # every passing row, once
    assert quarantined_keys(new, table) == Counter(bad)  # every other one, once, with its reason
    backup = report["backup"]
    assert backup.startswith(f"{table}__backup_") and Counter(committed_counts(new, backup)) == Counter(good | bad)
    # No producer writes to the backup or a staging table: --drop-backup would purge their rows.
    (tmp_path / "late.jsonl").write_bytes(b'{"part_id": "late"}\n')
    for name in (backup, backup.replace("__backup_", "__rebuild_")):
        code, _, err = cli("append", name, str(tmp_path / "late.jsonl"), "--config", str(new))
        assert code == 2 and "backup table of `spoold rebuild`" in err and err.count("\n") == 1, err
    assert not rebuild_state(load_config(new).spool_root, table).exists()

    con = duckdb_connection()  # typed timestamps for other readers too
    relation = f"iceberg_scan('{tbl.metadata_location}')"
    described = dict((n, t) for n, t, *_ in con.sql(f"DESCRIBE SELECT * FROM {relation}").fetchall())
    assert described["ts"] == "TIMESTAMP WITH TIME ZONE"
    assert con.sql(f"SELECT count(*), count(DISTINCT part_id), count(DISTINCT CAST(ts AS DATE)) FROM {relation}"
                   ).fetchone() == (len(good), len(good), 28)

    assert b"nothing to rebuild" in spoold("rebuild", table, "--config", str(new)).stdout

    # the quarantined rows are replayable: fixed by hand, they come back through the spool
    qdir = load_config(new).spool_root / table / QUARANTINE
    for path in qdir.glob("*.jsonl"):
        recs = [orjson.loads(ln) for ln in path.read_bytes().splitlines()]
        for rec in recs:
            rec["row"][rec["columns"].index("ts")] = "2026-02-01T00:00:00Z"
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs))
    assert orjson.loads(spoold("quarantine", "replay", table, "--json", "--config", str(new)).stdout)["replayed"] \
        == len(bad)
    spoold("flush", "--config", str(new))
    assert committed_counts(new, table) == Counter(good | bad)

    dropped = orjson.loads(spoold("rebuild", table, "--drop-backup", "--json", "--config", str(new)).stdout)
    assert dropped["dropped"] == [backup] and dropped["purged_files"] > 0
    assert load_table(new, backup) is None
    warehouse = tmp_path / "state" / "warehouse"
    assert not (warehouse / "app" / "events").exists()  # the backup's own location, purged
    assert committed_counts(new, table) == Counter(good | bad)  # the rebuilt table is untouched
    assert b"no backup to drop" in spoold("rebuild", table, "--drop-backup", "--config", str(new)).stdout


@pytest.mark.slow
def test_while_a_table_is_rebuilt_the_daemon_holds_its_rows_flushes_the_others_then_the_new_table_gets_them(
        tmp_path: Path) -> None:
    table, other = "app.events", "app.other"
    extra = '[flush]\ndebounce_s = 0.2\nmax_delay_s = 1\nchunk_rows = 100\n'
    old, new = configs(tmp_path, [table, other], extra)
    batch, good, bad = rows(300)
    land(old, table, batch)
    spoold("flush", "--config", str(old))

    hooks = Hooks(tmp_path / "hooks", pause_at="rebuild.committed")
    rb = zygote.popen([sys.executable, "-m", "spoold", "rebuild", table, "--config", str(new)],
                          env={**os.environ, **hooks.env()}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    daemon = DaemonProc(new)
    try:
        hooks.wait_paused(rb.pid, alive=lambda: rb.poll() is None)
        late, late_good, _ = rows(50, prefix="late")
        land(new, table, [r for r in late if r["part_id"] in late_good])  # appends go on
        land(new, other, [r for r in late if r["part_id"] in late_good])
        wait_for(lambda: len(committed_counts(new, other)) == len(late_good), "the other table's rows")
        assert len(spooled_keys(new, table)) == len(late_good)  # this one's wait
        hooks.resume(rb.pid)
        _, err = rb.communicate(timeout=120)
        assert rb.returncode == 0, err.decode()
        wait_for(lambda: set(committed_counts(new, table)) == good | late_good, "the late rows in the new table")
    finally:
        if rb.poll() is None:
            rb.kill()
        daemon.close()
    assert committed_counts(new, table) == Counter(good | late_good)
    assert "flush failed" not in daemon.log(), daemon.log()
    backup = orjson.loads(spoold("rebuild", table, "--drop-backup", "--dry-run", "--json", "--config",
                                 str(new)).stdout)["dropped"][0]
    assert committed_counts(new, backup) == Counter(good | bad)  # none of the late rows went to the old table


def test_a_table_compacted_during_its_rebuild_is_copied_again_without_doubles(tmp_path: Path) -> None:
    table = "app.events"
    old, new = configs(tmp_path, [table], '[flush]\nchunk_rows = 100\n')
    batch, good, bad = rows(400)
    for at in range(0, 400, 100):  # four small data files, for maintenance to compact
        land(old, table, batch[at:at + 100])
        spoold("flush", "--config", str(old))
    hooks = Hooks(tmp_path / "hooks", pause_at="rebuild.committed@2")
    rb = zygote.popen([sys.executable, "-m", "spoold", "rebuild", table, "--config", str(new)],
                          env={**os.environ, **hooks.env()}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        hooks.wait_paused(rb.pid, alive=lambda: rb.poll() is None)
        code, out, err = cli("maintain", table, "--json", "--config", str(old))
        assert code == 0 and orjson.loads(out)["tables"][table]["files_compacted"] >= 4, out + err
        hooks.resume(rb.pid)
        _, err = rb.communicate(timeout=120)
        assert rb.returncode == 0, err.decode()
    finally:
        if rb.poll() is None:
            rb.kill()
    assert committed_counts(new, table) == Counter(good)
    assert quarantined_keys(new, table) == Counter(bad)  # the compacted files' rejects are not added again


def test_rows_another_writer_commits_to_the_old_table_just_before_the_swap_are_copied_too(tmp_path: Path) -> None:
    table = "app.events"
    old, new, good, bad = committed_old(tmp_path, table, 100)
    hooks = Hooks(tmp_path / "hooks", pause_at="rebuild.copied")  # the copy took its last look
    rb = zygote.popen([sys.executable, "-m", "spoold", "rebuild", table, "--config", str(new)],
                          env={**os.environ, **hooks.env()}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        hooks.wait_paused(rb.pid, alive=lambda: rb.poll() is None)
        tbl = load_table(old, table)  # another writer (a backfill that was already running, another host)
        late = [{"part_id": f"other{i}", "ts": "2026-03-01T00:00:00Z", "n": i} for i in range(7)]
        tbl.append(pa.Table.from_pylist(late, schema=tbl.schema().as_arrow()))
        hooks.resume(rb.pid)
        _, err = rb.communicate(timeout=120)
        assert rb.returncode == 0, err.decode()
    finally:
        if rb.poll() is None:
            rb.kill()
    assert committed_counts(new, table) == Counter(good | {r["part_id"] for r in late})
    assert quarantined_keys(new, table) == Counter(bad)


def moved_on_before_the_swap(tmp_path: Path, table: str, old: Path, new: Path) -> set[str]:
    """A rebuild killed once it copied everything, before its renames; then another writer commits to the old
    table (a backfill already running, another host). The keys it committed."""
    hooks = Hooks(tmp_path / f"hooks-{table}-copied", pause_at="rebuild.copied")
    rb = zygote.popen([sys.executable, "-m", "spoold", "rebuild", table, "--config", str(new)],
                          env={**os.environ, **hooks.env()}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        hooks.wait_paused(rb.pid, alive=lambda: rb.poll() is None)
    finally:
        rb.kill()
        rb.wait()
    tbl = load_table(old, table)
    late = [{"part_id": f"other{i}", "ts": "2026-03-01T00:00:00Z", "n": i} for i in range(7)]
    tbl.append(pa.Table.from_pylist(late, schema=tbl.schema().as_arrow()))
    return {r["part_id"] for r in late}


def test_a_rebuild_killed_while_it_copies_the_old_tables_last_commit_again_loses_none_of_it(tmp_path: Path) -> None:
    """The swap copies what another writer committed just before the first rename; killed in that copy, a
    re-run copies it again (the state keeps the snapshot to copy apart from the last one copied whole)."""
    table = "app.events"
    old, new, good, bad = committed_old(tmp_path, table, 100)
    late = moved_on_before_the_swap(tmp_path, table, old, new)
    killed = Killed(tmp_path / "hooks", "rebuild.recopy", table, new)  # renamed; the late commit is to copy
    assert killed.kill(random.Random(0)) == "rebuild.recopy"
    code, out, err = cli("rebuild", table, "--json", "--config", str(new))
    assert code == 0, err
    assert committed_counts(new, table) == Counter(good | late)  # every row once, the late ones too
    assert quarantined_keys(new, table) == Counter(bad)
    assert committed_counts(new, orjson.loads(out)["backup"]) == Counter(good | bad | late)


def test_a_long_lived_sink_that_knew_the_old_table_commits_into_the_rebuilt_one(tmp_path: Path) -> None:
    """The daemon's catalog connection outlives a rebuild: its cached table and pinned uuid give way."""
    from spoold.flush.flush import flush_table
    from spoold.flush.rebuild import rebuild
    from spoold.iceberg.sink import Sink
    from spoold.progress import Progress
    from spoold.spool.spool import Spool

    table = "app.events"
    old, new, good, bad = committed_old(tmp_path, table, 100)
    config = load_config(new)
    sink = Sink(config)  # as the daemon's: it has seen (and pinned) the old table
    assert sink.load(config.table(table)) is not None and sink.verified(config.table(table))
    log = io.StringIO()  # and a long rebuild says how far it got
    report = rebuild(config, table, progress=Progress(log, "rebuild", tty=False, interval=0))
    assert report.copied == len(good) and report.backup
    assert f"rebuild 100.0% {len(good) + len(bad)} rows" in log.getvalue().replace(",", "")
    late, late_good, _ = rows(20, prefix="late")
    land(new, table, [r for r in late if r["part_id"] in late_good])
    result = flush_table(config, Spool.from_config(config), sink, table)
    assert result.committed == len(late_good)
    assert committed_counts(new, table) == Counter(good | late_good)

    # A backup whose location it cannot prove its own (no owner marker) is dropped, its files kept.
    location = Path(load_table(new, report.backup).location().removeprefix("file://"))
    for marker in location.glob(".spoold-owner-*"):
        marker.unlink()
    files = sorted(p for p in location.rglob("*") if p.is_file())
    assert orjson.loads(spoold("rebuild", table, "--drop-backup", "--json", "--config", str(new)).stdout)[
        "purged_files"] == 0
    assert load_table(new, report.backup) is None and sorted(p for p in location.rglob("*") if p.is_file()) == files


def test_rebuild_errors(tmp_path: Path) -> None:
    old, new = configs(tmp_path, ["app.events"])
    code, _, err = cli("rebuild", "app.nosuch", "--config", str(new))
    assert code == 2 and "not in the catalog" in err
    assert cli("rebuild", "nosuch", "--config", str(new))[0] == 2
    (tmp_path / "rows.jsonl").write_bytes(b'{"part_id": "a", "ts": "2026-01-01T00:00:00Z"}\n')
    assert cli("append", "app.events", str(tmp_path / "rows.jsonl"), "--config", str(new))[0] == 0
    assert cli("flush", "--config", str(new))[0] == 0
    code, out, err = cli("rebuild", "app.events", "--config", str(new))
    assert code == 0 and "nothing to rebuild" in out and "error" not in err
    (tmp_path / "bad.db").mkdir()  # a catalog that cannot be opened
    broken = write_config(tmp_path, NEW.format(t="app.events"), name="broken.toml",
                          catalog=f'[catalog]\ntype = "sql"\nuri = "sqlite:///{tmp_path / "bad.db"}"\n'
                          f'warehouse = "file://{tmp_path / "wh"}"\n')
    code, out, err = cli("rebuild", "app.events", "--config", str(broken))
    assert code == 1 and "cannot open catalog" in err and "nothing to rebuild" not in out


def cli(*args: str) -> tuple[int, str, str]:
    """The real CLI in this process (``spoold.cli.main``): (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


# Where a kill lands: paused at a named point (then killed), or after a random delay.
# "rebuild.recopy": another writer committed to the old table just before the swap; killed copying that again.
POINTS = ["rebuild.created", "rebuild.committed@1", "commit.staged@2", "rebuild.committed@2", "rebuild.copied",
          "rebuild.backed_up", None, None, "rebuild.recopy", "rebuild.backed_up"]


class Killed:
    """A rebuild started to be SIGKILLed at ``point`` (None: at a random moment once it got going)."""

    def __init__(self, hooks_dir: Path, point: str | None, table: str, cfg: Path) -> None:
        self.hooks, self.point = Hooks(hooks_dir, pause_at=point), point
        self.proc = zygote.popen([sys.executable, "-m", "spoold", "rebuild", table, "--config", str(cfg)],
                                     env={**os.environ, **self.hooks.env()}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def kill(self, rng: random.Random) -> str:
        """Kill it where it was meant to die; the last point it marked."""
        proc, hooks = self.proc, self.hooks
        if self.point is not None:
            hooks.wait_paused(proc.pid, alive=lambda: proc.poll() is None)
        else:
            wait_for(lambda: hooks.marks(proc.pid) or proc.poll() is not None, "the rebuild to start", every=0.01)
            wait_for(lambda: rng.random() < 0.2 or proc.poll() is not None, "a random moment", every=0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        marks = [m.point for m in hooks.marks(proc.pid)]
        return marks[-1] if marks else "start"


@pytest.mark.slow
def test_kill_9_anywhere_in_a_rebuild_loses_and_doubles_nothing(tmp_path: Path) -> None:
    seeds = range(10)
    tables = [f"app.t{s}" for s in seeds]
    old, new = configs(tmp_path, tables, '[flush]\nchunk_rows = 400\n')  # five commits a rebuild
    expected = {}
    for t in tables:
        batch, good, bad = rows(2000)
        (tmp_path / "rows.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in batch))
        assert cli("append", t, str(tmp_path / "rows.jsonl"), "--config", str(old))[0] == 0
        expected[t] = (good, bad)
    assert cli("flush", "--config", str(old))[0] == 0
    late = {t: moved_on_before_the_swap(tmp_path, t, old, new) if p == "rebuild.recopy" else set()
            for t, p in zip(tables, POINTS)}
    # All ten rebuilds (of ten tables) start at once: they pause at their points side by side.
    killed = [Killed(tmp_path / f"hooks{seed}", POINTS[seed], tables[seed], new) for seed in seeds]
    hits = Counter(k.kill(random.Random(seed)) for seed, k in zip(seeds, killed))
    for seed in seeds:
        t, point = tables[seed], POINTS[seed]
        during = set()
        if rebuild_state(load_config(new).spool_root, t).exists():  # a flush now must not touch the table
            (tmp_path / "late.jsonl").write_bytes(b'{"part_id": "during", "ts": "2026-01-01T00:00:00Z"}\n')
            assert cli("append", t, str(tmp_path / "late.jsonl"), "--config", str(new))[0] == 0
            code, _, err = cli("flush", t, "--config", str(new))
            assert code == 1 and "being rebuilt" in err, err
            during = {"during"}
            code, _, err = cli("backfill", t, "--source", str(tmp_path / "late.jsonl"), "--config", str(new))
            assert code == 1 and "being rebuilt" in err, err
        code, _, err = cli("rebuild", t, "--config", str(new))  # goes on, and finishes
        assert code == 0, err
        assert cli("flush", t, "--config", str(new))[0] == 0
        good, bad = expected[t]
        assert committed_counts(new, t) == Counter(good | during | late[t]), (seed, point)
        assert quarantined_keys(new, t) == Counter(bad), (seed, point)
        assert str(load_table(new, t).schema().find_field("ts").field_type) == "timestamptz"
        code, out, _ = cli("rebuild", t, "--drop-backup", "--dry-run", "--json", "--config", str(new))
        backups = orjson.loads(out)["dropped"]
        assert len(backups) == 1 and committed_counts(new, backups[0]) == Counter(good | bad | late[t]), (seed, point)
    assert len(hits) >= 5, hits


def test_nested_columns_and_empty_maps_are_copied_as_they_were(tmp_path: Path) -> None:
    """Arrow reads a map back as key/value pairs (an empty one as ``[]``): the rebuild hands the validator
    objects again, at any depth, so no row with a map, empty or not, is quarantined for its shape."""
    nested = ('attrs = "map<string, string>"\nprops = "struct<tags: list<string>, m: map<string, long>>"\n')
    old = write_config(tmp_path, OLD.format(t="app.n") + nested, name="old.toml")
    new = write_config(tmp_path, NEW.format(t="app.n") + nested, name="new.toml")
    batch = [{"part_id": "a", "ts": "2026-01-01T00:00:00Z", "attrs": {}, "props": {"tags": [], "m": {}}},
             {"part_id": "b", "ts": "2026-01-02T00:00:00Z", "attrs": {"k": "v"},
              "props": {"tags": ["x"], "m": {"one": 1}}},
             {"part_id": "c", "ts": "2026-01-03T00:00:00Z", "attrs": None, "props": None}]
    land(old, "app.n", batch)
    spoold("flush", "--config", str(old))
    out = orjson.loads(spoold("rebuild", "app.n", "--config", str(new), "--json").stdout)
    assert out["quarantined"] == 0 and out["copied"] == 3, out
    got = sorted(load_table(new, "app.n").scan().to_arrow().to_pylist(), key=lambda r: r["part_id"])
    assert [(r["attrs"], r["props"]) for r in got] == [
        ([], {"tags": [], "m": []}), ([("k", "v")], {"tags": ["x"], "m": [("one", 1)]}), (None, None)]
