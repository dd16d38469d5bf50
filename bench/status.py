"""`spoold status` wall time for a handful of tables with a local SQLite catalog (target: well under 1 s).

Builds TABLES tables with COMMITS commits each (history for status to walk),
plus pending and quarantined rows on one of them, then times the real CLI
(`python -m spoold status --json`, a fresh process each time, as a user runs
it). For comparison it also times the same process importing pyiceberg and
loading every table through it, which is what status did before it read the
catalog and the metadata files itself.

    .venv/bin/python bench/status.py             # 5 tables x 50 commits, 9 runs
    .venv/bin/python bench/status.py --quick     # 5 tables x 5 commits, 3 runs
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spoold.config import load_config
from spoold.flush.flush import flush_table
from spoold.iceberg.sink import Sink
from spoold.spool.spool import Spool

TABLES = ("app.events", "app.users", "chat.parts", "chat.sessions", "ops.audit")
PYICEBERG_WAY = """
import sys
from spoold.config import load_config
from spoold.iceberg.sink import Sink
cfg = load_config(sys.argv[1])
sink = Sink(cfg)
for t in sys.argv[2:]:
    tbl = sink.load(cfg.table(t))
    snap = tbl.current_snapshot()
    snap.summary.additional_properties.get("total-records")
"""


def timed(cmd: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    commits, runs = (5, 3) if args.quick else (50, 9)
    with tempfile.TemporaryDirectory(prefix="spoold-bench-status-") as tmp:
        root = Path(tmp)
        cfg_path = root / "spoold.toml"
        cfg_path.write_text(f'[spool]\nroot = "{root}/spool"\n[catalog]\ntype = "sql"\n'
                            f'uri = "sqlite:///{root}/catalog.db"\nwarehouse = "file://{root}/warehouse"\n')
        config = load_config(cfg_path)
        spool, sink = Spool.from_config(config), Sink(config)
        for i in range(commits):
            for t in TABLES:
                spool.append(t, [{"part_id": f"{t}:{i}:{j}", "n": j, "text": "x" * 40} for j in range(100)])
                flush_table(config, spool, sink, t)
        spool.append(TABLES[0], [{"part_id": f"pending:{j}", "n": j} for j in range(1000)])
        spool.append(TABLES[0], [{"part_id": "bad", "n": "not a number"}])
        status = timed([sys.executable, "-m", "spoold", "status", "--json", "--config", str(cfg_path)], runs)
        pyiceberg = timed([sys.executable, "-c", PYICEBERG_WAY, str(cfg_path), *TABLES], runs)
        baseline = timed([sys.executable, "-c", "import spoold.cli.entry"], runs)
    print(f"{len(TABLES)} tables x {commits} commits, {runs} runs each (fresh process per run)")
    for name, t in (("spoold status --json", status), ("import + load via pyiceberg", pyiceberg),
                    ("python -c 'import spoold.cli.entry'", baseline)):
        print(f"  {name:32s} median {statistics.median(t):.3f} s, best {min(t):.3f} s")


if __name__ == "__main__":
    main()
