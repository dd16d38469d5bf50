"""Daemon latency and idle memory: one row appended to an idle `spoold run`, time until committed.

Prints, for each round, the time from the append's return to the end of the
commit that holds the row (taken from the flush's own record), minus
``debounce_s`` (target: at most 1 s), and the daemon's resident memory
(VmRSS from /proc) at start-up, right after flushing, and idle (target: at
most 120 MB). The daemon imports pyarrow/pyiceberg only once rows are pending
(while they wait out their debounce), and after ``idle_restart_s`` with
nothing to do it re-executes itself to hand that memory back; the first flush
after such a restart is timed too.

    .venv/bin/python bench/latency.py            # 5 rounds, debounce 2 s
    .venv/bin/python bench/latency.py --quick    # 2 rounds, debounce 0.5 s
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from common import status_mb

from spoold.config import load_config
from spoold.spool.spool import Spool

TABLE = "bench.latency"


def last_flush(spool_root: Path) -> dict[str, object] | None:
    try:
        return orjson.loads((spool_root / TABLE / ".last-flush.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def wait_until(cond, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.005)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--debounce", type=float, default=2.0)
    ap.add_argument("--idle", type=float, default=3.0, help="seconds idle before each append / RSS sample")
    ap.add_argument("--idle-restart", type=float, default=10.0,
                    help="flush.idle_restart_s: idle seconds before the daemon restarts lean")
    ap.add_argument("--quick", action="store_true", help="2 rounds, debounce 0.5 s, 1 s idle")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.debounce, args.idle = 2, 0.5, 1.0

    with tempfile.TemporaryDirectory(prefix="spoold-latency-") as tmp:
        root = Path(tmp)
        cfg = root / "spoold.toml"
        cfg.write_text(
            f'[spool]\nroot = "{root / "spool"}"\n\n'
            f'[catalog]\ntype = "sql"\nuri = "sqlite:///{root / "catalog.db"}"\n'
            f'warehouse = "file://{root / "warehouse"}"\n\n'
            f"[flush]\ndebounce_s = {args.debounce}\nmax_delay_s = {max(60.0, args.debounce * 10)}\n"
            f"idle_restart_s = {args.idle_restart}\n"
        )
        config = load_config(cfg)
        spool = Spool.from_config(config)
        log = open(root / "daemon.log", "wb")  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        t_start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "spoold", "run", "--config", str(cfg)],
                                stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until(lambda: "spoold running" in (root / "daemon.log").read_text(), 60, "daemon start-up")
            startup_s = time.monotonic() - t_start
            time.sleep(args.idle)
            rss_start = status_mb("VmRSS", proc.pid)

            latencies = []
            for i in range(args.rounds):
                before = last_flush(config.spool_root)
                spool.append(TABLE, [{"part_id": f"row-{i}", "ts": time.time(), "text": "hello"}])
                appended = time.time()
                rec = wait_until(lambda b=before: (lf := last_flush(config.spool_root)) != b and lf, 120, "commit")
                done = float(rec["at"]) + float(rec["duration_s"])  # type: ignore[arg-type]
                latencies.append(done - appended - args.debounce)
                label = "first flush: opens the catalog, creates the table" if i == 0 else "warm"
                print(f"round {i + 1}: committed {rec['committed']} row, "
                      f"latency - debounce = {latencies[-1]:.3f} s  [{label}]", flush=True)
                time.sleep(args.idle)
            rss_busy = status_mb("VmRSS", proc.pid)
            anon, file_backed = status_mb("RssAnon", proc.pid), status_mb("RssFile", proc.pid)
            hwm = status_mb("VmHWM", proc.pid)
            # Idle for idle_restart_s: the daemon re-executes itself (same pid) and starts lean.
            daemon_log = root / "daemon.log"
            wait_until(lambda: daemon_log.read_text().count("spoold running") == 2, 120, "the lean restart")
            time.sleep(args.idle)
            rss_idle = status_mb("VmRSS", proc.pid)
            before = last_flush(config.spool_root)
            spool.append(TABLE, [{"part_id": "after-restart", "ts": time.time(), "text": "hello"}])
            appended = time.time()
            rec = wait_until(lambda b=before: (lf := last_flush(config.spool_root)) != b and lf, 120, "commit")
            after_restart = float(rec["at"]) + float(rec["duration_s"]) - appended - args.debounce  # type: ignore[arg-type]
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
            log.close()

        warm = latencies[1:] or latencies
        print(f"daemon start-up to READY:            {startup_s:.2f} s")
        print(f"latency - debounce_s ({args.debounce} s), warm:  "
              f"median {sorted(warm)[len(warm) // 2]:.3f} s, max {max(warm):.3f} s (target <= 1 s)")
        print(f"latency - debounce_s, first flush:   {latencies[0]:.3f} s")
        print(f"idle RSS at start-up:                {rss_start:.1f} MB")
        print(f"RSS right after flushing:            {rss_busy:.1f} MB; peak {hwm:.1f} MB "
              f"(anonymous {anon:.1f} MB, shared library pages {file_backed:.1f} MB)")
        print(f"idle RSS (after {args.idle_restart:g} s idle, restarted lean): {rss_idle:.1f} MB (target <= 120 MB)")
        print(f"latency - debounce_s, first flush after the lean restart: {after_restart:.3f} s")
        print(f"daemon exit code after SIGTERM:      {code}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
