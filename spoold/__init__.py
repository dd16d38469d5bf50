"""spoold: land event streams into Apache Iceberg tables, nothing lost, nothing doubled.

Producers use :class:`Spool` (``Spool.from_config(load_config()).append(table, rows)``);
this package import stays light (no pyarrow, no pyiceberg) so producers start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spoold.config import Config, TableSpec, load_config
    from spoold.errors import SpooldError
    from spoold.spool.spool import Spool

__all__ = ["Config", "Spool", "SpooldError", "TableSpec", "load_config"]
__version__ = "0.1.0"

# The public names load on first use (PEP 562): importing the package alone, as pytest does
# for the plugin (spoold.testing) in every run of everyone who installed spoold, costs nothing.
_EXPORTS = {"Config": "spoold.config", "TableSpec": "spoold.config", "load_config": "spoold.config",
            "SpooldError": "spoold.errors", "Spool": "spoold.spool.spool"}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'spoold' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
