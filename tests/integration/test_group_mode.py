"""With a producer group, everything spoold writes under the spool stays readable by the group's members.

The daemon's side (flush, quarantine replay, backfill, maintenance) runs as root; then a member of the
group (``nobody``, via ``setpriv``) asks `spoold status` and `spoold quarantine`, which read the state
files, the held copies and the quarantine those runs left (docs/operating.md, "What a producer-group
member can and cannot do").
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
from support import zygote
from support.members import NEEDS_ROOT, as_member

pytestmark = NEEDS_ROOT
T = "chat.parts"


def spoold(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return zygote.run([sys.executable, "-m", "spoold", *args, "--config", str(cfg)],
                      capture_output=True, text=True, timeout=300)


def test_a_member_reads_status_and_quarantine_after_every_kind_of_run(base: Path, group: str) -> None:
    state, root, cfg = base / "state", base / "spool", base / "spoold.toml"
    state.mkdir(mode=0o700)

    def config(max_columns: int) -> None:
        cfg.write_text(f'[spool]\nroot = "{root}"\ngroup = "{group}"\n'
                       f'[catalog]\ntype = "sql"\nuri = "sqlite:///{state / "catalog.db"}"\n'
                       f'warehouse = "file://{state / "wh"}"\n'
                       f"[tables]\nmax_columns = {max_columns}\n")
        cfg.chmod(0o644)

    config(2)
    from spoold.config import load_config
    from spoold.spool.spool import Spool

    spool = Spool.from_config(load_config(cfg))
    env = {"version": 1, "columns": ["part_id", "a"], "rows": [["k1", "x"]]}
    wide = {"version": 1, "columns": ["part_id", "a", "extra"], "rows": [["k2", "y", "z"]]}
    spool.append_lines(T, [orjson.dumps(env) + b"\n", b"not json\n", orjson.dumps(wide) + b"\n"])
    assert spoold(cfg, "flush").returncode == 0  # k1 committed; "not json" and the 3-column row quarantined
    config(3)
    replay = spoold(cfg, "quarantine", "replay", T, "--json")  # partial: the wide row passes now, junk stays
    assert replay.returncode == 0 and json.loads(replay.stdout)["replayed"] == 1, replay.stderr
    assert spoold(cfg, "flush").returncode == 0
    src = base / "history.jsonl"
    src.write_text('{"part_id": "h1", "a": "old"}\n{"part_id": "h2", "a": "older"}\n')
    assert spoold(cfg, "backfill", T, "--source", str(src), "--format", "jsonl", "--all").returncode == 0
    maintained = spoold(cfg, "maintain", "--older-than", "0s")
    assert maintained.returncode == 0, maintained.stderr

    status = as_member(group, sys.executable, "-m", "spoold", "status", T, "--json", "--config", str(cfg))
    assert status.returncode == 0, status.stderr.decode()
    doc = json.loads(status.stdout)["tables"][T]
    assert doc["quarantined"] == 1 and doc["spooled_rows"] == 0
    quarantine = as_member(group, sys.executable, "-m", "spoold", "quarantine", T, "--json", "--config", str(cfg))
    assert quarantine.returncode == 0, quarantine.stderr.decode()
    assert json.loads(quarantine.stdout)["tables"][T]["records"] == 1
    text = as_member(group, sys.executable, "-m", "spoold", "status", "--config", str(cfg))
    assert text.returncode == 0 and b"Traceback" not in text.stderr, text.stderr.decode()
    for path in root.rglob("*"):  # and nothing a member could write to but the spool's shared files
        if path.is_file() and not path.is_symlink():
            mode = path.stat().st_mode & 0o777
            assert mode & 0o004 == 0, f"{path} is readable by others ({mode:o})"


def test_rows_the_daemon_tails_stay_out_of_the_groups_reach_unless_shared(base: Path, group: str) -> None:
    """A table fed by [[sources]] gets a 0700 directory in a group spool (the member cannot read its rows);
    [spool] group_readable_sources = true shares it like any other table."""
    from support.daemonproc import DaemonProc, wait_for

    state, src = base / "state", base / "src"
    state.mkdir(mode=0o700)
    src.mkdir(mode=0o700)
    (src / "t.jsonl").write_text('{"part_id": "s1", "text": "a private transcript line"}\n')
    for share in (False, True):
        root, cfg = base / f"spool-{share}", base / f"spoold-{share}.toml"
        cfg.write_text(f'[spool]\nroot = "{root}"\ngroup = "{group}"\n'
                       f"group_readable_sources = {str(share).lower()}\n"
                       f'[catalog]\ntype = "sql"\nuri = "sqlite:///{state / f"catalog-{share}.db"}"\n'
                       f'warehouse = "file://{state / f"wh-{share}"}"\n'
                       '[flush]\ndebounce_s = 30\nmax_delay_s = 60\n'
                       f'[[sources]]\ntable = "{T}"\npath = "{src}/*.jsonl"\nformat = "jsonl"\n')
        cfg.chmod(0o644)
        d = DaemonProc(cfg)
        try:
            wait_for(lambda root=root: any((root / T).glob("*.jsonl")), "the tailed row spooled")
            mode = (root / T).stat().st_mode & 0o7777
            read = as_member(group, "cat", *[str(p) for p in (root / T).glob("*.jsonl")])
        finally:
            assert d.stop() == 0, d.log()
        if share:
            assert mode == 0o3770 and read.returncode == 0 and b"private transcript" in read.stdout
        else:
            assert mode & 0o077 == 0 and read.returncode != 0 and b"private transcript" not in read.stdout


def test_state_files_a_member_plants_are_never_trusted_nor_block(base: Path, group: str) -> None:
    """FIFOs (which would block a reader) and a forged uuid pin, planted by a member where spoold keeps its
    state: `spoold flush` and `spoold status` finish, the forged pin is not trusted, rows are committed."""
    state, root, cfg = base / "state", base / "spool", base / "spoold.toml"
    state.mkdir(mode=0o700)
    cfg.write_text(f'[spool]\nroot = "{root}"\ngroup = "{group}"\n'
                   f'[catalog]\ntype = "sql"\nuri = "sqlite:///{state / "catalog.db"}"\n'
                   f'warehouse = "file://{state / "wh"}"\n')
    cfg.chmod(0o644)
    from spoold.config import load_config
    from spoold.spool.spool import Spool

    Spool.from_config(load_config(cfg)).append(T, [{"part_id": "k1"}])  # the daemon's user makes the dirs
    for planted in (root / T / ".last-flush.json", root / T / ".last-maintenance.json", root / ".daemon.json"):
        assert as_member(group, "mkfifo", str(planted)).returncode == 0
    forged = 'import sys; open(sys.argv[1], "w").write("00000000-0000-0000-0000-000000000000")'
    assert as_member(group, sys.executable, "-c", forged, str(root / T / ".table-uuid")).returncode == 0
    flushed = spoold(cfg, "flush", "--json")
    assert flushed.returncode == 0, flushed.stderr
    assert json.loads(flushed.stdout)["tables"][T]["committed"] == 1
    status = as_member(group, sys.executable, "-m", "spoold", "status", T, "--json", "--config", str(cfg))
    assert status.returncode == 0, status.stderr.decode()
    assert spoold(cfg, "status", "--json").returncode == 0
