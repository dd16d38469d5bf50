"""Shared fixtures. Tests never read the developer's own config or catalogs."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemonproc import DaemonProc

# pyiceberg reads ~/.pyiceberg.yaml and PYICEBERG_* once, at import: point it at
# an empty home before anything imports it. SPOOLD_TEST_* are the suite's own knobs
# (e.g. SPOOLD_TEST_SEED), not spoold's configuration: they stay.
TEST_VARS = "SPOOLD_TEST_"
for _k in [k for k in os.environ if k.startswith(("PYICEBERG_", "SPOOLD_")) and not k.startswith(TEST_VARS)]:
    del os.environ[_k]
os.environ["PYICEBERG_HOME"] = tempfile.mkdtemp(prefix="spoold-test-pyiceberg-")

pytest_plugins = ["servers"]  # real SeaweedFS and PostgreSQL for the many-hosts tests (tests/servers.py)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"


@pytest.fixture(autouse=True)
def _isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No SPOOLD_CONFIG, no ~/.pyiceberg.yaml, no ./spoold.toml, no systemd env from the caller."""
    for k in list(os.environ):
        if k.startswith(TEST_VARS):
            continue
        if k.startswith(("PYICEBERG_", "SPOOLD_")) or k in ("STATE_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC",
                                                             "WATCHDOG_PID"):
            monkeypatch.delenv(k, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PYICEBERG_HOME", str(home))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def rng() -> random.Random:
    """A seeded random generator for randomized tests: ``SPOOLD_TEST_SEED=N`` replays a run exactly.

    The seed is printed, so a failing test's captured output names the value to replay it with.
    """
    env = os.environ.get("SPOOLD_TEST_SEED")
    seed = int(env) if env else random.SystemRandom().randrange(1 << 32)
    print(f"SPOOLD_TEST_SEED={seed}")
    return random.Random(seed)


def write_config(tmp_path: Path, body: str = "", *, name: str = "spoold.toml", catalog: str | None = None,
                 spool: str | None = None) -> Path:
    """A config with spool and SQLite catalog under ``tmp_path``, plus ``body`` (TOML)."""
    state = tmp_path / "state"
    state.mkdir(parents=True, exist_ok=True)
    head = f'[spool]\nroot = "{spool or state / "spool"}"\n\n'
    head += catalog if catalog is not None else (
        f'[catalog]\ntype = "sql"\nuri = "sqlite:///{state / "catalog.db"}"\n'
        f'warehouse = "file://{state / "warehouse"}"\n\n'
    )
    path = tmp_path / name
    path.write_text(head + body)
    return path


@pytest.fixture
def config_path(tmp_path: Path) -> Callable[..., Path]:
    """``config_path(body)`` writes a config into tmp_path and returns its path."""
    return lambda body="", **kw: write_config(tmp_path, body, **kw)


def run_spoold(*args: str, input: bytes | None = None, env: dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run the real CLI as a subprocess (``python -m spoold``) with the test's environment."""
    return subprocess.run([sys.executable, "-m", "spoold", *args], input=input, capture_output=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture
def spoold() -> Callable[..., subprocess.CompletedProcess[bytes]]:
    return run_spoold


def read_table(config_file: Path, table: str) -> Any:
    """The committed table as a pyarrow Table, read with a fresh catalog connection."""
    from spoold.config import load_config
    from spoold.iceberg.sink import Sink

    cfg = load_config(config_file)
    tbl = Sink(cfg).load(cfg.table(table))
    assert tbl is not None, f"table {table} does not exist"
    return tbl.scan().to_arrow()


@pytest.fixture
def daemons() -> Iterator[Callable[..., DaemonProc]]:
    started: list[DaemonProc] = []

    def start(cfg: Path, env: dict[str, str] | None = None) -> DaemonProc:
        d = DaemonProc(cfg, env)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.kill()
