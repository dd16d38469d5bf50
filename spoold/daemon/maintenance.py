"""When a table is due for maintenance (pure: data and ``now`` in, a decision out).

The daemon maintains a table (compaction, expiry, orphan cleanup; see
``docs/maintenance.md``) when one of ``[maintain]``'s triggers fires:

- ``every_commits``: this daemon committed that many times to it since its last run;
- ``small_files``: it holds that many more data files than right after its
  last run (any writer's: each flush, here or on another host, adds small ones);
- ``interval_s``: its last run is that old and it has had commits since
  (a table never maintained waits for the other two).

Runs of one table are at least ``MIN_GAP_S`` apart, and a failed run is
retried after a capped exponential backoff, so a broken table cannot keep the
daemon busy. A run sweeps for orphan files at most once per ``interval_s``.
Also here: ``parse_duration`` for ``spoold maintain --older-than``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from spoold.daemon.scheduler import backoff_delay
from spoold.errors import UsageError
from spoold.settings import FlushSettings, MaintainSettings

MIN_GAP_S = 5.0  # runs of one table are at least this far apart, whatever the triggers say
RETRY_MAX_S = 3600.0  # cap of the backoff after failed runs
_RETRY = FlushSettings(retry_max_s=RETRY_MAX_S)
_RETRY_STEPS_SKIPPED = 5  # the flush backoff starts at 1 s; a failed run (maybe costly) waits ~30 s first
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True, slots=True)
class MaintenanceState:
    """What the daemon knows of one table's maintenance.

    ``last_run``/``files_after``: when the last run ended and how many data
    files the table had then (from the table's ``spoold.last-maintenance``,
    or the daemon's own last run); ``data_files``: how many it has now, as of
    the last commit seen.
    """

    commits: int = 0
    data_files: int | None = None
    last_run: float | None = None
    files_after: int | None = None
    failures: int = 0
    retry_at: float | None = None
    last_error: str | None = None
    last_sweep: float | None = None  # this daemon's last orphan sweep of the table


def sweep_due(state: MaintenanceState, now: float, settings: MaintainSettings) -> bool:
    """Whether a run starting at ``now`` also sweeps for orphans: at most once per ``interval_s`` (else a day)."""
    return state.last_sweep is None or now - state.last_sweep >= (settings.interval_s or 86400.0)


def due(state: MaintenanceState, now: float, settings: MaintainSettings) -> str | None:
    """The trigger that makes ``state``'s table due at ``now`` (``"commits"``, ...), or None."""
    if not settings.enabled or (state.retry_at is not None and now < state.retry_at):
        return None
    if state.last_run is not None and now - state.last_run < MIN_GAP_S and state.retry_at is None:
        return None
    if state.commits >= settings.every_commits:
        return "commits"
    added = state.data_files - (state.files_after or 0) if state.data_files is not None else 0
    if settings.small_files and added >= settings.small_files:
        return "small files"
    # A table never maintained waits for the other triggers: a fresh table needs nothing yet.
    age = now - state.last_run if state.last_run is not None else 0.0
    if settings.interval_s and state.commits and age >= settings.interval_s:
        return "interval"
    return None


def after_commit(state: MaintenanceState, data_files: int | None) -> MaintenanceState:
    """A commit by this daemon landed; ``data_files``: the table's data-file count after it, if known."""
    return replace(state, commits=state.commits + 1,
                   data_files=data_files if data_files is not None else state.data_files)


def after_run(state: MaintenanceState, now: float, files_after: int | None, *, swept: bool = True) -> MaintenanceState:
    """A run finished: the triggers start over."""
    return MaintenanceState(data_files=files_after, last_run=now, files_after=files_after,
                  last_sweep=now if swept else state.last_sweep)


def after_failure(state: MaintenanceState, now: float, error: str, jitter: float) -> MaintenanceState:
    """A run failed: retried after a backoff (~30 s, doubling, capped at ``RETRY_MAX_S``), triggers kept."""
    failures = state.failures + 1
    return replace(state, failures=failures, last_error=error,
                   retry_at=now + backoff_delay(failures + _RETRY_STEPS_SKIPPED, _RETRY, jitter))


def parse_duration(text: str) -> float:
    """``"0s"``, ``"90m"``, ``"36h"``, ``"7d"``, ``"2w"`` (or combined, ``"1d12h"``) → seconds."""
    text = text.strip().lower()
    parts = _DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise UsageError(f"bad duration {text!r}: expected e.g. 0s, 90m, 36h, 7d, 2w")
    return sum(float(n) * _UNITS[u] for n, u in parts)
