"""The real daemon maintains its tables by itself (issue 9 acceptance 6, and 5 at the daemon's level)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from support.cli import write_config
from support.daemonproc import DaemonProc, wait_for

from spoold.config import load_config
from spoold.iceberg.sink import Sink
from spoold.spool.spool import Spool

TABLE = "ev.rows"


@pytest.mark.slow
def test_a_daemon_keeps_data_files_bounded_over_many_flushes_while_flushing_on_schedule(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    every = 5
    cfg_path = write_config(tmp_path, "[flush]\ndebounce_s = 0.2\nmax_delay_s = 2\nidle_restart_s = 0\n\n"
                                      f"[maintain]\nevery_commits = {every}\n")
    cfg = load_config(cfg_path)
    spool = Spool.from_config(cfg)
    d = daemons(cfg_path)  # returns once it has sent READY=1
    try:
        waits = []
        for i in range(65):
            t0 = time.monotonic()
            spool.append(TABLE, [{"part_id": f"r{i}-{j}", "n": j} for j in range(3)])
            wait_for(lambda: not spool.pending(TABLE) and not list(spool.table_dir(TABLE).glob("active*")),
                     f"batch {i} committed", every=0.05)  # the wait is measured: look often
            waits.append(time.monotonic() - t0)
    finally:
        assert d.stop() == 0
    text = d.log()
    tbl = Sink(cfg).load(cfg.table(TABLE))
    assert tbl is not None
    ops = Counter(s.summary.operation.value for s in tbl.snapshots())
    files = len(list(tbl.scan().plan_files()))
    print(f"flush waits: median {sorted(waits)[len(waits) // 2]:.2f}s, max {max(waits):.2f}s; "
          f"{ops['replace']} compactions; {files} data files after 65 flushes")
    assert ops["append"] >= 65 and ops["replace"] >= 4  # every batch its own flush; maintained again and again
    assert files <= 4 * every  # not 65: bounded by the maintenance cadence
    keys = Counter(tbl.scan().to_arrow().column("part_id").to_pylist())
    assert keys == Counter(f"r{i}-{j}" for i in range(65) for j in range(3))
    assert "rebuilding the committed-key index" not in text  # acceptance 5: no full key scan after compactions
    assert "maintenance failed" not in text and "Traceback" not in text
    record = orjson.loads(tbl.properties["spoold.last-maintenance"])
    assert record["files_after"] <= files and record["host"]
