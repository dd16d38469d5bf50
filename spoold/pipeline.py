"""Commit chunk k on a worker thread while chunk k+1 is read (flush and backfill)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

from spoold.config import TableSpec
from spoold.envelope import Validator
from spoold.iceberg.sink import CommitOutcome, Sink
from spoold.settle import Batch


class CommitPipeline:
    """Commits chunks on a worker thread while the caller reads and validates the next one.

    Parquet encoding and file I/O release the GIL, so the two overlap. At most
    one commit is in flight: memory stays near two chunks, its error surfaces
    at the next ``submit`` or ``join``, and ``then`` (e.g. deleting the spool
    files the chunk finished) runs only after every earlier commit is durable.
    A chunk that brings new columns commits in the foreground: the table must
    have them, and their types be pinned (an inferred ``long`` must not take a
    later float), before more rows are validated.
    """

    def __init__(self, sink: Sink, spec: TableSpec) -> None:
        self.sink, self.spec = sink, spec
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spoold-commit")
        self._inflight: tuple[Future[CommitOutcome], Callable[[CommitOutcome], None]] | None = None

    @property
    def busy(self) -> bool:
        """A commit is in flight: the committed-key index may not show its keys yet."""
        return self._inflight is not None

    def submit(self, batch: Batch, validator: Validator, props: Mapping[str, str],
               then: Callable[[CommitOutcome], None]) -> None:
        """Commit ``batch`` (after the one in flight); ``then(outcome)`` once it is durable."""
        self.join()
        if validator.inferred():
            then(self.sink.commit(self.spec, batch, validator.types, props))
            validator.pinned = frozenset(validator.types)
        else:  # a copy of the types: the caller's validator goes on learning new columns meanwhile
            job = self._pool.submit(self.sink.commit, self.spec, batch, dict(validator.types), props)
            self._inflight = (job, then)

    def join(self) -> None:
        """Wait for the commit in flight, if any, and run its ``then`` (its error is raised here)."""
        if self._inflight is not None:
            (job, then), self._inflight = self._inflight, None
            then(job.result())

    def close(self) -> None:
        """Let a commit in flight end (also after an error: cutting it short is safe, waiting is simpler)."""
        self._pool.shutdown(wait=True)
