"""Opening files in the spool so that a producer cannot point spoold at something else.

With ``[spool] group`` set, producers (other users, members of the group) can
create names in the spool's directories. A name spoold opens may then be a
symbolic link to a file outside the spool, a hard link to one, a FIFO that
hangs the open, or a file another user planted where spoold keeps its own
state. So every file under the spool root is opened by :func:`open_file`:
``O_NOFOLLOW`` (and ``O_NONBLOCK`` for the open only, against FIFOs), then
``fstat``: a regular file with one link and, for spoold's own state, the
expected owner. Anything else raises :class:`UnsafeFile`, naming the path and
what is wrong. Temp files are created ``O_EXCL`` under names nobody can guess
(:func:`temp_name`). What this protects and what a group member can still
do: docs/operating.md.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
from pathlib import Path

from spoold.errors import SpoolError
from spoold.layout import REFUSED_PREFIX

_OPEN = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY


class UnsafeFile(SpoolError):
    """A file or directory in the spool is not one spoold made: a link, not a regular file, another user's."""


def open_file(path: str | os.PathLike[str], flags: int = os.O_RDONLY, mode: int = 0o600, *,
              owner: int | None = None, dir_fd: int | None = None) -> int:
    """``os.open`` that never follows a symbolic link and returns only a regular file with one link.

    ``owner``: the uid the file must belong to (spoold's own state); None for
    files producers may create too. Raises :class:`UnsafeFile` (naming ``path``)
    for anything else, and ``OSError`` as ``os.open`` does (a missing file).
    """
    try:
        fd = os.open(path, flags | _OPEN | os.O_NONBLOCK, mode, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeFile(f"{path}: is a symbolic link; refused (spoold never follows links in its spool)") \
                from None
        if e.errno in (errno.EISDIR, errno.ENXIO):  # a directory opened for writing, a FIFO with no reader
            raise UnsafeFile(f"{path}: not a regular file; refused") from None
        raise
    try:
        check(fd, path, owner=owner)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check(fd: int, path: str | os.PathLike[str], *, owner: int | None = None) -> os.stat_result:
    """Raise :class:`UnsafeFile` unless open ``fd`` is a regular file with one link (of ``owner``); its fstat."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(f"{path}: not a regular file; refused")
    if st.st_nlink > 1:  # a hard link to a file outside the spool; 0 is a file removed since the open: fine
        raise UnsafeFile(f"{path}: has {st.st_nlink} hard links (a spool file has one); refused")
    if owner is not None and st.st_uid != owner:
        raise UnsafeFile(f"{path}: owned by uid {st.st_uid}, not {owner}; refused")
    return st


def read_file(path: str | os.PathLike[str], *, owner: int | None = None, limit: int = 64 << 20) -> bytes:
    """The bytes of a small state file, opened by :func:`open_file` (at most ``limit`` bytes are read)."""
    fd = open_file(path, owner=owner)
    try:
        chunks, size = [], 0
        while size < limit and (chunk := os.read(fd, min(1 << 20, limit - size))):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_state(path: str | os.PathLike[str], root: str | os.PathLike[str], *, limit: int = 1 << 20) -> bytes:
    """One of spoold's state files under the spool ``root``: read only if it belongs to the root's owner (the
    daemon's user), so a producer-group member cannot plant one (nor a link or a FIFO that would block)."""
    try:
        owner = os.lstat(root).st_uid
    except FileNotFoundError:
        owner = os.geteuid()
    return read_file(path, owner=owner, limit=limit)


def check_dir(path: Path, *, owner: int | None = None, private: bool = False) -> None:
    """Raise :class:`UnsafeFile` unless ``path`` is a directory, not a symbolic link (nor planted).

    ``owner``: the uid it must belong to; ``private``: nobody else may write in
    it either (spoold's own state lives there). A missing ``path`` passes.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise UnsafeFile(f"{path}: is {kind}; refused (spoold never follows links in its spool)")
    if owner is not None and st.st_uid != owner:
        raise UnsafeFile(f"{path}: owned by uid {st.st_uid}, not {owner}; refused")
    if private and st.st_mode & 0o022:
        raise UnsafeFile(f"{path}: writable by others (mode {stat.S_IMODE(st.st_mode):o}); refused")


def move_aside(path: Path) -> Path | None:
    """Rename a refused entry (never followed) to ``.refused-<name>-<random>`` beside it; None if it is gone.

    spoold reads no dot file it does not know, so the entry is out of every
    path, and kept for whoever wants to see what was planted.
    """
    aside = path.with_name(f"{REFUSED_PREFIX}{path.name}-{secrets.token_hex(4)}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    return aside


def private_dir(path: Path, *, mode: int = 0o700) -> list[str]:
    """Make ``path`` a directory of this user that no one else writes in (spoold's own state).

    One of ours with a looser mode (an older spool) gets ``mode``; a link, a
    file or another user's directory in its place is moved aside
    (:func:`move_aside`) and a new one made. Returns what was done about a
    planted entry (for the caller's log), empty when nothing was.
    """
    notes = []
    try:
        check_dir(path, owner=os.geteuid())
    except UnsafeFile as e:
        notes.append(f"{e}; moved aside to {move_aside(path)}")
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _OPEN)
        try:
            if stat.S_IMODE(os.fstat(fd).st_mode) & 0o022:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
        return notes
    os.chmod(path, mode)  # mkdir's mode is masked by the umask
    return notes
