"""Quarantine you can read and replay (issue 14, acceptance 7), through the real CLI and a real SQLite catalog."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from support import zygote
from support.cli import run_spoold, write_config
from support.tables import committed_keys
from support.testhooks import Hooks

from spoold.config import load_config
from spoold.spool.files import ACTIVE
from spoold.spool.spool import Spool

T = "ev.q"
DECLARED = f'[tables."{T}".columns]\npart_id = "string!"\nn = "{{}}"\n'


def ok(proc: subprocess.CompletedProcess[bytes]) -> subprocess.CompletedProcess[bytes]:
    assert proc.returncode == 0, (proc.returncode, proc.stderr.decode(errors="replace"))
    return proc


def cfg_with(tmp_path: Path, typ: str) -> Path:
    return write_config(tmp_path, DECLARED.format(typ))


def spool(cfg: Path) -> Spool:
    return Spool.from_config(load_config(cfg))


def qdir(tmp_path: Path) -> Path:
    return tmp_path / "state" / "spool" / T / "quarantine"


def replay(cfg: Path, *args: str) -> dict[str, Any]:
    out = ok(run_spoold("quarantine", "replay", T, "--json", *args, "--config", str(cfg))).stdout
    assert out.count(b"\n") == 1
    return json.loads(out)


def committed(cfg: Path) -> list[str]:
    """The table's keys ([] before its first commit)."""
    return committed_keys(cfg, T)


def grep(key: str, where: Path) -> list[dict[str, Any]]:
    """The records ``grep -r KEY quarantine/`` finds (the real grep, as a user would run it)."""
    r = subprocess.run(["grep", "-rh", "--", key, str(where)], capture_output=True)
    return [orjson.loads(line) for line in r.stdout.splitlines()]


def test_grep_finds_a_record_of_every_rejected_kind_by_its_key(tmp_path: Path) -> None:
    cfg = cfg_with(tmp_path, "int")
    s = spool(cfg)
    s.append_lines(T, [
        b"not json, but it names k-notjson\n",
        b'{"version":1,"columns":["part_id","n"],"rows":[["k-badutf8",1]],"note":"caf\xe9"}\n',
        b'{"version":1,"columns":["part_id","n"],"rows":[["k-row","seven"],["k-good",7]]}\n',
        b'{"version":2,"columns":["part_id"],"rows":[["k-version"]]}\n',
    ])
    with open(s.table_dir(T) / ACTIVE, "ab") as f:
        f.write(b'{"version":1,"columns":["part_id"],"rows":[["k-torn"]')  # a producer died mid-write
    s.append(T, [{"part_id": "k-after", "n": 1}])  # repairs the torn tail into quarantine
    ok(run_spoold("flush", "--config", str(cfg)))
    src = tmp_path / "history.jsonl"
    src.write_text(json.dumps({"part_id": "k-backfill", "n": "eight"}) + "\n")
    out = run_spoold("backfill", T, "--source", str(src), "--format", "jsonl", "--all", "--config", str(cfg))
    assert out.returncode == 2, out.stderr  # its only row was quarantined
    kinds = {"k-notjson": "line", "k-badutf8": "line", "k-row": "row", "k-version": "line", "k-torn": "line",
             "k-backfill": "row"}
    for key, kind in kinds.items():
        found = grep(key, qdir(tmp_path))
        assert len(found) == 1 and found[0]["kind"] == kind and found[0]["reason"], (key, found)
    (bad_utf8,) = grep("k-badutf8", qdir(tmp_path))
    assert "raw_b64" in bad_utf8 and "caf\\xe9" in bad_utf8["raw_escaped"]
    assert grep("k-good", qdir(tmp_path)) == [] and sorted(committed(cfg)) == ["k-after", "k-good"]
    doc = json.loads(ok(run_spoold("quarantine", "--json", "--config", str(cfg))).stdout)
    summary = doc["tables"][T]
    assert summary["records"] == 6 and sum(summary["reasons"].values()) == 6
    assert summary["oldest"] <= summary["newest"]
    text = ok(run_spoold("quarantine", T, "--config", str(cfg))).stdout.decode()
    assert f"{T}: 6 record(s)" in text and f"spoold quarantine replay {T}" in text


