"""Snapshot expiry that frees storage: drop old snapshots, then delete the files only they referenced.

Retention, as Iceberg's own ``ExpireSnapshots``: each branch keeps its
newest ``keep`` ancestors and every ancestor younger than the cutoff; tags
keep their snapshot; a snapshot no ref reaches goes once it is older than the
cutoff. Besides, a branch keeps at most ``max_count`` ancestors however young
(the table property ``spoold.history.max-snapshots``, docs/maintenance.md):
every commit pays for each snapshot kept. After the metadata commit, the
files to delete are those named by the
expired snapshots (manifest lists, manifests not in any kept snapshot's list,
the data and delete files those manifests list) minus every file a kept
snapshot still reads, computed from the metadata the commit returned. A
table with ``gc.enabled = false`` keeps its files: only its history shrinks.
A file outside the table's location is never deleted, whatever the expired
metadata names (see :mod:`.confine`): it is logged once per run and left.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pyiceberg.table import Table
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.refs import SnapshotRefType
from pyiceberg.table.snapshots import Snapshot, ancestors_of
from pyiceberg.table.update.snapshot import ExpireSnapshots
from pyiceberg.utils.properties import property_as_bool

from spoold.errors import SpooldError
from spoold.iceberg.catalog import catalog_errors
from spoold.iceberg.maintain.confine import Confine
from spoold.iceberg.maintain.reachable import files_of, fs_path, manifests_of, statistics_of
from spoold.iceberg.properties import Retention, retention_of
from spoold.iceberg.snapshots import MemoTransaction
from spoold.settings import MaintainSettings

log = logging.getLogger(__name__)
_GC_ENABLED = "gc.enabled"


@dataclass
class Expired:
    snapshots: int = 0
    files_deleted: int = 0
    bytes_deleted: int = 0
    outside: int = 0  # files only expired snapshots named, kept because they lie outside the location


def retention(tbl: Table, settings: MaintainSettings | None = None, *, older_than_s: float | None = None,
              keep: int | None = None) -> Retention:
    """The retention that applies to ``tbl`` (see :func:`~spoold.iceberg.properties.retention_of`).

    The properties are ``history.expire.max-snapshot-age-ms`` and
    ``history.expire.min-snapshots-to-keep`` (Iceberg's defaults: 5 days, 1),
    and spoold's ``spoold.history.max-snapshots`` (no cap where unset).
    """
    return retention_of(tbl.metadata.properties, settings, older_than_s=older_than_s, keep=keep)


def expirable(md: TableMetadata, keep: Retention, now_ms: int) -> list[int]:
    """Ids of the snapshots ``keep`` lets go at ``now_ms`` (never a branch or tag head)."""
    cutoff = now_ms - keep.max_age_ms
    retained: set[int] = set()
    in_some_branch: set[int] = set()
    for ref in md.refs.values():
        head = md.snapshot_by_id(ref.snapshot_id)
        if head is None:
            continue
        retained.add(head.snapshot_id)
        if ref.snapshot_ref_type != SnapshotRefType.BRANCH:
            continue
        n = ref.min_snapshots_to_keep or keep.keep
        cap = max(n, keep.max_count) if keep.max_count else None
        ref_cutoff = now_ms - ref.max_snapshot_age_ms if ref.max_snapshot_age_ms is not None else cutoff
        kept = 0
        for snap in ancestors_of(head, md):
            in_some_branch.add(snap.snapshot_id)
            if kept < n or (snap.timestamp_ms >= ref_cutoff and (cap is None or kept < cap)):
                retained.add(snap.snapshot_id)
                kept += 1
    return [s.snapshot_id for s in md.snapshots
            if s.snapshot_id not in retained and (s.snapshot_id in in_some_branch or s.timestamp_ms < cutoff)]


def expire_snapshots(tbl: Table, keep: Retention, *, now_ms: int | None = None, dry_run: bool = False,
                     batch: int = 1) -> Expired:
    """Expire what ``keep`` lets go and delete the files only those snapshots referenced.

    Nothing happens until ``batch`` snapshots are due. ``tbl`` is updated in
    place by the commit. Raises ``CommitConflict`` when another writer
    committed meanwhile.
    """
    before = tbl.metadata
    ids = expirable(before, keep, int(time.time() * 1000) if now_ms is None else now_ms)
    if not ids or len(ids) < batch:
        return Expired()
    gone = [s for s in before.snapshots if s.snapshot_id in set(ids)]
    if dry_run:
        kept = [s for s in before.snapshots if s.snapshot_id not in set(ids)]
        after = before
    else:
        with catalog_errors(f"cannot expire snapshots of {_name(tbl)}"):
            ExpireSnapshots(MemoTransaction(tbl, autocommit=True)).by_ids(ids).commit()
        after = tbl.metadata
        kept = list(after.snapshots)
    out = Expired(snapshots=len(ids))
    if not property_as_bool(before.properties, _GC_ENABLED, True):
        return out
    with catalog_errors(f"cannot list the files of {_name(tbl)}'s expired snapshots"):
        doomed = _unreachable(tbl, gone, kept, before, after)
    confine = Confine(tbl)
    outside = {p for p in doomed if not confine.allows(p)}
    if outside:
        out.outside = len(outside)
        log.warning("table %s: %d file(s) named only by expired snapshots lie outside the table's location %s "
                    "(e.g. %s); not deleting them", _name(tbl), len(outside), tbl.location(), min(outside))
    for path, size in doomed.items():
        if path in outside or (not dry_run and not _delete(confine, path)):
            continue
        out.files_deleted += 1
        out.bytes_deleted += size
    log.info("table %s: %s %d snapshot(s) and %d file(s) (%d bytes) only they referenced", _name(tbl),
             "would expire" if dry_run else "expired", out.snapshots, out.files_deleted, out.bytes_deleted)
    return out


def expire_after_commit(tbl: Table, settings: MaintainSettings) -> None:
    """A flush's expiry: in batches, and best effort (a conflict leaves it to a later commit).

    It waits until a tenth of the history is due, so the cost of finding the
    freed files (one read per kept manifest list) is spread over many
    commits; and while maintenance is enabled, until it has fallen behind by
    twice ``every_commits`` (it expires at each run; a flush is not slowed).
    """
    batch = max(1, len(tbl.metadata.snapshots) // 10, 2 * settings.every_commits if settings.enabled else 1)
    try:
        expire_snapshots(tbl, retention(tbl, settings), batch=batch)
    except SpooldError as e:
        log.debug("%s", e)


def _unreachable(tbl: Table, gone: list[Snapshot], kept: list[Snapshot], before: TableMetadata,
                 after: TableMetadata) -> dict[str, int]:
    io = tbl.io
    kept_manifests = manifests_of(io, kept)
    kept_lists = {s.manifest_list for s in kept}
    out = {s.manifest_list: 0 for s in gone if s.manifest_list not in kept_lists}
    candidates = {p: m for p, m in manifests_of(io, gone).items() if p not in kept_manifests}
    out.update({p: m.manifest_length for p, m in candidates.items()})
    files = files_of(io, candidates.values(), live=False)
    if files:  # only then is the (larger) set of files the kept snapshots read needed
        live = {fs_path(io, p) for p in files_of(io, kept_manifests.values(), live=True)}
        out.update({p: n for p, n in files.items() if fs_path(io, p) not in live})
    kept_ids = {s.snapshot_id for s in kept}
    stats = statistics_of(before, {s.snapshot_id for s in gone}) - statistics_of(after, kept_ids)
    out.update(dict.fromkeys(stats, 0))
    return out


def _delete(confine: Confine, path: str) -> bool:
    try:
        return confine.delete(path)
    except FileNotFoundError:
        return False  # gone already (another run, or a crash after it)
    except OSError as e:  # left for orphan cleanup
        log.warning("table %s: cannot delete %s: %s", confine.name, path, e)
        return False


def _name(tbl: Table) -> str:
    return ".".join(tbl.name())
