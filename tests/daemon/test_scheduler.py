"""Flush scheduling decisions with explicit ``now`` values: no sleeps, no clock."""

from __future__ import annotations

import pytest

from spoold.daemon.scheduler import (
    TableState,
    after_failure,
    after_success,
    backoff_delay,
    due_at,
    due_tables,
    is_due,
    observe,
)
from spoold.logs import LogLimiter
from spoold.settings import FlushSettings

S = FlushSettings(debounce_s=10.0, max_delay_s=60.0, max_rows=1000, retry_max_s=40.0)
T0 = 1_000_000.0


def pending(first: float = T0, last: float | None = None, rows: int = 1) -> TableState:
    return observe(TableState(), last if last is not None else first, first, rows)


def test_nothing_pending_is_never_due() -> None:
    assert due_at(TableState(), S) is None
    assert not is_due(TableState(), T0 + 10_000, S)


def test_flushes_after_debounce_of_quiet() -> None:
    st = pending(T0)
    assert not is_due(st, T0 + 9.9, S)
    assert is_due(st, T0 + 10.0, S)


def test_each_change_restarts_the_quiet_period() -> None:
    st = pending(T0)
    st = observe(st, T0 + 8, T0, 2)
    assert not is_due(st, T0 + 17.9, S)
    assert is_due(st, T0 + 18, S)
    assert st.first_pending == T0  # the oldest row keeps its time


def test_a_steady_trickle_still_flushes_at_max_delay() -> None:
    st = pending(T0)
    now = T0
    while now < T0 + 59.0:  # a change every second: never quiet for 10 s
        now += 1.0
        st = observe(st, now, T0, st.pending_rows + 1)
        assert not is_due(st, now, S)
    st = observe(st, T0 + 60, T0, 61)
    assert is_due(st, T0 + 60, S)
    assert due_at(st, S) == T0 + 60


def test_max_delay_counts_from_the_oldest_pending_row_on_disk() -> None:
    # Rows spooled before a restart: their real time, not the daemon's start, sets the deadline.
    st = observe(TableState(), T0 + 100, T0, 5, changed=False)
    assert st.first_pending == T0
    assert is_due(st, T0 + 100, S)


def test_a_future_timestamp_cannot_postpone_the_deadline() -> None:
    st = observe(TableState(), T0, T0 + 3600, 1)  # producer clock an hour ahead
    assert due_at(st, S) == T0 + 10


def test_size_threshold_flushes_at_once() -> None:
    st = observe(pending(T0), T0 + 1, T0, 999)
    assert not is_due(st, T0 + 1, S)
    st = observe(st, T0 + 2, T0, 1000)
    assert is_due(st, T0 + 2, S)


def test_nothing_left_on_disk_clears_the_table() -> None:
    st = after_failure(pending(T0), T0 + 10, S, "down", 0.5)
    assert observe(st, T0 + 11, None, 0) == TableState()


def test_success_with_rows_left_starts_a_fresh_wait() -> None:
    st = after_success(pending(T0), T0 + 10, T0 + 9.5, 3)
    assert st.failures == 0 and st.retry_at is None
    assert st.first_pending == T0 + 9.5
    assert due_at(st, S) == T0 + 20
    assert after_success(pending(T0), T0 + 10, None, 0) == TableState()


def test_failure_backs_off_exponentially_to_the_cap() -> None:
    delays = [backoff_delay(n, S, jitter=0.999999) for n in range(1, 10)]
    assert delays[:5] == pytest.approx([1, 2, 4, 8, 16], rel=1e-5)
    assert max(delays) == pytest.approx(40.0, rel=1e-5)
    assert all(a <= b for a, b in zip(delays, delays[1:]))


def test_jitter_stays_in_the_upper_half_of_the_step() -> None:
    assert backoff_delay(4, S, jitter=0.0) == 4.0
    assert backoff_delay(4, S, jitter=0.5) == 6.0
    assert 4.0 <= backoff_delay(4, S, jitter=0.99) < 8.0
    assert backoff_delay(100, S, jitter=0.0) == 20.0  # capped step, halved by jitter at most


def test_backoff_overrides_traffic_size_and_max_delay() -> None:
    st = after_failure(pending(T0), T0 + 60, S, "catalog down", jitter=0.0)
    assert st.failures == 1 and st.retry_at == T0 + 60.5 and st.last_error == "catalog down"
    st = observe(st, T0 + 60.2, T0, 5000)  # more rows, over max_rows, past max_delay
    assert not is_due(st, T0 + 60.4, S)
    assert is_due(st, T0 + 60.5, S)
    st = after_failure(st, T0 + 61, S, "still down", jitter=0.0)
    assert st.failures == 2 and st.retry_at == T0 + 62
    st = after_success(st, T0 + 63, None, 0)
    assert st == TableState()


def test_due_tables_oldest_first() -> None:
    states = {"a.late": pending(T0 + 5), "a.early": pending(T0), "a.later": pending(T0 + 50)}
    assert due_tables(states, T0 + 16, S) == ["a.early", "a.late"]


def test_log_limiter_first_then_once_a_minute_with_a_count() -> None:
    lim = LogLimiter(60)
    assert lim.allow("t", T0) == 0
    assert lim.allow("t", T0 + 1) is None
    assert lim.allow("t", T0 + 30) is None
    assert lim.allow("other", T0 + 30) == 0  # per key
    assert lim.allow("t", T0 + 60) == 2
    assert lim.allow("t", T0 + 61) is None
    lim.forget("t")
    assert lim.allow("t", T0 + 62) == 0
