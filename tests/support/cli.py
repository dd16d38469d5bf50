"""The real CLI as a process of its own (forked by the worker's zygote), and the config file every test starts
from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support import zygote


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


def run_spoold(*args: str, input: bytes | None = None, env: dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run the real CLI as a process of its own (``python -m spoold``) with the test's environment."""
    return zygote.run([sys.executable, "-m", "spoold", *args], input=input, capture_output=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
