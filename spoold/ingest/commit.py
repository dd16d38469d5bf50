"""Group commit: concurrent requests' rows share one locked append and one fsync.

Requests hand their envelope lines to :class:`GroupCommit` and wait on a
future. ``LANES`` threads, started with the listener, each take one table's
queued requests (a table is in one lane at a time, so its requests keep their
order), append their lines under the table's lock with one fsync
(:meth:`Spool.append_lines`, the producers' own path), then resolve every
future. A table whose lock a producer keeps held (:class:`LockHeld`) costs its
own lane the wait, never the other tables' requests: the lanes serve them, and
the table's waiting requests all get the refusal at once (no request waits for
the lock twice). If a group is refused for another reason (its table's spool
would go over ``[spool] max_bytes``, say), each request of it is tried alone,
so one request's refusal never costs another's rows and no request is ever
half appended. The queue is bounded in bytes: past it a request is refused at
once (503), never buffered.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, InvalidStateError

from spoold._testhooks import reached
from spoold.errors import TableBusy
from spoold.spool.spool import Spool

log = logging.getLogger("spoold.ingest")

MAX_GROUP_BYTES = 32 << 20  # one group's appends (a few MB typically); more waits for the next fsync
LANES = 4  # commit threads: a table stuck on its lock holds one, the others keep the rest going

_Item = tuple[str, list[bytes], int, "Future[None]"]


class Overloaded(Exception):
    """More bytes are waiting for the spool than the queue holds (503, retry)."""


class GroupCommit:
    """The commit lanes and their queue of ``(table, lines, size, future)``."""

    def __init__(self, spool: Spool, max_queued_bytes: int, lanes: int = LANES) -> None:
        self.spool = spool
        self.max_queued_bytes = max_queued_bytes
        self._queue: list[_Item] = []
        self._queued_bytes = 0
        self._busy: set[str] = set()  # tables a lane is appending now
        self._cond = threading.Condition()
        self._stop = False
        self.busy_s = 0.0  # time spent appending (bench: fsync share)
        self.groups = 0
        self._threads = [threading.Thread(target=self._run, name=f"spoold-ingest-commit-{i}", daemon=True)
                         for i in range(lanes)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def use(self, spool: Spool) -> None:
        """Append to ``spool`` from the next group on (a reload's root, bounds and group)."""
        with self._cond:
            self.spool = spool

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
            self._cond.notify()  # any idle lane can take it (a busy table's lane takes it itself when done)
        return fut

    def stop(self, timeout: float) -> None:
        """Append what is queued, then end the lanes (within ``timeout``)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))

    def _take(self) -> tuple[str, list[_Item], Spool] | None:
        """The oldest queued request's table that no lane holds, with its queued requests (in order)."""
        with self._cond:
            while True:
                table = next((it[0] for it in self._queue if it[0] not in self._busy), None)
                if table is not None:
                    break
                if self._stop and not self._queue:
                    return None
                self._cond.wait()
            taken, rest, size = [], [], 0
            for item in self._queue:
                if item[0] == table and (not taken or size + item[2] <= MAX_GROUP_BYTES):
                    taken.append(item)
                    size += item[2]
                else:
                    rest.append(item)
            self._queue = rest
            self._queued_bytes -= size
            self._busy.add(table)
            return table, taken, self.spool

    def _take_table(self, table: str) -> list[_Item]:
        """Every request queued for ``table`` now (they came while its lock was waited for)."""
        with self._cond:
            taken = [it for it in self._queue if it[0] == table]
            self._queue = [it for it in self._queue if it[0] != table]
            self._queued_bytes -= sum(it[2] for it in taken)
            return taken

    def _run(self) -> None:
        while (job := self._take()) is not None:
            table, taken, spool = job
            t0 = time.monotonic()
            # A request cancelled while queued (its connection gone at shutdown) got no answer: not appended.
            group = [(lines, fut) for _, lines, _, fut in taken if fut.set_running_or_notify_cancel()]
            try:
                self._append(spool, table, group)
            except Exception as e:  # a bug: its requests get a 500, the lane goes on
                log.error("ingest: table %s: commit failed: %s", table, e, exc_info=True)
                for _, fut in group:
                    _settle(fut, e)
            finally:
                with self._cond:
                    self._busy.discard(table)
                    self.busy_s += time.monotonic() - t0
                    self.groups += 1
                    self._cond.notify_all()

    def _append(self, spool: Spool, table: str, group: list[tuple[list[bytes], Future[None]]]) -> None:
        if not group:
            return
        try:
            reached("ingest.append")
            spool.append_lines(table, [line for lines, _ in group for line in lines])
        except TableBusy as e:
            # The table's lock stays held (a stuck producer): the table's refusal, not any request's. Those
            # queued for it meanwhile get it too rather than wait again, while other lanes serve other tables.
            later = [fut for _, _, _, fut in self._take_table(table) if fut.set_running_or_notify_cancel()]
            for fut in [f for _, f in group] + later:
                _settle(fut, e)
            return
        except Exception as e:
            if len(group) == 1:
                _settle(group[0][1], e)
                return
            busy: TableBusy | None = None
            for lines, fut in group:  # alone, each request gets its own verdict: all of it or none
                try:
                    if busy is not None:  # the lock got stuck meanwhile: the rest are refused, not waited
                        raise busy
                    reached("ingest.append")
                    spool.append_lines(table, lines)
                except TableBusy as one:
                    busy = one
                    _settle(fut, one)
                except Exception as one:
                    _settle(fut, one)
                else:
                    _settle(fut, None)
            return
        for _, fut in group:
            _settle(fut, None)


def _settle(fut: Future[None], error: BaseException | None) -> None:
    """Resolve ``fut``; one resolved already (a bug elsewhere) never ends a lane."""
    try:
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)
    except InvalidStateError:
        pass
