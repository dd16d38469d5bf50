"""When may the spool forget rows it committed? Verification of a table before this spool trusts it.

The hazard (issue 12). Some catalogs' create is not atomic: SeaweedFS 4.48's
REST create checks that the name is free, then writes without a condition,
and answers 200 to a second create of an existing table. Hosts A and B both
check, both find the name free, both write: the name goes to whichever wrote
last. If A created first, committed rows, deleted its spool files and exited,
B's *late* write then replaces the table, and A's snapshot is referenced by
nothing: rows lost, silently, with every step acknowledged.

A check right after A's own commit cannot see a write that B has not made
yet. What bounds the window is that a late create is one that was already
under way when the table was created (any create that starts later finds the
table and is answered with it). So a fresh load made at least
``[flush] verify_after_s`` after A's commit (and so after the table's
creation) that still shows the commit means any create racing the table's
creation has landed (assuming none takes longer than that from its check to
its write) and did not replace the table: the commit is safe for good.

The rules that follow, for each spool and table:

1. A create response is never trusted: the table the catalog serves is loaded
   and adopted (:mod:`spoold.iceberg.tables`), so hosts creating a table at
   once all write into the served one and none refuses because another
   created it.
2. Until a table is *verified* (``<spool>/<table>/.table-uuid`` pinned), a
   spool file whose rows were committed is not deleted: it is held aside in
   ``.held/`` with a record of the commits that hold its rows (:mod:`spoold.spool.held`;
   not under ``flush-*.jsonl``, so flush does not read it; status and backfill
   count it as spooled). A flush file split across chunks records every chunk's
   commit: the table may have changed between two of them.
3. Once due, the next flush of the table (or the daemon, for a table with
   nothing else pending) loads the table afresh (:func:`recheck`). A held
   file whose commits are all in the served table's history is deleted, and
   the table's uuid is pinned. A held file with a commit missing is logged
   loudly (the lost snapshot and its metadata location) and put back into the
   flush queue: flush settles its rows again against the committed keys, so
   rows that did survive are not doubled and the others are committed into
   the served table. A catalog that cannot be asked postpones the look;
   nothing is ever deleted on a guess.
4. Once pinned, a commit the catalog acknowledged is trusted (commits are
   compare-and-swap; a later create is answered with the existing table) and
   flush deletes its files at once. A uuid change after that is refused
   loudly, as a replaced table always was (``spoold/iceberg/tables.py``).
5. Where the catalog's create is exclusive (pyiceberg's SQL catalog: an INSERT
   under a primary key), there is no late create: a fresh load right after
   the first commit verifies it (``Tables.confirm``) and nothing waits.
6. Backfill commits straight to the table, with no spool file behind its
   rows. Into a table not verified yet it first writes a durable copy of each
   chunk's rows into ``.held/``, then commits; the copy is then treated as a
   held flush file (deleted once verified, re-queued if its commit vanished,
   and re-queued when it has no record because the run died before its
   commit returned; while the run lives, the copy is locked and every look
   leaves it alone). A verified table needs no copy.

What this does not cover: a create that takes longer than ``verify_after_s``
between its check and its write, landing after the pin. Give a slow gateway
a larger ``verify_after_s``; it only delays the first deletions on each host.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from spoold.config import Config, TableSpec
from spoold.errors import CatalogError, SpoolError
from spoold.iceberg.sink import CommitOutcome
from spoold.iceberg.snapshots import history_ids
from spoold.iceberg.tables import Tables
from spoold.spool import held
from spoold.spool.spool import Spool

log = logging.getLogger(__name__)
RETRY_S = 10.0  # a look the catalog could not answer is tried again after at least this long


class Keeper:
    """What becomes of spool files once the commit holding their rows returned: deleted, or held."""

    def __init__(self, config: Config, spool: Spool, table: str) -> None:
        self.config, self.spool, self.table = config, spool, table
        self._commits: dict[str, list[held.Commit]] = {}  # file stem -> commits to tables not verified

    def settled(self, names: Sequence[str], done: Sequence[Path], out: CommitOutcome | None) -> None:
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
            log.info("table %s: committed to a table not verified yet (snapshot %s); %s held in %s/ until a look "
                     "in %gs", self.table, out.snapshot_id if out else "-", ", ".join(kept), held.HELD,
                     self.config.flush.verify_after_s)
        self.spool.remove(p for p in gone if p.parent.name != held.HELD)
        for path in gone:
            if path.parent.name == held.HELD:
                held.release(path)


def recheck(config: Config, spool: Spool, tables: Tables, table: str, now: float | None = None) -> int:
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
                held.postpone(path, rec, retry)
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


def _look(spool: Spool, tables: Tables, spec: TableSpec, path: Path, rec: held.Record | None, uuid: str | None,
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
