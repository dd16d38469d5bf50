"""Tailed sources rotated under a real daemon (issue 13, acceptance 3, and items 6 and 8).

logrotate's two ways, repeated while the daemon runs and while it is stopped:
rename and create (its default; a producer still writes a last line through
its open descriptor after the rename), and copytruncate. Every line must be
committed once. A symlinked source whose target lies outside the watched
directories is read on events, not by the periodic rescan (set to an hour).
"""

from __future__ import annotations

import os
import shutil
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from support.cli import write_config
from support.daemonproc import DaemonProc, wait_for
from support.tables import committed_counts

TABLE = "logs.app"


def config(tmp_path: Path, src: Path, extra: str = "") -> Path:
    return write_config(tmp_path, "[flush]\ndebounce_s = 0.2\nmax_delay_s = 1.0\nretry_max_s = 2\n"
                                  "[daemon]\nrescan_s = 3600\n"  # only events, start-up and reloads find lines
                                  f'[[sources]]\ntable = "{TABLE}"\npath = "{src}/*.jsonl"\nformat = "jsonl"\n'
                                  + extra)


def committed(cfg: Path) -> Counter[str]:
    return committed_counts(cfg, TABLE)


def line(key: str) -> bytes:
    return orjson.dumps({"part_id": key, "msg": f"event {key}"}) + b"\n"


def rename_and_create(src: Path, r: int) -> list[str]:
    """app.jsonl → app.jsonl.0 (→ .1 → gone) and a new app.jsonl; a late line through the old descriptor."""
    app = src / "app.jsonl"
    keys = [f"r{r}-{i}" for i in range(4)]
    with open(app, "ab") as producer:
        producer.write(line(keys[0]) + line(keys[1]))
        producer.flush()
        if (src / "app.jsonl.1").exists():
            (src / "app.jsonl.1").unlink()
        if (src / "app.jsonl.0").exists():
            os.rename(src / "app.jsonl.0", src / "app.jsonl.1")
        os.rename(app, src / "app.jsonl.0")
        app.write_bytes(line(keys[2]))
        producer.write(line(keys[3]))
    return keys


def copy_and_truncate(src: Path, r: int) -> list[str]:
    """cp app.jsonl app.jsonl.1; truncate app.jsonl to 0; then the producer goes on."""
    app = src / "app.jsonl"
    keys = [f"c{r}-{i}" for i in range(3)]
    with open(app, "ab") as f:
        f.write(line(keys[0]) + line(keys[1]))
    shutil.copyfile(app, src / "app.jsonl.1")
    with open(app, "r+b") as f:
        f.truncate(0)
    with open(app, "ab") as f:
        f.write(line(keys[2]))
    return keys


@pytest.mark.slow
@pytest.mark.parametrize("rotate", [rename_and_create, copy_and_truncate])
def test_rotation_while_running_and_while_stopped_captures_every_line_once(
    tmp_path: Path, daemons: Callable[..., DaemonProc], rotate: Callable[[Path, int], list[str]]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "app.jsonl").write_bytes(line("first"))
    cfg = config(tmp_path, src)
    d = daemons(cfg)
    expected = ["first"]
    wait_for(lambda: set(expected) <= set(committed(cfg)), "the first line")
    for r in range(6):
        stopped = r % 2 == 1
        if stopped:
            assert d.stop() == 0
        expected += rotate(src, r)
        if stopped:
            d = daemons(cfg)
        # Before the next rotation: a file made and rotated away before spoold ever saw it is out of its reach.
        wait_for(lambda want=set(expected): want <= set(committed(cfg)), f"round {r}'s lines")
    wait_for(lambda: set(expected) <= set(committed(cfg)), "every line")
    got = committed(cfg)
    assert sorted(got) == sorted(expected) and max(got.values()) == 1
    assert "Traceback" not in d.log()
    assert d.stop() == 0


def test_a_symlinked_source_outside_the_watched_directory_lands_on_events(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    src, elsewhere, other = tmp_path / "src", tmp_path / "elsewhere", tmp_path / "other"
    for p in (src, elsewhere, other):
        p.mkdir()
    (elsewhere / "real.log").write_bytes(line("s1"))
    (src / "linked.jsonl").symlink_to(elsewhere / "real.log")
    cfg = config(tmp_path, src, "follow_symlinks_outside = true\n")  # targets outside src/ (off by default)
    d = daemons(cfg)
    wait_for(lambda: "s1" in committed(cfg), "the target's lines at start")
    with open(elsewhere / "real.log", "ab") as f:
        f.write(line("s2"))
    wait_for(lambda: "s2" in committed(cfg), "a line appended to the target (rescan is an hour away)")

    (other / "later.log").write_bytes(line("t1"))
    (src / "later.jsonl").symlink_to(other / "later.log")  # a symlink made while the daemon runs
    wait_for(lambda: "t1" in committed(cfg), "the new link's lines")
    with open(other / "later.log", "ab") as f:
        f.write(line("t2"))
    wait_for(lambda: "t2" in committed(cfg), "a line appended to the new link's target")
    assert sorted(committed(cfg)) == ["s1", "s2", "t1", "t2"]
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