def test_replay_after_widening_int_to_long_commits_the_rows_once(tmp_path: Path) -> None:
    cfg = cfg_with(tmp_path, "int")
    ok(run_spoold("append", T, "--config", str(cfg), input=b'{"part_id": "dup", "n": 1}\n'))
    ok(run_spoold("flush", "--config", str(cfg)))
    big = [{"part_id": f"big{i}", "n": 3_000_000_000 + i} for i in range(5)]
    spool(cfg).append(T, [*big, {"part_id": "dup", "n": 4_000_000_000}, {"part_id": "word", "n": "x"}])
    flushed = json.loads(ok(run_spoold("flush", "--json", "--config", str(cfg))).stdout)
    assert flushed["tables"][T] == {"committed": 0, "deduplicated": 0, "quarantined": 7}
    assert replay(cfg) == {"replayed": 0, "kept": 7, "dry_run": False, "rows": 0}  # nothing passes yet

    cfg = cfg_with(tmp_path, "long")
    before = {p.name: p.read_bytes() for p in qdir(tmp_path).iterdir()}
    assert replay(cfg, "--dry-run") == {"replayed": 6, "kept": 1, "dry_run": True, "rows": 6}
    assert {p.name: p.read_bytes() for p in qdir(tmp_path).iterdir()} == before  # a dry run changes nothing
    assert replay(cfg) == {"replayed": 6, "kept": 1, "dry_run": False, "rows": 6}
    flushed = json.loads(ok(run_spoold("flush", "--json", "--config", str(cfg))).stdout)
    assert flushed["tables"][T] == {"committed": 5, "deduplicated": 1, "quarantined": 0}  # "dup" was committed
    assert Counter(committed(cfg)) == Counter(["dup", *(r["part_id"] for r in big)])
    assert replay(cfg) == {"replayed": 0, "kept": 1, "dry_run": False, "rows": 0}
    (left,) = grep("word", qdir(tmp_path))
    assert left["reason"] == "column 'n': cannot cast \"x\" to long"
    assert committed(cfg).count("big0") == 1


def _keys_in_spool(s: Spool) -> Counter[str]:
    keys: Counter[str] = Counter()
    for path in s.pending(T):
        for line in path.read_bytes().splitlines():
            env = orjson.loads(line)
            keys.update(row[env["columns"].index("part_id")] for row in env["rows"])
    return keys


def _keys_in_quarantine(where: Path) -> set[str]:
    keys = set()
    for path in where.glob("*.jsonl"):
        for line in path.read_bytes().splitlines():
            rec = orjson.loads(line)
            keys.add(rec["row"][0])
    return keys


# 12 files: the kills are placed by test hooks, so no file need be large enough for a replay to be caught
# in it by timing (it was 24 files of 750 rows for that); the hooked kills below replay at most 8 of them.
FILES, ROWS = 12, 200
# Where each run is killed: paused at a replay's point (the nth time this run reaches it), then SIGKILLed.
# replay.respooled: a file's rows are spooled, its records not yet removed (the rows are in both places);
# replay.removed: a file is done, the next not begun. Then runs killed at a random moment (start-up, or
# inside a file's append, where no hook can stand), which may instead let a replay finish.
HOOKED = [("replay.respooled", 1), ("replay.removed", 1), ("replay.respooled", 2), ("replay.removed", 1),
          ("replay.respooled", 1), ("replay.removed", 2)]
RANDOM_KILLS = 2


