"""The pytest plugin (``spoold.testing``) as its users meet it: their own test files, run by pytest in a subprocess.

Each test writes a user's test file into tmp_path (using only the SPEC's
fixture API) and runs ``python -m pytest`` on it there, with this venv's
``bin`` on PATH as in an activated virtualenv (the example shells out to
``spoold append``). The complete example of docs/testing.md is run as it is
printed there, so the doc cannot drift from what works.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from spoold.testing import SpooldEnv

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "testing.md"


def doc_example() -> str:
    """The first ```python block of docs/testing.md: the complete example users paste."""
    m = re.search(r"^```python\n(.*?)^```$", DOC.read_text(), re.S | re.M)
    assert m, "docs/testing.md has no ```python block"
    return m.group(1)


def run_pytest(where: Path, files: dict[str, str], *args: str,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Write a user's project (``files`` plus an empty pytest.ini) into ``where`` and run pytest on it there."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "pytest.ini").write_text("[pytest]\ntimeout = 300\n")  # the user's project: none of spoold's settings
    for name, body in files.items():
        (where / name).write_text(body)
    base = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # not this run's xdist/addopts
    base["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    # Its own --basetemp: under the shared /tmp/pytest-of-<user>, another pytest session's cleanup of old
    # numbered directories deleted a running inner test's directory (its daemon's log with it).
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                           f"--basetemp={where / '.pytest-tmp'}", *args], cwd=where,
                          capture_output=True, text=True, env={**base, **(env or {})}, timeout=900)


def _out(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


LIGHT = """
import sys

def test_the_plugin_is_loaded_and_light(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("spoold")
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("spoold", "pyarrow", "pyiceberg", "sqlalchemy"))
    assert loaded == ["spoold", "spoold.testing"]
"""


def test_installing_spoold_registers_a_plugin_that_imports_nothing_heavy(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, {"test_light.py": LIGHT})
    assert proc.returncode == 0, _out(proc)
    assert "1 passed" in proc.stdout, _out(proc)

    off = run_pytest(tmp_path / "off", {"test_off.py": "def test_x(spoold_env):\n    pass\n"}, "-p", "no:spoold")
    assert off.returncode == 1 and "fixture 'spoold_env' not found" in off.stdout, _out(off)


@pytest.mark.slow
@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_the_documented_example_passes(tmp_path: Path, xdist: list[str]) -> None:
    """Declared table, repeats deduplicated, rows sorted by key, isolation, a daemon fed by two producer processes."""
    proc = run_pytest(tmp_path, {"test_views.py": doc_example()}, *xdist)
    assert proc.returncode == 0, _out(proc)
    assert "4 passed" in proc.stdout, _out(proc)


FAILING = """
import os
import signal
from pathlib import Path

import pytest

from spoold.testing import SpooldEnv


def test_waits_for_a_row_that_was_quarantined(spoold_env):
    spoold_env.table("ev.rows", columns={"id": "string!", "n": "long"}, key="id")
    with spoold_env.daemon() as d:
        Path("daemon.txt").write_text(f"{d.pid}\\n{d.log_path}")
        spoold_env.append("ev.rows", [{"id": "a", "n": 1}, {"id": "b", "n": "two"}])
        d.wait_committed("ev.rows", 2, timeout=10)


@pytest.mark.timeout(120)  # a wait that missed the daemon's death would be stopped here, with another message
def test_waits_on_a_daemon_that_died(spoold_env):
    with spoold_env.daemon() as d:
        os.kill(d.pid, signal.SIGKILL)
        d.wait_committed("ev.rows", 1, timeout=3600)
"""


@pytest.mark.slow
def test_a_failing_wait_shows_what_was_committed_and_the_daemons_log(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, {"test_failing.py": FAILING})
    out = _out(proc)
    assert proc.returncode == 1 and "2 failed" in proc.stdout, out
    assert "wait_committed('ev.rows', 2): timed out after" in out and "with 1 row(s) committed" in out, out
    assert "committed keys: a\n" in out, out
    assert "1 quarantined (first reason: column 'n'" in out, out
    assert "INFO spoold running: spool" in out, out  # the daemon's log tail
    assert "wait_committed('ev.rows', 1): spoold run exited with code -9" in out, out
    assert "Timeout" not in out, out

    # The daemon of the failed block was stopped with SIGTERM (it flushed and said so), not left behind.
    pid, log = (tmp_path / "daemon.txt").read_text().split("\n")
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)
    assert "SIGTERM: flushing" in Path(log).read_text()


