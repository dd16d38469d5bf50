"""When may the spool forget rows it committed? Verification of a table before this spool trusts it.

A catalog whose create is not atomic can let a late create replace a new table
after this spool committed to it. So until a fresh load at least
``[flush] verify_after_s`` after a commit still shows it, committed spool files
are held in ``.held/`` (:mod:`spoold.spool.held`); :func:`recheck` then deletes
them and pins the table's uuid, or re-queues them when their commit is gone.
The reasoning and the six rules: docs/fleet.md ("Why a look after
verify_after_s is enough").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from spoold.config import Config, TableSpec
from spoold.errors import CatalogError, SpoolError
from spoold.iceberg.sink import CommitOutcome, TableSink
from spoold.iceberg.snapshots import history_ids
from spoold.spool import held
from spoold.spool.spool import Spool

log = logging.getLogger(__name__)
RETRY_S = 10.0  # a look the catalog could not answer is tried again after at least this long


class Keeper:
    """What becomes of spool files once the commit holding their rows returned: deleted, or held."""

    def __init__(self, config: Config, spool: Spool, table: str) -> None:
        self.config, self.spool, self.table = config, spool, table
        self._commits: dict[str, list[held.Commit]] = {}  # file stem -> commits to tables not verified

    def commit_done(self, names: Sequence[str], done: Sequence[Path], out: CommitOutcome | None) -> None:
        """``out``: the commit of a chunk holding rows of the files ``names`` (None: the chunk had no
        rows); ``done``: the files whose every row is now committed (or quarantined)."""
        if out is not None and out.snapshot_id is not None and not out.verified:
            commit = held.Commit(out.table_uuid or "", out.snapshot_id, out.metadata_location or "")
            for name in names:
                self._commits.setdefault(name, []).append(commit)
        gone: list[Path] = []
        kept: list[str] = []
        for path in done:
            commits = self._commits.pop(path.stem, [])
            trusted = out is not None and out.verified and all(c.table_uuid == out.table_uuid for c in commits)
            if not commits or trusted:
                gone.append(path)
            else:
                held.hold(self.spool, self.table, path, commits, time.time() + self.config.flush.verify_after_s)
                kept.append(path.name)
        if kept:
            log.info("table %s: committed (snapshot %s); the catalog may still replace a table this new, so %s "
                     "stay in %s/ until a look in %gs shows the commit (docs/fleet.md)", self.table,
                     out.snapshot_id if out else "-", ", ".join(kept), held.HELD, self.config.flush.verify_after_s)
        self.spool.remove(p for p in gone if p.parent.name != held.HELD)
        for path in gone:
            if path.parent.name == held.HELD:
                held.release(path)


def recheck(config: Config, spool: Spool, tables: TableSink, table: str, now: float | None = None) -> int:
    """Look at ``table``'s held files that are due: delete those whose commits a fresh load shows,
    put the others back into the flush queue. Returns how many were put back.

    Called by flush, under the table's flush lock, before it lists the flush queue.
    """
    entries = held.entries(spool, table)
    if not entries:
        return 0
    held.sweep_temp(spool, table)
    spec = config.table(table)
    now = time.time() if now is None else now
    trusted = tables.verified(spec)  # a verified table: every held file may be looked at now
    due = [(p, r) for p, r in entries if trusted or r is None or r.due <= now]
    if not due:
        return 0
    try:
        served = tables.load(spec)
    except CatalogError as e:
        retry = now + max(config.flush.verify_after_s, RETRY_S)
        for path, rec in due:
            if rec is not None:
                held.postpone(path, rec, retry, spool.group)
        log.warning("table %s: cannot verify %d held file(s) now, trying again in %.0fs: %s", table, len(due),
                    retry - now, e)
        return 0
    uuid = str(served.metadata.table_uuid) if served is not None else None
    ids = history_ids(served) if served is not None else set()
    requeued = 0
    for path, _ in due:
        with held.claim(path) as ours:  # not ours: a copy its backfill is still committing (or gone)
            rec = held.record(path) if ours else None  # read again under the lock: its commit may have returned
            if ours and (trusted or rec is None or rec.due <= now):
                requeued += _look(spool, tables, spec, path, rec, uuid, ids)
    return requeued


def _look(spool: Spool, tables: TableSink, spec: TableSpec, path: Path, rec: held.Record | None, uuid: str | None,
          ids: set[int]) -> int:
    """Release ``path`` if the served table holds all its commits, else re-queue it; 1 if re-queued."""
    table = spec.identifier
    if rec is None:
        log.warning("table %s: %s has no record of a finished commit; its rows go back into the flush "
                    "queue (settled again by key: nothing doubles)", table, path.name)
    else:
        lost = [c for c in rec.commits if c.table_uuid != uuid or c.snapshot_id not in ids]
        if not lost:
            held.release(path)
            if uuid is not None and not tables.verified(spec):
                tables.pin(spec, uuid)
            return 0
        for c in lost:
            log.error("table %s: LOST COMMIT: snapshot %d of table uuid %s (metadata %s), which held the rows "
                      "of %s, is not in the table the catalog serves now (uuid %s; a create that was not "
                      "atomic replaced the table, or the commit was undone); its rows go back into the "
                      "flush queue and are committed again", table, c.snapshot_id, c.table_uuid,
                      c.metadata_location, path.name, uuid or "none")
    try:
        held.requeue(spool, table, path)
    except SpoolError as e:  # e.g. a full spool refuses a copy's rows: they stay held, tried again next time
        log.warning("table %s: cannot put %s back into the flush queue now (%s); it stays held", table,
                    path.name, e)
        return 0
    return 1