@pytest.mark.slow
def test_replay_killed_anywhere_and_run_again_loses_nothing_and_doubles_nothing(
        tmp_path: Path, rng: random.Random) -> None:
    cfg = cfg_with(tmp_path, "int")
    s = spool(cfg)
    good = [f"k{f}-{i}" for f in range(FILES) for i in range(ROWS)]
    bad = {f"bad{f}" for f in range(FILES)}
    for f in range(FILES):  # one flush file each: FILES quarantine files
        s.append(T, [{"part_id": f"k{f}-{i}", "n": 3_000_000_000 + i} for i in range(ROWS)]
                 + [{"part_id": f"bad{f}", "n": "never"}])
        s.rotate(T)
    ok(run_spoold("flush", "--config", str(cfg)))
    assert len(list(qdir(tmp_path).glob("*.jsonl"))) == FILES
    everything = set(good) | bad
    cfg = cfg_with(tmp_path, "long")
    kills = both = partial = 0
    plan: list[tuple[str, int] | None] = [*HOOKED, *[None] * RANDOM_KILLS]
    for attempt, where in enumerate(plan):
        hooks = Hooks(tmp_path / f"hooks-{attempt}", pause_at=f"{where[0]}@{where[1]}" if where else None)
        proc = zygote.popen([sys.executable, "-m", "spoold", "quarantine", "replay", T, "--config", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **hooks.env()})
        if where:
            hooks.wait_paused(proc.pid, alive=lambda p=proc: p.poll() is None)
        else:
            time.sleep(rng.uniform(0.05, 1.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        table = set(committed(cfg))
        quarantined, spooled = _keys_in_quarantine(qdir(tmp_path)), set(_keys_in_spool(s))
        # nothing lost: every key is in quarantine, in the spool or in the table, whenever it was killed
        assert everything <= quarantined | spooled | table
        in_both = bool((quarantined - bad) & spooled)  # killed between re-spooling a file's rows and removing them
        half_done = 0 < len(set(good) & (spooled | table)) < len(good)  # some files' rows went back, some not
        if where:  # the hook proves the window: the kill landed there, mid-replay
            assert in_both == (where[0] == "replay.respooled") and half_done, (where, in_both, half_done)
        both += in_both
        partial += half_done
        if attempt % 3 == 2:
            ok(run_spoold("flush", "--config", str(cfg)))  # as the daemon would, between kills
    print(f"{kills} kill(s); {partial} left a replay half done; {both} between re-spool and record removal")
    assert kills >= len(HOOKED) and partial >= len(HOOKED) and both >= 3
    final = replay(cfg)
    ok(run_spoold("flush", "--config", str(cfg)))
    assert final["kept"] == FILES
    assert Counter(committed(cfg)) == Counter(good)  # each good key exactly once
    assert _keys_in_quarantine(qdir(tmp_path)) == bad
    assert replay(cfg)["replayed"] == 0


def test_a_replay_that_died_after_re_spooling_doubles_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The narrowest window: rows re-spooled (durably) but their records not yet removed."""
    import spoold.flush.replay

    cfg = cfg_with(tmp_path, "int")
    spool(cfg).append(T, [{"part_id": f"w{i}", "n": 3_000_000_000} for i in range(50)])
    ok(run_spoold("flush", "--config", str(cfg)))
    cfg = cfg_with(tmp_path, "long")

    def die(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(spoold.flush.replay, "fsync_dir", die)
    monkeypatch.setattr(spoold.flush.replay.Path, "unlink", die)
    with pytest.raises(KeyboardInterrupt):
        spoold.flush.replay.replay(load_config(cfg), T)
    monkeypatch.undo()
    assert len(_keys_in_quarantine(qdir(tmp_path))) == 50 and len(_keys_in_spool(spool(cfg))) == 50
    assert replay(cfg)["replayed"] == 50  # the same records again: their rows are spooled twice now
    assert sum(_keys_in_spool(spool(cfg)).values()) == 100
    flushed = json.loads(ok(run_spoold("flush", "--json", "--config", str(cfg))).stdout)["tables"][T]
    assert flushed == {"committed": 50, "deduplicated": 50, "quarantined": 0}
    assert Counter(committed(cfg)) == Counter(f"w{i}" for i in range(50))
    assert replay(cfg)["replayed"] == 0 and not list(qdir(tmp_path).glob("*.jsonl"))
