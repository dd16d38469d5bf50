"""The Iceberg seam: tables, committed keys, and the settle-and-commit loop.

pyiceberg 0.12 retries a conflicting append by itself, rebasing it onto the
other committer's snapshot without looking at keys, which can double a key.
spoold owns the retry instead: pyiceberg's is switched off for our commits,
and on a conflict we refresh, settle again against what the other committer
added, rebuild the Arrow data and commit again.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.table import Table, TableProperties
from pyiceberg.table.snapshots import Operation

from spoold.config import Config, TableSpec
from spoold.errors import CatalogError, CommitConflict, SpooldError
from spoold.iceberg.catalog import catalog_errors, open_catalog
from spoold.iceberg.schema import ICEBERG_TYPES, new_schema, partition_spec, type_conflicts
from spoold.iceberg.snapshots import MemoTransaction, expire_snapshots, snapshot_files, sync_local_files
from spoold.keyindex import KeyIndex, fingerprints
from spoold.settle import Batch, settle
from spoold.spool import write_atomic

log = logging.getLogger(__name__)
COMMIT_ATTEMPTS = 10
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
_SCAN_BATCH = 1 << 20


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    committed: int
    deduplicated: int
    snapshot_id: int | None


class TableSink(Protocol):
    """What flush and backfill need from Iceberg (a fake can stand in for tests)."""

    def load(self, spec: TableSpec, *, reuse: bool = False) -> Table | None: ...

    def committed(self, spec: TableSpec, table: Table) -> KeyIndex: ...

    def commit(
        self, spec: TableSpec, batch: Batch, types: Mapping[str, str], props: Mapping[str, str]
    ) -> CommitOutcome: ...


class Sink:
    """One catalog connection plus a committed-key index per table."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._catalog: Catalog | None = None
        self._indexes: dict[str, KeyIndex] = {}
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
            if tbl is not None and not (idx is not None and idx.built and idx.snapshot_id != _snapshot_id(tbl)):
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
        if missing:
            with catalog_errors(f"cannot evolve {spec.identifier}"):
                with tbl.update_schema() as update:
                    for name, typ in missing.items():
                        update.add_column(name, ICEBERG_TYPES[typ])
                sync_local_files([tbl.metadata_location])
            log.info("table %s: added columns %s", spec.identifier, ", ".join(f"{c} {t}" for c, t in missing.items()))
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

    # -- committed keys ---------------------------------------------------------
    def index(self, spec: TableSpec) -> KeyIndex:
        """The committed-key index of ``spec``'s table as it stands (each commit advances it)."""
        return self._indexes.setdefault(spec.identifier, KeyIndex())

    def committed(self, spec: TableSpec, table: Table) -> KeyIndex:
        """The committed-key index, advanced to ``table``'s current snapshot.

        Only the snapshots appended since the index last looked are read (key
        column only); a rewrite, a rollback or a new table rebuilds it.
        """
        idx = self.index(spec)
        uuid = str(table.metadata.table_uuid)
        snap = table.current_snapshot()
        target = snap.snapshot_id if snap else None
        if idx.table_uuid != uuid:
            idx.clear(uuid)
        elif idx.built and idx.snapshot_id == target:
            return idx
        key = spec.key
        with catalog_errors(f"cannot read committed keys of {spec.identifier}"):
            if snap is None:
                idx.clear(uuid)
            elif idx.built and self._appends_only(table, idx.snapshot_id):
                scan = table.incremental_append_scan(
                    from_snapshot_id_exclusive=idx.snapshot_id,
                    to_snapshot_id_inclusive=target,
                    selected_fields=(key,),
                )
                self._add_scan(idx, scan.to_arrow_batch_reader())
            else:
                idx.clear(uuid)
                if key in table.schema().column_names:
                    self._add_scan(idx, table.scan(selected_fields=(key,)).to_arrow_batch_reader())
        idx.snapshot_id = target
        idx.built = True
        return idx

    @staticmethod
    def _appends_only(table: Table, since: int | None) -> bool:
        """True if the snapshots after ``since`` up to the current one are all appends."""
        if since is None:
            return False
        snap = table.current_snapshot()
        while snap is not None and snap.snapshot_id != since:
            if snap.summary is None or snap.summary.operation != Operation.APPEND:
                return False
            snap = table.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id else None
        return snap is not None

    @staticmethod
    def _add_scan(idx: KeyIndex, reader: Any) -> None:
        for rb in reader:
            keys = [k for k in rb.column(0).to_pylist() if k is not None]
            idx.add(keys)

    # -- commit -----------------------------------------------------------------
    def commit(
        self, spec: TableSpec, batch: Batch, types: Mapping[str, str], props: Mapping[str, str]
    ) -> CommitOutcome:
        """Settle ``batch`` against committed keys and append what is new, in one snapshot.

        On a conflict: refresh, settle again (the other committer may have
        added some of these keys), rebuild the data, try again with backoff.
        """
        if not len(batch):
            return CommitOutcome(0, 0, None)
        fh, fl = fingerprints(batch.keys)
        order = np.argsort(fh, kind="stable")  # for the index lookup and the in-batch repeats alike
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                tbl = self.ensure(spec, types, reuse=not attempt)  # a schema change can conflict too
                conflicts = type_conflicts(types, batch.columns(), tbl.schema())
                if conflicts:  # fail rather than let Arrow truncate; the next flush validates anew
                    raise CatalogError(f"table {spec.identifier}: " + ", ".join(
                        f"column {c!r} is {t} in the table but was validated as {v}"
                        for c, (v, t) in conflicts.items()) + " (schema changed by another writer, or the config "
                        "disagrees with the table)")
                idx = self.committed(spec, tbl)
                keep = settle(batch.keys, idx.contains_fingerprints(fh, fl, order), (fh, fl, order))
                dups = len(batch) - len(keep)
                if not keep:
                    return CommitOutcome(0, dups, idx.snapshot_id)
                data = batch.to_arrow(tbl.schema())  # rebuilt on every attempt
                if len(keep) < len(batch):
                    data = data.take(keep)
                summary = {"spoold.host": self.host, "spoold.rows": str(len(keep)), **props}
                with catalog_errors(f"cannot commit to {spec.identifier}"):
                    new = _without_auto_retry(tbl)
                    with MemoTransaction(new) as tx:
                        tx.append(data, snapshot_properties=summary)
            except CommitConflict as e:
                self._shared.add(spec.identifier)
                wait = min(2.0, 0.02 * 2**attempt) * (0.5 + random.random())
                log.info("table %s: commit conflict (%s), re-settling in %.2fs", spec.identifier, e, wait)
                time.sleep(wait)
                continue
            except SpooldError:
                self._latest.pop(spec.identifier, None)
                if attempt:
                    raise
                continue  # the first try reused a version that may be stale (dropped, replaced): load it afresh
            snap = new.current_snapshot()
            assert snap is not None and snap.parent_snapshot_id == idx.snapshot_id
            with catalog_errors(f"cannot sync the files of {spec.identifier}'s new snapshot"):
                sync_local_files(snapshot_files(new))  # before flush deletes the spool copy
            idx.add_fingerprints(fh[keep], fl[keep])
            idx.snapshot_id = snap.snapshot_id
            self._latest[spec.identifier] = new
            if self.config.flush.expire_snapshots:
                expire_snapshots(new)
            return CommitOutcome(len(keep), dups, snap.snapshot_id)
        raise CommitConflict(f"table {spec.identifier}: still conflicting after {COMMIT_ATTEMPTS} attempts")


def _snapshot_id(tbl: Table) -> int | None:
    snap = tbl.current_snapshot()
    return snap.snapshot_id if snap else None


def _without_auto_retry(tbl: Table) -> Table:
    """A view of ``tbl`` whose commits fail on conflict instead of rebasing blindly.

    The retry count is read from the table's properties; we override it in our
    local copy of the metadata only (the catalog's copy is untouched).
    """
    props = {**tbl.metadata.properties, TableProperties.COMMIT_NUM_RETRIES: "0"}
    metadata = tbl.metadata.model_copy(update={"properties": props})
    return Table(tbl.name(), metadata, tbl.metadata_location, tbl.io, tbl.catalog)
