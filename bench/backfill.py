"""Benchmark `spoold backfill`: dedup-and-write rows/s and peak RSS, next to a naive baseline.

Default sizes (issue 4): 1M source rows (jsonl, transcript-like columns)
against a table with 1M committed keys and a spool holding 100k keys. The
source is 20% committed keys, every spooled key (10%) and 70% new rows, in
shuffled order. Targets: >= 150k rows/s, peak RSS <= 700 MB.

The data is set up in a child process (so its memory does not count), then
this process runs spoold's ``backfill()`` and a naive baseline on an
identical second table: a Python set of every committed key from a full
scan, json.loads of the spool and of each source line, pa.Table.from_pylist
and table.append per chunk. Peak RSS is VmHWM, reset between the two runs.

    .venv/bin/python bench/backfill.py            # 1M rows (a few minutes)
    .venv/bin/python bench/backfill.py --quick    # 100k rows, smoke run
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from common import peak_mb, reset_peak, rss_mb, sqlite_toml

from spoold.sources.transcript import COLUMNS as TRANSCRIPT_COLUMNS

COLUMNS = "\n" + "".join(f'{c} = "{t}"\n' for c, t in TRANSCRIPT_COLUMNS.items())  # as a config declares them
TABLES = ("bench.parts", "bench.naive")
CHUNK = 100_000


def _config_text(d: Path) -> str:
    body = sqlite_toml(d, "warehouse") + f"[flush]\nchunk_rows = {CHUNK}\n"
    for t in TABLES:
        body += f'\n[tables."{t}".columns]{COLUMNS}'
    return body


def _row(key_kind: str, i: int) -> dict[str, object]:
    uuid = f"{key_kind}{i:08d}"
    sec = i % 86400
    return {
        "part_id": f"{uuid}:0",
        "message_id": uuid,
        "part_index": 0,
        "session_id": f"session-{i // 500:05d}",
        "ts": f"2026-01-{1 + i % 28:02d}T{sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}Z",
        "role": "assistant" if i % 2 else "user",
        "kind": ("text", "tool_use", "tool_result", "thinking")[i % 4],
        "text": f"message {i} of the benchmark history, some words to make it realistic {i * 7919 % 100000}",
    }


def setup(d: Path, rows: int, committed: int, spooled: int) -> None:
    """Catalog with ``committed`` rows in each table, ``spooled`` rows spooled, and the source file."""
    import orjson
    import pyarrow as pa

    from spoold.config import load_config
    from spoold.envelope import Validator
    from spoold.iceberg.schema import to_arrow
    from spoold.iceberg.sink import Sink
    from spoold.spool.spool import Spool

    (d / "spoold.toml").write_text(_config_text(d))
    config = load_config(d / "spoold.toml")
    sink = Sink(config)
    spool = Spool.from_config(config)
    for table in TABLES:
        spec = config.table(table)
        validator = Validator(spec)
        tbl = sink.tables.ensure(spec, validator.types)
        step = 250_000  # a few big appends: many data files, like a table built by many flushes
        for start in range(0, committed, step):
            batch = [_row("c", i) for i in range(start, min(committed, start + step))]
            verdict = validator.rows(list(batch[0]), [list(r.values()) for r in batch])
            data: pa.Table = to_arrow(verdict.values, len(verdict.keys), tbl.schema())
            tbl.append(data)
        spool.append(table, (_row("s", i) for i in range(spooled)))
    n_committed = rows * 2 // 10
    n_spooled = min(spooled, rows // 10)
    source = [("c", i) for i in range(min(n_committed, committed))]
    source += [("s", i) for i in range(n_spooled)]
    source += [("n", i) for i in range(rows - len(source))]
    random.Random(1).shuffle(source)
    with open(d / "source.jsonl", "wb") as f:
        for i in range(0, len(source), 10_000):
            f.write(b"".join(orjson.dumps(_row(k, j)) + b"\n" for k, j in source[i : i + 10_000]))


def naive(d: Path, table: str) -> tuple[int, int]:
    """The obvious implementation: Python sets, json.loads, from_pylist, append. Returns (rows, written)."""
    import json

    import pyarrow as pa
    from pyiceberg.catalog import load_catalog
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    cat = load_catalog("spoold", type="sql", uri=f"sqlite:///{d / 'catalog.db'}", warehouse=f"file://{d / 'warehouse'}")
    tbl = cat.load_table(table)
    seen = set(tbl.scan(selected_fields=("part_id",)).to_arrow().column(0).to_pylist())
    for path in sorted((d / "spool" / table).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            env = json.loads(line)
            k = env["columns"].index("part_id")
            seen.update(r[k] for r in env["rows"])
    schema = schema_to_pyarrow(tbl.schema(), include_field_ids=False)
    rows, written, pending = 0, 0, []

    def commit() -> None:
        nonlocal written, pending
        if pending:
            tbl.append(pa.Table.from_pylist(pending, schema=schema))
            written += len(pending)
            pending = []

    with open(d / "source.jsonl") as f:
        for line in f:
            row = json.loads(line)
            rows += 1
            if row["part_id"] in seen:
                continue
            seen.add(row["part_id"])
            row["ts"] = datetime.fromisoformat(row["ts"])
            pending.append(row)
            if len(pending) >= CHUNK:
                commit()
    commit()
    return rows, written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="source rows (default 1M)")
    p.add_argument("--committed", type=int, default=1_000_000, help="committed rows per table (default 1M)")
    p.add_argument("--spooled", type=int, default=100_000, help="spooled rows (default 100k)")
    p.add_argument("--quick", action="store_true", help="100k source, 100k committed, 10k spooled")
    p.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    p.add_argument("--dir", type=Path, help="work directory (default: a temp dir, removed afterwards)")
    p.add_argument("--setup", type=Path, help=argparse.SUPPRESS)  # internal: run the setup phase only
    args = p.parse_args()
    if args.quick:
        args.rows, args.committed, args.spooled = 100_000, 100_000, 10_000
    if args.setup:
        setup(args.setup, args.rows, args.committed, args.spooled)
        return

    d = args.dir or Path(tempfile.mkdtemp(prefix="spoold-bench-backfill-"))
    d.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--setup", str(d), "--rows", str(args.rows),
                        "--committed", str(args.committed), "--spooled", str(args.spooled)], check=True)
        size = (d / "source.jsonl").stat().st_size
        print(f"setup: {args.committed:,} committed + {args.spooled:,} spooled keys per table, "
              f"{args.rows:,} source rows ({size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f}s")

        import pyiceberg.catalog.sql  # noqa: F401  (imported before timing either run)

        from spoold.backfill.run import backfill
        from spoold.config import load_config

        config = load_config(d / "spoold.toml")
        base = rss_mb()
        reset_peak()
        t0, c0 = time.perf_counter(), time.process_time()
        s = backfill(config, TABLES[0], [str(d / "source.jsonl")], "jsonl", None)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = peak_mb()
        print(f"spoold backfill: {s.materialized:,} rows in {dt:.2f}s = {s.materialized / dt:,.0f} rows/s "
              f"(written {s.written:,}, skipped {s.skipped_committed:,} committed + {s.skipped_spooled:,} "
              f"spooled); peak RSS {peak:.0f} MB (process before the run: {base:.0f} MB)")
        loop = dt - s.seen_set_s
        print(f"  of which reading the seen-set (committed + spooled keys): {s.seen_set_s:.2f}s; "
              f"dedup-and-write after it: {loop:.2f}s = {s.materialized / loop:,.0f} rows/s; "
              f"CPU {cpu:.2f}s")
        if not args.no_naive:
            reset_peak()
            t0, c0 = time.perf_counter(), time.process_time()
            rows, written = naive(d, TABLES[1])
            ndt, ncpu = time.perf_counter() - t0, time.process_time() - c0
            print(f"naive baseline:  {rows:,} rows in {ndt:.2f}s = {rows / ndt:,.0f} rows/s "
                  f"(written {written:,}); peak RSS {peak_mb():.0f} MB; CPU {ncpu:.2f}s")
            print(f"speed-up: {ndt / dt:.2f}x")
        print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (other work skews wall times)")
        print(f"targets: >= 150,000 rows/s ({'met' if s.materialized / dt >= 150_000 else 'MISSED'}), "
              f"peak RSS <= 700 MB ({'met' if peak <= 700 else 'MISSED'})")
    finally:
        if args.dir is None:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYICEBERG_HOME", tempfile.mkdtemp(prefix="spoold-bench-pyiceberg-"))
    main()
