"""A flush's cost against the age of its table, black-box, at the default settings (issue 22).

1. Aging, in compressed time: each aged table gets N flushes (``--aged``, default 1,000; repeat the flag
   for more tables, e.g. ``--aged 1000 --aged 10000``) of R rows (``--rows``, default 100) through the
   daemon's own code path in this process: ``flush_table`` with a Sink whose commit events feed the
   daemon's ``Maintainer``, whose steps run between flushes until none is due, exactly what ``spoold run``
   does while no flush is due. Only the clock differs (a flush every ~0.1 s, not every 2 minutes), so the
   table is what a daemon flushing that often leaves: the history kept is bounded by the count cap
   (``spoold.history.max-snapshots``), not by age. Metadata bytes on disk are taken after 100 flushes and
   after N; the history kept after N.
2. Measurement: a real ``spoold run`` on the same config (default settings but ``debounce_s = 0.05`` and a
   /metrics listener), one young table (created by this daemon's first flush) and the aged ones; rows
   appended to each in turn, one flush at a time, ``--flushes`` (default 30) per table after 3 warm-up
   flushes each (the first flush of a table in a new daemon loads it and builds its key index). Each
   flush's duration is the change of the daemon's own ``spoold_flush_duration_seconds_sum`` for that table.
   Printed: mean and p50 per table and the ratio aged/young (targets: 1.3x at 1,000, 1.5x at 10,000).
3. ``--parts``: where a commit's time goes as the history grows (10, 100, 1,000, 10,000 snapshots, a
   synthetic history made of copies of one real snapshot): the parts of pyiceberg's commit that read,
   copy or write the whole metadata (the catalog's re-read of the current metadata file, the staging's
   deep copy, serializing the new metadata file), and its size.

Usage: python bench/history.py [--aged N ...] [--rows R] [--flushes F] [--parts] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import sqlite_toml  # noqa: E402
from flush import COLUMNS, gen_rows  # noqa: E402  (the rows of bench/flush.py: chat parts, one day partition)

YOUNG = "chat.young"
WARMUP = 3


def aged_name(n: int) -> str:
    return f"chat.aged{n}"


def write_config(state: Path, tables: list[str], port: int) -> Path:
    cols = ", ".join(f'{c} = "{t}"' for c, t in COLUMNS.items())
    body = sqlite_toml(state) + f'[flush]\ndebounce_s = 0.05\n\n[daemon]\nlisten = "127.0.0.1:{port}"\n\n'
    for t in tables:
        body += f'[tables."{t}"]\npartition_by = ["day(ts)"]\ncolumns = {{ {cols} }}\n\n'
    path = state / "spoold.toml"
    path.write_text(body)
    return path


def dir_bytes(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def metadata_dir(state: Path, table: str) -> Path:
    ns, name = table.split(".")
    return state / "wh" / ns / name / "metadata"


# -- 1. aging ---------------------------------------------------------------------------------------------------
def age(config: Any, table: str, flushes: int, rows: int, state: Path) -> dict[str, Any]:
    from spoold.daemon.maintainer import Maintainer
    from spoold.daemon.worker import _Events
    from spoold.flush.flush import flush_table
    from spoold.iceberg.sink import Sink
    from spoold.spool.spool import Spool

    maintainer = Maintainer(config)
    spool, sink = Spool.from_config(config), Sink(config, events=_Events(maintainer))
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    for i in range(1, flushes + 1):
        spool.append(table, list(gen_rows(rows, prefix=f"{table}-{i:06d}-", days=1, seed=i)))
        flush_table(config, spool, sink, table)
        while maintainer.step(sink.tables, time.time(), sink.committed):
            pass
        if i == min(100, flushes):
            out["metadata_bytes_100"] = dir_bytes(metadata_dir(state, table))
        if i % 500 == 0:
            print(f"  [{table}] {i} flushes, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    tbl = sink.load(config.table(table))
    assert tbl is not None
    out["snapshots"] = len(tbl.snapshots())
    out["metadata_bytes"] = dir_bytes(metadata_dir(state, table))
    out["metadata_file_bytes"] = os.path.getsize(tbl.metadata_location.removeprefix("file://"))
    out["aging_s"] = time.perf_counter() - t0
    sink.close()
    return out


# -- 2. the daemon ------------------------------------------------------------------------------------------------
def scrape(port: int) -> dict[str, tuple[float, float]]:
    """``{table: (sum, count)}`` of ``spoold_flush_duration_seconds``."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, list[float]] = {}
    for m in re.finditer(r'^spoold_flush_duration_seconds_(sum|count)\{table="([^"]+)"\} (\S+)$', text, re.M):
        out.setdefault(m[2], [0.0, 0.0])[0 if m[1] == "sum" else 1] = float(m[3])
    return {t: (v[0], v[1]) for t, v in out.items()}


def one_flush(spool: Any, port: int, table: str, seq: int, rows: int) -> float:
    """Append rows to ``table`` and wait for the daemon's flush of them; its duration from the histogram."""
    before = scrape(port).get(table, (0.0, 0.0))
    spool.append(table, list(gen_rows(rows, prefix=f"{table}-m{seq:06d}-", days=1, seed=10**6 + seq)))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = scrape(port).get(table, (0.0, 0.0))
        if now[1] > before[1]:
            assert now[1] == before[1] + 1, (table, before, now)
            return now[0] - before[0]
        time.sleep(0.01)
    raise TimeoutError(f"no flush of {table} within 120 s")


