"""The names spoold writes into a table's metadata: snapshot summary keys and table properties.

No pyiceberg here: ``spoold status`` reads them from metadata JSON without loading the Iceberg stack.
"""

from __future__ import annotations

LAST_MAINTENANCE = "spoold.last-maintenance"  # table property: the last maintenance run, as compact JSON
