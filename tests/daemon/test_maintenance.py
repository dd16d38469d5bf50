"""Pure maintenance decisions: triggers, spacing, backoff, durations (no Iceberg, no clock)."""

from __future__ import annotations

import pytest

from spoold.daemon.maintenance import (
    MIN_GAP_S,
    RETRY_MAX_S,
    MaintenanceState,
    after_commit,
    after_failure,
    after_run,
    due,
    parse_duration,
    sweep_due,
)
from spoold.errors import UsageError
from spoold.settings import MaintainSettings

S = MaintainSettings(every_commits=5, small_files=20, interval_s=3600.0)
NOW = 1_000_000.0


def committed(n: int, state: MaintenanceState | None = None, files: int | None = None) -> MaintenanceState:
    state = state or MaintenanceState()
    for _ in range(n):
        state = after_commit(state, files)
    return state


def test_every_commits_makes_a_table_due() -> None:
    assert due(committed(4), NOW, S) is None
    assert due(committed(5), NOW, S) == "commits"


def test_data_files_added_since_the_last_run_make_it_due_whoever_added_them() -> None:
    state = after_run(MaintenanceState(), NOW - 2 * MIN_GAP_S, files_after=10)
    assert due(after_commit(state, 29), NOW, S) is None  # 19 added
    assert due(after_commit(state, 30), NOW, S) == "small files"  # another host's flushes count too


def test_interval_fires_only_for_a_table_with_commits_since_its_last_run() -> None:
    ran = after_run(MaintenanceState(), NOW - 3600, files_after=1)
    assert due(ran, NOW, S) is None  # quiet table: nothing to maintain
    assert due(committed(1, ran), NOW, S) == "interval"
    assert due(committed(1, ran), NOW - 1, S) is None
    assert due(committed(1), NOW, S) is None  # never maintained: a fresh table waits for the other triggers


def test_zero_switches_a_trigger_off_and_disabled_switches_all_off() -> None:
    state = committed(1, after_run(MaintenanceState(), NOW - 10**6, files_after=0), files=10**6)
    assert due(state, NOW, MaintainSettings(every_commits=5, small_files=0, interval_s=0.0)) is None
    assert due(committed(50), NOW, MaintainSettings(enabled=False)) is None


def test_runs_of_a_table_are_spaced_whatever_the_triggers() -> None:
    ran = after_run(MaintenanceState(), NOW, files_after=0)
    busy = committed(100, ran, files=10**6)
    assert due(busy, NOW + MIN_GAP_S - 1, S) is None
    assert due(busy, NOW + MIN_GAP_S, S) == "commits"


def test_a_run_resets_the_counts() -> None:
    state = after_run(committed(7, files=99), NOW, files_after=3)
    assert (state.commits, state.data_files, state.files_after, state.last_run) == (0, 3, 3, NOW)


def test_a_failed_run_backs_off_exponentially_to_a_cap_and_keeps_its_triggers() -> None:
    state = committed(5)
    waits = []
    for _ in range(20):
        state = after_failure(state, NOW, "catalog down", jitter=1.0)
        waits.append(state.retry_at - NOW)  # type: ignore[operator]
        assert due(state, NOW + waits[-1] - 0.001, S) is None
        assert due(state, NOW + waits[-1], S) == "commits"
    assert waits[0] >= 20  # a failed run may be costly: not retried at once
    assert all(b >= a for a, b in zip(waits, waits[1:]))
    assert waits[-1] == RETRY_MAX_S and state.failures == 20 and state.last_error == "catalog down"
    assert after_run(state, NOW, 1).failures == 0


@pytest.mark.parametrize(("text", "seconds"), [
    ("0s", 0), ("90m", 5400), ("36h", 129600), ("7d", 604800), ("2w", 1209600), ("1d12h", 129600), ("1.5h", 5400),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "-1d", "3x", "1d 2h", "d", "1h1"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="bad duration"):
        parse_duration(text)


def test_orphans_are_swept_at_the_first_run_then_at_most_once_per_interval() -> None:
    assert sweep_due(MaintenanceState(), NOW, S)
    swept = after_run(MaintenanceState(), NOW, 1)
    assert not sweep_due(swept, NOW + 3599, S) and sweep_due(swept, NOW + 3600, S)
    assert after_run(swept, NOW + 100, 1, swept=False).last_sweep == NOW  # a run without a sweep keeps the time
    assert not sweep_due(swept, NOW + 86399, MaintainSettings(interval_s=0)) and sweep_due(
        swept, NOW + 86400, MaintainSettings(interval_s=0))  # interval off: daily
