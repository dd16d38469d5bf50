"""`spoold rebuild` cannot wedge a table: `--abort` rolls back one still copying, a rebuild whose quarantined
rows would not fit refuses before it starts, and a producer-group member cannot plant rebuild state.

Through the real CLI (and a real rebuild process killed at a named point) against a SQLite catalog.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import orjson
from integration.test_rebuild import Killed, cli, committed_old, configs, land, quarantined_keys, spoold
from support.members import NEEDS_ROOT, as_member
from support.tables import committed_counts, load_table

from spoold.config import load_config
from spoold.layout import QUARANTINE, REBUILD_DIR, rebuild_state


def ts_type(cfg: Path, table: str) -> str:
    return str(load_table(cfg, table).schema().find_field("ts").field_type)


def test_abort_rolls_back_a_rebuild_still_copying_and_refuses_after_the_first_rename(tmp_path: Path) -> None:
    import random

    table = "app.events"
    old, new, good, bad = committed_old(tmp_path, table, 100)
    root = load_config(new).spool_root
    code, _, err = cli("rebuild", table, "--abort", "--config", str(new))
    assert code == 2 and "no unfinished rebuild" in err, err
    assert cli("rebuild", table, "--abort", "--dry-run", "--config", str(new))[0] == 2

    # Killed once it copied everything (its quarantine files written), before the renames: abort it.
    Killed(tmp_path / "hooks1", "rebuild.copied", table, new).kill(random.Random(0))
    staging = orjson.loads(rebuild_state(root, table).read_bytes())["staging"]
    assert load_table(new, staging) is not None and quarantined_keys(new, table) == Counter(bad)
    land(new, table, [{"part_id": "during", "ts": "2026-01-01T00:00:00Z"}])
    code, _, err = cli("flush", table, "--config", str(new))
    assert code == 1 and "being rebuilt" in err and f"`spoold rebuild {table} --abort`" in err, err
    code, out, err = cli("rebuild", table, "--abort", "--json", "--config", str(new))
    assert code == 0, err
    assert orjson.loads(out)["dropped"] == [staging] and orjson.loads(out)["purged_files"] > 0
    assert load_table(new, staging) is None and not rebuild_state(root, table).exists()
    assert quarantined_keys(new, table) == Counter()  # its rows are still in the old table
    spoold("flush", table, "--config", str(old))  # flushes go on into the old table (under its config)
    assert ts_type(new, table) == "string" and committed_counts(new, table) == Counter(good | bad | {"during"})

    # A rebuild started again after the abort does it all once; killed after its first rename, no abort.
    Killed(tmp_path / "hooks2", "rebuild.backed_up", table, new).kill(random.Random(0))
    code, _, err = cli("rebuild", table, "--abort", "--config", str(new))
    assert code == 2 and "past its first rename" in err and f"`spoold rebuild {table}` finishes it" in err, err
    assert cli("rebuild", table, "--config", str(new))[0] == 0
    assert ts_type(new, table) == "timestamptz" and committed_counts(new, table) == Counter(good | {"during"})
    assert quarantined_keys(new, table) == Counter(bad)


def test_a_rebuild_whose_quarantined_rows_would_not_fit_refuses_before_it_starts(tmp_path: Path) -> None:
    table = "app.events"
    old, new = configs(tmp_path, [table])
    new.write_text(new.read_text().replace("[spool]\n", "[spool]\nquarantine_max_bytes = 8192\n"))
    batch = [{"part_id": f"k{i}", "ts": "2026-01-01T00:00:00Z" if i % 2 else f"not a time {i}"} for i in range(200)]
    land(old, table, batch)
    spoold("flush", "--config", str(old))
    for extra in (["--dry-run"], []):
        code, out, err = cli("rebuild", table, *extra, "--config", str(new))
        assert code == 2, (extra, out, err)
        assert "would quarantine 100 row(s)" in err and "[spool] quarantine_max_bytes = 8192" in err, err
        assert "8192 bytes its quarantine has left" in err, err
    root = load_config(new).spool_root
    assert not rebuild_state(root, table).exists() and not (root / table / QUARANTINE).exists()
    assert ts_type(new, table) == "string"
    land(old, table, [{"part_id": "late", "ts": "2026-01-01T00:00:00Z"}])
    spoold("flush", table, "--config", str(old))  # the table is not wedged
    assert len(committed_counts(old, table)) == 201


@NEEDS_ROOT[0]
@NEEDS_ROOT[1]
def test_rebuild_state_a_group_member_plants_blocks_no_flush(base: Path, group: str) -> None:
    table = "app.events"
    old, new = configs(base, [table])
    for cfg in (old, new):
        cfg.write_text(cfg.read_text().replace("[spool]\n", f'[spool]\ngroup = "{group}"\n', 1))
        cfg.chmod(0o644)
    (base / "state").chmod(0o711)
    root = load_config(new).spool_root
    land(old, table, [{"part_id": "a", "ts": "2026-01-01T00:00:00Z"}])  # the daemon's user makes the spool
    row = b'{"part_id": "b", "ts": "2026-01-01T00:00:00Z"}\n'
    r = as_member(group, sys.executable, "-m", "spoold", "append", "--config", str(old), table, "-", input=row)
    assert r.returncode == 0, r.stderr.decode()  # and a member appends
    state = orjson.dumps({"phase": "copy", "uuid": "x", "staging": "app.events__rebuild_x", "backup": "b"})
    plant = ("import os, sys\nroot, table, data = sys.argv[1:]\n"
             "open(os.path.join(root, table, '.rebuild.json'), 'w').write(data)\n"  # where it used to live
             "os.mkdir(os.path.join(root, '.rebuild'))\n"  # and where it lives now: a directory of its own
             "open(os.path.join(root, '.rebuild', table + '.json'), 'w').write(data)\n")
    r = as_member(group, sys.executable, "-c", plant, str(root), table, state.decode())
    assert r.returncode == 0, r.stderr.decode()
    code, _, err = cli("flush", table, "--config", str(old))
    assert code == 0, err
    assert committed_counts(old, table) == Counter({"a": 1, "b": 1})
    # A rebuild moves the member's directory aside and keeps its state in one of its own.
    assert cli("rebuild", table, "--config", str(new))[0] == 0
    assert ts_type(new, table) == "timestamptz" and committed_counts(new, table) == Counter({"a": 1, "b": 1})
    assert (root / REBUILD_DIR).stat().st_mode & 0o777 == 0o700


def test_a_rebuild_an_older_spoold_left_in_the_tables_directory_is_still_finished(tmp_path: Path) -> None:
    import random

    table = "app.events"
    old, new, good, bad = committed_old(tmp_path, table, 50)
    Killed(tmp_path / "hooks", "rebuild.copied", table, new).kill(random.Random(0))
    root = load_config(new).spool_root
    legacy = root / table / ".rebuild.json"  # where spoold kept it before: an upgrade in the middle of a rebuild
    rebuild_state(root, table).rename(legacy)
    code, _, err = cli("flush", table, "--config", str(new))
    assert code == 1 and "being rebuilt" in err, err
    assert cli("rebuild", table, "--config", str(new))[0] == 0
    assert not legacy.exists() and not rebuild_state(root, table).exists()
    assert ts_type(new, table) == "timestamptz" and committed_counts(new, table) == Counter(good)
    assert quarantined_keys(new, table) == Counter(bad)


def test_a_spool_directory_planted_under_a_backup_name_is_never_flushed(tmp_path: Path) -> None:
    """A group member can make any directory in a group spool; one named like a rebuild's backup (or staging)
    table must not be flushed into that table, whose files `--drop-backup` later purges."""
    from support.cli import run_spoold, write_config

    cfg = write_config(tmp_path)
    rows = b'{"part_id": "a", "v": 1}\n'
    assert run_spoold("append", "app.e", "--config", str(cfg), input=rows).returncode == 0
    root = tmp_path / "state" / "spool"
    planted = root / "app.e__backup_20260101T000000Z"
    planted.mkdir()
    (planted / "active.jsonl").write_bytes((root / "app.e" / "active.jsonl").read_bytes())
    out = run_spoold("flush", "--config", str(cfg), "--json")
    assert out.returncode == 0, out.stderr
    assert set(orjson.loads(out.stdout)["tables"]) == {"app.e"}
    status = run_spoold("status", "--config", str(cfg), "--json")
    assert "app.e__backup_20260101T000000Z" not in orjson.loads(status.stdout)["tables"]
    assert (planted / "active.jsonl").exists()  # left alone, not rotated nor committed