def measure(cfg_path: Path, config: Any, tables: list[str], flushes: int, rows: int, port: int,
            state: Path) -> dict[str, list[float]]:
    from spoold.spool.spool import Spool

    spool = Spool.from_config(config)
    log = open(state / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "spoold", "run", "--config", str(cfg_path)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                scrape(port)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"the daemon did not start; see {state / 'daemon.log'}") from None
                time.sleep(0.05)
        times: dict[str, list[float]] = {t: [] for t in tables}
        for i in range(WARMUP + flushes):
            for t in tables:  # interleaved: each table's flushes meet the same machine load
                d = one_flush(spool, port, t, i, rows)
                if i >= WARMUP:
                    times[t].append(d)
        return times
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


# -- 3. the parts of a commit that scale with the history ------------------------------------------------------------
def parts(state: Path) -> None:
    from pyiceberg.serializers import FromByteStream
    from pyiceberg.table.metadata import TableMetadataUtil
    from pyiceberg.table.refs import SnapshotRef, SnapshotRefType
    from pyiceberg.table.snapshots import SnapshotLogEntry

    from spoold.config import load_config
    from spoold.iceberg.sink import Sink

    base = Sink(load_config(state / "spoold.toml")).load(load_config(state / "spoold.toml").table(YOUNG))
    assert base is not None
    md = base.metadata
    snap = md.snapshots[-1]
    print("\nwhere a commit's time goes, by snapshots kept (ms per commit; best of 5):")
    print(f"  {'snapshots':>9}  {'metadata KB':>11}  {'re-read (parse)':>15}  {'deep copy':>9}  {'serialize':>9}")
    import io as _io

    for n in (10, 100, 1000, 10000):
        t0 = snap.timestamp_ms - n * 1000
        snaps = [snap.model_copy(update={"snapshot_id": i + 1, "parent_snapshot_id": i or None,
                                         "sequence_number": i + 1, "timestamp_ms": t0 + i * 1000}) for i in range(n)]
        aged = md.model_copy(update={
            "snapshots": snaps, "current_snapshot_id": n, "last_sequence_number": n,
            "snapshot_log": [SnapshotLogEntry(snapshot_id=s.snapshot_id, timestamp_ms=s.timestamp_ms) for s in snaps],
            "refs": {"main": SnapshotRef(snapshot_id=n, snapshot_ref_type=SnapshotRefType.BRANCH)}})
        raw = aged.model_dump_json().encode()
        aged = TableMetadataUtil.parse_raw(raw)

        def best(fn: Any) -> float:
            out = []
            for _ in range(5):
                t = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t)
            return min(out) * 1000

        read = best(lambda raw=raw: FromByteStream.table_metadata(_io.BytesIO(raw)))
        copy = best(lambda aged=aged: aged.model_copy(deep=True))
        ser = best(lambda aged=aged: aged.model_dump_json())
        print(f"  {n:>9}  {len(raw) / 1024:>11.0f}  {read:>15.1f}  {copy:>9.1f}  {ser:>9.1f}")


def summary(times: list[float]) -> tuple[float, float]:
    return statistics.fmean(times) * 1000, statistics.median(times) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--aged", type=int, action="append", help="flushes of an aged table (repeatable; default 1000)")
    p.add_argument("--rows", type=int, default=100)
    p.add_argument("--flushes", type=int, default=30, help="measured flushes per table")
    p.add_argument("--parts", action="store_true", help="also time the parts of a commit that scale with history")
    p.add_argument("--dir", type=Path, help="work directory (default: a temporary one, removed after)")
    args = p.parse_args()
    ages = args.aged or [1000]
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="spoold-history-"))
    state = workdir / "state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tables = [YOUNG, *(aged_name(n) for n in ages)]
    cfg_path = write_config(state, tables, port)
    from spoold.config import load_config

    config = load_config(cfg_path)
    try:
        aging = {n: age(config, aged_name(n), n, args.rows, state) for n in ages}
        times = measure(cfg_path, config, tables, args.flushes, args.rows, port, state)
        young = summary(times[YOUNG])
        print(f"defaults but debounce_s = 0.05; {args.rows} rows a flush; {args.flushes} interleaved flushes per "
              f"table after {WARMUP} warm-up flushes; durations from the daemon's spoold_flush_duration_seconds")
        print(f"  {YOUNG}: mean {young[0]:.1f} ms, p50 {young[1]:.1f} ms")
        for n in ages:
            a, info = summary(times[aged_name(n)]), aging[n]
            target = 1.3 if n <= 1000 else 1.5
            ratio = a[0] / young[0]
            print(f"  aged by {n} flushes: mean {a[0]:.1f} ms, p50 {a[1]:.1f} ms; mean {ratio:.2f}x young, p50 "
                  f"{a[1] / young[1]:.2f}x (target <= {target}x: {'met' if ratio <= target else 'MISSED'})")
            meta = info["metadata_bytes"] / info["metadata_bytes_100"]
            print(f"    history kept: {info['snapshots']} snapshots (target <= 500: "
                  f"{'met' if info['snapshots'] <= 500 else 'MISSED'}); current metadata file "
                  f"{info['metadata_file_bytes'] / 1024:.1f} KB; metadata on disk {info['metadata_bytes'] / 2**20:.2f}"
                  f" MB, {meta:.2f}x its size after 100 flushes (target <= 2x: {'met' if meta <= 2 else 'MISSED'});"
                  f" aging took {info['aging_s']:.0f} s")
        print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (other work skews wall times)")
        if args.parts:
            parts(state)
    finally:
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
