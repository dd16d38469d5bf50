"""A producer-group member attacks a group spool through links; the daemon (root) is never redirected.

Runs as root (CI does): the daemon runs as root with ``[spool] group`` set to a
group made for the test, and the attacker is ``nobody`` in that group
(``setpriv``). Each attack plants a symbolic link where the daemon opens a
file; the daemon must refuse it, say so in its log, and keep committing other
producers' rows, and nothing outside the spool may change (mode, owner, size,
content) or show up in the spool.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from support.daemonproc import DaemonProc, wait_for
from support.members import NEEDS_ROOT, as_member

pytestmark = [pytest.mark.slow, *NEEDS_ROOT]

T, U = "chat.parts", "chat.other"


def plant(gname: str, link: Path, target: Path) -> subprocess.CompletedProcess[bytes]:
    """As the member: replace ``link`` (its own, or a new name) by a symbolic link to ``target``."""
    code = ("import os, sys\nl, t = sys.argv[1:]\ntry:\n    os.unlink(l)\nexcept FileNotFoundError:\n    pass\n"
            "os.symlink(t, l)")
    return as_member(gname, sys.executable, "-c", code, str(link), str(target))


def fingerprint(path: Path) -> tuple[int, int, int, int, str]:
    st = path.stat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size, hashlib.sha256(path.read_bytes()).hexdigest()


def committed(state: Path, table: str) -> int:
    """Rows committed to ``table`` (0 while it does not exist)."""
    from spoold.config import load_config
    from spoold.iceberg.sink import Sink

    cfg = load_config(state.parent / "spoold.toml")
    tbl = Sink(cfg).load(cfg.table(table))
    return 0 if tbl is None else tbl.scan().to_arrow().num_rows


def spool_bytes(root: Path) -> bytes:
    """Every regular file's bytes under the spool (links are not followed)."""
    out = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            if stat.S_ISREG(p.lstat().st_mode):
                out.append(p.read_bytes())
    return b"\n".join(out)


def test_link_attacks_by_a_group_member_are_refused_and_capture_goes_on(base: Path, group: str) -> None:
    state = base / "state"
    state.mkdir(mode=0o700)
    root = base / "spool"
    cfg = base / "spoold.toml"
    cfg.write_text(f'[spool]\nroot = "{root}"\ngroup = "{group}"\n'
                   f'[catalog]\ntype = "sql"\nuri = "sqlite:///{state / "catalog.db"}"\n'
                   f'warehouse = "file://{state / "wh"}"\n'
                   "[flush]\ndebounce_s = 0.2\nmax_delay_s = 2\nretry_max_s = 1\n")
    cfg.chmod(0o644)
    outside = base / "outside"
    outside.mkdir(mode=0o700)
    secret = outside / "secret"  # readable by root only
    secret.write_bytes(b"TOP-SECRET-the-member-cannot-read-this\n")
    lock_target = outside / "lock-target"
    lock_target.write_bytes(b"LOCK-TARGET-CONTENT\n")
    active_target = outside / "active-target"
    active_target.write_bytes(b"ACTIVE-FIRST-LINE\nACTIVE-UNTERMINATED-TAIL")
    catalog = outside / "catalog-stand-in"
    catalog.write_bytes(b"CATALOG-STAND-IN-CONTENT\n")
    targets = [secret, lock_target, active_target, catalog]
    for t in targets:
        t.chmod(0o600)
    before = {t: fingerprint(t) for t in targets}
    markers = [b"TOP-SECRET", b"LOCK-TARGET", b"ACTIVE-FIRST", b"ACTIVE-UNTERMINATED", b"CATALOG-STAND"]

    def append(table: str, ids: range) -> None:
        rows = b"".join(orjson.dumps({"part_id": f"{table}:{i}", "n": i}) + b"\n" for i in ids)
        r = as_member(group, sys.executable, "-m", "spoold", "append", "--config", str(cfg), table, "-", input=rows)
        assert r.returncode == 0, r.stderr.decode()

    d = DaemonProc(cfg)
    try:
        append(T, range(3))
        append(U, range(3))
        wait_for(lambda: committed(state, T) == 3 and committed(state, U) == 3, "the members' first rows")

        # (a) a flush file that is a link to a file the member cannot read
        plant(group, root / T / "flush-00000000000000000999.jsonl", secret)
        # (b) the append lock of a table the daemon has not opened yet, and (c) its active file, are links
        for table, name, target in (("chat.lockattack", ".lock", lock_target),
                                    ("chat.activeattack", "active.jsonl", active_target)):
            as_member(group, sys.executable, "-c", f"import os; os.mkdir({str(root / table)!r})")
            if name == ".lock":
                r = as_member(group, sys.executable, "-c",
                              f"open({str(root / table / 'active.jsonl')!r}, 'wb').write(b'x\\n')")
                assert r.returncode == 0, r.stderr.decode()
            plant(group, root / table / name, target)
        # (d) the daemon's run lock: the member cannot replace the daemon's own (the root is sticky) ...
        plant(group, root / ".daemon.lock", catalog)

        append(U, range(3, 6))
        wait_for(lambda: committed(state, U) == 6, "a member's rows committed after the attacks")

        def refused() -> bool:
            log = d.log()
            return all(f"{n}: is a symbolic link" in log for n in
                       ("flush-00000000000000000999.jsonl", "chat.lockattack/.lock", "active.jsonl"))

        # the daemon has looked at every planted file once it logged them, or once it was fooled by them
        wait_for(lambda: refused() or {t: fingerprint(t) for t in targets} != before
                 or any(m in spool_bytes(root) for m in markers), "the daemon to meet the planted links")
        assert {t: fingerprint(t) for t in targets} == before
        assert not [m for m in markers if m in spool_bytes(root)], "outside content reached the spool"
        assert refused(), d.log()
    finally:
        assert d.stop() == 0, d.log()

    # ... nor, planted before the daemon made one, have a new daemon write its pid through it
    (root / ".daemon.lock").unlink()
    r = plant(group, root / ".daemon.lock", catalog)
    assert r.returncode == 0, r.stderr.decode()
    d = DaemonProc(cfg)
    try:
        assert "is a symbolic link" in d.log(), d.log()
        append(U, range(6, 9))
        wait_for(lambda: committed(state, U) == 9, "a member's rows committed after the restart")
    finally:
        assert d.stop() == 0, d.log()

    assert {t: fingerprint(t) for t in targets} == before
    seen = spool_bytes(root)
    assert not [m for m in markers if m in seen], "outside content reached the spool"
    assert stat.S_IMODE(root.stat().st_mode) == 0o3770
    # the member cannot delete or rename the daemon's files in the sticky root
    r = as_member(group, sys.executable, "-c", f"import os; os.rename({str(root / '.daemon.json')!r}, "
                                               f"{str(root / 'gone')!r})")
    assert r.returncode != 0 and b"PermissionError" in r.stderr
    with sqlite3.connect(state / "catalog.db") as con:  # the real catalog is intact too
        assert con.execute("select count(*) from iceberg_tables").fetchone()[0] >= 2