LEAKS = """
import json
import os
import subprocess

{early_import}

OUTER = dict(os.environ)
MACHINE = ("STATE_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "PYICEBERG_MAX_WORKERS")


def test_1_nothing_of_the_machine_is_seen(spoold_env):
    assert os.environ["SPOOLD_CONFIG"] == str(spoold_env.config_path)
    assert [k for k in MACHINE if k in os.environ] == []
    assert os.environ["XDG_STATE_HOME"] != OUTER["XDG_STATE_HOME"]
    spoold_env.table("ev.rows", columns={"id": "string!"}, key="id")
    with spoold_env.daemon() as d:
        raw = open(f"/proc/{d.pid}/environ", "rb").read().decode().split("\\0")
        daemon_env = dict(kv.split("=", 1) for kv in raw if "=" in kv)
        assert [k for k in MACHINE if k in daemon_env and k != "NOTIFY_SOCKET"] == []
        assert daemon_env["NOTIFY_SOCKET"] != OUTER["NOTIFY_SOCKET"]
        assert daemon_env["SPOOLD_CONFIG"] == str(spoold_env.config_path)
        subprocess.run(["spoold", "append", "ev.rows"], input=b'{"id": "a"}\\n', check=True)
        d.wait_committed("ev.rows", 1)
    spoold_env.append("ev.rows", [{"id": "b"}])
    assert spoold_env.flush() == {"ev.rows": {"committed": 1, "deduplicated": 0, "quarantined": 0}}
    spoold_env.append("ev.rows", [{"id": "c"}])
    done = subprocess.run(["spoold", "flush", "--json"], capture_output=True, check=True)  # as code under test would
    assert json.loads(done.stdout)["tables"]["ev.rows"]["committed"] == 1
    assert [r["id"] for r in spoold_env.rows("ev.rows")] == ["a", "b", "c"]


def test_2_the_machine_is_back_after_the_test():
    import pyiceberg.catalog  # (imported already: by the module, or by the fixture's first flush)

    assert {k: os.environ.get(k) for k in (*MACHINE, "SPOOLD_CONFIG", "XDG_STATE_HOME", "PYICEBERG_HOME")} == {
        k: OUTER.get(k) for k in (*MACHINE, "SPOOLD_CONFIG", "XDG_STATE_HOME", "PYICEBERG_HOME")}
    assert pyiceberg.catalog._ENV_CONFIG.get_catalog_config("spoold")["py-io-impl"] == "leaked.FileIO"
"""


@pytest.mark.slow
@pytest.mark.parametrize("early_import", [True, False], ids=["pyiceberg-imported-first", "pyiceberg-imported-by-test"])
def test_nothing_of_the_users_machine_leaks_in(tmp_path: Path, early_import: bool) -> None:
    """~/.pyiceberg.yaml, PYICEBERG_*, SPOOLD_CONFIG, XDG_STATE_HOME, STATE_DIRECTORY, systemd's variables.

    Each would break the user's test if it leaked: the yaml names a FileIO that
    does not exist, PYICEBERG_MAX_WORKERS is not a number, the outer config does
    not exist, and the outer NOTIFY_SOCKET must hear nothing.
    """
    home = Path(os.environ["PYICEBERG_HOME"])  # the suite's isolated "home" for pyiceberg (conftest)
    (home / ".pyiceberg.yaml").write_text("catalog:\n  spoold:\n    py-io-impl: leaked.FileIO\n")
    heard: list[bytes] = []
    name = f"spoold-outer-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(0.2)
        done = threading.Event()

        def listen() -> None:
            while not done.is_set():
                try:
                    heard.append(sock.recv(65536))
                except TimeoutError:
                    continue

        rx = threading.Thread(target=listen)
        rx.start()
        try:
            # before the fixture, as a user's conftest might: pyiceberg has read the machine's config
            test_file = LEAKS.replace("{early_import}", "import pyiceberg.catalog" if early_import else "")
            proc = run_pytest(tmp_path / "project", {"test_leaks.py": test_file}, env={
                "SPOOLD_CONFIG": str(tmp_path / "outer.toml"),
                "PYICEBERG_MAX_WORKERS": "not-a-number",
                "XDG_STATE_HOME": str(tmp_path / "outer-state"),
                "STATE_DIRECTORY": str(tmp_path / "outer-systemd-state"),
                "NOTIFY_SOCKET": "@" + name,
                "WATCHDOG_USEC": "1000000",
            })
        finally:
            done.set()
            rx.join()
    assert proc.returncode == 0 and "2 passed" in proc.stdout, _out(proc)
    assert heard == []
    assert not (tmp_path / "outer-state").exists() and not (tmp_path / "outer-systemd-state").exists()


def test_a_table_declared_while_the_daemon_runs_is_in_its_config_before_rows_come(spoold_env: SpooldEnv) -> None:
    """table() under a running daemon: SIGHUP, and back only once the daemon is READY=1 again."""
    with spoold_env.daemon() as d:
        spoold_env.table("ev.keyed", {"id": "string!", "n": "long"}, key="id")  # not part_id: the old config
        spoold_env.append("ev.keyed", [{"id": "b", "n": 2}, {"id": "a", "n": 1}])  # would quarantine these
        assert d.wait_committed("ev.keyed", 2) == 2
        assert "reloaded configuration" in d.log()
    assert spoold_env.rows("ev.keyed") == [{"id": "a", "n": 1}, {"id": "b", "n": 2}]
