"""Tables in the catalog: load (or reuse the last version), create, evolve, and check it is still ours.

A create response is never trusted: some catalogs' create is not atomic (a
second create of the same name may answer 200 and silently replace the first
table), so after creating, spoold loads the table the catalog serves and
adopts that one. Hosts that create a table at the same moment all end up
writing into the one the catalog serves.

Once this spool's commits are *verified* in a table (see
docs/fleet.md), its uuid is pinned in
``<spool>/<table>/.table-uuid``; from then on spoold refuses to write into a
table with another uuid, or to re-create one that has vanished, so a catalog
that is moved away or comes back empty never receives rows meant for the real
table. Before that, nothing is pinned: a table another host created (or
re-created) is adopted, never refused.
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

from spoold.coltypes import ListOf, MapOf, Struct, Type, parse, render
from spoold.config import Config, TableSpec
from spoold.durable import write_state
from spoold.errors import CatalogError, ConfigError, DataError, TableError
from spoold.iceberg.catalog import catalog_errors, exclusive_create, open_catalog
from spoold.iceberg.maintain.owner import mark_quietly
from spoold.iceberg.properties import RETENTION_PROPERTIES
from spoold.iceberg.schema import (
    ICEBERG_TYPES,
    describe_spec,
    doubled,
    field_doc,
    iceberg_type,
    named_like_a_partition,
    new_schema,
    partition_spec,
    spec_changes,
    table_types,
    type_tree,
    unwritable,
)
from spoold.iceberg.snapshots import history_ids, sync_local_files
from spoold.keys.index import KeyIndex
from spoold.layout import TABLE_UUID
from spoold.safefile import UnsafeFile, read_state

log = logging.getLogger(__name__)
# Properties of the tables spoold creates (their owner can change them):
# - each commit writes a new metadata file as big as the history kept (~1 KB a snapshot); a daemon
#   flushing every minute would pile up gigabytes of old ones a day, so only the last
#   `write.metadata.previous-versions-max` are kept: 20 (Iceberg's default, 100, is ~100 x the
#   history in bytes; an old metadata file only serves to point the table back by hand);
# - each commit adds a manifest; merging them once there are `commit.manifest.min-count-to-merge`
#   keeps commits and readers' planning from growing with the number of commits: 16, not Java
#   Iceberg's 100 (a reader opens every manifest: DuckDB's count(*) of a table with ~100 small
#   manifests took 3x that of one; a merge of small manifests costs a flush little);
# - a bounded history, by count and age (RETENTION_PROPERTIES, docs/maintenance.md).
CREATED_TABLE_PROPERTIES = {
    **RETENTION_PROPERTIES,
    TableProperties.METADATA_DELETE_AFTER_COMMIT_ENABLED: "true",
    TableProperties.METADATA_PREVIOUS_VERSIONS_MAX: "20",
    TableProperties.MANIFEST_MERGE_ENABLED: "true",
    TableProperties.MANIFEST_MIN_MERGE_COUNT: "16",
}


class Tables:
    """One catalog connection and the tables spoold writes through it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._catalog: Catalog | None = None
        self.indexes: dict[str, KeyIndex] = {}  # the committed-key index per table (kept by the Sink)
        self._latest: dict[str, Table] = {}  # the last version loaded or committed, per table
        self._shared: set[str] = set()  # tables another writer commits to: reusing _latest only costs there
        self._pins: dict[str, str | None] = {}  # the pinned uuid per table, as read from (or written to) disk
        self.host = socket.gethostname()

    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = open_catalog(self.config)
        return self._catalog

    def close(self) -> None:
        """Close the catalog's connection pool, if it was ever opened (the next use opens it again)."""
        engine = getattr(self._catalog, "engine", None)
        if engine is not None:
            engine.dispose()

    @property
    def exclusive_create(self) -> bool:
        """True when the catalog's create can never replace an existing table (see :func:`exclusive_create`)."""
        return exclusive_create(self.catalog())

    # -- tables -----------------------------------------------------------------
    def committed_version(self, spec: TableSpec, tbl: Table) -> None:
        """``tbl`` is the version a commit through this connection just made (what ``reuse`` hands out next)."""
        self._latest[spec.identifier] = tbl

    def latest(self, spec: TableSpec) -> Table | None:
        """The version last loaded or committed through this connection, if any."""
        return self._latest.get(spec.identifier)

    def forget(self, spec: TableSpec) -> None:
        """The last version may be stale (a dropped or replaced table): the next load reads the catalog."""
        self._latest.pop(spec.identifier, None)

    def shared(self, spec: TableSpec) -> None:
        """Another writer commits to this table: always load it afresh (a stale version wastes a data file)."""
        self._shared.add(spec.identifier)

    def load(self, spec: TableSpec, *, reuse: bool = False) -> Table | None:
        """The table, or None when it does not exist yet.

        ``reuse``: the version last loaded or committed through this connection, if it has
        one, instead of reading the metadata again (with hundreds of snapshots
        kept, that read is a good part of a small flush). It may be stale: a
        commit based on it fails as a conflict, and :meth:`commit` then loads
        the table afresh (and so notices a dropped or replaced one). Once that
        has happened for a table, it is always loaded afresh: it has another
        writer, and a conflict wastes a whole data file.
        """
        if reuse and spec.identifier not in self._shared:
            tbl = self._latest.get(spec.identifier)
            idx = self.indexes.get(spec.identifier)
            if tbl is not None and not (idx is not None and idx.built and idx.snapshot_id != snapshot_id(tbl)):
                return tbl  # (else it is older than what the index has seen: a load raced a commit)
        with catalog_errors(f"cannot load {spec.identifier}"):
            try:
                tbl = self.catalog().load_table(spec.identifier)
            except NoSuchTableError:
                if self.pinned(spec) is None:
                    return None
                try:  # pinned after our load missed it: another process created (and pinned) it in between
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
        schema = tbl.schema()
        missing = {c: t for c, t in types.items() if c not in schema.column_names}
        widen = widenings(spec, schema)
        have, _ = table_types(schema)
        grow: list[tuple[tuple[str, ...], Type]] = []
        for c, t in types.items():
            if c in have and t != have[c]:
                _additions((c,), parse(t), parse(have[c]), grow)
        if (clash := named_like_a_partition(tbl, missing)) is not None:  # only the rows with that column fail
            raise DataError(f"table {spec.identifier}: {clash}", clash, proven=True)
        if missing or widen or grow:
            try:
                with catalog_errors(f"cannot evolve {spec.identifier}"):
                    with tbl.update_schema() as update:
                        for name, typ in missing.items():  # a tuple: "meta.src" is one name, not a path
                            update.add_column((name,), iceberg_type(typ), doc=field_doc(typ))
                        for path, t in grow:
                            update.add_column(path, iceberg_type(render(t)), doc=field_doc(t))
                        for path, typ in widen.items():
                            update.update_column(path, ICEBERG_TYPES[typ])
                    sync_local_files([tbl.metadata_location])
            except TableError as e:  # only the rows bringing new columns or fields evolve it: theirs (unless
                # every row fails so: then flush takes it as the table's fault)
                added = [*missing, *(_dotted(p) for p, _ in grow), *(_dotted(p) for p in widen)]
                raise DataError(str(e), "the table refused to add its columns " + ", ".join(map(repr, added))) from e
            if missing:
                log.info("table %s: added columns %s", spec.identifier,
                         ", ".join(f"{c} {t}" for c, t in missing.items()))
            if grow:
                log.info("table %s: added fields %s", spec.identifier,
                         ", ".join(f"{_dotted(p)} {render(t)}" for p, t in grow))
            if widen:
                log.info("table %s: widened columns %s (as the config declares)", spec.identifier,
                         ", ".join(f"{_dotted(p)} to {t}" for p, t in widen.items()))
        why = unwritable(tbl)
        if why is not None:  # (Iceberg cannot evolve such a spec either: it checks the old one against the schema)
            raise TableError(f"table {spec.identifier}: {why}, so no row can be written; the rows stay spooled "
                             f"until `spoold rebuild {spec.identifier}` re-creates it under the config's schema "
                             "and partition_by")
        if spec.partitioned:
            tbl = self._evolve_spec(spec, tbl)
        why = doubled(tbl)
        if why is not None:
            raise TableError(f"table {spec.identifier}: {why}; the rows stay spooled until partition_by in the "
                             f"config gives it one field per column, or `spoold rebuild {spec.identifier}` "
                             "re-creates it")
        return tbl

    def _evolve_spec(self, spec: TableSpec, tbl: Table) -> Table:
        """Give the table the config's partition spec by Iceberg partition evolution: new data files are
        written under it, existing ones keep theirs (nothing is rewritten)."""
        remove, add = spec_changes(spec, tbl)
        if not remove and not add:
            return tbl
        before = describe_spec(tbl.spec().fields, tbl.schema())
        try:
            with catalog_errors(f"cannot change the partition spec of {spec.identifier}"):
                with tbl.update_spec() as update:
                    for name in remove:
                        update.remove_field(name)
                    for column, transform, name in add:
                        update.add_field(column, transform, name)
                sync_local_files([tbl.metadata_location])
        except (DataError, TableError) as e:  # the table's fault, not the rows': they stay spooled
            raise TableError(f"table {spec.identifier}: Iceberg refused to change its partition spec {before} to "
                             f"[{', '.join(map(str, spec.partition_by))}] (`-v` logs why); `spoold rebuild "
                             f"{spec.identifier}` re-creates it under the config's spec") from e
        log.info("table %s: partition spec changed from %s to %s, as the config declares (new data is written "
                 "under it; existing files keep theirs)", spec.identifier, before,
                 describe_spec(tbl.spec().fields, tbl.schema()))
        self._latest[spec.identifier] = tbl
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
            created = None
            try:
                created = cat.create_table(
                    spec.identifier,
                    schema=schema,
                    partition_spec=partition_spec(spec, schema),
                    properties={"spoold.key": spec.key, **CREATED_TABLE_PROPERTIES},
                )
                sync_local_files([created.metadata_location])
            except TableAlreadyExistsError:  # another process won the race
                pass
            # Adopt the table the catalog serves, not the one the create answered: where a create is
            # not atomic, two hosts' creates may both "succeed" and the name goes to the last writer.
            try:
                tbl = cat.load_table(spec.identifier)
            except NoSuchTableError:
                raise CatalogError(f"table {spec.identifier} is not served right after it was created "
                                   "(dropped meanwhile?); trying again later") from None
        if created is None:
            log.info("table %s: created by another writer meanwhile; adopting it", spec.identifier)
        elif created.metadata.table_uuid != tbl.metadata.table_uuid:
            log.warning("table %s: created (uuid %s), but the catalog serves uuid %s (another writer created it "
                        "at the same moment); adopting the served table", spec.identifier,
                        created.metadata.table_uuid, tbl.metadata.table_uuid)
        else:
            log.info("table %s: created", spec.identifier)
            mark_quietly(tbl)  # its location is this table's: orphan cleanup needs the proof (see maintain/owner.py)
        self._check_uuid(spec, tbl)
        self._latest[spec.identifier] = tbl
        return tbl

    # -- the pinned uuid -------------------------------------------------------------
    def _uuid_file(self, spec: TableSpec) -> Any:
        return self.config.spool_root / spec.identifier / TABLE_UUID

    def pinned(self, spec: TableSpec) -> str | None:
        """The uuid of the table this spool's commits were verified in (None: not verified yet)."""
        if spec.identifier not in self._pins:
            try:
                raw = read_state(self._uuid_file(spec), self.config.spool_root, limit=256)
                self._pins[spec.identifier] = raw.decode("utf-8", "replace").strip() or None
            except FileNotFoundError:
                self._pins[spec.identifier] = None
            except UnsafeFile as e:  # planted (a link, a FIFO, another user's file): never trusted
                log.warning("table %s: %s; the table is verified again before this spool trusts it",
                            spec.identifier, e)
                self._pins[spec.identifier] = None
        return self._pins[spec.identifier]

    def verified(self, spec: TableSpec) -> bool:
        """True once this spool's commits were verified in the table (a commit there needs no re-check)."""
        return self.pinned(spec) is not None

    def pin(self, spec: TableSpec, uuid: str) -> None:
        """Remember ``uuid`` as the table this spool commits to (called once a commit is verified)."""
        path = self._uuid_file(spec)
        if path.parent.is_dir():  # (a table this spool never held a row of: kept in memory only)
            write_state(path, uuid.encode(), self.config.spool_group)
        self._pins[spec.identifier] = uuid
        log.info("table %s: this spool's commits are verified in the table the catalog serves (table uuid %s): "
                 "from now on spool files are deleted right after their commit (docs/fleet.md)", spec.identifier,
                 uuid)

    def confirm(self, spec: TableSpec, uuid: str, snapshot_id: int) -> bool:
        """After a commit to a table not verified yet: pin it if that is safe at once; True if pinned.

        Safe at once only where the catalog's create can never replace a table
        (then no late create can undo the commit), and only when a fresh load
        shows the commit in the history of the table the catalog serves.
        Elsewhere the commit is verified later (docs/fleet.md).
        """
        if self.verified(spec) or not self.exclusive_create:
            return self.verified(spec)
        self._latest.pop(spec.identifier, None)
        try:
            served = self.load(spec)
        except CatalogError as e:  # the commit stands; it is verified later instead
            log.info("table %s: cannot verify the commit now: %s", spec.identifier, e)
            return False
        if served is None or str(served.metadata.table_uuid) != uuid or snapshot_id not in history_ids(served):
            return False
        self.pin(spec, uuid)
        return True

    def _check_not_vanished(self, spec: TableSpec) -> None:
        known = self.pinned(spec)
        if known is not None:
            raise CatalogError(
                f"table {spec.identifier} (uuid {known}) has vanished from the catalog; not re-creating it "
                f"(is the catalog the right one? delete {self._uuid_file(spec)} to start a new table)"
            )

    def _check_uuid(self, spec: TableSpec, tbl: Table) -> None:
        """Refuse to write into a different table than the one this spool's commits were verified in."""
        known = self.pinned(spec)
        uuid = str(tbl.metadata.table_uuid)
        if known is not None and known != uuid:
            self._pins.pop(spec.identifier, None)  # `spoold rebuild` may have pinned the new table meanwhile
            known = self.pinned(spec)
        if known is not None and known != uuid:
            raise CatalogError(
                f"table {spec.identifier} was replaced (uuid {uuid}, this spool committed to {known}); "
                f"delete {self._uuid_file(spec)} to accept the new table"
            )


