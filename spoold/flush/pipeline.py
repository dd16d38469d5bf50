"""Commit chunk k on a worker thread while chunk k+1 is read (flush and backfill), quarantining poison rows."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from hashlib import blake2b
from typing import Any

from spoold.config import TableSpec
from spoold.envelope import Validator
from spoold.errors import DataError, TableError
from spoold.iceberg.sink import CommitOutcome, TableSink
from spoold.keys.batch import Batch
from spoold.spool.files import quarantine_record
from spoold.spool.spool import Spool

log = logging.getLogger(__name__)
# reject(batch, row, reason): row ``row`` of ``batch`` cannot be committed, durably set aside when it returns
Reject = Callable[[Batch, int, str], None]
_TICK_S = 1.0  # how often a wait for a commit lets the caller show it is alive (systemd watchdog)


class CommitPipeline:
    """Commits chunks on a worker thread while the caller reads and validates the next one.

    Parquet encoding and file I/O release the GIL, so the two overlap. At most
    one commit is in flight: memory stays near two chunks, its error surfaces
    at the next ``submit`` or ``join``, and ``then`` (e.g. deleting the spool
    files the chunk finished) runs only after every earlier commit is durable.
    A chunk that brings new columns is waited for at once: the table must have
    them, and their types be pinned (an inferred ``long`` must not take a later
    float), before more rows are validated. ``tick`` is called about every
    second while the caller waits, so a long commit never starves a watchdog.
    """

    def __init__(self, sink: TableSink, spec: TableSpec, spool: Spool, source: str,
                 rejected: Callable[[str], None], tick: Callable[[], None] | None = None) -> None:
        self.sink, self.spec, self.tick = sink, spec, tick
        self.reject = Poison(spool, spec.identifier, source, rejected)
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spoold-commit")
        try:
            self._pool.submit(_started)  # its one thread now: a submit that cannot start it would queue the job
        except RuntimeError:  # "can't start new thread" (a task limit): commit in-line, as safe, less overlap
            self._pool = None
        self._inflight: tuple[Future[CommitOutcome], Callable[[CommitOutcome], None]] | None = None

    @property
    def busy(self) -> bool:
        """A commit is in flight: the committed-key index may not show its keys yet."""
        return self._inflight is not None

    def submit(self, batch: Batch, validator: Validator, props: Mapping[str, str],
               then: Callable[[CommitOutcome], None]) -> None:
        """Commit ``batch`` (after the one in flight); ``then(outcome)`` once it is durable."""
        self.join()
        new_columns = bool(validator.inferred())
        # a copy of the types: the caller's validator goes on learning new columns meanwhile
        args = (self.sink, self.spec, batch, dict(validator.types), props, self.reject)
        job = self._pool.submit(commit_isolating, *args) if self._pool is not None else _in_line(*args)
        self._inflight = (job, then)
        if new_columns:
            self.join()
            validator.pin()

    def join(self) -> None:
        """Wait for the commit in flight, if any, and run its ``then`` (its error is raised here)."""
        if self._inflight is not None:
            (job, then), self._inflight = self._inflight, None
            while True:
                try:
                    outcome = job.result(timeout=_TICK_S if self.tick is not None else None)
                    break
                except FutureTimeout:
                    if self.tick is not None:
                        self.tick()
            then(outcome)

    def close(self) -> None:
        """Let a commit in flight end (also after an error: cutting it short is safe, waiting is simpler)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def _started() -> None:
    """Nothing: submitted first so the pool's thread exists before any commit is handed to it."""


def _in_line(*args: Any) -> Future[CommitOutcome]:
    """``commit_isolating(*args)`` on this thread, as a finished future (its error raised at ``join``)."""
    job: Future[CommitOutcome] = Future()
    try:
        job.set_result(commit_isolating(*args))
    except Exception as e:
        job.set_exception(e)
    return job


class Poison:
    """Quarantines a row no commit can take (on the commit thread, before its spool file can be deleted).

    The record is named by the row's key, so a retried flush or backfill that meets
    the row again replaces its record instead of adding a second one.
    ``rejected(reason)`` is told of each (the caller counts them).
    """

    def __init__(self, spool: Spool, table: str, source: str, rejected: Callable[[str], None]) -> None:
        self.spool, self.table, self.source, self.rejected = spool, table, source, rejected
        self.prefix = "commit" if source == "flush" else f"{source}-commit"

    def __call__(self, batch: Batch, row: int, reason: str) -> None:
        key, values = batch.keys[row], batch.row(row)
        reason = f"cannot commit: {reason}"
        rec = quarantine_record(reason, "", -1, key=key, columns=list(values), row=list(values.values()),
                                source=self.source)
        tag = blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
        self.spool.quarantine(self.table, f"{self.prefix}-{tag}", [rec])
        self.rejected(reason)
        log.warning("table %s: row %r cannot be committed, quarantined: %s", self.table, key, reason)


def commit_isolating(sink: TableSink, spec: TableSpec, batch: Batch, types: Mapping[str, str],
                     props: Mapping[str, str], reject: Reject) -> CommitOutcome:
    """Commit ``batch``; when the rows themselves cannot be committed, find the ones that can't by halving.

    ``Sink.commit`` raises :class:`DataError` only after a second try on a fresh
    table version failed the same way. Each half is then committed on its own
    (the good rows land, one snapshot per half), down to single rows, which go to
    ``reject`` with the error. But when no row of the batch could be committed and
    some failure is not certainly the row's own (:attr:`DataError.proven`), the table
    is at fault, not its rows: :class:`TableError`, nothing is set aside. A failure of
    the environment (catalog down, disk full) during the search propagates too: the
    rows stay spooled and the next flush settles again.
    """
    refused: list[tuple[Batch, DataError]] = []
    outcome = _isolate(sink, spec, batch, types, props, refused)
    if refused and not outcome.committed and not all(e.proven for _, e in refused):
        e = next(e for _, e in refused if not e.proven)
        raise TableError(f"table {spec.identifier}: none of {len(batch)} row(s) could be committed "
                         f"({e.reason or e}), so the table is taken to be at fault, not the rows: they stay "
                         "spooled (`-v` logs the details)") from e
    for one, e in refused:
        reject(one, 0, e.reason or str(e))
    return outcome


def _isolate(sink: TableSink, spec: TableSpec, batch: Batch, types: Mapping[str, str],
             props: Mapping[str, str], refused: list[tuple[Batch, DataError]]) -> CommitOutcome:
    """Commit ``batch``, halving it down to the single rows that fail, which are added to ``refused``."""
    try:
        return sink.commit(spec, batch, types, props)
    except DataError as e:
        if len(batch) == 1:
            refused.append((batch, e))
            return CommitOutcome(0, 0, None)
        mid = len(batch) // 2
        first = _isolate(sink, spec, batch.part(0, mid), types, props, refused)
        second = _isolate(sink, spec, batch.part(mid, len(batch)), types, props, refused)
        return first.then(second)
