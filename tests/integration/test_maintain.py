"""``spoold maintain`` as users run it: the real CLI against a real SQLite catalog (issue 9 acceptance 1-3)."""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from support import zygote
from support.cli import run_spoold
from support.maintkit import TABLE, commit, duckdb_scan, files_under, key_counts, local, make_config, rows, table

from spoold.config import Config, load_config
from spoold.iceberg.maintain.reachable import referenced
from spoold.iceberg.sink import Sink

KEYS = ("at", "host", "duration_s", "snapshots_expired", "files_before", "files_after", "duplicates_removed",
        "files_deleted", "orphans_deleted")


def maintain(cfg: Path, *args: str) -> dict[str, Any]:
    out = run_spoold("maintain", "--config", str(cfg), "--json", *args, timeout=600)
    assert out.returncode == 0, out.stderr.decode()
    doc = orjson.loads(out.stdout)
    assert set(doc) == {"tables"}
    return doc["tables"]


def append_plain(c: Config, keys: list[str], n: int, day: int = 0) -> None:
    tbl = table(c)
    ts = pa.array([1_767_225_600_000_000 + day * 86_400_000_000] * len(keys), pa.timestamp("us", tz="UTC"))
    tbl.append(pa.table({"part_id": keys, "n": pa.array([n] * len(keys), pa.int64()), "ts": ts},
                        schema=tbl.schema().as_arrow()))


def partition_files(tbl: Any) -> Counter[Any]:
    return Counter(tuple(t.file.partition) for t in tbl.scan().plan_files())


@pytest.mark.slow
def test_300_commits_then_maintain_keeps_5_snapshots_compacts_and_repairs_doubles(tmp_path: Path) -> None:
    path = make_config(tmp_path)
    c = load_config(path)
    sink = Sink(c)
    for i in range(306):
        commit(sink, [f"k{i}-{j}" for j in range(20)], n=i, day=i % 3)
    for day in range(3):  # another tool appends 53 rows again (into their own partitions, being the same rows)
        append_plain(c, [f"k{i}-0" for i in range(0, 300, 7) if i % 3 == day], n=-1, day=day)
    append_plain(c, [f"k{i}-1" for i in range(1, 300, 30)], n=-1, day=1)
    tbl = table(c)
    target = 16 << 10
    with tbl.transaction() as tx:
        tx.set_properties({"write.target-file-size-bytes": str(target)})
    before = files_under(table(c), "metadata")
    bytes_by_part = Counter()
    for t in tbl.scan().plan_files():
        bytes_by_part[tuple(t.file.partition)] += t.file.file_size_in_bytes
    assert sum(key_counts(c).values()) == 306 * 20 + 43 + 10

    doc = maintain(path, "--older-than", "0s", "--keep", "5")

    report = doc[TABLE]
    assert report["files_before"] == 310 and report["duplicates_removed"] == 53 and report["dry_run"] is False
    # (the flushes expired by themselves past the table's cap of 100 snapshots: ~100 are left to expire)
    assert report["snapshots_expired"] >= 100 and report["files_deleted"] >= 200
    tbl = table(c)
    assert len(tbl.snapshots()) <= 6 and tbl.current_snapshot().summary.operation.value == "replace"
    for part, n in partition_files(tbl).items():
        assert n <= math.ceil(bytes_by_part[part] / target) + 1  # bounded by the data size over the target
    assert report["files_after"] == sum(partition_files(tbl).values()) < 60
    after = files_under(tbl, "metadata")
    assert sum(after.values()) < sum(before.values())
    data = rows(c)
    counts = Counter(data.column("part_id").to_pylist())
    assert len(counts) == 306 * 20 and set(counts.values()) == {1}  # every key exactly once
    assert -1 not in data.column("n").to_pylist()  # the earliest-committed copy is the one kept
    assert duckdb_scan(tbl.metadata_location) == [(306 * 20, 306 * 20)]
    record = orjson.loads(tbl.properties["spoold.last-maintenance"])  # for `spoold status`, on any host
    assert set(record) == set(KEYS) and record["files_after"] == report["files_after"]
    assert orjson.loads((c.spool_root / TABLE / ".last-maintenance.json").read_bytes()) == record


