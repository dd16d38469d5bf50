"""Months of flushes, compressed: a table's cost with maintenance on vs off (issue 9, acceptance 7).

1. N flushes (default 1,000) of R rows (default 1,000) through spoold's own
   flush path into one table (one day partition, as a daemon's day of
   chat parts), once with the daemon's maintenance on (``Sink.maintain()``
   between flushes, as the daemon calls it while no flush is due; default
   triggers) and once off. Printed per mode: flush latency around flushes
   10, N/2 and N (median of 9), data files, metadata bytes (after 100 and
   after N), the time maintenance took, and full scans of the table (DuckDB
   with its iceberg extension: a count and an aggregate over every column;
   and pyiceberg) against the same rows as an Iceberg table of one data
   file. Targets with maintenance on: latency at N <= 1.3x latency at 10;
   metadata bytes after N <= 2x after 100; full scan <= 2x one file.
   Retention with maintenance on: the newest 100 snapshots (``--keep``;
   ``keep_snapshots`` with a 1 s age): N flushes here take minutes, not the
   ~33 hours a daemon at a 2-minute debounce would take, so an age-based
   retention would keep them all; 100 snapshots is ~3 hours of such a daemon.
2. ``--rss``: peak RSS of compacting one ~50 MB group (40 files of 25,000
   rows) in a child process, against the group's size as Arrow data.

Usage: python bench/longrun.py [--flushes N] [--rows R] [--quick] [--only on|off] [--keep N] [--rss] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_mb, reset_peak, rss_mb, sqlite_catalog  # noqa: E402
from flush import COLUMNS, TABLE, gen_rows  # noqa: E402  (the same rows and table as bench/flush.py)

SITE = Path(__file__).resolve().parents[1]


KEEP = 100  # snapshots kept with maintenance on (--keep)


def make_config(state: Path, maintain: bool, extra: dict[str, Any] | None = None) -> Any:
    from spoold.config import parse_config

    state.mkdir(parents=True, exist_ok=True)
    settings = {"enabled": maintain} | ({"keep_snapshots": KEEP, "max_snapshot_age_s": 1} if maintain else {})
    return parse_config({
        **sqlite_catalog(state),
        "maintain": settings | (extra or {}),
        "tables": {TABLE: {"partition_by": ["day(ts)"], "columns": COLUMNS}},
    })


def dir_bytes(path: str) -> tuple[int, int]:
    files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
    return len(files), sum(os.path.getsize(f) for f in files)


def duckdb_con() -> Any:
    import duckdb

    con = duckdb.connect()
    for name in ("avro", "iceberg"):  # offline, from the wheels' own files (avro first)
        mod = __import__(f"duckdb_extension_{name}")
        path = next(Path(mod.__file__).parent.rglob(f"{name}.duckdb_extension"))
        con.execute(f"LOAD '{path}'")
    return con


def best(fn: Any, reps: int = 5) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def scans(tbl: Any, catalog: Any) -> dict[str, float]:
    """Full-scan times (best of 5) of the table and of the same rows as an Iceberg table of one data file."""
    data = tbl.scan().to_arrow()
    one = catalog.create_table(f"{TABLE}_one_file", schema=tbl.schema(), partition_spec=tbl.spec(),
                               properties={"write.target-file-size-bytes": str(1 << 40)})
    one.append(data)
    assert len(list(one.scan().plan_files())) == 1
    out: dict[str, float] = {"rows": data.num_rows}
    # A count (what opening the metadata and many files costs) and an aggregate over every column.
    queries = {"count": "SELECT count(*) FROM {}", "scan": "SELECT count(DISTINCT part_id), sum(length(text)), "
               "max(epoch(ts)), count(DISTINCT session_id), sum(part_index) FROM {}"}
    try:
        con = duckdb_con()
        for name, q in queries.items():
            for tag, t in (("", tbl), ("_one", one)):
                it = f"iceberg_scan('{t.metadata_location}')"
                out[f"duckdb_{name}{tag}"] = best(lambda q=q, it=it: con.execute(q.format(it)).fetchall())
    except ImportError:
        pass
    out["pyiceberg"] = best(lambda: tbl.scan().to_arrow(), 3)
    out["pyiceberg_one"] = best(lambda: one.scan().to_arrow(), 3)
    return out


def run_mode(workdir: Path, flushes: int, rows: int, maintain: bool) -> dict[str, Any]:
    from spoold.daemon import maintenance
    from spoold.flush.flush import flush_table
    from spoold.iceberg.sink import Sink
    from spoold.spool.spool import Spool

    state = workdir / ("on" if maintain else "off")
    shutil.rmtree(state, ignore_errors=True)
    config = make_config(state, maintain)
    spool, sink = Spool.from_config(config), Sink(config)
    spec = config.table(TABLE)
    # Time is compressed ~1000x here (a flush every ~0.1 s, not every 2 minutes): the 5 s spacing of two runs
    # of a table would stand for hours of a real daemon, so only the every_commits trigger paces runs.
    maintenance.MIN_GAP_S = 0.0
    lat: list[float] = []
    maint_s, max_step, meta_early = 0.0, 0.0, (0, 0)
    early = min(100, flushes)
    for i in range(1, flushes + 1):
        spool.append(TABLE, list(gen_rows(rows, prefix=f"f{i:05d}-", days=1, seed=i)))
        t0 = time.perf_counter()
        result = flush_table(config, spool, sink, TABLE)
        lat.append(time.perf_counter() - t0)
        assert result.committed == rows, result
        while maintain:  # as the daemon does while no flush is due
            t0 = time.perf_counter()
            if not sink.maintain():
                break
            step = time.perf_counter() - t0
            maint_s, max_step = maint_s + step, max(max_step, step)
        if i == early:
            meta_early = dir_bytes(f"{state}/wh/chat/parts/metadata")
        if i % 100 == 0:
            print(f"  [{'on' if maintain else 'off'}] {i} flushes, last {lat[-1] * 1000:.0f} ms", file=sys.stderr)
    tbl = sink.load(spec)
    assert tbl is not None
    at = {n: statistics.median(lat[max(0, n - 5):n + 4]) for n in (10, flushes // 2, flushes)}
    return {
        "latency_ms": {n: round(v * 1000, 1) for n, v in at.items()},
        "data_files": len(list(tbl.scan().plan_files())),
        "files_on_disk": dir_bytes(f"{state}/wh/chat/parts/data")[0],
        "metadata_files_early": meta_early[0], "metadata_bytes_early": meta_early[1],
        "metadata_files": dir_bytes(f"{state}/wh/chat/parts/metadata")[0],
        "metadata_bytes": dir_bytes(f"{state}/wh/chat/parts/metadata")[1],
        "snapshots": len(tbl.snapshots()),
        "compactions": sum(1 for s in tbl.snapshots() if s.summary and s.summary.operation.value == "replace"),
        "maintenance_s": round(maint_s, 2), "max_step_s": round(max_step, 3),
        "flush_total_s": round(sum(lat), 1),
        "scan": scans(tbl, sink.tables.catalog()),
    }


def report(mode: str, r: dict[str, Any], flushes: int) -> None:
    lat = r["latency_ms"]
    s = r["scan"]
    ratio = lat[flushes] / lat[10]
    meta = r["metadata_bytes"] / max(1, r["metadata_bytes_early"])
    print(f"maintenance {mode}:")
    print(f"  flush latency: {' / '.join(f'{v:.0f} ms at {n}' for n, v in lat.items())}  "
          f"({ratio:.2f}x from 10 to {flushes})")
    print(f"  data files: {r['data_files']} live, {r['files_on_disk']} on disk; snapshots kept: {r['snapshots']}; "
          f"compactions: {r['compactions']}")
    print(f"  metadata: {r['metadata_bytes'] / 2**20:.1f} MB in {r['metadata_files']} files "
          f"(after {min(100, flushes)}: {r['metadata_bytes_early'] / 2**20:.1f} MB in {r['metadata_files_early']};"
          f" {meta:.2f}x)")
    if mode == "on":
        print(f"  maintenance: {r['maintenance_s']} s in all, longest step {r['max_step_s']} s "
              f"(flushes: {r['flush_total_s']} s)")
    for q in ("count", "scan"):
        if f"duckdb_{q}" in s:
            print(f"  DuckDB {q}: {s[f'duckdb_{q}']:.3f} s vs {s[f'duckdb_{q}_one']:.3f} s for the same rows in one "
                  f"data file ({s[f'duckdb_{q}'] / s[f'duckdb_{q}_one']:.1f}x)")
    print(f"  pyiceberg full scan: {s['pyiceberg']:.3f} s vs {s['pyiceberg_one']:.3f} s for one data file "
          f"({s['pyiceberg'] / s['pyiceberg_one']:.1f}x)")
    if mode == "on":
        # The target is on a full scan: DuckDB's aggregate over every column if DuckDB is
        # installed, else pyiceberg's. The count(*) above reads only metadata (milliseconds: the metadata
        # file grows with the snapshots kept); it is printed, not judged.
        full = s["duckdb_scan"] / s["duckdb_scan_one"] if "duckdb_scan" in s else s["pyiceberg"] / s["pyiceberg_one"]
        targets = [("latency", ratio <= 1.3), ("metadata", meta <= 2.0), ("full scan", full <= 2.0)]
        print("  targets: " + ", ".join(f"{n} {'met' if ok else 'MISSED'}" for n, ok in targets))


# -- 2. peak RSS of a compaction ------------------------------------------------------------------------------
def child_compact(state: Path) -> None:
    from spoold.iceberg.maintain.run import MaintenanceReport, Options, run_steps
    from spoold.iceberg.tables import Tables

    config = make_config(state, True)
    tables = Tables(config)
    tbl = tables.load(config.table(TABLE))
    assert tbl is not None
    import pyarrow.compute  # noqa: F401  (imports are not the compaction's memory)
    import pyarrow.dataset  # noqa: F401

    from spoold.iceberg.maintain.compact import plan

    plan(tbl, config.maintain.target_file_bytes)
    reset_peak()  # the peak from here on
    before = rss_mb()
    report = MaintenanceReport()
    for _ in run_steps(tables, config, config.table(TABLE), Options(), report):
        pass
    print(json.dumps({"before_mb": before, "peak_mb": peak_mb(), "compacted": report.files_compacted,
                      "written": report.files_written}))


def rss(workdir: Path, files: int = 40, rows: int = 25_000) -> None:
    from spoold.flush.flush import flush_table
    from spoold.iceberg.sink import Sink
    from spoold.spool.spool import Spool

    state = workdir / "rss"
    shutil.rmtree(state, ignore_errors=True)
    config = make_config(state, False)
    spool, sink = Spool.from_config(config), Sink(config)
    for i in range(files):
        spool.append(TABLE, list(gen_rows(rows, prefix=f"r{i:03d}-", days=1, seed=i)))
        flush_table(config, spool, sink, TABLE)
    tbl = sink.load(config.table(TABLE))
    group_mb = sum(t.file.file_size_in_bytes for t in tbl.scan().plan_files()) / 2**20
    arrow_mb = tbl.scan().to_arrow().nbytes / 2**20
    out = subprocess.run([sys.executable, __file__, "--child-compact", str(state)], capture_output=True, text=True,
                         check=True)
    r = json.loads(out.stdout)
    print(f"compaction of one group: {r['compacted']} files ({files * rows:,} rows, {group_mb:.1f} MB of Parquet, "
          f"{arrow_mb:.0f} MB as Arrow) into {r['written']}: peak RSS {r['peak_mb']:.0f} MB, "
          f"{r['peak_mb'] - r['before_mb']:.0f} MB above the process before it ({r['before_mb']:.0f} MB)")


def main() -> None:
    global KEEP
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flushes", type=int, default=1000)
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="a smoke test: 120 flushes of 200 rows")
    p.add_argument("--only", choices=("on", "off"))
    p.add_argument("--keep", type=int, default=KEEP, help=f"snapshots kept with maintenance on (default {KEEP})")
    p.add_argument("--rss", action="store_true", help="only part 2: peak RSS of one compaction")
    p.add_argument("--dir", type=Path)
    p.add_argument("--child-compact", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_compact:
        return child_compact(args.child_compact)
    if args.quick:
        args.flushes, args.rows = 120, 200
    KEEP = args.keep
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="spoold-longrun-"))
    try:
        if args.rss:
            rss(workdir, *((10, 2000) if args.quick else ()))
            return
        for mode in ("off", "on"):
            if args.only in (None, mode):
                report(mode, run_mode(workdir, args.flushes, args.rows, mode == "on"), args.flushes)
        print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (other work skews wall times)")
    finally:
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
