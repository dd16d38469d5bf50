"""The drop-in docs/operating.md gives for the metrics listener: systemd accepts it, and the unit stays hardened."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support.paths import REPO

UNIT = REPO / "systemd" / "spoold.service"
DOC = REPO / "docs" / "operating.md"


def _documented_drop_in() -> list[str]:
    block = re.search(r"```ini\n(.*?)```", DOC.read_text(), re.S)
    assert block, "docs/operating.md shows the listener's drop-in in an ini block"
    lines = [ln for ln in block[1].splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "[Service]"
    return lines[1:]


def test_the_unit_names_the_same_drop_in() -> None:
    text = UNIT.read_text()
    for line in _documented_drop_in():
        assert f"#   {line}" in text


def test_the_unit_with_the_listener_drop_in_verifies_and_scores_at_most_2(tmp_path: Path) -> None:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not on PATH")
    text = UNIT.read_text().replace("ExecStart=/usr/local/bin/spoold", "ExecStart=/bin/true")
    # A drop-in's [Service] lines apply as if written in the unit's own [Service] section.
    text = text.replace("\n[Install]", "\n" + "\n".join(_documented_drop_in()) + "\n\n[Install]")
    unit = tmp_path / "spoold.service"
    unit.write_text(text)
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
    verify = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, env=env, timeout=60)
    assert verify.returncode == 0 and unit.name not in verify.stderr, verify.stderr
    sec = subprocess.run([exe, "security", "--no-pager", "--offline=true", str(unit)], capture_output=True, text=True,
                         env=env, timeout=60)
    if sec.returncode != 0 and "offline" in sec.stderr:
        pytest.skip(f"systemd-analyze security --offline unsupported: {sec.stderr.strip()}")
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", sec.stdout)
    assert m and float(m[1]) <= 2.0, sec.stdout
