"""Shared fixtures. Tests never read the developer's own config or catalogs."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import zygote
from support.cli import run_spoold, write_config
from support.daemonproc import DaemonProc
from support.paths import REPO

# pyiceberg reads ~/.pyiceberg.yaml and PYICEBERG_* once, at import: point it at
# an empty home before anything imports it. SPOOLD_TEST_* are the suite's own knobs
# (e.g. SPOOLD_TEST_SEED), not spoold's configuration: they stay.
TEST_VARS = "SPOOLD_TEST_"
for _k in [k for k in os.environ if k.startswith(("PYICEBERG_", "SPOOLD_")) and not k.startswith(TEST_VARS)]:
    del os.environ[_k]
os.environ["PYICEBERG_HOME"] = tempfile.mkdtemp(prefix="spoold-test-pyiceberg-")

# Bytecode caches, even under PYTHONDONTWRITEBYTECODE: the suite starts a worker a core and a thousand
# interpreters, and without them each compiles spoold again and pytest rewrites every test module again
# (~3 s of CPU a worker). They go under .pytest_cache/ (PYTHONPYCACHEPREFIX), not beside the sources.
if sys.dont_write_bytecode or os.environ.get("PYTHONDONTWRITEBYTECODE"):
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = sys.pycache_prefix = str(REPO / ".pytest_cache" / "pycache")
    sys.dont_write_bytecode = False

pytest_plugins = ["support.servers"]  # real SeaweedFS and PostgreSQL for the many-hosts tests


@pytest.fixture(autouse=True)
def _isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No SPOOLD_CONFIG, no user config, no ~/.pyiceberg.yaml, no systemd env from the caller."""
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
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)  # the user's config is ~/.config, under the fake home
    monkeypatch.chdir(tmp_path)


def _session_seed() -> int:
    """The suite's seed: ``SPOOLD_TEST_SEED``, else one drawn now and put in the environment, so xdist
    workers and the processes tests start share it and a failing run can be replayed exactly."""
    env = os.environ.get("SPOOLD_TEST_SEED")
    if env:
        return int(env)
    seed = random.SystemRandom().randrange(1 << 32)
    os.environ["SPOOLD_TEST_SEED"] = str(seed)
    return seed


SEED = _session_seed()
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """The suite runs on every core unless told otherwise: three workers a core (``--dist worksteal``) when no
    ``-n`` was given. Three, because most tests spend most of their time waiting on the processes they start
    (daemons, servers, ``spoold`` commands) and on deadlines; ``PYTEST_XDIST_AUTO_NUM_WORKERS`` overrides.

    Not an ``addopts`` entry, so that ``-p no:xdist`` (and ``-n 0``, ``--pdb``) still run it in one process
    for debugging. Not either in a pytest a test starts (``PYTEST_CURRENT_TEST`` comes down to it: test_seeds,
    the mutation check) nor in an xdist worker. Registered after xdist's own hook of the same kind, this
    one runs first and so hands xdist its number.
    """
    option = config.option
    if not hasattr(option, "numprocesses") or option.numprocesses is not None:
        return  # xdist is off (-p no:xdist) or -n was given
    if os.environ.get("PYTEST_CURRENT_TEST") or os.environ.get("PYTEST_XDIST_WORKER") or \
            config.getoption("usepdb", False) or hasattr(config, "workerinput"):
        return
    option.numprocesses = "auto" if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS") else \
        3 * len(os.sched_getaffinity(0))
    if option.dist == "no":
        option.dist = "worksteal"  # the slow tests vary from 5 s to a minute: idle workers take from busy ones


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, the long tests first: a minute-long test started last would leave the other workers idle.
    Slow tests, then the integration tests (each starts processes, many wait on their deadlines) and the
    Hypothesis ones (a hundred examples each), then the rest, many and short, which fill the end evenly.
    Stable: otherwise as collected."""
    def long(item: pytest.Item) -> bool:
        return "integration" in item.path.relative_to(config.rootpath).parts or \
            getattr(getattr(item, "obj", None), "is_hypothesis_test", False)

    if getattr(config.option, "dist", "no") != "no":
        items.sort(key=lambda item: (item.get_closest_marker("slow") is None, not long(item)))


def pytest_configure(config: pytest.Config) -> None:
    # Hypothesis draws its examples from the suite's seed too, unless --hypothesis-seed says otherwise.
    if config.getoption("hypothesis_seed", None) is None:
        from hypothesis import core

        core.global_force_seed = SEED


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput") and getattr(session.config.option, "numprocesses", None):
        return  # xdist's controller runs no test: its workers start their own zygotes
    zygote.start()  # it imports what the spoold processes need while this process collects the tests


def pytest_report_header() -> str:
    return f"SPOOLD_TEST_SEED={SEED} (set it to replay this run's randomized tests and Hypothesis examples)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        rep.sections.append(("seed", f"replay with SPOOLD_TEST_SEED={SEED}"))
    elif rep.skipped and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reason = reason.removeprefix("Skipped: ").strip()
        reason = "" if reason == "Skipped" else reason  # pytest.skip() with no reason
        if CI or not reason:
            # A skip hides a test that did not run: in CI (a server or a tool missing) that is a failure,
            # and anywhere a skip must say why.
            rep.outcome = "failed"
            rep.longrepr = f"skipped {'under CI=true' if CI else 'without a reason'}: {reason or '(no reason)'}"


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """A seeded random generator for randomized tests: ``SPOOLD_TEST_SEED=N`` replays a run exactly.

    Each test draws from its own stream (the seed and its node id), so its draws do not depend on
    which other tests ran. The seed is printed, so a failing test's output names the value to replay.
    """
    print(f"SPOOLD_TEST_SEED={SEED}")
    return random.Random(f"{SEED}/{request.node.nodeid}")




@pytest.fixture
def config_path(tmp_path: Path) -> Callable[..., Path]:
    """``config_path(body)`` writes a config into tmp_path and returns its path."""
    return lambda body="", **kw: write_config(tmp_path, body, **kw)




@pytest.fixture
def spoold() -> Callable[..., subprocess.CompletedProcess[bytes]]:
    return run_spoold




@pytest.fixture
def daemons() -> Iterator[Callable[..., DaemonProc]]:
    started: list[DaemonProc] = []

    def start(cfg: Path, env: dict[str, str] | None = None, *args: str, ready: bool = True,
              fresh: bool = False) -> DaemonProc:
        """``spoold run --config cfg *args``, returned once it has sent READY=1 (unless ``ready=False``);
        ``fresh``: see DaemonProc."""
        d = DaemonProc(cfg, env, *args, ready=ready, fresh=fresh)
        started.append(d)
        return d

    yield start
    for d in started:
        d.close()

# Fixtures for acting as a producer-group member (tests/support/members.py).
from support.members import base, group  # noqa: E402, F401
