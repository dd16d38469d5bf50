"""One host of a many-hosts test: append a step's rows to its own spool, meet the others, run `spoold flush`.

    python tests/support/fleet_host.py PLAN.json

The plan (JSON): ``config`` (the host's spoold.toml), ``table``, ``host`` (its
name), ``barrier`` (a directory shared by the hosts), ``hosts`` (how many) and
``steps``: a list of row lists, each row ``[key, n]``. For each step the host
appends the rows, waits until every host is ready for that step, then runs
the real CLI's ``flush`` (``spoold.cli.entry.main``, in this process, so the hosts
meet after their imports and their flushes — and creates — start together).
A last step with no rows lets each host look at what it holds. Exits with the
first non-zero flush status (0 if all succeeded); the flushes' JSON goes to
stdout, one line each.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def barrier(directory: Path, step: int, host: str, hosts: int, timeout: float = 300.0) -> None:
    (directory / f"{step}-{host}").touch()
    deadline = time.monotonic() + timeout
    while len(list(directory.glob(f"{step}-*"))) < hosts:
        if time.monotonic() > deadline:
            raise SystemExit(f"{host}: the other hosts never reached step {step}")
        time.sleep(0.005)


def main(plan_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    import spoold.flush.flush  # noqa: F401 - the whole flush stack, loaded before the hosts meet
    from spoold import Spool, load_config
    from spoold.cli.entry import main as spoold

    config = load_config(plan["config"])
    spool = Spool.from_config(config)
    status = 0
    for step, rows in enumerate([*plan["steps"], []]):
        if rows:
            spool.append(plan["table"], [{"part_id": k, "n": n, "host": plan["host"]} for k, n in rows])
        barrier(Path(plan["barrier"]), step, plan["host"], plan["hosts"])
        rc = spoold(["--config", plan["config"], "flush", "--json", plan["table"]])
        sys.stdout.flush()
        status = status or rc
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
