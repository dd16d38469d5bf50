"""sd_notify against a fake NOTIFY_SOCKET; the shipped unit file and example config."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.paths import REPO

from spoold.daemon import systemd

UNIT = REPO / "systemd" / "spoold.service"
EXAMPLE_CONFIG = REPO / "systemd" / "spoold.toml"
MAX_EXPOSURE = 2.0

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="AF_UNIX datagrams as on Linux")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test runner itself may run under systemd; never ping its manager.
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(var, raising=False)


def _recv(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    return sock.recv(4096)


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "n.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


# --- notify ------------------------------------------------------------------


@linux_only
def test_notify_sends_fields_as_one_datagram(notify_socket: socket.socket) -> None:
    assert systemd.notify("READY=1", "STATUS=flushing chat.parts") is True
    assert _recv(notify_socket) == b"READY=1\nSTATUS=flushing chat.parts"
    assert systemd.notify("WATCHDOG=1") is True
    assert _recv(notify_socket) == b"WATCHDOG=1"
    systemd.notify("STOPPING=1")
    assert _recv(notify_socket) == b"STOPPING=1"


@linux_only
def test_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"spoold-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("READY=1") is True
        assert _recv(sock) == b"READY=1"


def test_notify_without_socket_is_a_noop() -> None:
    assert systemd.notify("READY=1") is False


@linux_only
def test_notify_never_raises_on_socket_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent.sock"))
    with caplog.at_level(logging.DEBUG, logger="spoold.daemon.systemd"):
        assert systemd.notify("READY=1") is False
    assert "READY=1" in caplog.text
    # A closed peer: the socket file exists but nothing is bound to it.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "c.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "c.sock"))
    assert systemd.notify("WATCHDOG=1") is False


# --- watchdog_interval_s -----------------------------------------------------


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    assert systemd.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    assert systemd.watchdog_interval_s() == 30.0
    monkeypatch.setenv("WATCHDOG_USEC", "1500")
    assert systemd.watchdog_interval_s() == pytest.approx(0.00075)


@pytest.mark.parametrize("value", ["", "0", "-5", "sixty", "1.5"])
def test_watchdog_interval_invalid_usec(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", value)
    assert systemd.watchdog_interval_s() is None


def test_watchdog_interval_respects_watchdog_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval_s() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_interval_s() is None  # the watchdog belongs to another process
    monkeypatch.setenv("WATCHDOG_PID", "not-a-pid")
    assert systemd.watchdog_interval_s() is None


# --- the unit file -----------------------------------------------------------


def _unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", value)
    assert m, f"unparsed time span {value!r}"
    return float(m[1]) * (60 if m[2] in ("min", "m") else 1)


def test_unit_essentials() -> None:
    unit = _unit_settings(UNIT.read_text())
    assert unit["Type"] == ["notify"]
    assert unit["ExecStart"] == ["/usr/local/bin/spoold run"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["StateDirectory"] == ["spoold"]
    assert unit["KillMode"] == ["mixed"]
    assert _seconds(unit["WatchdogSec"][0]) == 60
    # The config lookup already falls back to /etc/spoold/spoold.toml.
    assert not any("SPOOLD_CONFIG" in v for v in unit.get("Environment", []))
    # systemd must not SIGKILL the daemon while it flushes on SIGTERM.
    shutdown_timeout = tomllib.loads(EXAMPLE_CONFIG.read_text())["flush"]["shutdown_timeout_s"]
    assert _seconds(unit["TimeoutStopSec"][0]) > shutdown_timeout
    # Bounded (issue 19): a runaway is stopped before it starves the host; no home is visible but bound trees.
    assert unit["MemoryMax"] == ["1G"] and unit["TasksMax"] == ["256"]
    assert unit["ProtectHome"] == ["tmpfs"] and "BindReadOnlyPaths" not in unit  # the drop-in names the trees


def _sources_drop_in() -> list[str]:
    doc = (REPO / "docs" / "operating.md").read_text()
    block = re.search(r"```ini\n(# \S+/sources\.conf\n.*?)```", doc, re.S)
    assert block, "docs/operating.md shows the sources drop-in (sources.conf) in an ini block"
    lines = [ln for ln in block[1].splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "[Service]" and all(ln.startswith("BindReadOnlyPaths=") for ln in lines[1:]), lines
    return lines[1:]


def test_the_documented_sources_drop_in_verifies(installable_unit: Path) -> None:
    text = installable_unit.read_text()
    assert "#   BindReadOnlyPaths=" in text  # the unit's own comment points at it
    installable_unit.write_text(text.replace("\n[Install]", "\n" + "\n".join(_sources_drop_in()) + "\n\n[Install]"))
    proc = _run(_systemd_analyze(), "verify", str(installable_unit))
    ours = [line for line in proc.stderr.splitlines() if installable_unit.name in line]
    assert proc.returncode == 0 and not ours, proc.stderr
    sec = _run(_systemd_analyze(), "security", "--no-pager", "--offline=true", str(installable_unit))
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", sec.stdout)
    assert sec.returncode != 0 or (m and float(m[1]) <= MAX_EXPOSURE), sec.stdout


def test_example_config_has_exactly_the_known_keys() -> None:
    # The config loader refuses unknown keys; the example must not teach any.
    from spoold.settings import DaemonSettings, FlushSettings, IngestSettings, MaintainSettings

    cfg = tomllib.loads(EXAMPLE_CONFIG.read_text())
    assert set(cfg) == {"spool", "catalog", "flush", "daemon", "ingest", "maintain", "tables", "sources"}
    assert set(cfg["spool"]) == {"root"}
    assert set(cfg["catalog"]) == {"name", "type", "uri", "warehouse"}
    # every setting is shown (and explained) in the example
    assert set(cfg["flush"]) == set(FlushSettings.__dataclass_fields__)
    assert set(cfg["daemon"]) == set(DaemonSettings.__dataclass_fields__)
    assert set(cfg["maintain"]) == set(MaintainSettings.__dataclass_fields__)
    assert set(cfg["ingest"]) == set(IngestSettings.__dataclass_fields__)
    assert cfg["maintain"] == {k: getattr(MaintainSettings(), k) for k in MaintainSettings.__dataclass_fields__}
    table = cfg["tables"]["chat.parts"]
    assert set(table) == {"key", "legacy_key", "partition_by", "columns"}
    assert table["columns"]["part_id"] == "string!"
    from spoold.sources.transcript import COLUMNS

    assert table["columns"] == COLUMNS  # the example table is what its transcript source materializes
    assert cfg["sources"] == [
        {"table": "chat.parts", "path": "/home/*/.claude/projects/**/*.jsonl", "format": "transcript"}
    ]


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not on PATH")
    return exe


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "NO_COLOR": "1"}
    return subprocess.run(args, capture_output=True, text=True, encoding="utf-8", env=env, timeout=60)


@pytest.fixture
def installable_unit(tmp_path: Path) -> Path:
    """The unit, with ExecStart= pointing at a binary that exists here (verify checks it)."""
    spoold_bin = Path(sys.executable).parent / "spoold"
    exe = spoold_bin if os.access(spoold_bin, os.X_OK) else Path("/bin/true")
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/spoold run" in text
    unit = tmp_path / "spoold.service"
    unit.write_text(text.replace("ExecStart=/usr/local/bin/spoold", f"ExecStart={exe}"))
    return unit


def test_unit_passes_systemd_analyze_verify(installable_unit: Path) -> None:
    proc = _run(_systemd_analyze(), "verify", str(installable_unit))
    # Unknown or misspelt keys are only warnings (exit 0): fail on any line about our unit.
    ours = [line for line in proc.stderr.splitlines() if installable_unit.name in line]
    assert proc.returncode == 0 and not ours, proc.stderr


def test_unit_exposure_level_is_at_most_2(installable_unit: Path) -> None:
    proc = _run(_systemd_analyze(), "security", "--no-pager", "--offline=true", str(installable_unit))
    if proc.returncode != 0 and "offline" in proc.stderr:
        pytest.skip(f"systemd-analyze security --offline unsupported: {proc.stderr.strip()}")
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m[1]) <= MAX_EXPOSURE, proc.stdout


def _install_commands() -> list[str]:
    """The shell lines of docs/operating.md's "Installing for systemd" block."""
    text = (REPO / "docs" / "operating.md").read_text()
    section = text.split("### Installing for systemd", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "docs/operating.md: no sh block under 'Installing for systemd'"
    return [line.strip() for line in block[1].splitlines() if line.strip()]


def test_unit_runs_the_command_the_docs_install() -> None:
    lines = _install_commands()
    venv = next(line.split()[-1] for line in lines if line.startswith("python3 -m venv "))
    assert any(line.startswith(f"{venv}/bin/pip install ") for line in lines), lines
    link = next(line.split() for line in lines if line.startswith("ln -s"))
    assert link[-2] == f"{venv}/bin/spoold", link
    exec_start = re.search(r"^ExecStart=(\S+)", UNIT.read_text(), re.M)
    assert exec_start and exec_start[1] == link[-1], (exec_start and exec_start[1], link)
    assert "install -m 0644 systemd/spoold.service /etc/systemd/system/spoold.service" in lines
