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
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from pyiceberg.table import Table

from spoold._testhooks import reached
from spoold.config import Config, TableSpec
from spoold.errors import CatalogError, CommitConflict, SpooldError
from spoold.iceberg.catalog import catalog_errors
from spoold.iceberg.committed import advance
from spoold.iceberg.maintain.confine import Confine
from spoold.iceberg.maintain.expire import expire_after_commit
from spoold.iceberg.schema import batch_to_arrow, type_conflicts
from spoold.iceberg.snapshots import MemoTransaction, sync_snapshot, unlisted_manifests, without_auto_retry
from spoold.iceberg.tables import Tables
from spoold.keys.batch import Batch
from spoold.keys.index import KeyIndex, fingerprints
from spoold.keys.settle import settle

log = logging.getLogger(__name__)
COMMIT_ATTEMPTS = 10


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    """What one commit did. ``snapshot_id``: the snapshot holding the rows (the new one, or the one
    every row was already in); ``verified``: this spool's commits to that table need no re-check
    (see docs/fleet.md; a fake sink's rows are taken as verified)."""

    committed: int
    deduplicated: int
    snapshot_id: int | None
    table_uuid: str | None = None
    metadata_location: str | None = None
    verified: bool = True

    def then(self, later: CommitOutcome) -> CommitOutcome:
        """This commit and a ``later`` one of the same rows' chunk, as one outcome (rows add up).

        The snapshot to verify is the later one when both are in one table (its
        history holds the earlier one); if the table changed in between, the
        earlier one, whose loss a look must be able to find.
        """
        snap = later if later.snapshot_id is not None else self
        if self.snapshot_id is not None and later.snapshot_id is not None and self.table_uuid != later.table_uuid:
            snap = self
        return CommitOutcome(self.committed + later.committed, self.deduplicated + later.deduplicated,
                             snap.snapshot_id, snap.table_uuid, snap.metadata_location,
                             self.verified and later.verified)


class TableSink(Protocol):
    """What flush, the commit pipeline, backfill and its seen-set need from Iceberg: the seam's contract.

    :class:`Sink` is the real one; tests use one configurable fake (tests/support/fakesink.py).
    """

    def load(self, spec: TableSpec, *, reuse: bool = False) -> Table | None:
        """The table as it stands (``reuse``: the last version seen, which may be stale), or None."""

    def verified(self, spec: TableSpec) -> bool:
        """This spool's commits to the table need no later look (docs/fleet.md)."""

    def pin(self, spec: TableSpec, uuid: str) -> None:
        """A later look showed this spool's commits: trust the table with this uuid from now on."""

    def index(self, spec: TableSpec) -> KeyIndex:
        """The committed-key index as it stands (each commit advances it)."""

    def committed(self, spec: TableSpec, table: Table) -> KeyIndex:
        """The committed-key index, advanced to ``table``'s current snapshot."""

    def commit(
        self, spec: TableSpec, batch: Batch, types: Mapping[str, str], props: Mapping[str, str]
    ) -> CommitOutcome:
        """Settle ``batch`` against the committed keys and commit what is new, in one snapshot."""


class SinkEvents(Protocol):
    """What a sink reports as it commits, to whoever counts (the daemon's metrics and maintenance).

    The seam is handed one and never imports the side that counts.
    """

    def committed(self, table: str) -> None:
        """A commit to ``table`` landed (called on the commit path: no I/O)."""

    def conflict(self, table: str) -> None:
        """A commit to ``table`` conflicted with another writer's and is being re-settled."""


class NoEvents:
    """Nobody counts (``spoold flush``, backfill, tests)."""

    def committed(self, table: str) -> None:
        pass

    def conflict(self, table: str) -> None:
        pass


