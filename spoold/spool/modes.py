"""A spool's modes and ownership, and the entries producers may plant in it.

Private: directories 0700, files 0600. With ``[spool] group``: directories
3770 (setgid, so new files get the group; sticky, so a member cannot rename
or delete what is not its own) and shared files 0660. Anything in a spool
directory that is not a regular file with one link is never read: it is moved
aside (docs/spool-layout.md).
"""

from __future__ import annotations

import grp
import logging
import os
import stat
from pathlib import Path

from spoold.durable import fsync_dir
from spoold.errors import SpoolError
from spoold.layout import ACTIVE
from spoold.safefile import UnsafeFile, move_aside, open_file

log = logging.getLogger("spoold.spool")


class Modes:
    """The modes of one spool's directories and files, and who owns them."""

    def __init__(self, group: str | None) -> None:
        self.group = group
        self.gid = _group_id(group) if group else None
        self.dir_mode = 0o3770 if group else 0o700
        self.file_mode = 0o660 if group else 0o600

    def adopt(self, path: Path, *, private: bool = False) -> None:
        """Give a group directory the sticky bit if ours (an older spoold made them 2770); a daemon running
        as root also takes over a table directory a producer created, so that producer cannot swap it.
        ``private``: a directory the group must not read (a tailed source's table): 0700."""
        if self.gid is None:
            return
        mode = 0o700 if private else self.dir_mode
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            return  # gone, or not a directory: every use checks it again
        try:
            st = os.fstat(fd)
            euid = os.geteuid()
            if st.st_uid != euid and euid == 0:
                os.fchown(fd, 0, self.gid)
            elif st.st_uid != euid:
                return
            if stat.S_IMODE(st.st_mode) != mode or st.st_uid != euid:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def mkdir(self, path: Path, *, private: bool = False) -> None:
        """Create ``path`` (and missing parents) with the spool's directory mode; ``private``: 0700 whatever
        the group (a tailed source's table, unless [spool] group_readable_sources)."""
        if not path.parent.is_dir():
            self.mkdir(path.parent)  # missing parents (the embedded state dir) are as private as the spool
        try:
            path.mkdir(mode=0o700 if private else self.dir_mode)
        except FileExistsError:
            return
        fsync_dir(path.parent)
        if self.gid is not None and not private:
            os.chown(path, -1, self.gid)
            os.chmod(path, self.dir_mode)  # mkdir's mode is masked by the umask

    def chown(self, fd: int) -> None:
        if self.gid is None:
            return
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            return  # its owner, another producer, set it up; only the owner may change it
        if st.st_gid != self.gid:
            os.fchown(fd, -1, self.gid)
        if stat.S_IMODE(st.st_mode) != self.file_mode:
            os.fchmod(fd, self.file_mode)  # os.open's mode is masked by the umask


def regular(path: Path) -> bool:
    """True for a regular file with one link; anything else (a producer planted it) is moved aside."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
        return True
    what = ("is a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            if not stat.S_ISREG(st.st_mode) else f"has {st.st_nlink} hard links (a spool file has one)")
    try:
        log.warning("%s: %s; never read, moved aside to %s", path, what, move_aside(path))
    except OSError as e:  # another user's entry in a sticky directory: only its owner may move it
        log.warning("%s: %s; never read (cannot move it aside: %s)", path, what, e.strerror)
    return False


def open_active(d: Path) -> int:
    """``active.jsonl`` for appending: a planted link or special file is moved aside (when this user
    may), then refused; FileNotFoundError when there is none."""
    try:
        return open_file(d / ACTIVE, os.O_RDWR | os.O_APPEND)
    except UnsafeFile as e:
        try:
            aside = move_aside(d / ACTIVE)
        except OSError:
            raise e from None  # another user's entry in a sticky directory: the daemon moves it
        log.warning("%s; moved aside to %s", e, aside)
        raise FileNotFoundError(d / ACTIVE) from None


def _group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise SpoolError(f"spool.group: no such group {name!r}") from None
