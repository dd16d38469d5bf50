"""Pure flush scheduling: when should each table flush, and when should the loop wake up?

Every decision here is a function of a table's state, the settings and an
explicit ``now`` (epoch seconds), so the daemon loop stays thin and tests need
no sleeps. The rules (docs/guarantees.md, "Bounded latency"):

- a table flushes once it has been quiet (no new rows seen) for ``debounce_s``;
- never later than ``max_delay_s`` after its oldest pending row, however busy;
- at once when its pending rows reach ``max_rows``;
- after a failed flush, not before a capped exponential backoff with jitter
  has passed (a catalog outage must not turn into a retry storm).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from spoold.settings import FlushSettings

RETRY_BASE_S = 1.0  # first backoff after a failure; doubles per failure up to retry_max_s


@dataclass(frozen=True, slots=True)
class TableState:
    """What the loop knows of one table's pending rows.

    ``first_pending`` is the epoch time of the oldest pending row (from the
    spool, so it survives restarts), ``last_change`` when new rows were last
    seen, ``pending_rows`` an estimate used only for the size threshold.
    """

    first_pending: float | None = None
    last_change: float | None = None
    pending_rows: int = 0
    failures: int = 0
    backoff_s: float = 0.0
    retry_at: float | None = None
    last_error: str | None = None
    error_class: str | None = None  # what kind of failure last_error is (errors.error_class), for /health
    lock_held_since: float | None = None  # rotation has found the table's append lock held since then

    @property
    def pending(self) -> bool:
        return self.first_pending is not None


def observe(
    state: TableState, now: float, first_pending: float | None, pending_rows: int, *, changed: bool = True
) -> TableState:
    """Fold what the spool holds right now into ``state``.

    ``first_pending`` is the oldest pending row's time as read from disk
    (None: nothing pending, so the table is clean and any backoff is moot).
    ``changed`` says new rows were just seen, which restarts the quiet period.
    """
    if first_pending is None:
        return TableState()
    first = first_pending if state.first_pending is None else min(state.first_pending, first_pending)
    # A row written by a clock ahead of ours must not postpone its own deadline past max_delay.
    first = min(first, now)
    last = now if changed or state.last_change is None else state.last_change
    return replace(state, first_pending=first, last_change=last, pending_rows=max(0, pending_rows))


def due_at(state: TableState, settings: FlushSettings) -> float | None:
    """When ``state``'s table should flush (may be in the past); None when nothing is pending."""
    if state.first_pending is None:
        return None
    if state.retry_at is not None:
        # Backing off: neither traffic nor size may hammer a failing catalog.
        return state.retry_at
    if state.pending_rows >= settings.max_rows:
        return state.first_pending
    quiet = (state.last_change if state.last_change is not None else state.first_pending) + settings.debounce_s
    deadline = state.first_pending + settings.max_delay_s
    return min(quiet, deadline)


def is_due(state: TableState, now: float, settings: FlushSettings) -> bool:
    """True when ``state``'s table should flush at ``now``."""
    when = due_at(state, settings)
    return when is not None and when <= now


def due_tables(states: Mapping[str, TableState], now: float, settings: FlushSettings) -> list[str]:
    """Tables due at ``now``, the one waiting longest first (so none starves)."""
    due = [(due_at(s, settings), t) for t, s in states.items() if is_due(s, now, settings)]
    return [t for _, t in sorted(due, key=lambda x: (x[0], x[1]))]


def after_success(state: TableState, now: float, first_pending: float | None, pending_rows: int) -> TableState:
    """State after a successful flush; rows that arrived meanwhile start a fresh wait."""
    if first_pending is None:
        return TableState()
    return TableState(first_pending=min(first_pending, now), last_change=now, pending_rows=max(0, pending_rows))


def backoff_delay(failures: int, settings: FlushSettings, jitter: float) -> float:
    """Capped exponential backoff after ``failures`` consecutive failures.

    ``jitter`` in [0, 1) picks a point in the upper half of the step ("equal
    jitter"): daemons that failed together do not retry together, yet the
    wait never collapses to zero.
    """
    step = min(settings.retry_max_s, RETRY_BASE_S * 2 ** min(max(failures, 1) - 1, 30))
    return step * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))


def after_failure(state: TableState, now: float, settings: FlushSettings, error: str, jitter: float) -> TableState:
    """State after a failed flush: rows stay pending, the next try waits a backoff.

    The flush got past the spool lock (a held lock is not a failure: the worker records it as
    ``lock_held_since``), so a lock held before is free now: /health shows this error, not that.
    """
    failures = state.failures + 1
    delay = backoff_delay(failures, settings, jitter)
    return replace(state, failures=failures, backoff_s=round(delay, 3), retry_at=now + delay, last_error=error,
                   lock_held_since=None)
