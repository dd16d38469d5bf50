"""One daemon per spool root: ``spoold run`` holds an exclusive lock on ``<spool root>/.daemon.lock``.

Two daemons on one spool would both tail the same sources and race on every
flush. The lock is ``flock`` on a file under the spool root, so it is released
by the kernel whenever its holder exits (even on SIGKILL): no stale pid file
to clean up. The holder writes its pid into the file for the error message.
The file is opened close-on-exec: the daemon's lean restart (``execv``, same
pid) lets it go and the new image takes it again at its start. It is never
followed as a link and must be the daemon user's: with ``[spool] group`` a
producer could otherwise plant a link there and have the daemon write its pid
over any file it can write (the catalog); a planted entry is removed (the
spool root is the daemon's and sticky, so only the daemon can) and made anew.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager

from spoold.errors import SpooldError
from spoold.layout import DAEMON_LOCK
from spoold.safefile import UnsafeFile, open_file
from spoold.spool.spool import Spool

log = logging.getLogger("spoold.daemon")



class AlreadyRunning(SpooldError):
    """Another ``spoold run`` holds this spool root (exit 1)."""


@contextmanager
def daemon_lock(spool: Spool) -> Iterator[None]:
    """Hold the spool root's daemon lock for the block; raise AlreadyRunning at once if another process has it."""
    spool.make_root()
    owner = os.stat(spool.root).st_uid
    if spool.group_id is not None and owner != os.geteuid():
        raise SpooldError(f"spool root {spool.root} is owned by uid {owner}, not this user (uid {os.geteuid()}): "
                          "with [spool] group the spool root must be the daemon's, or producers could replace "
                          "its files; create it as the daemon's user (e.g. systemd's StateDirectory=)")
    path = spool.root / DAEMON_LOCK
    fd = _open(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(f"spoold is already running on spool root {spool.root} (pid {_holder(fd)}); "
                                 "one daemon per spool root: stop it first, or give this one its own "
                                 "[spool] root") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (unlinking it would race a starting daemon)


def _open(path: os.PathLike[str]) -> int:
    """The lock file, ours and regular; a planted one (a link, a FIFO, another user's file) is replaced."""
    try:
        return open_file(path, os.O_RDWR | os.O_CREAT, 0o600, owner=os.geteuid())
    except UnsafeFile as e:
        try:
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                raise
            os.unlink(path)  # the entry only: a link is removed, never followed
        except OSError:
            raise e from None
        log.warning("%s; removed it and made the lock file anew", e)
    return open_file(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600, owner=os.geteuid())


def _holder(fd: int) -> str:
    """The pid the lock's holder wrote (it writes it right after locking: wait a moment for it)."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.05)
    return "unknown"
