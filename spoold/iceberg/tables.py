"""Tables in the catalog: load (or reuse the last version), create, evolve, and check it is still ours.

spoold refuses to write into a table whose uuid differs from the one this
spool committed to (``<spool>/<table>/.table-uuid``), or into one that has
vanished, so a catalog that is moved away or comes back empty never receives
rows meant for the real table.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from typing import Any

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.schema import Schema
from pyiceberg.table import Table, TableProperties

from spoold.config import Config, TableSpec
from spoold.errors import CatalogError, ConfigError
from spoold.iceberg.catalog import catalog_errors, open_catalog
from spoold.iceberg.schema import ICEBERG_TYPES, new_schema, partition_spec
from spoold.iceberg.snapshots import sync_local_files
from spoold.keyindex import KeyIndex
from spoold.spool import write_atomic

log = logging.getLogger(__name__)
# Properties of the tables spoold creates (their owner can change them):
# - each commit writes a new metadata file as big as the history kept (~1 KB a snapshot); a daemon
#   flushing every minute would pile up gigabytes of old ones a day, so only the last
#   `write.metadata.previous-versions-max` (100) are kept;
# - each commit adds a manifest; merging them once there are `commit.manifest.min-count-to-merge`
#   (100), as Java Iceberg does by default, keeps commits and readers' planning from growing with
#   the number of commits.
CREATED_TABLE_PROPERTIES = {
    TableProperties.METADATA_DELETE_AFTER_COMMIT_ENABLED: "true",
    TableProperties.MANIFEST_MERGE_ENABLED: "true",
}


class Tables:
    """One catalog connection and the tables spoold writes through it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._catalog: Catalog | None = None
        self._indexes: dict[str, KeyIndex] = {}  # the committed-key index per table (see Sink)
        self._latest: dict[str, Table] = {}  # the last version loaded or committed, per table
        self._shared: set[str] = set()  # tables another writer commits to: reusing _latest only costs there
        self.host = socket.gethostname()

    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = open_catalog(self.config)
        return self._catalog

    # -- tables -----------------------------------------------------------------
    def load(self, spec: TableSpec, *, reuse: bool = False) -> Table | None:
        """The table, or None when it does not exist yet.

        ``reuse``: the version this Sink last loaded or committed, if it has
        one, instead of reading the metadata again (with hundreds of snapshots
        kept, that read is a good part of a small flush). It may be stale: a
        commit based on it fails as a conflict, and :meth:`commit` then loads
        the table afresh (and so notices a dropped or replaced one). Once that
        has happened for a table, it is always loaded afresh: it has another
        writer, and a conflict wastes a whole data file.
        """
        if reuse and spec.identifier not in self._shared:
            tbl = self._latest.get(spec.identifier)
            idx = self._indexes.get(spec.identifier)
            if tbl is not None and not (idx is not None and idx.built and idx.snapshot_id != snapshot_id(tbl)):
                return tbl  # (else it is older than what the index has seen: a load raced a commit)
        with catalog_errors(f"cannot load {spec.identifier}"):
            try:
                tbl = self.catalog().load_table(spec.identifier)
            except NoSuchTableError:
                self._check_not_vanished(spec)
                return None
        self._check_uuid(spec, tbl)
        self._latest[spec.identifier] = tbl
        return tbl

    def ensure(self, spec: TableSpec, types: Mapping[str, str], *, reuse: bool = False) -> Table:
        """Load (or reuse, see :meth:`load`) or create the table, then add any of ``types``' columns it lacks."""
        tbl = self.load(spec, reuse=reuse) or self._create(spec, types)
        missing = {c: t for c, t in types.items() if c not in tbl.schema().column_names}
        widen = widenings(spec, tbl.schema())
        if missing or widen:
            with catalog_errors(f"cannot evolve {spec.identifier}"):
                with tbl.update_schema() as update:
                    for name, typ in missing.items():
                        update.add_column((name,), ICEBERG_TYPES[typ])  # a tuple: "meta.src" is one name, not a path
                    for name, typ in widen.items():
                        update.update_column((name,), ICEBERG_TYPES[typ])
                sync_local_files([tbl.metadata_location])
            if missing:
                log.info("table %s: added columns %s", spec.identifier,
                         ", ".join(f"{c} {t}" for c, t in missing.items()))
            if widen:
                log.info("table %s: widened columns %s (as the config declares)", spec.identifier,
                         ", ".join(f"{c} to {t}" for c, t in widen.items()))
        return tbl

    def _create(self, spec: TableSpec, types: Mapping[str, str]) -> Table:
        schema = new_schema(spec, types)
        cat = self.catalog()
        ns = spec.identifier.rsplit(".", 1)[0]
        with catalog_errors(f"cannot create {spec.identifier}"):
            try:
                cat.create_namespace(ns)
            except NamespaceAlreadyExistsError:
                pass
            except Exception:
                if not cat.namespace_exists(ns):  # else another process created it between check and insert
                    raise
            try:
                tbl = cat.create_table(
                    spec.identifier,
                    schema=schema,
                    partition_spec=partition_spec(spec, schema),
                    properties={"spoold.key": spec.key, **CREATED_TABLE_PROPERTIES},
                )
                sync_local_files([tbl.metadata_location])
                log.info("table %s: created", spec.identifier)
            except TableAlreadyExistsError:  # another process won the race
                tbl = cat.load_table(spec.identifier)
        self._check_uuid(spec, tbl)
        self._latest[spec.identifier] = tbl
        return tbl

    def _uuid_file(self, spec: TableSpec) -> Any:
        return self.config.spool_root / spec.identifier / ".table-uuid"

    def _check_not_vanished(self, spec: TableSpec) -> None:
        path = self._uuid_file(spec)
        if path.exists():
            raise CatalogError(
                f"table {spec.identifier} (uuid {path.read_text().strip()}) has vanished from the catalog; "
                f"not re-creating it (is the catalog the right one? delete {path} to start a new table)"
            )

    def _check_uuid(self, spec: TableSpec, tbl: Table) -> None:
        """Refuse to write into a different table than the one this spool committed to."""
        path = self._uuid_file(spec)
        uuid = str(tbl.metadata.table_uuid)
        try:
            known = path.read_text().strip()
        except FileNotFoundError:
            if path.parent.is_dir():
                write_atomic(path, uuid.encode())
            return
        if known != uuid:
            raise CatalogError(
                f"table {spec.identifier} was replaced (uuid {uuid}, this spool committed to {known}); "
                f"delete {path} to accept the new table"
            )


# The promotions Iceberg allows between the types a config can declare (table type, config type).
_WIDENINGS = {("int", "long"), ("float", "double")}


def widenings(spec: TableSpec, schema: Schema) -> dict[str, str]:
    """Declared columns whose config type widens the table's (``int`` → ``long``, ``float`` → ``double``).

    Raises ConfigError for any other difference between a declared type and the
    table's: Iceberg cannot change it in place, and writing on would truncate
    or reject values.
    """
    out = {}
    for col in spec.columns:
        try:
            field = schema.find_field(col.name)
        except ValueError:
            continue  # a new column: added, not changed
        have = str(field.field_type)
        if field.field_type == ICEBERG_TYPES[col.type]:
            continue
        if (have, col.type) in _WIDENINGS:
            out[col.name] = col.type
            continue
        raise ConfigError(
            f"tables.{spec.identifier!r}.columns.{col.name}: the table's column {col.name!r} is {have}, the config "
            f"declares {col.type}; Iceberg can only widen int to long and float to double (declare {have} "
            "again, or write to a new table)")
    return out


def snapshot_id(tbl: Table) -> int | None:
    """The table's current snapshot id (None: no snapshot yet)."""
    snap = tbl.current_snapshot()
    return snap.snapshot_id if snap else None
