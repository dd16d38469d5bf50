"""The daemon's maintenance shell: one step per call, backoff and rate-limited logs on failure, counts kept."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cli import write_config

from spoold.config import load_config
from spoold.daemon import maintainer as maintainer_mod
from spoold.daemon.maintainer import Maintainer
from spoold.errors import CatalogError

TABLE = "a.b"


class NoCatalog:
    """Tables that never answer (the probe copes; the run is replaced by the test)."""

    host = "test"

    def load(self, spec: Any, *, reuse: bool = False) -> None:
        return None


def maintainer(tmp_path: Path, commits: int) -> Maintainer:
    m = Maintainer(load_config(write_config(tmp_path, "[maintain]\nevery_commits = 2\n")))
    for _ in range(commits):
        m.committed(TABLE)
    return m


def test_a_run_goes_step_by_step_and_commits_meanwhile_count_for_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[str] = []

    def run(*args: Any, **kwargs: Any) -> Iterator[str]:
        for name in ("compact", "commit", "expire", "orphans"):
            steps.append(name)
            yield name

    monkeypatch.setattr(maintainer_mod, "run_steps", run)
    monkeypatch.setattr(maintainer_mod, "SLICE_S", 0.0)  # one step per call (else: as many as 0.2 s allow)
    m = maintainer(tmp_path, 1)
    assert not m.step(NoCatalog(), time.time()) and not m.busy  # one commit: not due
    m.committed(TABLE)
    for n in range(1, 5):
        assert m.step(NoCatalog(), time.time()) and m.busy and len(steps) == n
        m.committed(TABLE)  # a flush between two steps
    assert m.step(NoCatalog(), time.time()) and not m.busy  # the run ends
    assert m.states[TABLE].commits == 4 and m.states[TABLE].last_run is not None


def test_a_failing_run_backs_off_and_is_logged_once_a_minute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: Any, **kwargs: Any) -> Iterator[str]:
        raise CatalogError("catalog down")
        yield "never"

    monkeypatch.setattr(maintainer_mod, "run_steps", broken)
    m = maintainer(tmp_path, 2)
    with caplog.at_level(logging.ERROR):
        assert m.step(NoCatalog(), time.time())
        state = m.states[TABLE]
        assert state.failures == 1 and state.retry_at is not None and state.retry_at > time.time() + 10
        assert not m.step(NoCatalog(), time.time())  # backing off: nothing runs
        assert m.step(NoCatalog(), state.retry_at)  # retried, and failing again
    assert m.states[TABLE].failures == 2 and m.states[TABLE].commits == 2  # its triggers are kept
    assert caplog.text.count("maintenance failed") == 1 and "catalog down" in caplog.text
