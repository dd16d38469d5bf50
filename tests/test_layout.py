"""The tree keeps its promises: the capture side never imports the flush stack, and pyiceberg stays behind its seam."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "spoold"


def test_capture_modules_import_neither_pyarrow_nor_pyiceberg() -> None:
    """`spoold append`, the Python producer API, the spool, the tailer and the ingest listener start without the
    flush stack."""
    code = (
        "import sys\n"
        "import spoold, spoold.cli.entry, spoold.cli.append, spoold.spool.spool, spoold.envelope, spoold.sources.tail\n"
        "import spoold.ingest.server, spoold.ingest.otlp\n"
        "from spoold import Spool, load_config\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('pyarrow', 'pyiceberg', 'sqlalchemy'))\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "", f"capture side imported: {out.stdout.strip()}"


def test_pyiceberg_is_imported_only_inside_the_iceberg_package() -> None:
    pattern = re.compile(r"^(from|import) pyiceberg\b", re.MULTILINE)
    outside = [
        str(p.relative_to(REPO))
        for p in PACKAGE.rglob("*.py")
        if "iceberg" not in p.relative_to(PACKAGE).parts[:-1] and pattern.search(p.read_text())
    ]
    assert outside == []


# -- the layers (docs/architecture.md) -----------------------------------------------------------------------
# Each wing may import the leaves, itself and the wings named here, nothing else (lazy and type-only imports
# count too): arrows point one way, from the daemon and the command line down to the spool and the seam.
LEAVES = {"errors", "durable", "locks", "config", "settings", "catalog_keys", "envelope", "casts", "progress",
          "_testhooks", "logs", "safefile", "redact", "layout", "coltypes", "nested"}
MAY_IMPORT = {
    "keys": set(),
    "iceberg": {"keys"},
    "spool": set(),
    "sources": {"spool"},
    "flush": {"keys", "iceberg", "spool", "sources"},
    "backfill": {"keys", "iceberg", "spool", "sources", "flush"},
    "ingest": {"spool", "sources"},
    "daemon": {"keys", "iceberg", "spool", "sources", "flush", "backfill", "ingest"},
    "cli": {"keys", "iceberg", "spool", "sources", "flush", "backfill", "daemon", "ingest"},
    "testing": {"keys", "iceberg", "spool", "sources", "flush", "backfill", "daemon", "cli", "ingest"},
}
MAX_TOP_LEVEL_MODULES = 16  # coltypes and nested: the type grammar (config reads it) and nested casts


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, *, type_only: bool = True) -> set[str]:
    """Every spoold module ``path`` imports anywhere (in functions too); ``type_only=False`` skips TYPE_CHECKING."""
    import ast

    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    if not type_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "spoold")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "spoold":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                is_module = (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists() or \
                    (PACKAGE.parent / sub.replace(".", "/") / "__init__.py").exists()
                out.add(sub if is_module else node.module)
    return out


def _graph(*, type_only: bool = True) -> dict[str, set[str]]:
    return {_module_name(p): _imports(p, type_only=type_only) for p in PACKAGE.rglob("*.py")}


def _wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """``importer -> imported`` for every arrow the layers forbid."""
    bad = []
    for mod, deps in sorted(graph.items()):
        wing = _wing(mod)
        if wing in ("", "__main__"):
            continue  # the package face and `python -m spoold` may name anything
        allowed = LEAVES | {wing} | (set() if wing in LEAVES else MAY_IMPORT[wing])
        bad += [f"{mod} -> {dep}" for dep in sorted(deps) if _wing(dep) and _wing(dep) not in allowed]
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles (strongly connected components of more than one module, or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_arrow_points_down_the_layers() -> None:
    """The seam imports nothing from the spool, flush, backfill, daemon or CLI side; keys import neither."""
    assert layer_violations(_graph()) == []


def test_a_seam_import_added_back_is_caught() -> None:
    """The check above can fail: the arrows the tree used to have are each refused."""
    graph = _graph()
    for importer, imported in [("spoold.iceberg.sink", "spoold.daemon.metrics"),
                               ("spoold.iceberg.tables", "spoold.spool.spool"),
                               ("spoold.keys.settle", "spoold.iceberg.schema"),
                               ("spoold.flush.flush", "spoold.cli.status")]:
        changed = {**graph, importer: graph[importer] | {imported}}
        assert layer_violations(changed) == [f"{importer} -> {imported}"]


def test_no_import_cycles_lazy_imports_included() -> None:
    assert cycles(_graph(type_only=False)) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]  # the check can fail


def test_the_top_level_holds_only_leaves_and_the_pipelines_folders() -> None:
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES and set(top) == LEAVES
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert set(folders) == set(MAY_IMPORT)
