"""The committed-key index, kept in step with a table's snapshots.

Only the snapshots appended since the index last looked are read (key column
only). spoold's own compactions keep the key set (their summary says so), so
they are stepped over: pyiceberg's incremental append scan skips ``replace``
snapshots and still reads the rows the appends in range added, from files
that older snapshots keep alive. Anything else (a delete, an overwrite,
another tool's rewrite, a rollback, a new table) rebuilds the index from a
scan.
"""

from __future__ import annotations

import logging
from typing import Any

from pyiceberg.table import Table
from pyiceberg.table.snapshots import Operation

from spoold.config import TableSpec
from spoold.iceberg.catalog import catalog_errors
from spoold.iceberg.maintain.rewrite import is_compaction
from spoold.keys.index import KeyIndex

log = logging.getLogger(__name__)


def advance(idx: KeyIndex, spec: TableSpec, table: Table) -> KeyIndex:
    """The committed-key index, advanced to ``table``'s current snapshot.

    Only the snapshots appended since the index last looked are read (key
    column only); spoold's compactions are stepped over; anything else rebuilds it.
    """
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
        elif idx.built and _keys_only_added(table, idx.snapshot_id):
            scan = table.incremental_append_scan(
                from_snapshot_id_exclusive=idx.snapshot_id,
                to_snapshot_id_inclusive=target,
                selected_fields=(key,),
            )
            _add_scan(idx, scan.to_arrow_batch_reader())
        else:
            if idx.built:
                log.info("table %s: rebuilding the committed-key index from a full scan (a snapshot since the "
                         "last one it saw may have removed keys)", spec.identifier)
            idx.clear(uuid)
            if key in table.schema().column_names:
                _add_scan(idx, table.scan(selected_fields=(key,)).to_arrow_batch_reader())
    idx.snapshot_id = target
    idx.built = True
    return idx


def _keys_only_added(table: Table, since: int | None) -> bool:
    """True if every snapshot after ``since`` up to the current one is an append or spoold's compaction."""
    if since is None:
        return False
    snap = table.current_snapshot()
    while snap is not None and snap.snapshot_id != since:
        summary = snap.summary
        if summary is None or (summary.operation != Operation.APPEND and not is_compaction(summary)):
            return False
        snap = table.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id else None
    return snap is not None


def _add_scan(idx: KeyIndex, reader: Any) -> None:
    for rb in reader:
        keys = [k for k in rb.column(0).to_pylist() if k is not None]
        idx.add(keys)
