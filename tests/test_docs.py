"""The docs stay honest: every config key is documented, every command runs, every tested recipe works.

Recipes are taken from docs/read-your-tables.md itself (each code block right
after a ``<!-- tested -->`` line) and run against a real table, so the page and
this test cannot drift apart.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import run_spoold, write_config
from support.paths import REPO

from spoold.catalog_keys import CATALOG_KEYS, FILE_IO_KEYS
from spoold.cli.args import parser
from spoold.cli.entry import main
from spoold.settings import DaemonSettings, FlushSettings, IngestSettings, MaintainSettings

DOCS = REPO / "docs"
SAMPLE = REPO / "systemd" / "spoold.toml"
# Pages other branches are adding; the links to them are checked once they exist.


def config_keys() -> dict[str, set[str]]:
    """Every key the config parser accepts, per section, read from the code."""
    source = (REPO / "spoold" / "config.py").read_text()
    keys: dict[str, set[str]] = {}
    for function in re.split(r"^def ", source, flags=re.MULTILINE):
        for prefix, allowed in re.findall(r'_only_keys\(\w+, f?"([^"]*)", \{([^}]*)\}\)', function):
            section = {"_parse_table": "tables.<name>", "_parse_source": "sources"}.get(
                function.split("(")[0], prefix.rstrip(".") or "top")
            keys.setdefault(section, set()).update(re.findall(r'"([^"]+)"', allowed))
    for section, cls in (("flush", FlushSettings), ("daemon", DaemonSettings), ("maintain", MaintainSettings),
                       ("ingest", IngestSettings)):
        keys[section] = set(cls.__dataclass_fields__)
    keys["catalog"] = {"name", "type", "uri", "warehouse"}
    keys.pop("top")
    assert {"spool", "tables.<name>", "sources", "flush", "daemon", "maintain"} <= set(keys), keys
    return keys


def test_every_config_key_is_documented_in_docs_and_in_the_sample_config() -> None:
    reference = (DOCS / "configuration.md").read_text()
    sample = SAMPLE.read_text()
    for section, keys in config_keys().items():
        for key in sorted(keys):
            assert f"`{key}`" in reference, f"[{section}] {key} is missing from docs/configuration.md"
            assert re.search(rf"^#?\s*{re.escape(key)}\s*=|\.{re.escape(key)}\]$", sample, re.MULTILINE), \
                f"[{section}] {key} is missing from systemd/spoold.toml"
        header = "tables." if section == "tables.<name>" else "[[sources]]" if section == "sources" else \
            f"[{section}]"
        assert header in reference, f"docs/configuration.md has no section for {section}"


def test_every_catalog_key_spoold_accepts_is_in_the_reference() -> None:
    reference = (DOCS / "configuration.md").read_text()
    every = FILE_IO_KEYS.union(*CATALOG_KEYS.values()) | set(CATALOG_KEYS)
    missing = sorted(k for k in every if f"`{k}`" not in reference)
    assert not missing, f"docs/configuration.md does not name these [catalog] keys: {missing}"


def commands() -> list[str]:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


@pytest.mark.parametrize("command", commands())
def test_every_command_has_help_that_runs_and_a_reference_entry(command: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([*command.split(), "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: spoold {command}")
    assert f"## `spoold {command}" in (DOCS / "commands.md").read_text()


def test_the_reference_documents_no_command_that_does_not_exist() -> None:
    documented = set(re.findall(r"^## `spoold ([a-z]+(?: [a-z]+)?)", (DOCS / "commands.md").read_text(),
                                re.MULTILINE))
    documented = {d.split(" ")[0] if d.split(" ")[0] not in ("quarantine",) else d for d in documented}
    assert documented <= set(commands()), documented - set(commands())


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def test_links_stay_inside_the_repository_and_resolve() -> None:
    for page in pages():
        text = page.read_text()
        assert "../shared" not in text and "SPEC.md" not in text, f"{page.name} points outside the repository"
        prose = re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL))
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.is_relative_to(REPO), f"{page.name} links outside the repository: {target}"
            assert path.exists(), f"{page.name} links to a missing file: {target}"


def recipes() -> list[str]:
    text = (DOCS / "read-your-tables.md").read_text()
    return re.findall(r"^<!-- tested -->\n```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def test_the_read_your_tables_page_has_its_recipes() -> None:
    found = recipes()
    assert len(found) >= 3
    assert any("iceberg_scan" in r for r in found) and any("load_catalog" in r for r in found)


@pytest.fixture(scope="module")
def chat_parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed table chat.parts (three rows), and its config."""
    tmp = tmp_path_factory.mktemp("recipes")
    cfg = write_config(tmp)
    rows = b"".join(b'{"part_id": "a:%d", "ts": "2026-01-01T00:00:0%dZ", "text": "hello %d"}\n' % (i, i, i)
                    for i in range(3))
    env = {"SPOOLD_CONFIG": str(cfg)}
    assert run_spoold("append", "chat.parts", input=rows, env=env).returncode == 0
    r = run_spoold("flush", env=env)
    assert r.returncode == 0, r.stderr
    return cfg


@pytest.mark.parametrize("index", range(len(recipes())))
def test_every_tested_recipe_runs_as_written(index: int, chat_parts: Path, tmp_path: Path) -> None:
    recipe = recipes()[index]
    script = tmp_path / f"recipe_{index}.py"
    script.write_text(recipe)
    env = {**os.environ, "SPOOLD_CONFIG": str(chat_parts),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0, f"recipe {index} failed:\n{recipe}\n{r.stderr}"
    out = r.stdout
    assert "a:0" in out and "a:2" in out or out.strip().endswith(".metadata.json"), out


def test_the_architecture_page_names_every_module() -> None:
    """docs/architecture.md's tree table names each module in its folder's row, and no module that is gone."""
    page = (REPO / "docs" / "architecture.md").read_text()
    named = set()
    for row in re.findall(r"^\| (leaves|`[a-z/]+/`) \|[^|]*\|(.*)\|$", page, re.MULTILINE):
        folder = "" if row[0] == "leaves" else row[0].strip("`")
        named |= {folder + m for m in re.findall(r"`([a-z_]+\.py)`", row[1])}
    package = REPO / "spoold"
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    assert sorted(modules - named) == [] and sorted(named - modules) == []


def test_the_spool_layout_page_names_every_file_spoold_keeps_there() -> None:
    """Each name spoold/layout.py defines appears in docs/spool-layout.md."""
    from spoold import layout

    page = (REPO / "docs" / "spool-layout.md").read_text()
    names = [v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)]
    assert len(names) > 10 and [n for n in names if n not in page] == []
