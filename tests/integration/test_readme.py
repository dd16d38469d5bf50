"""The README's Use section, followed literally on a fresh machine, gives typed tables; the shipped example
config (``systemd/spoold.toml``) then works against the same catalog. The commands are read from README.md, so
this test follows the README as it changes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.tables import committed_keys, load_table

from spoold.config import load_config

REPO = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    """The shell lines of the first ``sh`` block of README.md's "## Use" section (comments and blanks left out)."""
    use = (REPO / "README.md").read_text().split("\n## Use\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", use, re.DOTALL)
    assert block is not None, "README.md's Use section has no sh block"
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def example_config(state: Path, home: Path) -> str:
    """``systemd/spoold.toml`` with its paths moved under this test's state directory and home."""
    text = (REPO / "systemd" / "spoold.toml").read_text()
    return text.replace("/var/lib/spoold", str(state)).replace("/home/*/.claude", f"{home}/.claude")


@pytest.mark.slow  # eight CLI runs, each loading the Iceberg libraries
def test_the_readme_gives_typed_tables_and_the_example_config_then_works(tmp_path: Path) -> None:
    home = Path(os.environ["HOME"])  # a fresh, empty home and state directory (tests/conftest.py)
    projects = home / ".claude" / "projects" / "demo"
    projects.mkdir(parents=True)
    for f in (REPO / "fixtures" / "sources" / "claude-code").glob("*.jsonl"):
        shutil.copy(f, projects / f.name)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    commands = readme_commands()
    assert any("spoold append chat.parts" in c for c in commands) and any("spoold backfill" in c for c in commands)
    for command in commands:
        r = subprocess.run(["bash", "-c", command], env=env, capture_output=True, timeout=120)
        assert r.returncode == 0, f"{command}: exit {r.returncode}\n{r.stderr.decode()}"

    config = load_config()  # the embedded defaults the README relies on
    types = {f.name: str(f.field_type) for f in load_table(config, "chat.parts").schema().fields}
    assert types["ts"] == "timestamptz" and types["part_index"] == "int", types
    before = len(committed_keys(config, "chat.parts"))
    assert before > 1

    cfg = tmp_path / "example.toml"
    cfg.write_text(example_config(config.state_dir, home))
    row = {"part_id": "ex-1:0", "message_id": "ex-1", "part_index": 0, "session_id": "s", "ts": "2026-03-01T12:00:00Z",
           "role": "user", "kind": "text", "text": "hello from the example config"}
    r = subprocess.run(["spoold", "append", "chat.parts", "--config", str(cfg)], input=json.dumps(row).encode(),
                       env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    r = subprocess.run(["spoold", "flush", "--json", "--config", str(cfg)], env=env, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["tables"]["chat.parts"] == {"committed": 1, "deduplicated": 0, "quarantined": 0}
    tbl = load_table(cfg, "chat.parts")
    assert [(str(f.transform), tbl.schema().find_column_name(f.source_id)) for f in tbl.spec().fields] == [
        ("day", "ts")]
    assert len(committed_keys(cfg, "chat.parts")) == before + 1
