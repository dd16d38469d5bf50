"""The tree keeps its promises: the capture side never imports the flush stack, and pyiceberg stays behind its seam."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "spoold"


def test_capture_modules_import_neither_pyarrow_nor_pyiceberg() -> None:
    """`spoold append`, the Python producer API, the spool and the tailer start without the flush stack."""
    code = (
        "import sys\n"
        "import spoold, spoold.cli.entry, spoold.cli.append, spoold.spool.spool, spoold.envelope, spoold.sources.tail\n"
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
