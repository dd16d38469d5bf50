"""A maintenance run of one table, as bounded steps, and its report (``spoold maintain`` and the daemon).

A run: plan the compaction; rewrite the groups, one file read or written
per step; commit every rewritten group in ONE ``replace`` snapshot; expire
snapshots and delete the files only they referenced; delete orphan files;
then record the run in the table property ``spoold.last-maintenance``
(where ``spoold status`` on any host finds it); the caller keeps a copy in
the spool. ``spoold maintain`` (:mod:`spoold.cli.maintain`) runs the steps
back to back; the daemon (:mod:`spoold.daemon.maintainer`) runs a slice of
them between flushes.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from pyiceberg.table import Table

from spoold.config import Config, TableSpec
from spoold.errors import CommitConflict
from spoold.iceberg.catalog import catalog_errors
from spoold.iceberg.maintain.compact import Rewrite, discard, plan, rewrite_steps, target_bytes
from spoold.iceberg.maintain.expire import Expired, expire_snapshots, retention
from spoold.iceberg.maintain.orphans import delete_orphans
from spoold.iceberg.maintain.rewrite import commit_rewrites
from spoold.iceberg.properties import LAST_MAINTENANCE
from spoold.iceberg.snapshots import MemoTransaction
from spoold.iceberg.tables import Tables

log = logging.getLogger(__name__)
_ATTEMPTS = 8
_DONE = object()
# The property's fields (the contract with `spoold status`); the CLI reports these and more.
_PROPERTY_FIELDS = ("at", "host", "duration_s", "snapshots_expired", "files_before", "files_after",
                    "duplicates_removed", "files_deleted", "orphans_deleted")


@dataclass(frozen=True, slots=True)
class Options:
    """``spoold maintain``'s overrides: retention (else ``[maintain]``, else the table's) and dry run.

    ``orphans``: sweep for orphan files this run (the daemon does so at most
    once per ``interval_s``: listing and reading every manifest is the
    costly part of a run, and orphans are rare).
    """

    older_than_s: float | None = None
    keep: int | None = None
    dry_run: bool = False
    orphans: bool = True


@dataclass
class MaintenanceReport:
    at: float = 0.0
    host: str = ""
    duration_s: float = 0.0
    files_before: int = 0
    files_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    files_compacted: int = 0
    files_written: int = 0
    duplicates_removed: int = 0
    snapshots_expired: int = 0
    files_deleted: int = 0
    bytes_deleted: int = 0
    orphans_deleted: int = 0
    orphan_bytes: int = 0
    # Not deleted, as not provably the table's (docs/maintenance.md): the orphan sweep refused (1: the
    # location is shared with another table), write paths outside the location not swept, and files of
    # expired snapshots left in place because they lie outside the location.
    orphans_refused: int = 0
    orphan_paths_outside: int = 0
    expired_outside: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record(self) -> bytes:
        """The compact JSON kept in the table property and the spool."""
        d = self.as_dict()
        return orjson.dumps({k: d[k] for k in _PROPERTY_FIELDS})

    def line(self, table: str) -> str:
        return (f"{table}: {self.files_before} → {self.files_after} data files "
                f"({self.bytes_before / 2**20:.1f} → {self.bytes_after / 2**20:.1f} MiB; {self.files_compacted} "
                f"compacted into {self.files_written}), {self.duplicates_removed} duplicate row(s) removed; "
                f"{self.snapshots_expired} snapshot(s) expired, {self.files_deleted} file(s) deleted; "
                f"{self.orphans_deleted} orphan(s) deleted ({self.orphan_bytes} bytes)"
                + ("; orphan cleanup REFUSED (location shared)" if self.orphans_refused else "")
                + (f"; {self.orphan_paths_outside} path(s) outside the location not swept"
                   if self.orphan_paths_outside else "")
                + (f"; {self.expired_outside} expired file(s) outside the location kept" if self.expired_outside
                   else "")
                + f"; {self.duration_s:.1f}s"
                + (" (dry run: nothing changed)" if self.dry_run else ""))


def run_steps(tables: Tables, config: Config, spec: TableSpec, opts: Options, report: MaintenanceReport,
              index: Callable[[Table], object] | None = None) -> Iterator[str]:
    """One run over ``spec``'s table, one bounded step per ``next()`` (names the step done).

    Rewritten files not yet committed when the run stops (an error, ``close()``)
    are deleted; after a crash they are orphans, cleaned up by a later run.
    ``index``: called with the table before the expiry, to advance a
    committed-key index to the current snapshot (which expiry always keeps):
    an index left on an expired snapshot would have to rescan the table.
    """
    started = time.time()
    report.at, report.host, report.dry_run = started, tables.host, opts.dry_run
    tbl = _load(tables, spec)
    report.files_before, report.bytes_before = totals(tbl)
    target = target_bytes(tbl, config.maintain.target_file_bytes)
    with catalog_errors(f"cannot plan the compaction of {spec.identifier}"):
        groups = plan(tbl, target)
    pending: list[Rewrite] = []
    steps: Generator[None, None, None] | None = None
    try:
        for group in groups:
            pending.append(Rewrite(group))
            steps = rewrite_steps(tbl, pending[-1], spec.key, target, dry_run=opts.dry_run)
            while True:  # one file read or written per step
                with catalog_errors(f"cannot rewrite files of {spec.identifier}"):
                    if next(steps, _DONE) is _DONE:
                        break
                yield "compact"
        if opts.dry_run:
            for rw in pending:
                report.files_compacted += len(rw.group.inputs)
                report.files_written += max(1, math.ceil(rw.group.input_bytes / target))
                report.duplicates_removed += rw.duplicates
        elif pending:
            props = {"spoold.op": "maintain", "spoold.host": tables.host, "spoold.rows": "0"}
            # Handed over before the commit: one that raises may still have landed (an unknown outcome, a
            # step after it failing), and its outputs are then the table's data. commit_rewrites deletes
            # only outputs it knows no snapshot took; any others are orphans for a later run.
            to_commit, pending = pending, []
            done, _, _ = commit_rewrites(tables, spec, to_commit, props)
            for rw in done:
                report.files_compacted += len(rw.group.inputs)
                report.files_written += len(rw.outputs)
                report.duplicates_removed += rw.duplicates
            yield "commit"
    finally:
        if steps is not None:
            steps.close()  # a rewrite cut short deletes its partly written file
        for rw in pending:
            discard(tbl, rw)
    if index is not None and not opts.dry_run:
        index(_load(tables, spec))
    expired = _expire(tables, config, spec, opts)
    report.snapshots_expired, report.files_deleted, report.bytes_deleted, report.expired_outside = (
        expired.snapshots, expired.files_deleted, expired.bytes_deleted, expired.outside)
    yield "expire"
    if opts.orphans:
        tbl = _load(tables, spec)
        orphans = delete_orphans(tbl, lambda: tables.load(spec), min_age_s=config.maintain.orphan_age_s,
                                 dry_run=opts.dry_run, outside_location=config.maintain.orphans_outside_location)
        report.orphans_deleted, report.orphan_bytes = orphans.deleted, orphans.bytes
        report.orphans_refused, report.orphan_paths_outside = int(bool(orphans.refused)), orphans.paths_outside
        yield "orphans"
    tbl = _load(tables, spec)
    report.files_after, report.bytes_after = totals(tbl)
    if opts.dry_run:
        report.files_after = report.files_before - report.files_compacted + report.files_written
        report.bytes_after = report.bytes_before
    report.duration_s = round(time.time() - started, 3)
    if not opts.dry_run:
        _record(tables, spec, report)


def totals(tbl: Table) -> tuple[int, int]:
    """Data files and their bytes in the current snapshot (from its summary: no file is read)."""
    snap = tbl.current_snapshot()
    summary = snap.summary if snap is not None else None
    if summary is None:
        return 0, 0
    return int(summary.get("total-data-files") or 0), int(summary.get("total-files-size") or 0)


def last_record(tbl: Table) -> dict[str, Any] | None:
    """The table's ``spoold.last-maintenance`` record, if it has a readable one."""
    raw = tbl.metadata.properties.get(LAST_MAINTENANCE)
    try:
        doc = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _load(tables: Tables, spec: TableSpec) -> Table:
    tbl = tables.load(spec)
    if tbl is None:
        raise CommitConflict(f"table {spec.identifier} vanished during its maintenance")
    return tbl


def _expire(tables: Tables, config: Config, spec: TableSpec, opts: Options) -> Expired:
    for attempt in range(_ATTEMPTS):
        tbl = _load(tables, spec)
        keep = retention(tbl, config.maintain, older_than_s=opts.older_than_s, keep=opts.keep)
        try:
            return expire_snapshots(tbl, keep, dry_run=opts.dry_run)
        except CommitConflict:
            time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise CommitConflict(f"table {spec.identifier}: snapshot expiry still conflicting after {_ATTEMPTS} attempts")


def _record(tables: Tables, spec: TableSpec, report: MaintenanceReport) -> None:
    """Write the run into the table's properties (a metadata-only commit, retried on conflict)."""
    for attempt in range(_ATTEMPTS):
        tbl = _load(tables, spec)
        try:
            with catalog_errors(f"cannot record the maintenance of {spec.identifier}"):
                MemoTransaction(tbl).set_properties({LAST_MAINTENANCE: report.record().decode()}).commit_transaction()
            return
        except CommitConflict:
            time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise CommitConflict(f"table {spec.identifier}: cannot record its maintenance after {_ATTEMPTS} attempts")
