"""``SPOOLD_TEST_SEED=N`` replays a randomized test exactly (issue 15, acceptance 4), and the suite's rules
for skips: a skip must say why, and under ``CI=true`` a skipped test fails.

Each check runs pytest in a subprocess, twice with one seed (from directories
of their own, so no cache or example database carries over) and compares what
the randomized test printed of its decisions.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import REPO

RANDOM_TEST = "tests/integration/test_random_ops.py::test_random_spool_operations_keep_every_row_exactly_once"
HYPOTHESIS_TEST = "tests/keys/test_keyindex.py"


def pytest_run(cwd: Path, *args: str, seed: int | None, **env: str) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if k not in ("SPOOLD_TEST_SEED", "CI")} | env
    if seed is not None:
        environ["SPOOLD_TEST_SEED"] = str(seed)
    # --basetemp of its own: another session's cleanup of /tmp/pytest-of-<user> cannot reach it.
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(REPO / "pyproject.toml"),
                           "--rootdir", str(REPO), f"--basetemp={cwd / '.pytest-tmp'}", "-s", *args], cwd=cwd,
                          env=environ, capture_output=True,
                          text=True, timeout=600)


def decisions(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(("chunk_rows ", "step "))]


@pytest.mark.slow  # three pytest runs
def test_a_seed_replays_a_randomized_test_exactly(tmp_path: Path) -> None:
    runs = {name: pytest_run(tmp_path / name, str(REPO / RANDOM_TEST), seed=seed)
            for name, seed in (("a", 12345), ("b", 12345), ("c", 54321))}
    for proc in runs.values():
        assert proc.returncode == 0, proc.stdout[-3000:]
    a, b, c = (decisions(runs[n].stdout) for n in "abc")
    assert len(a) == 31 and "SPOOLD_TEST_SEED=12345" in runs["a"].stdout
    assert a == b  # the same seed: the same decisions, step by step
    assert a != c  # and the seed is what decides them


@pytest.mark.slow  # two pytest runs
def test_a_run_without_a_seed_prints_the_one_it_drew_and_it_replays(tmp_path: Path) -> None:
    first = pytest_run(tmp_path / "first", str(REPO / RANDOM_TEST), seed=None)
    assert first.returncode == 0, first.stdout[-3000:]
    (drawn,) = set(re.findall(r"SPOOLD_TEST_SEED=(\d+)", first.stdout))  # in the header and from the test
    again = pytest_run(tmp_path / "again", str(REPO / RANDOM_TEST), seed=int(drawn))
    assert decisions(again.stdout) == decisions(first.stdout)


@pytest.mark.slow  # three pytest runs of a Hypothesis module
def test_a_seed_replays_hypothesis_examples(tmp_path: Path) -> None:
    verbose = ("--hypothesis-verbosity=verbose", "-q", str(REPO / HYPOTHESIS_TEST))
    # (one hash seed: the examples print sets, whose order would differ between processes)
    one, two, other = (pytest_run(tmp_path / n, *verbose, seed=s, PYTHONHASHSEED="0")
                       for n, s in (("1", 7), ("2", 7), ("3", 8)))
    assert one.returncode == two.returncode == other.returncode == 0, one.stdout[-3000:]

    def examples(out: str) -> list[str]:  # every example Hypothesis tried, as it printed them
        return [ln.lstrip(".") for ln in out.splitlines() if not re.match(r"=+ .* in [\d.]+s|\d+ passed", ln)]

    tried = [examples(p.stdout) for p in (one, two, other)]
    assert sum(ln.startswith("Test case:") for ln in tried[0]) > 50
    assert tried[0] == tried[1] and tried[0] != tried[2]


SKIPPING = """
import pytest

def test_needs_a_tool():
    pytest.skip("frobnicate is not on PATH")

def test_skips_without_saying_why():
    pytest.skip()

@pytest.mark.xfail(strict=True, reason="a known bug")
def test_known_bug():
    assert False
"""


def test_a_skip_must_say_why_and_fails_under_ci(tmp_path: Path) -> None:
    suite = tmp_path / "suite"  # the suite's conftest, beside a test file of skips
    (suite / "tests").mkdir(parents=True)
    # The suite's conftest and the helper package it loads (tests/support/).
    shutil.copy(REPO / "tests" / "conftest.py", suite / "tests" / "conftest.py")
    shutil.copytree(REPO / "tests" / "support", suite / "tests" / "support",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (suite / "tests" / "test_skips.py").write_text(SKIPPING)
    (suite / "pytest.ini").write_text("[pytest]\npythonpath = tests\naddopts = --import-mode=importlib\n")

    def run(**env: str) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if k != "CI"} | env
        return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA",
                               f"--basetemp={suite / '.pytest-tmp'}", "tests"], cwd=suite,
                              env=environ, capture_output=True, text=True, timeout=300)

    local, ci = run(), run(CI="true")
    assert "SKIPPED" in local.stdout and "frobnicate is not on PATH" in local.stdout
    assert re.search(r"FAILED .*test_skips_without_saying_why", local.stdout), local.stdout
    assert re.search(r"FAILED .*test_needs_a_tool", ci.stdout), ci.stdout
    assert "skipped under CI=true: frobnicate is not on PATH" in ci.stdout
    assert "skipped without a reason: (no reason)" in local.stdout
    for proc in (local, ci):
        assert "XFAIL" in proc.stdout and "1 xfailed" in proc.stdout  # an expected failure is no skip
