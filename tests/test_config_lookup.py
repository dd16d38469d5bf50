"""Where the config is found (issue 19, acceptance 8): only where the user or the system put it.

A producer hook runs in whatever directory its user is in, e.g. an untrusted
checkout: a ``spoold.toml`` there must neither redirect rows nor make spoold
import a catalog class it names. Every test goes through the real ``spoold``
console script, started in such a directory.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

ROW = b'{"part_id": "a"}\n'


def spoold(cwd: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[bytes]:
    """The installed ``spoold`` script (not ``python -m``, which puts the cwd on sys.path), run in ``cwd``."""
    exe = shutil.which("spoold", path=os.path.dirname(sys.executable)) or shutil.which("spoold")
    assert exe, "the spoold console script is not installed next to this Python"
    return subprocess.run([exe, *args], input=input, capture_output=True, cwd=cwd, timeout=120,
                          env={**os.environ, **(env or {})})


def hostile_checkout(tmp_path: Path, body: str = "") -> tuple[Path, Path]:
    """A directory whose ``spoold.toml`` points the spool at a root of its own; (checkout, that root)."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    root = checkout / "their-spool"
    (checkout / "spoold.toml").write_text(f'[spool]\nroot = "{root}"\n{body}')
    return checkout, root


def spooled(root: Path, table: str = "t.x") -> bool:
    return (root / table / "active.jsonl").is_file()


def test_append_and_status_ignore_a_spoold_toml_in_the_current_directory(tmp_path: Path) -> None:
    checkout, theirs = hostile_checkout(tmp_path)
    default = tmp_path / "xdg-state" / "spoold" / "spool"  # $XDG_STATE_HOME is set by the test fixture

    r = spoold(checkout, "append", "t.x", input=ROW)
    assert r.returncode == 0, r.stderr
    assert spooled(default) and not theirs.exists()
    r = spoold(checkout, "status", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["tables"]["t.x"]["spooled_rows"] == 1 and not theirs.exists()

    mine = tmp_path / "mine.toml"  # $SPOOLD_CONFIG still wins over everything but --config
    mine.write_text(f'[spool]\nroot = "{tmp_path / "my-spool"}"\n')
    r = spoold(checkout, "append", "t.x", input=ROW, env={"SPOOLD_CONFIG": str(mine)})
    assert r.returncode == 0, r.stderr
    assert spooled(tmp_path / "my-spool") and not theirs.exists()
    r = spoold(checkout, "status", "--json", env={"SPOOLD_CONFIG": str(mine)})
    assert r.returncode == 0 and json.loads(r.stdout)["tables"]["t.x"]["spooled_rows"] == 1
    assert not theirs.exists()


def test_a_catalog_class_named_by_a_spoold_toml_in_the_current_directory_is_never_imported(tmp_path: Path) -> None:
    lib = tmp_path / "lib"  # importable (on PYTHONPATH), as an attacker's package on the machine would be
    lib.mkdir()
    marker = tmp_path / "imported"
    (lib / "evilcat.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\nclass Catalog: pass\n")
    checkout, theirs = hostile_checkout(tmp_path, '[catalog]\npy-catalog-impl = "evilcat.Catalog"\n')
    env = {"PYTHONPATH": str(lib)}
    for args in (("status", "--json"), ("flush",), ("append", "t.x")):
        r = spoold(checkout, *args, input=ROW, env=env)
        assert r.returncode == 0, (args, r.stderr)
        assert not marker.exists(), f"spoold {' '.join(args)} imported the cwd config's catalog class"
    assert not theirs.exists()


def test_the_users_config_directory_is_read(tmp_path: Path) -> None:
    checkout, theirs = hostile_checkout(tmp_path)
    user = tmp_path / "home" / ".config" / "spoold" / "spoold.toml"  # $HOME is tmp_path/home
    user.parent.mkdir(parents=True)
    user.write_text(f'[spool]\nroot = "{tmp_path / "user-spool"}"\n')
    assert spoold(checkout, "append", "t.x", input=ROW).returncode == 0
    assert spooled(tmp_path / "user-spool")

    xdg = tmp_path / "xdg-config" / "spoold" / "spoold.toml"
    xdg.parent.mkdir(parents=True)
    xdg.write_text(f'[spool]\nroot = "{tmp_path / "xdg-spool"}"\n')
    assert spoold(checkout, "append", "t.x", input=ROW, env={"XDG_CONFIG_HOME": str(xdg.parent.parent)}).returncode == 0
    assert spooled(tmp_path / "xdg-spool")

    # A relative $XDG_CONFIG_HOME is invalid (XDG spec): ~/.config is read, not ./xdg-config of the cwd.
    shutil.copytree(tmp_path / "xdg-config", checkout / "xdg-config")
    (checkout / "xdg-config" / "spoold" / "spoold.toml").write_text(f'[spool]\nroot = "{theirs}"\n')
    assert spoold(checkout, "append", "t.x", input=ROW, env={"XDG_CONFIG_HOME": "xdg-config"}).returncode == 0
    assert not theirs.exists()
    assert (tmp_path / "user-spool" / "t.x" / "active.jsonl").read_bytes().count(b"\n") == 2


def test_a_relative_xdg_state_home_is_ignored(tmp_path: Path) -> None:
    """No config at all and ``XDG_STATE_HOME=state``: the embedded state goes to ~/.local/state, private."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    old = os.umask(0o022)
    try:
        r = spoold(checkout, "append", "t.x", input=ROW, env={"XDG_STATE_HOME": "state"})
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    assert not (checkout / "state").exists()
    home = tmp_path / "home"
    assert spooled(home / ".local" / "state" / "spoold" / "spool")
    for d in (home / ".local", home / ".local" / "state", home / ".local" / "state" / "spoold"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d  # the XDG spec's 0700 for the whole chain spoold made


def test_a_missing_spoold_config_is_still_refused_not_replaced_by_the_cwd_one(tmp_path: Path) -> None:
    checkout, theirs = hostile_checkout(tmp_path)
    r = spoold(checkout, "append", "t.x", input=ROW, env={"SPOOLD_CONFIG": str(tmp_path / "nope.toml")})
    assert r.returncode == 2 and "nope.toml" in r.stderr.decode() and not theirs.exists()
