"""Acting as a producer-group member: a group made for the test, a base directory nobody can reach into, and
running a command as ``nobody`` with that group (``setpriv``). Needs root; tests skip otherwise."""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import zygote

NEEDS_ROOT = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the daemon runs as root, the member as nobody"),
    pytest.mark.skipif(shutil.which("setpriv") is None or shutil.which("groupadd") is None,
                       reason="needs setpriv and groupadd (util-linux, shadow) to act as a group member"),
]


@pytest.fixture
def group() -> Iterator[str]:
    """A group made for the test; while it lives, a member can reach this interpreter and spoold's code."""
    name = f"spoold-t{secrets.token_hex(3)}"
    subprocess.run(["groupadd", name], check=True, capture_output=True)
    with _reachable_by_others():
        try:
            yield name
        finally:
            subprocess.run(["groupdel", name], capture_output=True)


# Tests in parallel (xdist workers, other checkouts' runs) open the same directories: the modes found before the
# first of them opened any are kept in modes.json, and only the last one out restores them (one that restored
# while another still ran would lock that one's member out). Each live test holds an exclusive flock on a file
# of its own in users/; a file nobody holds is left by a killed run.
_SHARED = Path(tempfile.gettempdir()) / f"spoold-test-members-{os.geteuid()}"


@contextlib.contextmanager
def _reachable_by_others() -> Iterator[None]:
    _SHARED.mkdir(mode=0o700, exist_ok=True)
    users, state = _SHARED / "users", _SHARED / "modes.json"
    users.mkdir(mode=0o700, exist_ok=True)
    with open(_SHARED / "lock", "a+") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        opened = json.loads(state.read_text()) if state.exists() else []
        opened += _open_for_others()
        state.write_text(json.dumps(opened))
        me = users / f"{os.getpid()}-{secrets.token_hex(4)}"
        mine = open(me, "w")  # noqa: SIM115 - held (flocked) until the test is over
        fcntl.flock(mine, fcntl.LOCK_EX)
        fcntl.flock(guard, fcntl.LOCK_UN)
    try:
        yield
    finally:
        with open(_SHARED / "lock", "a+") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            me.unlink()
            mine.close()
            if not any(_alive(other) for other in users.iterdir()):
                for path, mode in reversed(json.loads(state.read_text())):
                    os.chmod(path, mode)
                state.unlink()


def _alive(user: Path) -> bool:
    """Whether the test that made ``user`` still holds it (a file left by a killed run is removed)."""
    with open(user) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
    user.unlink(missing_ok=True)
    return False


def _open_for_others() -> list[tuple[str, int]]:
    """Let others traverse (x, never r or w) the directories above the virtualenv and the checkout, as a
    checkout in a private directory (CI's clone in a ``mktemp -d``) would keep the member from running spoold;
    returns what to restore."""
    import spoold

    opened: list[tuple[str, int]] = []
    for target in (Path(sys.prefix), Path(spoold.__file__).resolve().parent):
        for d in reversed([target, *target.parents]):
            mode = os.stat(d).st_mode
            if not mode & stat.S_IXOTH:
                opened.append((str(d), stat.S_IMODE(mode)))
                os.chmod(d, stat.S_IMODE(mode) | stat.S_IXOTH)
    return opened


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory outside pytest's root-only tmp tree, so that nobody can reach the spool in it."""
    d = Path(tempfile.mkdtemp(prefix="spoold-attack-", dir="/tmp"))
    d.chmod(0o711)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def as_member(gname: str, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run ``args`` as nobody with ``gname`` as its only group."""
    return zygote.run(list(args), user=(pwd.getpwnam("nobody").pw_uid, grp.getgrnam(gname).gr_gid), input=input,
                      capture_output=True, timeout=120, env={**os.environ, "HOME": "/nonexistent"})


