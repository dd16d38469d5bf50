"""The names spoold writes into a table's metadata: snapshot summary keys and table properties; its retention.

No pyiceberg here: ``spoold status`` reads them from metadata JSON without loading the Iceberg stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from spoold.settings import MaintainSettings

LAST_MAINTENANCE = "spoold.last-maintenance"  # table property: the last maintenance run, as compact JSON

# Retention (docs/maintenance.md): Iceberg's own properties, which other engines' expiry reads too...
MAX_SNAPSHOT_AGE_MS = "history.expire.max-snapshot-age-ms"
MIN_SNAPSHOTS_TO_KEEP = "history.expire.min-snapshots-to-keep"
# ...and a cap Iceberg has no property for: a branch keeps at most this many snapshots however young.
MAX_SNAPSHOTS = "spoold.history.max-snapshots"
ICEBERG_MAX_AGE_MS, ICEBERG_MIN_KEEP = 5 * 86_400_000, 1  # Iceberg's defaults where a table sets neither

# What the tables spoold creates get (their owner can change them): every commit pays for each
# snapshot kept (the metadata file lists them all), so the history is bounded by count, not only age.
RETENTION_PROPERTIES = {
    MAX_SNAPSHOT_AGE_MS: str(86_400_000),  # a day
    MIN_SNAPSHOTS_TO_KEEP: "10",  # a rarely written table still keeps its last few commits
    MAX_SNAPSHOTS: "100",
}


@dataclass(frozen=True, slots=True)
class Retention:
    """Each branch keeps its newest ``keep`` snapshots, and those younger than ``max_age_ms`` up to ``max_count``."""

    max_age_ms: int
    keep: int
    max_count: int = 0  # never below ``keep``; 0: no cap

    def doc(self) -> dict[str, int | None]:
        """As ``spoold status --json`` shows it."""
        return {"max_age_s": self.max_age_ms // 1000, "min_snapshots": self.keep,
                "max_snapshots": self.max_count or None}


def retention_of(props: Mapping[str, str], settings: MaintainSettings | None = None, *,
                 older_than_s: float | None = None, keep: int | None = None) -> Retention:
    """The retention in force: arguments, then ``[maintain]`` (non-zero), then the table's properties.

    ``props`` are untrusted (anyone with catalog access writes them): a value
    that is not an integer counts as unset.
    """
    age = _int(props, MAX_SNAPSHOT_AGE_MS, ICEBERG_MAX_AGE_MS)
    n = _int(props, MIN_SNAPSHOTS_TO_KEEP, ICEBERG_MIN_KEEP)
    cap = _int(props, MAX_SNAPSHOTS, 0)
    if settings is not None:
        age = int(settings.max_snapshot_age_s * 1000) if settings.max_snapshot_age_s else age
        n = settings.keep_snapshots or n
        cap = settings.max_snapshots or cap
    if older_than_s is not None:
        age = int(older_than_s * 1000)
    if keep is not None:
        n = keep
    n = max(1, n)
    return Retention(max(0, age), n, max(n, cap) if cap > 0 else 0)


def _int(props: Mapping[str, str], name: str, default: int) -> int:
    raw = props.get(name)
    if raw is None or not isinstance(raw, str) or len(raw) > 20:
        return default
    try:
        return int(raw)
    except ValueError:
        return default