# The promotions Iceberg allows between the types a config can declare (table type, config type).
_WIDENINGS = {("int", "long"), ("float", "double")}


def widenings(spec: TableSpec, schema: Schema) -> dict[tuple[str, ...], str]:
    """Declared columns (or nested fields, by path) whose config type widens the table's (``int`` → ``long``,
    ``float`` → ``double``).

    Raises ConfigError for any other difference between a declared type and the
    table's, naming the path: Iceberg cannot change it in place, and writing on
    would truncate or reject values. Struct fields the table lacks are added
    (not a difference); fields only the table has stay.
    """
    out: dict[tuple[str, ...], str] = {}
    for col in spec.columns:
        try:
            field = schema.find_field(col.name)
        except ValueError:
            continue  # a new column: added, not changed
        problem = _compare((col.name,), parse(col.type), type_tree(field), out)
        if problem is not None:
            path, theirs, mine = problem
            where = f"tables.{spec.identifier!r}.columns.{col.name}"
            what = f"column {col.name!r}" if len(path) == 1 else f"field {_dotted(path)}"
            raise ConfigError(
                f"{where}: the table's {what} is {theirs}, the config declares {mine}; Iceberg can only widen int "
                f"to long and float to double (declare {theirs} again, or run `spoold rebuild {spec.identifier}` "
                "to re-create the table with the config's types)")
    return out


