"""Group commit: concurrent requests' rows share one locked append and one fsync.

Requests hand their envelope lines to :class:`GroupCommit` and wait on a
future. One thread, started with the listener, takes everything queued,
appends each table's lines from all waiting requests under the table's lock
with one fsync (:meth:`Spool.append_lines`, the producers' own path), then
resolves every future. If a group is refused (its table's spool would go over
``[spool] max_bytes``, say), each request of it is tried alone, so one
request's refusal never costs another's rows and no request is ever half
appended. The queue is bounded in bytes: past it a request is refused at once
(503), never buffered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import Future

from spoold.spool.spool import Spool

log = logging.getLogger("spoold.ingest")

MAX_GROUP_BYTES = 32 << 20  # one group's appends (a few MB typically); more waits for the next fsync


class Overloaded(Exception):
    """More bytes are waiting for the spool than the queue holds (503, retry)."""


class GroupCommit:
    """The commit thread and its queue of ``(table, lines, future)``."""

    def __init__(self, spool: Spool, max_queued_bytes: int) -> None:
        self.spool = spool
        self.max_queued_bytes = max_queued_bytes
        self._queue: list[tuple[str, list[bytes], int, Future[None]]] = []
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._stop = False
        self.busy_s = 0.0  # time spent appending (bench: fsync share)
        self.groups = 0
        self._thread = threading.Thread(target=self._run, name="spoold-ingest-commit", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, table: str, lines: list[bytes]) -> Future[None]:
        """Queue ``lines`` for ``table``; the future resolves once they are fsync'd (or with why not)."""
        size = sum(map(len, lines))
        fut: Future[None] = Future()
        with self._cond:
            if self._stop:
                raise Overloaded("stopping")
            if self._queued_bytes and self._queued_bytes + size > self.max_queued_bytes:
                raise Overloaded(f"{self._queued_bytes} bytes already wait for the spool")
            self._queue.append((table, lines, size, fut))
            self._queued_bytes += size
            self._cond.notify()
        return fut

    def stop(self, timeout: float) -> None:
        """Append what is queued, then end the thread (within ``timeout``)."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout)

    def _take(self) -> list[tuple[str, list[bytes], int, Future[None]]] | None:
        with self._cond:
            while not self._queue and not self._stop:
                self._cond.wait()
            if not self._queue:
                return None
            taken, size = [], 0
            while self._queue and (not taken or size + self._queue[0][2] <= MAX_GROUP_BYTES):
                item = self._queue.pop(0)
                taken.append(item)
                size += item[2]
            self._queued_bytes -= size
            return taken

    def _run(self) -> None:
        while (taken := self._take()) is not None:
            by_table: dict[str, list[tuple[list[bytes], Future[None]]]] = defaultdict(list)
            for table, lines, _, fut in taken:
                by_table[table].append((lines, fut))
            for table, group in by_table.items():
                t0 = time.monotonic()
                self._append(table, group)
                self.busy_s += time.monotonic() - t0
                self.groups += 1

    def _append(self, table: str, group: list[tuple[list[bytes], Future[None]]]) -> None:
        try:
            self.spool.append_lines(table, [line for lines, _ in group for line in lines])
        except Exception as e:
            if len(group) == 1:
                group[0][1].set_exception(e)
                return
            for lines, fut in group:  # alone, each request gets its own verdict: all of it or none
                try:
                    self.spool.append_lines(table, lines)
                except Exception as one:
                    fut.set_exception(one)
                else:
                    fut.set_result(None)
            return
        for _, fut in group:
            fut.set_result(None)
