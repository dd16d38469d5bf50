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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support import zygote
from support.cli import run_spoold, write_config
from support.paths import REPO

from spoold.catalog_keys import CATALOG_KEYS, FILE_IO_KEYS
from spoold.cli.args import parser
from spoold.cli.entry import main
from spoold.config import parse_config
from spoold.errors import ConfigError

DOCS = REPO / "docs"
SAMPLE = REPO / "systemd" / "spoold.toml"
# Pages other branches are adding; the links to them are checked once they exist.


# A section's keys as the parser names them when it refuses an unknown one; the document to refuse it in.
_PROBES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "spool": lambda t: {"spool": t},
    "flush": lambda t: {"flush": t},
    "daemon": lambda t: {"daemon": t},
    "maintain": lambda t: {"maintain": t},
    "ingest": lambda t: {"ingest": t},
    "tables.<name>": lambda t: {"tables": {"a.b": t}},
    "sources": lambda t: {"sources": [t]},
}


def _accepted(section: str) -> set[str]:
    """The keys the config parser accepts in ``section``: the list its error for an unknown key gives."""
    with pytest.raises(ConfigError) as e:
        parse_config(_PROBES[section]({"zz_no_such_key": 1}))
    m = re.search(r"\(allowed: ([^)]*)\)", str(e.value))
    assert m, f"[{section}]: the parser's error names no allowed keys: {e.value}"
    return set(m[1].split(", "))


def config_keys() -> dict[str, set[str]]:
    """Every key the config parser accepts, per section, asked of the parser itself."""
    keys = {section: _accepted(section) for section in _PROBES}
    # Plain keys beside the tables under [tables]: the ones parse_config takes out before the tables.
    keys["tables"] = set(re.findall(r'tables_t\.pop\("(\w+)"', (REPO / "spoold" / "config.py").read_text()))
    keys["catalog"] = {"name", "type", "uri", "warehouse"}
    assert keys["tables"] and all(keys.values()), keys
    return keys


def documented_keys() -> dict[str, set[str]]:
    """The keys of each section's table in docs/configuration.md (its first column), and [tables]' plain ones."""
    page = (DOCS / "configuration.md").read_text()
    out: dict[str, set[str]] = {}
    for heading, body in re.findall(r"^## `([^`]+)`\n(.*?)(?=^## |\Z)", page, re.MULTILINE | re.DOTALL):
        section = "tables.<name>" if heading.startswith("[tables.") else heading.strip("[]")
        out[section] = set(re.findall(r"^\| `([a-z_]+)` \|", body, re.MULTILINE))
        if section == "tables.<name>":
            plain = re.search(r"^```toml\n\[tables\]\n(.*?)^```", body, re.MULTILINE | re.DOTALL)
            out["tables"] = set(re.findall(r"^(\w+) =", plain[1], re.MULTILINE)) if plain else set()
    return out


def test_every_documented_config_key_is_accepted() -> None:
    """The other direction: a key docs/configuration.md lists is one the parser takes."""
    accepted, documented = config_keys(), documented_keys()
    assert set(_PROBES) | {"tables"} <= set(documented), sorted(documented)
    for section in [*_PROBES, "tables"]:
        extra = sorted(documented[section] - accepted[section])
        assert not extra, f"docs/configuration.md lists [{section}] keys the config does not accept: {extra}"
        missing = sorted(accepted[section] - documented[section])
        assert not missing, f"[{section}] keys the config accepts are not in docs/configuration.md's table: {missing}"


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


def test_the_spelled_out_pyiceberg_recipe_runs_on_the_embedded_defaults(tmp_path: Path) -> None:
    """The recipe for the embedded defaults (no config file, state under ~/.local/state/spoold), as written."""
    (recipe,) = re.findall(r"^<!-- tested with the embedded defaults -->\n```python\n(.*?)^```$",
                           (DOCS / "read-your-tables.md").read_text(), re.MULTILINE | re.DOTALL)
    assert "to_pandas()" not in recipe  # pandas is not installed with spoold
    home = tmp_path / "recipe-home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_STATE_HOME", "XDG_CONFIG_HOME", "STATE_DIRECTORY")}
    env |= {"HOME": str(home), "PYICEBERG_HOME": str(home),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    rows = b"".join(b'{"part_id": "a:%d", "text": "hello %d"}\n' % (i, i) for i in range(3))
    for args, given in ((("append", "chat.parts"), rows), (("flush",), None)):
        r = zygote.run([sys.executable, "-m", "spoold", *args], input=given, capture_output=True, env=env,
                           cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr
    assert (home / ".local" / "state" / "spoold" / "catalog.db").exists()
    script = tmp_path / "recipe.py"
    script.write_text(recipe)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0, f"the recipe failed:\n{recipe}\n{r.stderr}"
    assert "'a:0'" in r.stdout and "'a:2'" in r.stdout, r.stdout


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
