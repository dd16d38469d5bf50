"""A test of the daemon tests (issue 15, acceptance 1): they must fail when the daemon ignores spool changes.

The daemon's full rescan (``[daemon] rescan_s``) would find spooled rows even
if change events were ignored, so a test with a deadline longer than the
rescan period cannot tell a daemon that reacts to appends from one that only
polls. The tests below set the rescan far past their deadlines; here they run
against a copy of the package in which the daemon drops every spool change
event (the mutation), and each must fail on its deadline.

By hand (from the repository root)::

    cp -r spoold /tmp/mut/ && sed -i 's/^                self._touched.add(table)$/                pass/' \\
        /tmp/mut/spoold/daemon/loop.py
    cd /tmp && PYTHONPATH=/tmp/mut python -m pytest -c $OLDPWD/pyproject.toml --rootdir $OLDPWD \\
        $OLDPWD/tests/integration/test_daemon.py -k 'debounce or trickle or size_threshold or quarantined'
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from support.paths import REPO

# (file, the line that hands a spool change to the schedule, what it becomes)
MUTATION = ("spoold/daemon/loop.py", "                self._touched.add(table)\n",
            "                pass  # mutation: spool change events are ignored\n")
TESTS = [
    "test_rows_commit_after_the_debounce_of_quiet",
    "test_a_steady_trickle_lands_within_max_delay",
    "test_size_threshold_flushes_without_waiting",
    "test_bad_spool_lines_are_quarantined_and_the_daemon_runs_on",
]


def mutated_copy(dest: Path) -> Path:
    """The package copied under ``dest`` with the mutation applied; returns the directory for PYTHONPATH."""
    shutil.copytree(REPO / "spoold", dest / "spoold", ignore=shutil.ignore_patterns("__pycache__"))
    path = dest / MUTATION[0]
    text = path.read_text()
    assert text.count(MUTATION[1]) == 1, f"{MUTATION[0]} changed: point MUTATION at the line that marks a table touched"
    path.write_text(text.replace(MUTATION[1], MUTATION[2]))
    return dest


@pytest.mark.slow  # four daemon tests run to their deadlines (side by side)
def test_daemon_tests_fail_when_the_daemon_ignores_spool_change_events(tmp_path: Path) -> None:
    pkg = mutated_copy(tmp_path / "pkg")
    env = {**os.environ, "PYTHONPATH": str(pkg)}
    # The copy is what the test process and the daemons it starts import (cwd is not the repository).
    probe = subprocess.run([sys.executable, "-c", "import spoold.daemon.loop as d; print(d.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == str(pkg / MUTATION[0]), probe.stderr  # spoold/daemon/loop.py

    report = tmp_path / "report.xml"
    target = REPO / "tests" / "integration" / "test_daemon.py"
    proc = subprocess.run(
        # Each test waits out its deadline (~16 s) before it fails: side by side, the four take the time of one.
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", str(len(TESTS)), "-c",
         str(REPO / "pyproject.toml"),
         "--rootdir", str(REPO), f"--basetemp={tmp_path / 'inner-tmp'}", f"--junitxml={report}",
         "-o", "junit_family=xunit2",
         *(f"{target}::{name}" for name in TESTS)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert report.exists(), proc.stdout + proc.stderr
    outcome = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        failure = case.find("failure")
        outcome[case.get("name")] = "passed" if len(case) == 0 else (
            failure.get("message", "") if failure is not None else case[0].tag)
    assert set(outcome) == set(TESTS), proc.stdout
    # Each fails, and on a deadline: not on a setup error or anything else of the copy.
    wrong = {name: what for name, what in outcome.items() if "timed out waiting for" not in what}
    assert not wrong, f"{wrong}\n{proc.stdout[-3000:]}"