class Sink:
    """The seam's face for flush and backfill: a table registry (one catalog connection), the
    committed-key index per table, and the commit loop; it satisfies :class:`TableSink`."""

    def __init__(self, config: Config, events: SinkEvents | None = None) -> None:
        self.config = config
        self.tables = Tables(config)
        self.events: SinkEvents = events or NoEvents()

    def close(self) -> None:
        """Close the catalog's connections (the key indexes stay)."""
        self.tables.close()

    # -- tables -----------------------------------------------------------------
    def load(self, spec: TableSpec, *, reuse: bool = False) -> Table | None:
        """The table, or None when it does not exist yet (see :meth:`Tables.load`)."""
        return self.tables.load(spec, reuse=reuse)

    def verified(self, spec: TableSpec) -> bool:
        """This spool's commits to the table need no later look (docs/fleet.md)."""
        return self.tables.verified(spec)

    def pin(self, spec: TableSpec, uuid: str) -> None:
        """Trust the table with this uuid from now on (see :meth:`Tables.pin`)."""
        self.tables.pin(spec, uuid)

    # -- committed keys ---------------------------------------------------------
    def index(self, spec: TableSpec) -> KeyIndex:
        """The committed-key index of ``spec``'s table as it stands (each commit advances it)."""
        return self.tables.indexes.setdefault(spec.identifier, KeyIndex())

    def committed(self, spec: TableSpec, table: Table) -> KeyIndex:
        """The committed-key index, advanced to ``table``'s current snapshot (see :mod:`.committed`)."""
        return advance(self.index(spec), spec, table)

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
        # Only columns holding a value in these rows are added to the table: a column only some
        # other (quarantined) rows had must not fail the rows that never used it.
        present = batch.present_columns()
        types = {c: t for c, t in types.items() if c in present}
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                tbl = self.tables.ensure(spec, types, reuse=not attempt)  # a schema change can conflict too
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
                    return CommitOutcome(0, dups, idx.snapshot_id, str(tbl.metadata.table_uuid),
                                         tbl.metadata_location, self.verified(spec))
                with catalog_errors(f"cannot convert rows for {spec.identifier}"):
                    data = batch_to_arrow(batch, tbl.schema())  # rebuilt on every attempt
                    if len(keep) < len(batch):
                        data = data.take(keep)
                summary = {"spoold.host": self.tables.host, "spoold.rows": str(len(keep)), **props}
                with catalog_errors(f"cannot commit to {spec.identifier}"):
                    new = without_auto_retry(tbl)
                    with MemoTransaction(new) as tx:
                        tx.append(data, snapshot_properties=summary)
                        reached("commit.staged")  # test-only mark: files written, the catalog not told yet
            except CommitConflict as e:
                self.tables.shared(spec)
                self.events.conflict(spec.identifier)
                wait = min(2.0, 0.02 * 2**attempt) * (0.5 + random.random())
                log.info("table %s: commit conflict (%s), re-settling in %.2fs", spec.identifier, e, wait)
                time.sleep(wait)
                continue
            except SpooldError:
                self.tables.forget(spec)
                if attempt:
                    raise  # a DataError twice in a row, on a fresh version: the rows' fault (flush isolates them)
                continue  # the first try reused a version that may be stale (dropped, replaced): load it afresh
            snap = new.current_snapshot()
            assert snap is not None and snap.parent_snapshot_id == idx.snapshot_id
            with catalog_errors(f"cannot sync the files of {spec.identifier}'s new snapshot"):
                sync_snapshot(new)  # before flush deletes the spool copy
            try:  # else they pile up until orphan cleanup, days later; a file left here is left to it
                with catalog_errors(f"cannot read {spec.identifier}'s new snapshot"):
                    Confine(new).tidy(unlisted_manifests(new))
            except SpooldError as e:  # the commit stands whatever happens here
                log.debug("table %s: manifests of the commit not listed are left to orphan cleanup: %s",
                          spec.identifier, e)
            idx.add_fingerprints(fh[keep], fl[keep])
            idx.snapshot_id = snap.snapshot_id
            self.tables.committed_version(spec, new)
            uuid = str(new.metadata.table_uuid)
            verified = self.tables.confirm(spec, uuid, snap.snapshot_id)  # may load afresh: the index is ahead then
            self.events.committed(spec.identifier)
            if self.config.flush.expire_snapshots:
                expire_after_commit(self.tables.latest(spec) or new, self.config.maintain)
            return CommitOutcome(len(keep), dups, snap.snapshot_id, uuid, new.metadata_location, verified)
        raise CommitConflict(f"table {spec.identifier}: still conflicting after {COMMIT_ATTEMPTS} attempts")

