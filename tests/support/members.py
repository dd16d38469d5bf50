"""Acting as a producer-group member: a group made for the test, a base directory nobody can reach into, and
running a command as ``nobody`` with that group (``setpriv``). Needs root; tests skip otherwise."""

from __future__ import annotations

import grp
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
    opened = _reachable_by_others()
    try:
        yield name
    finally:
        subprocess.run(["groupdel", name], capture_output=True)
        for path, mode in reversed(opened):
            os.chmod(path, mode)


def _reachable_by_others() -> list[tuple[str, int]]:
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
    return subprocess.run(["setpriv", f"--reuid={pwd.getpwnam('nobody').pw_uid}",
                           f"--regid={grp.getgrnam(gname).gr_gid}", "--clear-groups", "--", *args],
                          input=input, capture_output=True, timeout=120, env={**os.environ, "HOME": "/nonexistent"})


