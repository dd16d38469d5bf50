"""spoold: land event streams into Apache Iceberg tables, nothing lost, nothing doubled.

Producers use :class:`Spool` (``Spool.from_config(load_config()).append(table, rows)``);
this package import stays light (no pyarrow, no pyiceberg) so producers start fast.
"""

from spoold.config import Config, TableSpec, load_config
from spoold.errors import SpooldError
from spoold.spool import Spool

__all__ = ["Config", "Spool", "SpooldError", "TableSpec", "load_config"]
__version__ = "0.1.0"