def _compare(path: tuple[str, ...], mine: Type | None, theirs: Type | None,
             out: dict[tuple[str, ...], str]) -> tuple[tuple[str, ...], str, str] | None:
    """The first path where a declared type cannot become the table's (widenings go into ``out``)."""
    if mine is None or theirs is None:
        return path, render(theirs) if theirs is not None else "of a type spoold does not write", \
            render(mine) if mine is not None else "?"
    if mine == theirs or {mine, theirs} == {"string", "json"}:
        return None
    if isinstance(mine, str) and isinstance(theirs, str):
        if (theirs, mine) in _WIDENINGS:
            out[path] = mine
            return None
        return path, theirs, mine
    if isinstance(mine, Struct) and isinstance(theirs, Struct):
        by_name = {f.name: f for f in theirs.fields}
        for f in mine.fields:
            g = by_name.get(f.name)
            if g is not None and (problem := _compare((*path, f.name), f.type, g.type, out)) is not None:
                return problem
        return None
    if isinstance(mine, ListOf) and isinstance(theirs, ListOf):
        return _compare((*path, "element"), mine.element, theirs.element, out)
    if isinstance(mine, MapOf) and isinstance(theirs, MapOf):
        return _compare((*path, "value"), mine.value, theirs.value, out)
    return path, render(theirs), render(mine)


def _additions(path: tuple[str, ...], mine: Type | None, theirs: Type | None,
               out: list[tuple[tuple[str, ...], Type]]) -> None:
    """Struct fields ``mine`` has at any depth and ``theirs`` lacks, as (path, type)."""
    if isinstance(mine, Struct) and isinstance(theirs, Struct):
        by_name = {f.name: f for f in theirs.fields}
        for f in mine.fields:
            g = by_name.get(f.name)
            if g is None:
                out.append(((*path, f.name), f.type))
            else:
                _additions((*path, f.name), f.type, g.type, out)
    elif isinstance(mine, ListOf) and isinstance(theirs, ListOf):
        _additions((*path, "element"), mine.element, theirs.element, out)
    elif isinstance(mine, MapOf) and isinstance(theirs, MapOf):
        _additions((*path, "value"), mine.value, theirs.value, out)


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path)


def snapshot_id(tbl: Table) -> int | None:
    """The table's current snapshot id (None: no snapshot yet)."""
    snap = tbl.current_snapshot()
    return snap.snapshot_id if snap else None
