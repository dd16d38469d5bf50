"""``spoold rebuild TABLE --drop-backup`` and ``--abort``: dropping the tables a rebuild made.

``--drop-backup`` drops the old tables a finished rebuild kept; ``--abort`` rolls
back one still copying (before its first rename): its staging table, the
quarantine files it wrote, then its state file, so flushes go on into the old
table. A table is dropped data first, still in the catalog, so a drop killed
half-way is done again from the start; its files are deleted only where it
provably owns its location.
"""

from __future__ import annotations

import logging

from spoold.config import Config
from spoold.durable import fsync_dir
from spoold.errors import UsageError
from spoold.flush.rebuild import RebuildReport, load_state, pending, quarantine_prefix, remove_state
from spoold.iceberg import rebuild as ice
from spoold.iceberg.sink import Sink
from spoold.layout import QUARANTINE
from spoold.spool.quarantine import files
from spoold.spool.spool import Spool

log = logging.getLogger(__name__)


def drop_backups(config: Config, table: str, *, dry_run: bool = False) -> RebuildReport:
    """Drop the backups ``spoold rebuild`` left of ``table``, and delete their files where they own them."""
    spec = config.table(table)
    spool = Spool.from_config(config)
    report = RebuildReport(table, dry_run=dry_run)
    if pending(spool, table) is not None:
        raise UsageError(f"table {table}: a rebuild is unfinished; `spoold rebuild {table}` finishes it first")
    sink = Sink(config)
    try:
        for name in ice.backups(sink.tables, spec.identifier):
            report.dropped.append(name)
            if not dry_run:
                report.purged_files += _drop(sink, name)
    finally:
        sink.close()
    return report


def abort(config: Config, table: str) -> RebuildReport:
    """Roll back an unfinished rebuild still copying: drop its staging table (and its files where it owns
    them) and the quarantine files it wrote, then its state file, so flushes go on into the old table.
    UsageError once the old table was renamed (re-running the rebuild finishes it) or with none unfinished."""
    config.table(table)
    spool = Spool.from_config(config)
    report = RebuildReport(table)
    sink = Sink(config)
    try:
        with spool.flush_lock(table):
            state = load_state(spool, table)
            if state is None:
                raise UsageError(f"table {table}: no unfinished rebuild to abort")
            at_name = ice.served_uuid(sink.tables, table)
            if at_name != state["uuid"]:
                raise UsageError(f"table {table}: its rebuild is past its first rename (the old table is "
                                 f"{state['backup']}), too late to abort; `spoold rebuild {table}` finishes it")
            # The staging table, then the quarantine files, then the state: an abort killed half-way is run again.
            if ice.load(sink.tables, state["staging"]) is not None:
                report.purged_files = _drop(sink, state["staging"])
            report.dropped.append(state["staging"])
            qdir = spool.table_dir(table) / QUARANTINE
            if qdir.is_dir():
                with spool.tally_lock(table):
                    for path in sorted(files(spool, table)):
                        if path.name.startswith(quarantine_prefix(state)):
                            path.unlink()
                    fsync_dir(qdir)
            remove_state(spool, table)
            log.info("table %s: rebuild into %s aborted; flushes go on into the old table", table, state["staging"])
    finally:
        sink.close()
    return report


def _drop(sink: Sink, name: str) -> int:
    """Drop table ``name``, and delete its files where it provably owns its location: how many were deleted."""
    tbl = ice.load(sink.tables, name)
    if tbl is None:
        return 0
    # Data first, the table still in the catalog: a drop killed half-way is done again from the start.
    owned = ice.owned_location(tbl)
    deleted, why = ice.purge(tbl, metadata=False) if owned else (0, "not provably its own location")
    ice.drop(sink.tables, name)
    if why is None:
        more, why = ice.purge(tbl, metadata=True)
        deleted += more
    if why is not None:
        log.warning("table %s: dropped; its files under %s stay: %s", name, tbl.location(), why)
    return deleted
