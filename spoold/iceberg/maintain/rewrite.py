"""Commit rewritten groups as ONE ``replace`` snapshot, on top of whatever others committed meanwhile.

pyiceberg 0.12 has no public rewrite API, so :class:`ReplaceFiles` is its
overwrite producer with Iceberg's ``replace`` operation: the inputs are
marked DELETED, the outputs ADDED with the data sequence number of their
group's earliest input (as Java's ``RewriteFiles`` may), every other live
file is carried over, and the summary's totals are pyiceberg's own. The
snapshot's data manifests are merged too (one per flush otherwise, until
pyiceberg merges a hundred), so readers plan from one manifest.

Concurrency: pyiceberg's blind rebase is off (as for flushes). Before every
attempt the current snapshot is read afresh and a group commits only if each
file it replaces, and each witness its deduplication relied on, is still
live: then nothing another writer appended is lost (it is carried over) and
no row can vanish with all its copies. A group whose inputs are gone (another
compaction, a delete) is dropped and its outputs deleted.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from pyiceberg.manifest import ManifestContent, ManifestEntry, ManifestEntryStatus, ManifestFile
from pyiceberg.table import Table, TableProperties, Transaction
from pyiceberg.table.snapshots import Operation, Summary
from pyiceberg.table.update.snapshot import _ManifestMergeManager, _OverwriteFiles
from pyiceberg.utils.properties import property_as_int

from spoold.config import TableSpec
from spoold.errors import CatalogError, CommitConflict
from spoold.iceberg.catalog import catalog_errors
from spoold.iceberg.maintain.compact import Rewrite, discard, live_files
from spoold.iceberg.maintain.confine import Confine
from spoold.iceberg.snapshots import MemoTransaction, snapshot_files, sync_local_files, without_auto_retry
from spoold.iceberg.tables import Tables

log = logging.getLogger(__name__)
ATTEMPTS = 10
# In the summary of spoold's own compactions: the snapshot keeps the table's set of keys (rows whose key
# repeats were dropped, one copy of each stayed), so the committed-key index needs no rescan.
KEYS_KEPT = ("spoold.keys", "kept")


class ReplaceFiles(_OverwriteFiles):
    """A ``replace`` snapshot: delete these data files, add those, data sequence numbers given per file."""

    def __init__(self, tx: Transaction, seqs: dict[str, int], props: dict[str, str]) -> None:
        super().__init__(Operation.REPLACE, tx, tx._table.io, snapshot_properties=props)
        self._seqs = seqs

    def _validate_concurrency(self) -> None:
        """Checked by :func:`commit_rewrites` against a fresh snapshot before each attempt."""

    def _summary(self, snapshot_properties: Any = None) -> Summary:
        # pyiceberg's totals arithmetic only knows append/overwrite/delete; it is the same for replace.
        self._operation = Operation.OVERWRITE
        try:
            summary = super()._summary(snapshot_properties or {})
        finally:
            self._operation = Operation.REPLACE
        return Summary(Operation.REPLACE, **summary.additional_properties)

    _merge = False  # only once, when every manifest of the snapshot is there

    def _process_manifests(self, manifests: list[ManifestFile]) -> list[ManifestFile]:
        """All data manifests merged (up to the manifest target size): readers plan from one, not one per flush."""
        if not self._merge:
            return manifests
        target = property_as_int(self._transaction.table_metadata.properties,
                                 TableProperties.MANIFEST_TARGET_SIZE_BYTES,
                                 TableProperties.MANIFEST_TARGET_SIZE_BYTES_DEFAULT)
        data = [m for m in manifests if m.content == ManifestContent.DATA]
        merger = _ManifestMergeManager(target_size_bytes=target or 8 << 20, min_count_to_merge=2,
                                       merge_enabled=True, snapshot_producer=self)
        return merger.merge_manifests(data) + [m for m in manifests if m.content != ManifestContent.DATA]

    def drop_unused_manifests(self, tbl: Table) -> None:
        """After the commit: delete the manifests written and then merged away (pyiceberg leaves them)."""
        snap = tbl.current_snapshot()
        used = {m.manifest_path for m in snap.manifests(tbl.io)} if snap is not None else set()
        Confine(tbl).tidy(set(self._written_manifests) - used)  # (what is left is an orphan, for a later run)

    def _manifests(self) -> list[ManifestFile]:
        added, self._added_data_files = self._added_data_files, []
        try:
            manifests = super()._manifests()  # deleted and carried-over entries
        finally:
            self._added_data_files = added
        if added:
            with self.new_manifest_writer(spec=self.spec(added[0].spec_id)) as writer:
                for f in added:
                    writer.add(ManifestEntry.from_args(status=ManifestEntryStatus.ADDED, snapshot_id=self._snapshot_id,
                                                       sequence_number=self._seqs[f.file_path], data_file=f))
            manifests = [writer.to_manifest_file(), *manifests]
        self._merge = True
        try:
            return self._process_manifests(manifests)
        finally:
            self._merge = False


def commit_rewrites(tables: Tables, spec: TableSpec, rewrites: list[Rewrite],
                    props: dict[str, str]) -> tuple[list[Rewrite], list[Rewrite], Table | None]:
    """Commit the rewrites still valid in one snapshot: ``(committed, dropped, table after)``."""
    pending, dropped = list(rewrites), []
    tbl: Table | None = None
    for attempt in range(ATTEMPTS):
        tbl = tables.load(spec)
        if tbl is None:  # dropped meanwhile: the outputs are orphans now, cleaned up with the table's files
            return [], dropped + pending, None
        with catalog_errors(f"cannot read the live files of {spec.identifier}"):
            live, deletes = live_files(tbl)
        ok = [r for r in pending if not deletes and _still_valid(r, live)]
        for r in pending:
            if r not in ok:
                log.info("table %s: a compaction group's inputs changed meanwhile; dropping it", spec.identifier)
                discard(tbl, r)
                dropped.append(r)
        pending = ok
        if not pending:
            return [], dropped, tbl
        summary = {**props, KEYS_KEPT[0]: KEYS_KEPT[1],
                   "spoold.duplicates-removed": str(sum(r.duplicates for r in pending)),
                   "spoold.files-rewritten": str(sum(len(r.group.inputs) for r in pending))}
        new = without_auto_retry(tbl)
        try:
            with catalog_errors(f"cannot commit the compaction of {spec.identifier}"):
                with MemoTransaction(new) as tx:
                    producer = ReplaceFiles(tx, {f.file_path: r.seq for r in pending for f in r.outputs}, summary)
                    for r in pending:
                        for inp in r.group.inputs:
                            producer.delete_data_file(live[inp.file.file_path].file)
                        for f in r.outputs:
                            producer.append_data_file(f)
                    producer.commit()
        except CommitConflict as e:
            wait = min(2.0, 0.05 * 2**attempt) * (0.5 + random.random())
            log.info("table %s: compaction commit conflict (%s), checking its inputs again in %.2fs",
                     spec.identifier, e, wait)
            time.sleep(wait)
            continue
        # The commit stands from here on: what follows must not undo it.
        with catalog_errors(f"cannot sync the files of {spec.identifier}'s compaction (it was committed)"):
            sync_local_files(snapshot_files(new))
        try:
            with catalog_errors(f"cannot tidy up after {spec.identifier}'s compaction"):
                producer.drop_unused_manifests(new)
                tables.load(spec)  # so the next flush through ``tables`` starts from the new version
        except CatalogError as e:
            log.warning("table %s: %s (the compaction is committed; left for a later run)", spec.identifier, e)
        return pending, dropped, new
    for r in pending:
        if tbl is not None:
            discard(tbl, r)
    raise CommitConflict(f"table {spec.identifier}: compaction still conflicting after {ATTEMPTS} attempts")


def is_compaction(summary: Any) -> bool:
    """True for the summary of spoold's own compaction (a replace that keeps the key set)."""
    return (summary is not None and summary.operation == Operation.REPLACE
            and summary.get(KEYS_KEPT[0]) == KEYS_KEPT[1])


def _still_valid(r: Rewrite, live: dict[str, Any]) -> bool:
    paths = [i.file.file_path for i in r.group.inputs] + sorted(r.witnesses)
    return all(p in live for p in paths)
