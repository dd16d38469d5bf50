"""Re-running a marked pass out of process: an isolated child, a hung child, the watchdog fed meanwhile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from support.testhooks import Hooks

from spoold.sources import isolate as iso
from spoold.sources.reader import MAX_LINE_BYTES


def lines(path: Path, *keys: str) -> list[bytes]:
    out = [orjson.dumps({"part_id": k}) + b"\n" for k in keys]
    path.write_bytes(b"".join(out))
    return out


def test_the_child_imports_nothing_from_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `python -m` would put the daemon's working directory first on the child's sys.path: a module there
    # named like one spoold imports would run in the child (and each line it "died" on be quarantined).
    f = tmp_path / "a.jsonl"
    data = lines(f, "k1", "k2")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "orjson.py").write_text("raise SystemExit(7)\n")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("PYTHONPATH", str(cwd))  # ignored too (-I), yet spoold itself is found
    res = iso.isolate(str(f), "jsonl", 0, f.stat().st_size, 1, MAX_LINE_BYTES, False)
    assert (res.rows, res.bad, res.end, res.lineno) == (2, [], len(b"".join(data)), 3)


def test_a_hung_child_is_killed_and_its_line_quarantined_while_the_watchdog_is_fed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "a.jsonl"
    data = lines(f, "k1", "k2", "k3")
    hooks = Hooks(tmp_path / "hooks", pause_at="tail.isolate.line@2")  # each child hangs on its second line
    for k, v in hooks.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(iso, "CHILD_TIMEOUT_S", 2.0)
    monkeypatch.setattr(iso, "_TICK_S", 0.2)
    ticks: list[int] = []
    res = iso.isolate(str(f), "jsonl", 0, f.stat().st_size, 1, MAX_LINE_BYTES, False, tick=lambda: ticks.append(1))
    # The first child did k1 and hung on k2 (killed); the next one did k3, its first line, and finished.
    spooled = b"".join(res.envelopes)
    assert res.rows == 2 and b'"k1"' in spooled and b'"k2"' not in spooled and b'"k3"' in spooled
    ((start, end, lineno, reason),) = res.bad
    assert (start, end, lineno) == (len(data[0]), len(data[0]) + len(data[1]), 2)
    assert "took over 2s" in reason
    assert res.end == len(b"".join(data))
    assert len(ticks) >= 5  # while the hung child ran (every 0.2 s for 2 s) and before each child


def test_the_child_runs_the_daemon_s_own_spoold_package(tmp_path: Path) -> None:
    # Loaded by its directory, not found on sys.path: a daemon run from a checkout (PYTHONPATH, which -I
    # drops) or beside another installed spoold runs its children on its own code.
    pkg = tmp_path / "elsewhere" / "spoold"
    (pkg / "sources").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sources" / "__init__.py").write_text("")
    (pkg / "sources" / "isolate.py").write_text("def main(a):\n    print('this copy', a)\n")
    out = subprocess.run([sys.executable, "-I", "-c", iso._CHILD, str(pkg), "x", "y"], capture_output=True, check=True)
    assert out.stdout == b"this copy ['x', 'y']\n"
    assert iso._PACKAGE == str(Path(iso.__file__).parent.parent)
