"""Test hooks are honoured only in a directory the tests made for them (issue 19, "the rest").

``SPOOLD_TEST_HOOKS`` alone (set by a producer's hook, or left in a unit's
environment) must neither pause spoold nor make it write a marks file: only a
private directory of spoold's own user holding an ``enabled`` file switches
hooks on (tests/support/testhooks.py makes one). Through the real CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support import zygote
from support.cli import write_config
from support.testhooks import Hooks

ROW = b'{"part_id": "a"}\n'


def flush(cfg: Path, hooks_env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """Append a row and flush it (a flush passes ``commit.staged``), with ``hooks_env`` on the flush."""
    base = [sys.executable, "-m", "spoold"]
    assert zygote.run([*base, "append", "t.x", "--config", str(cfg)], input=ROW, timeout=120).returncode == 0
    try:
        return zygote.run([*base, "flush", "--config", str(cfg)], capture_output=True, timeout=60,
                              env={**os.environ, **hooks_env})
    except subprocess.TimeoutExpired:
        raise AssertionError("spoold flush paused at a test hook it should have ignored") from None


def test_a_directory_the_tests_made_switches_hooks_on(tmp_path: Path) -> None:
    hooks = Hooks(tmp_path / "hooks")
    r = flush(write_config(tmp_path), hooks.env())
    assert r.returncode == 0, r.stderr
    assert "commit.staged" in [m.point for m in hooks.marks()]
    assert b"SPOOLD_TEST_HOOKS" not in r.stderr


def test_an_environment_variable_alone_neither_pauses_nor_marks(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    shared = tmp_path / "shared"  # readable by others: not a hooks directory, even with its 'enabled' file
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    (shared / "enabled").touch()
    unmarked = tmp_path / "unmarked"  # private, but the tests never marked it enabled
    unmarked.mkdir(mode=0o700)
    cases = [shared, unmarked, tmp_path / "missing"]
    if os.geteuid() == 0:  # private and marked, but another user's
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        (theirs / "enabled").touch()
        os.chown(theirs / "enabled", 65534, 65534)
        os.chown(theirs, 65534, 65534)
        cases.append(theirs)
    for d in cases:
        r = flush(cfg, {"SPOOLD_TEST_HOOKS": str(d), "SPOOLD_TEST_PAUSE_AT": "commit.staged"})
        assert r.returncode == 0, (d, r.stderr)
        assert not d.exists() or not [p.name for p in d.iterdir() if p.name != "enabled"], d
        err = r.stderr.decode()
        assert err.count("SPOOLD_TEST_HOOKS ignored") == 1 and f"SPOOLD_TEST_HOOKS ignored: {d} " in err, err
