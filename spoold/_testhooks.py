"""Test-only marks and pauses at named points, so crash tests can kill inside the window they mean.

Off unless ``SPOOLD_TEST_HOOKS`` names a directory when spoold is imported; a
point then costs one global lookup. Even then only for a directory the tests
made for it: owned by this process's user, private (no group or other
permission bits) and holding a file ``enabled`` of that user (tests/support/testhooks.py
makes it so); any other is ignored, with one line on stderr. That is why
hooks in an installed, production spoold are safe: they run no code, read no
input but the names of files in that directory, and write only inside it, so
switching them on takes a private directory that only this user (or root)
can make, i.e. someone who can already act as the daemon. An environment
variable alone (a producer's hook, a unit's ``Environment=`` typo) can neither
pause the daemon nor make it append to a file elsewhere. On, every :func:`reached` appends
``<point> <pid> <n> <epoch time>`` to ``<dir>/marks`` (``n``: the how-many-th
time this process got there), and the point named in ``SPOOLD_TEST_PAUSE_AT``
(``point`` or ``point@n``) publishes that line as ``<dir>/paused.<pid>`` and
waits there until ``<dir>/resume.<pid>`` appears or the test kills the process.

Points: ``commit.staged`` (a commit's data and manifests are written, the
catalog has not accepted it), ``flush.committed`` (the catalog accepted the
commit, the flush files it finished are neither deleted nor held yet),
``flush.removed`` (they are), ``tail.appended`` (a tailer's rows are durably
spooled, its offset is not saved yet), ``backfill.committed`` (a backfill
chunk is committed, the source cursors it covers are not saved yet),
``replay.respooled`` (a quarantine replay's rows are durably spooled, their
records are not removed yet), ``replay.removed`` (a replayed quarantine file's
records are removed, the next file is not begun), ``drop.rewritten`` (a quarantine drop rewrote or
removed one quarantine file, its count in ``.dropped.json`` is not written yet),
``rebuild.created`` (a rebuild's staging table exists), ``rebuild.committed`` (a rebuild committed rows into it),
``rebuild.copied`` (every row is copied, the renames are to come), ``rebuild.recopy`` (the old table moved
on: its newer snapshot is saved as the one to copy, none of it copied yet),
``rebuild.backed_up`` (the old table is renamed to its backup name, the staging
table not yet to the table's), ``ingest.append`` (an ingest commit lane is about
to take a table's lock for a group or one request of it).
"""

from __future__ import annotations

import os
import stat
import sys
import time


def _enabled(path: str | None) -> str | None:
    """``path`` if it is a hooks directory the tests made (see the module docstring), else None."""
    if not path:
        return None
    uid = os.geteuid()
    try:
        st = os.lstat(path)
        flag = os.lstat(os.path.join(path, "enabled"))
        ok = (stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o077
              and stat.S_ISREG(flag.st_mode) and flag.st_uid == uid)
    except OSError:
        ok = False
    if not ok:
        sys.stderr.write(f"spoold: SPOOLD_TEST_HOOKS ignored: {path} is not a private directory of this user "
                         "holding an 'enabled' file\n")
        return None
    return path


_DIR = _enabled(os.environ.get("SPOOLD_TEST_HOOKS"))
_PAUSE_AT = os.environ.get("SPOOLD_TEST_PAUSE_AT", "")
_counts: dict[str, int] = {}


def reached(point: str) -> None:
    """Mark ``point`` (and pause there if asked); nothing at all unless the tests switched hooks on."""
    if _DIR is None:
        return
    _mark(_DIR, point)


def _mark(directory: str, point: str) -> None:
    n = _counts[point] = _counts.get(point, 0) + 1
    pid = os.getpid()
    line = f"{point} {pid} {n} {time.time():.6f}\n".encode()
    fd = os.open(os.path.join(directory, "marks"), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, line)  # one write with O_APPEND: lines of concurrent processes never interleave
    finally:
        os.close(fd)
    name, _, nth = _PAUSE_AT.partition("@")
    if name != point or n != int(nth or 1):
        return
    tmp = os.path.join(directory, f".paused.{pid}")
    with open(tmp, "wb") as f:
        f.write(line)
    os.replace(tmp, os.path.join(directory, f"paused.{pid}"))  # whole when the test sees it
    resume = os.path.join(directory, f"resume.{pid}")
    while not os.path.exists(resume):
        time.sleep(0.02)
