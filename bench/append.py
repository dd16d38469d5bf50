"""Append throughput and CLI cold start (issue 2, acceptance 6).

1. In-process appends of 100-row envelopes, fsync per envelope, through
   ``Spool.append`` (rows -> envelope -> locked write -> fsync) and
   ``Spool.append_lines`` (pre-encoded envelope -> locked write -> fsync),
   next to a raw ``os.write`` + ``os.fsync`` loop of the same bytes, in the
   same run, interleaved envelope by envelope so that the disk's mood
   affects all three alike. Target: spool >= 85% of raw.
   Beside them, ``append_lines`` with the spool's bounds switched off
   (``max_bytes = min_free_bytes = 0``: no check at all) and with a
   ``max_bytes`` (the flush files' size counted too): what the bounds check
   costs an append, under the same disk.
2. Cold start of ``spoold append TABLE`` of one row via the installed
   console script: median wall time of N runs. Target: < 150 ms.
3. The bounds check alone: microseconds per call, with the flush files'
   total cached and listed afresh, beside 0 and 200 flush files.

Usage: python bench/append.py [--rows N] [--cold-runs N] [--dir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from spoold.envelope import envelopes
from spoold.settings import SpoolLimits
from spoold.spool.files import ACTIVE, flush_name
from spoold.spool.spool import Spool

TABLE = "bench.events"
ENVELOPE_ROWS = 100


def make_rows(n: int, start: int = 0) -> list[dict[str, object]]:
    """Rows shaped like agent-transcript parts (~200 bytes each as JSON)."""
    return [
        {
            "part_id": f"msg-{i // 4:08d}:{i % 4}",
            "message_id": f"msg-{i // 4:08d}",
            "part_index": i % 4,
            "ts": "2026-01-01T00:00:00.000000Z",
            "role": "assistant" if i % 2 else "user",
            "kind": "text",
            "text": f"row {i}: the quick brown fox jumps over the lazy dog " * 2,
        }
        for i in range(start, start + n)
    ]


def throughput(rows: int, workdir: Path) -> None:
    n = max(1, rows // ENVELOPE_ROWS)
    batches = [make_rows(ENVELOPE_ROWS, i * ENVELOPE_ROWS) for i in range(n)]
    lines = [line for rows_ in batches for line, _ in envelopes(rows_)]  # the very bytes the spool writes
    assert len(lines) == n
    # A producer does not hold 100k rows in memory; the bench does. Freeze them out of the
    # cyclic GC, or its full collections (walking every test row) are billed to Spool.append.
    gc.collect()
    gc.freeze()
    print(f"throughput: {n * ENVELOPE_ROWS} rows per mode ({n} envelopes of {ENVELOPE_ROWS} rows, "
          f"{sum(map(len, lines)) / n / 1024:.1f} KiB each), fsync per envelope, in {workdir}")
    raw_fd = os.open(workdir / "raw.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    spool_a, spool_l = Spool(workdir / "spool-a"), Spool(workdir / "spool-l")
    spool_u = Spool(workdir / "spool-u", limits=SpoolLimits(max_bytes=0, min_free_bytes=0))
    spool_m = Spool(workdir / "spool-m", limits=SpoolLimits(max_bytes=1 << 40))

    def raw(i: int) -> None:
        os.write(raw_fd, lines[i])
        os.fsync(raw_fd)

    ops: list[tuple[str, Callable[[int], object]]] = [
        ("raw", raw),
        ("append", lambda i: spool_a.append(TABLE, batches[i])),  # encodes, locks, writes, fsyncs
        ("append_lines", lambda i: spool_l.append_lines(TABLE, [lines[i]])),  # locks, writes, fsyncs
        ("unbounded", lambda i: spool_u.append_lines(TABLE, [lines[i]])),  # no bounds check at all
        ("max_bytes", lambda i: spool_m.append_lines(TABLE, [lines[i]])),  # + the flush files' total
    ]
    times: dict[str, list[float]] = {name: [] for name, _ in ops}
    clock = time.perf_counter
    try:
        for i in range(n):  # interleaved envelope by envelope, who goes first rotating: the disk's mood is shared
            k = i % len(ops)
            for name, op in ops[k:] + ops[:k]:
                t0 = clock()
                op(i)
                times[name].append(clock() - t0)
    finally:
        os.close(raw_fd)
    for d in (workdir / "spool-a", workdir / "spool-l", workdir / "spool-u", workdir / "spool-m"):
        written = (d / TABLE / ACTIVE).read_bytes().count(b"\n")
        assert written == n, f"{d.name}: {written} envelopes written, expected {n}"
    # Other processes' fsyncs on a shared disk add outliers; the median envelope is the robust figure,
    # the mean (total time) is printed next to it.
    med = {name: statistics.median(t) for name, t in times.items()}
    mean = {name: statistics.fmean(t) for name, t in times.items()}
    print("  mode                    rows/s (median)  ms/envelope median / mean   vs raw (median; mean)")
    for name, label in (("raw", "raw os.write+fsync"), ("append", "Spool.append (encodes)"),
                        ("append_lines", "Spool.append_lines"), ("unbounded", "  ... no bounds check"),
                        ("max_bytes", "  ... with max_bytes")):
        ratio = "" if name == "raw" else (f"{med['raw'] / med[name]:.1%}; {mean['raw'] / mean[name]:.1%}  "
                                          "(target >= 85%)")
        print(f"  {label:<23} {ENVELOPE_ROWS / med[name]:>14,.0f}   {med[name] * 1e3:>8.3f} / {mean[name] * 1e3:.3f}"
              f"        {ratio}")


def bounds_cost(workdir: Path, calls: int = 20_000) -> None:
    """Microseconds per bounds check, as an append pays it (one fstat, one fstatvfs, the flush files' total)."""
    print(f"bounds check alone ({calls} calls each, max_bytes set, in {workdir}):")
    for n in (0, 200):
        spool = Spool(workdir / f"bounds-{n}", limits=SpoolLimits(max_bytes=1 << 40))
        spool.append(TABLE, make_rows(1))
        d = spool.table_dir(TABLE)
        for seq in range(1, n + 1):
            (d / flush_name(seq)).write_bytes(b"x" * 1000)
        os.utime(d, ns=(time.time_ns() - 10**9,) * 2)  # an idle directory: its listing is trusted
        fd = os.open(d / ACTIVE, os.O_RDONLY)
        try:
            for label, fresh in (("cached", False), ("listed", True)):
                t0 = time.perf_counter()
                for _ in range(calls):
                    if fresh:
                        spool.bounds._sizes.clear()  # as after a rotation or a flush
                    spool.bounds.check(TABLE, fd, 100)
                per = (time.perf_counter() - t0) / calls
                print(f"  {n:>3} flush files, total {label}: {per * 1e6:8.2f} us per append")
        finally:
            os.close(fd)


def cold_start(runs: int, workdir: Path) -> None:
    script = shutil.which("spoold", path=str(Path(sys.executable).parent)) or shutil.which("spoold")
    if script is None:
        print("cold start: no 'spoold' console script installed; skipped")
        return
    cfg = workdir / "cold.toml"
    cfg.write_text(f'[spool]\nroot = "{workdir / "cold-spool"}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOOLD_", "PYICEBERG_"))}
    row = b'{"part_id": "cold", "text": "one row"}\n'

    def timed(cmd: list[str], stdin: bytes | None = None) -> float:
        t0 = time.perf_counter()
        subprocess.run(cmd, input=stdin, check=True, capture_output=True, env=env)
        return time.perf_counter() - t0

    timed([script, "append", TABLE, "--config", str(cfg)], row)  # warm the page cache, compile .pyc
    walls = [timed([script, "append", TABLE, "--config", str(cfg)], row) for _ in range(runs)]
    bare = [timed([sys.executable, "-c", "pass"]) for _ in range(runs)]
    lines = (workdir / "cold-spool" / TABLE / ACTIVE).read_bytes().count(b"\n")
    assert lines == runs + 1, "every cold append should have spooled its row"  # (before the RSS probe below)
    med = statistics.median(walls)
    print(f"cold start: `spoold append {TABLE}` of one row via {script}, {runs} runs")
    print(f"  median {med * 1e3:.1f} ms (min {min(walls) * 1e3:.1f}, max {max(walls) * 1e3:.1f}) "
          f"(target < 150 ms); bare `python -c pass` median {statistics.median(bare) * 1e3:.1f} ms")
    # VmHWM, not ru_maxrss: the latter still counts the bench process's pages copied by fork before exec
    probe = (f"import sys; from spoold.cli import main; rc = main(['append', {TABLE!r}, '--config', {str(cfg)!r}]); "
             "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1], file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", probe], input=row, capture_output=True, env=env, check=True)
    print(f"  peak RSS of one `spoold append`: {int(r.stderr.splitlines()[-1]) / 1024:.0f} MB")
    if med >= 0.150:
        print("  over target: top imports by cumulative time (python -X importtime):")
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "spoold", "append", TABLE, "--config",
                            str(cfg)], input=row, capture_output=True, env=env)
        stats = []
        for line in r.stderr.decode().splitlines():
            if line.startswith("import time:") and "|" in line and "cumulative" not in line:
                _, cum, name = (x.strip() for x in line[len("import time:"):].split("|"))
                stats.append((int(cum), name))
        for cum, name in sorted(stats, reverse=True)[:15]:
            print(f"    {cum / 1000:8.1f} ms  {name}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000, help="rows per mode in total (default 100000)")
    p.add_argument("--cold-runs", type=int, default=11, help="cold starts to time (default 11)")
    p.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="smoke run: 6000 rows, 3 cold starts")
    args = p.parse_args()
    if args.quick:
        args.rows, args.cold_runs = 6000, 3
    workdir = Path(tempfile.mkdtemp(prefix="spoold-bench-append-", dir=args.dir))
    try:
        throughput(args.rows, workdir)
        bounds_cost(workdir, 2_000 if args.quick else 20_000)
        cold_start(args.cold_runs, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the bench process (holds every test row in memory): {rss:.0f} MB")


if __name__ == "__main__":
    main()