def test_dry_run_changes_nothing_and_bad_input_exits_2(tmp_path: Path) -> None:
    path = make_config(tmp_path)
    c = load_config(path)
    sink = Sink(c)
    for i in range(5):
        commit(sink, [f"k{i}"])
    append_plain(c, ["k1"], n=-1)
    everything = files_under(table(c))
    report = maintain(path, "--dry-run", "--older-than", "0s", "--keep", "1")[TABLE]
    assert report["dry_run"] and report["files_compacted"] == 6 and report["duplicates_removed"] == 1
    assert report["snapshots_expired"] == 5 and report["files_after"] == 1
    assert files_under(table(c)) == everything and "spoold.last-maintenance" not in table(c).properties
    for args, what in ((["no.such"], "no.such"), (["--older-than", "5 days"], "duration"), (["--keep", "0"], "keep"),
                       (["bad-name"], "bad table identifier")):
        out = run_spoold("maintain", "--config", str(path), *args)
        assert out.returncode == 2 and what in out.stderr.decode(), out.stderr
    assert run_spoold("maintain", "--config", str(path)).returncode == 0  # every known table by default


@pytest.mark.slow
def test_compaction_concurrent_with_flushes_and_a_backfill_loses_and_doubles_nothing(
        tmp_path: Path, rng: random.Random) -> None:
    """Processes: flushes, a backfill and `spoold maintain` at random moments, several rounds."""
    path = make_config(tmp_path, '\n[maintain]\ntarget_file_bytes = 4096\n')
    c = load_config(path)
    expected: set[str] = set()
    errors: list[str] = []

    def run(*args: str, input: bytes | None = None) -> None:
        out = run_spoold(*args, "--config", str(path), input=input, timeout=600)
        if out.returncode != 0:
            errors.append(f"{args[0]}: {out.stderr.decode()}")

    def flusher(r: int) -> None:
        for b in range(4):
            keys = [f"f{r}-{b}-{i}" for i in range(30)] + [f"f{r}-{b - 1}-{i}" for i in range(5) if b]  # again
            run("append", TABLE, input=b"".join(orjson.dumps({"part_id": k, "n": b}) + b"\n" for k in keys))
            time.sleep(rng.random() * 0.5)
            run("flush")

    def backfiller(r: int) -> None:
        src = tmp_path / f"src-{r}.jsonl"
        keys = [f"f{r}-{b}-{i}" for b in range(4) for i in range(0, 30, 3)] + [f"bf{r}-{i}" for i in range(40)]
        src.write_bytes(b"".join(orjson.dumps({"part_id": k, "n": 7}) + b"\n" for k in keys))
        time.sleep(rng.random() * 2)
        run("backfill", TABLE, "--source", str(src), "--all")

    def maintainer() -> None:
        for _ in range(3):
            time.sleep(rng.random() * 1.5)
            run("maintain", "--older-than", "0s", "--keep", str(rng.randint(1, 3)))

    for r in range(3):
        expected |= {f"f{r}-{b}-{i}" for b in range(4) for i in range(30)} | {f"bf{r}-{i}" for i in range(40)}
        threads = [threading.Thread(target=f, args=a) for f, a in ((flusher, (r,)), (backfiller, (r,)),
                                                                    (maintainer, ()))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        counts = key_counts(c)
        assert set(counts.values()) == {1}, [k for k, n in counts.items() if n > 1][:10]  # nothing doubled
        assert set(counts) == expected  # nothing lost
    maintain(path)
    assert key_counts(c) == Counter(expected)


@pytest.mark.slow
def test_sigkill_at_random_points_of_maintain_loses_and_doubles_nothing(tmp_path: Path, rng: random.Random) -> None:
    path = make_config(tmp_path, '\n[maintain]\ntarget_file_bytes = 8192\n')
    c = load_config(path)
    sink = Sink(c)
    expected = Counter[str]()
    kills, span = 0, 4.0  # kill within the first `span` seconds; shrunk whenever a run finished first
    for round_ in range(30):
        for i in range(rng.randint(5, 15)):
            keys = [f"r{round_}-{i}-{j}" for j in range(10)]
            commit(sink, keys, day=i % 2)
            expected.update(keys)
        proc = zygote.popen([sys.executable, "-m", "spoold", "maintain", "--config", str(path),
                                 "--older-than", "0s", "--keep", "2"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=os.environ.copy())
        time.sleep(rng.uniform(0.2, span))  # start-up, planning, rewriting, committing, expiring, sweeping
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        else:
            span *= 0.7
        proc.wait()
        assert key_counts(c) == expected  # readable, nothing lost, nothing doubled
        sink = Sink(c)  # (a new "daemon": the killed run may have left the old one's version stale)
        if kills >= 6:
            break
    assert kills >= 6
    time.sleep(1.5)
    final = tmp_path / "final.toml"
    final.write_text(path.read_text() + "orphan_age_s = 1\n")  # a test-sized safety age
    maintain(final, "--older-than", "0s", "--keep", "2")
    tbl = table(c)
    assert key_counts(c) == expected and duckdb_scan(tbl.metadata_location)[0][0] == sum(expected.values())
    refs = {local(p) for p in referenced(tbl)}
    assert [p for p in files_under(tbl) if p not in refs] == []  # the killed runs' orphans are gone


def test_a_partition_value_that_needs_escaping_flushes_and_compacts_in_one_go(tmp_path: Path) -> None:
    """pyiceberg %-escapes partition values in paths (``src=host%3A1%2F%C3%A9``) and writes that literal
    name; spoold's fsync after a commit used to unescape it, fail on a file that does not exist, and
    keep the spool file (one failed flush per batch, and no fsync of the data); compaction failed too."""
    from support.cli import write_config

    cfg = write_config(tmp_path, '[tables."app.src"]\npartition_by = ["src"]\n[tables."app.src".columns]\n'
                                 'part_id = "string!"\nsrc = "string"\n')
    for i in range(4):
        rows = b"".join(orjson.dumps({"part_id": f"k{i}-{j}", "src": "host:1/\u00e9 %41"}) + b"\n" for j in range(5))
        out = run_spoold("append", "app.src", "-", "--config", str(cfg), input=rows)
        assert out.returncode == 0, out.stderr.decode()
        out = run_spoold("flush", "--config", str(cfg), "--json")
        assert out.returncode == 0 and b"error" not in out.stderr, out.stderr.decode()
        assert orjson.loads(out.stdout)["tables"]["app.src"]["committed"] == 5
    c = load_config(cfg)
    assert not list((c.spool_root / "app.src").glob("flush-*.jsonl"))  # nothing left for a second flush
    doc = maintain(cfg, "app.src")["app.src"]
    assert doc["files_before"] == 4 and doc["files_after"] == 1, doc
    tbl = Sink(c).load(c.table("app.src"))
    assert tbl is not None
    data = tbl.scan().to_arrow()
    assert sorted(data.column("part_id").to_pylist()) == sorted(f"k{i}-{j}" for i in range(4) for j in range(5))
    assert set(data.column("src").to_pylist()) == {"host:1/\u00e9 %41"}


def test_spoold_maintain_prints_each_tables_line_once(tmp_path: Path) -> None:
    """In a terminal stdout and stderr meet: the report line is printed, not also logged."""
    from support.cli import write_config

    cfg = write_config(tmp_path)
    assert run_spoold("append", "t.m", "--config", str(cfg), input=b'{"part_id": "a"}\n').returncode == 0
    assert run_spoold("flush", "--config", str(cfg)).returncode == 0
    proc = zygote.run([sys.executable, "-m", "spoold", "maintain", "--config", str(cfg)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.count(b"t.m: ") == 1, proc.stdout
