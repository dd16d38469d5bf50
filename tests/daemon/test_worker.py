"""The daemon's per-table flush outcome as /health sees it: a spool lock held earlier never hides a later error."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from support.cli import write_config

from spoold.config import load_config
from spoold.daemon import metrics
from spoold.daemon.report import DaemonReport
from spoold.daemon.scheduler import TableState, after_failure
from spoold.daemon.worker import Worker
from spoold.errors import SpooldError, TableBusy
from spoold.logs import LogLimiter
from spoold.settings import FlushSettings
from spoold.sources.tail import Tailer
from spoold.spool.spool import LockHeld, Spool

T = "app.events"


def test_a_failure_after_the_lock_was_held_clears_the_held_lock() -> None:
    held = TableState(first_pending=1.0, last_change=1.0, pending_rows=1, lock_held_since=5.0)
    st = after_failure(held, 10.0, FlushSettings(), "catalog down", 0.5)
    assert st.lock_held_since is None and st.failures == 1 and st.last_error == "catalog down"


class _Stub:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.mark.parametrize("then", [SpooldError("the catalog is down"), TableBusy("being flushed by pid 1")])
def test_health_shows_the_error_that_follows_a_held_lock_not_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, then: SpooldError
) -> None:
    cfg = load_config(write_config(tmp_path, f'[tables."{T}"]\n[tables."{T}".columns]\npart_id = "string!"\n'))
    spool = Spool.from_config(cfg)
    spool.append(T, [{"part_id": "a"}])
    outcomes: list[Exception] = [LockHeld(f"table {T}: spool lock held by pid 1"), then]

    def flush_table(*args: Any, **kwargs: Any) -> None:
        raise outcomes.pop(0)

    monkeypatch.setattr("spoold.flush.flush.flush_table", flush_table)
    monkeypatch.setattr("spoold.iceberg.sink.Sink", _Stub)
    monkeypatch.setattr("spoold.daemon.maintainer.Maintainer", _Stub)
    report = DaemonReport(LogLimiter().note)
    worker = Worker(cfg, spool, report, LogLimiter())
    worker.observe(T, time.time(), changed=True)

    def troubled() -> dict[str, Any]:
        doc = report.state_doc(worker.states, cfg, spool, Tailer(spool, []))
        return metrics.troubled(doc, time.time()).get(T, {})

    worker.flush(T, stop=lambda: False, tick=lambda: None)
    assert troubled()["error"] == "spool lock held"
    worker.flush(T, stop=lambda: False, tick=lambda: None)  # the lock is free now; the flush fails otherwise
    assert worker.states[T].lock_held_since is None
    assert troubled().get("error") != "spool lock held"
    if isinstance(then, TableBusy):
        assert troubled() == {}  # another flusher at work is no trouble
    else:
        assert troubled()["error"] == worker.states[T].error_class and troubled()["failures"] == 1
