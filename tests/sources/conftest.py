"""Fixtures of the tailer's tests: a spool and a source directory under tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from spoold.spool.spool import Spool


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    return d
