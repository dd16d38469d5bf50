"""What the bench scripts share: memory readings from /proc and the config of a private SQLite catalog.

The scripts run as ``python bench/<name>.py``, so ``bench/`` is on ``sys.path``
and they ``from common import ...``. Nothing here comes from ``tests/``.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any


def status_mb(field: str = "VmRSS", pid: int | str = "self") -> float:
    """A memory field of ``/proc/<pid>/status`` (VmRSS, VmHWM, RssAnon, RssFile, ...) in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not found for pid {pid}")


def rss_mb() -> float:
    """This process's resident set size now."""
    return status_mb("VmRSS")


def reset_peak() -> None:
    """Start this process's peak (VmHWM) afresh from its current RSS (Linux >= 4.0; elsewhere a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_mb() -> float:
    """This process image's peak RSS.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss over an exec from the forked
    parent, so a child started by a big parent would report the parent's peak.
    ru_maxrss only where there is no /proc.
    """
    try:
        return status_mb("VmHWM")
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sqlite_catalog(state: Path, warehouse: str = "wh") -> dict[str, Any]:
    """``[spool]`` and ``[catalog]`` for ``parse_config``: spool, SQLite catalog and warehouse under ``state``."""
    return {"spool": {"root": str(state / "spool")},
            "catalog": {"type": "sql", "uri": f"sqlite:///{state / 'catalog.db'}",
                        "warehouse": f"file://{state / warehouse}"}}


def sqlite_toml(state: Path, warehouse: str = "wh") -> str:
    """The same as TOML, the head of a config file."""
    c = sqlite_catalog(state, warehouse)
    return (f'[spool]\nroot = "{c["spool"]["root"]}"\n\n[catalog]\ntype = "sql"\nuri = "{c["catalog"]["uri"]}"\n'
            f'warehouse = "{c["catalog"]["warehouse"]}"\n\n')
