"""What the pytest plugin (``spoold.testing``) costs a pytest run that does not use it (issue 11, acceptance 4).

pytest loads the plugin in every run of everyone who installed spoold. This
runs pytest in a subprocess on targets that never ask for ``spoold_env``,
alternating a run with the plugin (the default) and one without it
(``-p no:spoold``) so that the machine's load affects both alike, and prints
the median wall time of each and their difference. Targets:

1. ``trivial``: one test that does nothing (pytest's start-up alone, where a
   plugin's cost shows most);
2. spoold's own ``tests/daemon/test_scheduler.py`` (a real, pure test module).

It also prints the median time ``import spoold.testing`` takes in a process
that has already imported pytest (``python -X importtime``).

Usage: python bench/plugin.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_pytest(cwd: Path, target: str, *extra: str) -> float:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, target]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return took


def import_ms() -> float:
    code = "import pytest, _pytest.python, _pytest.main; import spoold.testing"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
    m = re.search(r"\|\s*(\d+) \| spoold\.testing$", proc.stderr, re.M)
    assert m, proc.stderr
    return int(m.group(1)) / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=21, help="runs of each mode per target (default 21)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="spoold-bench-plugin-") as tmp:
        trivial = Path(tmp)
        (trivial / "pytest.ini").write_text("[pytest]\n")
        (trivial / "test_trivial.py").write_text("def test_nothing():\n    pass\n")
        targets = [("trivial (1 empty test)", trivial, "test_trivial.py"),
                   ("spoold tests/daemon/test_scheduler.py", REPO, "tests/daemon/test_scheduler.py")]
        for label, cwd, target in targets:
            run_pytest(cwd, target)  # warm the page cache and __pycache__
            with_plugin: list[float] = []
            without: list[float] = []
            for _ in range(args.runs):
                with_plugin.append(run_pytest(cwd, target))
                without.append(run_pytest(cwd, target, "-p", "no:spoold"))
            a, b = statistics.median(with_plugin), statistics.median(without)
            spread = statistics.quantiles(without, n=4)
            print(f"{label}: median {a * 1000:.0f} ms with the plugin, {b * 1000:.0f} ms with -p no:spoold "
                  f"(difference {(a - b) * 1000:+.0f} ms; quartiles without: {spread[0] * 1000:.0f}-"
                  f"{spread[2] * 1000:.0f} ms; {args.runs} runs each, alternating)")
    imports = [import_ms() for _ in range(args.runs)]
    print(f"import spoold.testing after pytest: median {statistics.median(imports):.2f} ms ({args.runs} runs)")
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (other work skews wall times)")


if __name__ == "__main__":
    main()
