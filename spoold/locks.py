"""Lock files that exclude threads and processes alike, and survive a fork.

``flock`` belongs to an open file description: threads of one process share
it (so each lock also has a thread lock), and a forked child shares its
parent's (so a child opens its own). Lock files are opened once and kept open
between uses; :meth:`FileLocks.close` hands them back.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from spoold.safefile import open_file


class Busy(Exception):
    """The lock is held elsewhere and the caller asked not to wait."""


class FileLocks:
    """Exclusive locks on files, by path; ``opened(fd)`` runs once on each lock file opened (ownership, mode)."""

    def __init__(self, mode: int, opened: Callable[[int], None]) -> None:
        """Lock files are opened by :func:`spoold.safefile.open_file` (UnsafeFile: a link or not a regular file)."""
        self._mode, self._opened = mode, opened
        self._locks: dict[Path, tuple[threading.Lock, int, int]] = {}  # path -> (thread lock, fd, pid that opened fd)
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, path: Path, *, wait: bool = True, timeout: float | None = None) -> Iterator[None]:
        """Hold the lock on ``path`` (created if missing); ``wait=False`` raises :class:`Busy` at once,
        ``timeout`` (seconds) once it has not been had for that long."""
        pid = os.getpid()
        with self._guard:
            entry = self._locks.get(path)
            if entry is None or entry[2] != pid:
                # a forked child must open its own, or parent and child would not exclude each other
                if entry is not None:
                    os.close(entry[1])
                fd = open_file(path, os.O_RDWR | os.O_CREAT, self._mode)  # no link followed, a regular file
                self._opened(fd)
                entry = self._locks[path] = (threading.Lock(), fd, pid)
        tlock, fd, _ = entry
        deadline = None if timeout is None or not wait else time.monotonic() + timeout
        if not tlock.acquire(blocking=wait, timeout=-1 if deadline is None else timeout):
            raise Busy("another thread of this process")
        try:
            if deadline is None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise Busy("another process") from None
            else:
                _flock_until(fd, deadline)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            tlock.release()

    def close(self) -> None:
        """Close the lock files kept open between uses (the next use reopens them)."""
        with self._guard:
            locks, self._locks = self._locks, {}
        for _, fd, _ in locks.values():
            os.close(fd)


def _flock_until(fd: int, deadline: float) -> None:
    """``flock`` with a deadline: polled, since a blocking flock cannot be interrupted from another thread."""
    pause = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Busy("another process") from None
            time.sleep(min(pause, left))
            pause = min(pause * 2, 0.002)  # short polls: a producer holds the lock for one fsync
