"""Issue 19, acceptance 1 and the first half of 6, through a real daemon and a SQLite catalog in tmp_path.

1. The line that crashed orjson 3.12.0/3.13.0, in a tailed ``jsonl`` source
   between two good lines: the daemon stays up, the line is quarantined, the
   others are committed; killed inside the marked pass (a test hook), the next
   start re-runs that pass out of process, once, and moves on.
6. A huge unterminated line in a tailed source: quarantined by offset once it
   passes ``max_line_bytes``, never held whole (peak RSS bounded), later lines
   committed.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.cli import write_config
from support.daemonproc import DaemonProc, wait_for
from support.hostile import crash_line
from support.testhooks import Hooks

from spoold.config import load_config
from spoold.iceberg.sink import Sink
from spoold.layout import TAIL_DIR

TABLE = "app.events"


def config(tmp_path: Path, spool_extra: str = "") -> tuple[Path, Path]:
    src = tmp_path / "src"
    src.mkdir()
    body = (f'[tables."{TABLE}"]\n[tables."{TABLE}".columns]\npart_id = "string!"\n\n'
            "[flush]\ndebounce_s = 0.3\nmax_delay_s = 2\nretry_max_s = 2\n\n[daemon]\nrescan_s = 3600\n\n"
            f'[[sources]]\ntable = "{TABLE}"\npath = "{src}/*.jsonl"\nformat = "jsonl"\n')
    cfg = write_config(tmp_path, body)
    if spool_extra:
        cfg.write_text(cfg.read_text().replace("[spool]\n", f"[spool]\n{spool_extra}\n", 1))
    return cfg, src / "a.jsonl"


def good(key: str) -> bytes:
    return orjson.dumps({"part_id": key, "msg": "hello"}) + b"\n"


def committed(cfg: Path) -> Counter[str]:
    c = load_config(cfg)
    tbl = Sink(c).load(c.table(TABLE))
    return Counter() if tbl is None else Counter(tbl.scan().to_arrow().column("part_id").to_pylist())


def quarantined(tmp_path: Path) -> list[dict[str, Any]]:
    qdir = tmp_path / "state" / "spool" / TABLE / "quarantine"
    if not qdir.is_dir():
        return []
    return [orjson.loads(x) for p in sorted(qdir.glob("*.jsonl")) for x in p.read_bytes().splitlines()]


def test_the_crash_line_in_a_tailed_source_is_quarantined_and_the_daemon_stays_up(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    cfg, f = config(tmp_path)
    f.write_bytes(good("before"))
    d = daemons(cfg)
    wait_for(lambda: committed(cfg) == Counter(["before"]), "the first line committed")
    with open(f, "ab") as out:
        out.write(crash_line() + good("after"))
    wait_for(lambda: committed(cfg) == Counter(["before", "after"]), "the line after the crash line committed")
    (rec,) = quarantined(tmp_path)
    assert (rec["line"], rec["offset"], rec["source"]) == (2, len(good("before")), "tail")
    assert "nested too deeply" in rec["reason"] and rec["raw"].encode() + b"\n" == crash_line()
    assert d.proc.poll() is None, d.log()
    assert d.stop() == 0


def test_killed_inside_a_marked_pass_the_daemon_comes_back_quarantines_the_line_and_doubles_nothing(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    cfg, f = config(tmp_path)
    f.write_bytes(good("g1") + crash_line() + good("g2"))
    hooks = Hooks(tmp_path / "hooks", pause_at="tail.marked@1")
    d = daemons(cfg, env=hooks.env())
    hooks.wait_paused(d.proc.pid, alive=lambda: d.proc.poll() is None)
    d.kill()  # SIGKILL between the mark and the append: where an encoder's crash would have killed it
    tail = tmp_path / "state" / "spool" / TAIL_DIR
    assert len(list(tail.glob("*.pass"))) == 1  # the window was hit: the pass is marked, nothing spooled
    assert not (tmp_path / "state" / "spool" / TABLE / "active.jsonl").exists()

    d = daemons(cfg)
    wait_for(lambda: committed(cfg) == Counter(["g1", "g2"]), "the good lines committed after the restart")
    assert "re-reading them line by line in a separate process" in d.log()
    (rec,) = quarantined(tmp_path)
    assert rec["line"] == 2 and "nested too deeply" in rec["reason"]
    wait_for(lambda: not list(tail.glob("*.pass")), "the mark cleared")
    with open(f, "ab") as out:
        out.write(good("g3"))
    wait_for(lambda: committed(cfg) == Counter(["g1", "g2", "g3"]), "tailing goes on, nothing doubled")
    assert d.stop() == 0


def test_a_line_whose_reading_kills_the_process_is_quarantined_and_the_lines_around_it_committed(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    # The re-run's child is killed on its second line: what a crashing encoder does to it. That line
    # alone is quarantined (never parsed by the daemon); the lines before and after are spooled once.
    cfg, f = config(tmp_path)
    f.write_bytes(b"".join(good(f"k{i}") for i in range(1, 5)))
    hooks = Hooks(tmp_path / "hooks", pause_at="tail.marked@1")
    d = daemons(cfg, env=hooks.env())
    hooks.wait_paused(d.proc.pid, alive=lambda: d.proc.poll() is None)
    d.kill()

    hooks = Hooks(tmp_path / "hooks2", pause_at="tail.isolate.line@2")
    d = daemons(cfg, env=hooks.env())
    child = wait_for(lambda: next((int(p.name.split(".")[1]) for p in hooks.dir.glob("paused.*")), None),
                     "the re-run's child paused on its second line")
    os.kill(child, 9)
    # A second child goes on from the third line; it pauses on its own second line (the fourth): resumed.
    wait_for(lambda: len(list(hooks.dir.glob("paused.*"))) == 2, "the next child paused")
    for p in hooks.dir.glob("paused.*"):
        (hooks.dir / f"resume.{p.name.split('.')[1]}").touch()
    wait_for(lambda: committed(cfg) == Counter(["k1", "k3", "k4"]), "the lines around the killing one committed")
    (rec,) = quarantined(tmp_path)
    assert rec["line"] == 2 and "killed the process" in rec["reason"] and rec["raw"].encode() + b"\n" == good("k2")
    assert d.stop() == 0


@pytest.mark.slow
def test_a_huge_unterminated_line_is_quarantined_by_offset_in_bounded_memory(
    tmp_path: Path, daemons: Callable[..., DaemonProc]
) -> None:
    # The case as it stands: a 1 GB unterminated line at the default max_line_bytes (32 MiB). Its
    # bytes are a sparse extension of the file (NULs, no newline: one line), so the test costs no disk.
    # Bound: the daemon's own peak RSS stays under 200 MB (the old reader held the line whole, >= 1 GB).
    cfg, f = config(tmp_path, "")
    f.write_bytes(good("before"))
    d = daemons(cfg, fresh=True)  # its peak memory is measured
    wait_for(lambda: committed(cfg) == Counter(["before"]), "the first line committed")
    with open(f, "ab") as out:
        out.write(b'{"part_id":"huge","x":"')
        out.truncate(out.tell() + (1 << 30))
    wait_for(lambda: quarantined(tmp_path), "the long line quarantined while still unterminated", timeout=120)
    with open(f, "ab") as out:
        out.write(b'"}\n' + good("after"))
    wait_for(lambda: committed(cfg) == Counter(["before", "after"]), "the line after it committed", timeout=120)
    (rec,) = quarantined(tmp_path)  # once, although it was read across passes
    assert (rec["offset"], rec["line"], rec["truncated"]) == (len(good("before")), 2, True)
    assert rec["length"] > 1 << 30 and len(rec["raw"]) == 4096 and rec["raw"].startswith('{"part_id":"huge"')
    assert len(rec["sha256"]) == 64
    status = Path(f"/proc/{d.proc.pid}/status").read_text()
    hwm_kb = int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1])
    assert hwm_kb < 200 * 1024, f"peak RSS {hwm_kb} kB"
    assert d.stop() == 0
