"""The committed-key index, kept in step with a table's snapshots.

Only the snapshots appended since the index last looked are read (key column
only); a rewrite, a rollback or a new table rebuilds it from a scan.
"""

from __future__ import annotations

from typing import Any

from pyiceberg.table import Table
from pyiceberg.table.snapshots import Operation

from spoold.config import TableSpec
from spoold.iceberg.catalog import catalog_errors
from spoold.keyindex import KeyIndex


def advance(idx: KeyIndex, spec: TableSpec, table: Table) -> KeyIndex:
    """The committed-key index, advanced to ``table``'s current snapshot.

    Only the snapshots appended since the index last looked are read (key
    column only); a rewrite, a rollback or a new table rebuilds it.
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
        elif idx.built and _appends_only(table, idx.snapshot_id):
            scan = table.incremental_append_scan(
                from_snapshot_id_exclusive=idx.snapshot_id,
                to_snapshot_id_inclusive=target,
                selected_fields=(key,),
            )
            _add_scan(idx, scan.to_arrow_batch_reader())
        else:
            idx.clear(uuid)
            if key in table.schema().column_names:
                _add_scan(idx, table.scan(selected_fields=(key,)).to_arrow_batch_reader())
    idx.snapshot_id = target
    idx.built = True
    return idx


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


def _add_scan(idx: KeyIndex, reader: Any) -> None:
    for rb in reader:
        keys = [k for k in rb.column(0).to_pylist() if k is not None]
        idx.add(keys)
