"""Durable writes: publish a file whole by rename, append lines all or nothing, fsync what must survive.

Durable means fsync'd: a file's bytes with ``fsync``, its name with an fsync
of its directory. A write that fails half-way (a full disk, an I/O error)
leaves nothing a later read could take for data: a published file keeps its
old version and its temp file is removed; an append is cut back to where it
started.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable
from pathlib import Path

from spoold.layout import state_mode, temp_name
from spoold.safefile import open_file


def fsync_dir(path: Path) -> None:
    """Make the names in directory ``path`` durable (a new, renamed or removed file)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Publish ``data`` at ``path``: write a temp file, fsync, rename, fsync the directory."""
    os.close(_publish(path, data, mode, lock=False))


def write_atomic_locked(path: Path, data: bytes, mode: int = 0o600) -> int:
    """:func:`write_atomic`, with the file ``flock``ed (exclusive) before it appears under its name.

    Returns the descriptor that holds the lock; closing it drops the lock.
    """
    return _publish(path, data, mode, lock=True)


def _publish(path: Path, data: bytes, mode: int, *, lock: bool) -> int:
    # O_EXCL under a name nobody can guess: a producer sharing the directory cannot plant the temp file
    tmp = path.with_name(temp_name(path.name))
    fd = open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # exactly ``mode``: os.open's is masked by the umask (a producer group needs 0660)
        write_all(fd, data)
        os.fsync(fd)
        if lock:
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)  # a full disk must not also keep the torn temp file's blocks
        raise
    return fd


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def append_all(fd: int, payloads: Iterable[bytes]) -> None:
    """Append ``payloads`` to ``fd`` and fsync, all or nothing.

    ``fd`` is open with ``O_APPEND`` and no other writer can append meanwhile
    (the caller holds the file's lock). If a write or the fsync fails, the
    file is cut back to its size before the call, so no line of an append
    that was refused can be read as rows later.
    """
    start = os.fstat(fd).st_size
    try:
        for data in payloads:
            write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        try:
            os.ftruncate(fd, start)
            os.fsync(fd)
        except OSError:
            pass  # shrinking frees space, it does not fail on a full disk; a torn tail is repaired at the next append
        raise


def write_state(path: Path, data: bytes, group: str | None) -> None:
    """Publish one of spoold's state files under the spool root with the spool's state mode (the one way)."""
    write_atomic(path, data, state_mode(group))
