"""``spoold rebuild TABLE``: re-create a table under the config's schema and partition spec.

For a change Iceberg cannot make in place (``ts`` committed as ``string``, now
declared ``timestamptz``). Every committed row goes through THE validator into
a staging table; rows that no longer pass go to the table's quarantine as
replayable row records. Then two catalog renames swap the tables: the old one
becomes ``<table>__backup_<stamp>`` (kept until ``--drop-backup``), the staging
one takes the name. The table's flush lock is held throughout, so flushes wait
and appends stay spooled until the new table takes them.

Crash-safe through a durable state file (``layout.rebuild_state``: in the daemon's private directory, so a
producer-group member cannot plant one) and keys:

- ``copy``: the staging table's commits are settled against its own keys, so
  copying a data file again adds nothing; quarantine files are named after the
  data file and part they hold, so writing them again replaces them (and a row
  this rebuild quarantined from another file, before a compaction, is not added);
  while the old table moves on (another writer), it is copied again. The state keeps the snapshot to copy
  (``snapshot_id``) apart from the last one copied whole (``copied``): a copy killed half-way is done again;
- ``swap``: each rename is taken only once the catalog shows it is still to do
  (by table uuid), so a re-run after a kill between the two renames finishes it;
  what reached the old table before its rename is copied first;
- while the state file exists flushes and backfills of the table refuse to run
  (the name may be missing between the renames). Re-running
  ``spoold rebuild TABLE`` finishes the work; until the first rename ``--abort`` drops the staging table instead.

Before it starts (and for ``--dry-run``) the rows it would quarantine are counted: more than the table's
quarantine has room for refuses (UsageError), so a rebuild cannot stop half-way on a full quarantine.

See docs/commands.md and docs/troubleshooting.md.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import orjson

from spoold._testhooks import reached
from spoold.config import REBUILD_STAMP, Config, TableSpec
from spoold.durable import fsync_dir, write_state
from spoold.envelope import Validator
from spoold.errors import CatalogError, UsageError
from spoold.iceberg import rebuild as ice
from spoold.iceberg.sink import Sink
from spoold.iceberg.tables import snapshot_id
from spoold.keys.batch import Batch
from spoold.layout import QUARANTINE, REBUILD_DIR, REBUILD_LEGACY, TABLE_UUID, rebuild_state
from spoold.safefile import UnsafeFile, check_dir, private_dir, read_state
from spoold.spool.files import quarantine_record, record_line
from spoold.spool.quarantine import files, read
from spoold.spool.spool import Spool
from spoold.spool.tally import reason_group

log = logging.getLogger(__name__)
_QUARANTINE_PART = 10_000  # records per quarantine file


@dataclass
class RebuildReport:
    """What a rebuild did (or, ``dry_run``, would do). ``rows``: rows read from the old table."""

    table: str
    dry_run: bool = False
    nothing_to_do: bool = False
    rows: int = 0
    copied: int = 0
    deduplicated: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    backup: str | None = None
    dropped: list[str] = field(default_factory=list)
    purged_files: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pending(spool: Spool, table: str) -> str | None:
    """The staging table of an unfinished rebuild of ``table`` (None: none). Flush must not run meanwhile."""
    state = load_state(spool, table)
    return None if state is None else str(state.get("staging"))


def rebuild(config: Config, table: str, *, dry_run: bool = False, progress: Any = None) -> RebuildReport:
    """Rebuild ``table`` (see the module docstring). UsageError if the catalog has no such table."""
    spec = config.table(table)
    spool = Spool.from_config(config)
    sink = Sink(config)
    try:
        if dry_run:
            return _Rebuild(config, spool, sink, spec, progress).dry_run()
        with spool.flush_lock(table):
            return _Rebuild(config, spool, sink, spec, progress).run()
    finally:
        sink.close()


def remove_state(spool: Spool, table: str) -> None:
    """The rebuild of ``table`` is over: its state files go (flushes go on)."""
    for path in (rebuild_state(spool.root, table), spool.table_dir(table) / REBUILD_LEGACY):
        if path.parent.is_dir():
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)


def quarantine_prefix(state: dict[str, Any]) -> str:
    """The name prefix of the quarantine files this rebuild wrote (with its stamp)."""
    return f"rebuild-{state['staging'].rsplit(ice.STAGING, 1)[-1]}-"


class _Rebuild:
    def __init__(self, config: Config, spool: Spool, sink: Sink, spec: TableSpec, progress: Any) -> None:
        self.config, self.spool, self.sink, self.spec, self.progress = config, spool, sink, spec, progress
        self.table = spec.identifier
        self.report = RebuildReport(self.table)
        self.reasons: Counter[str] = Counter()
        self.total = 0
        self._known: dict[Any, str] | None = None
        self.prefix = "rebuild-"  # of this rebuild's quarantine files: with its stamp once it has one

    # -- phases -----------------------------------------------------------------------------------------------
    def run(self) -> RebuildReport:
        state = load_state(self.spool, self.table)
        if state is None:
            old = self._old()
            if ice.up_to_date(self.spec, old):
                self.report.nothing_to_do = True
                return self.report
            limits = self.spool.bounds.limits
            if limits.quarantine_max_bytes or limits.min_free_bytes:  # (a first read, to refuse before starting)
                log.info("table %s: counting what a rebuild would quarantine", self.table)
                _Rebuild(self.config, self.spool, self.sink, self.spec, self.progress).survey(old)
            stamp = time.strftime(REBUILD_STAMP, time.gmtime())
            state = {"phase": "copy", "uuid": str(old.metadata.table_uuid), "snapshot_id": snapshot_id(old),
                     "staging": ice.sibling(self.table, ice.STAGING, stamp),
                     "backup": ice.sibling(self.table, ice.BACKUP, stamp)}
            self._save(state)
            log.info("table %s: rebuilding into %s (the old table will be kept as %s)", self.table,
                     state["staging"], state["backup"])
        else:
            log.info("table %s: going on with the unfinished rebuild into %s", self.table, state["staging"])
        self.report.backup = state["backup"]
        self.prefix = quarantine_prefix(state)
        if state["phase"] == "copy":
            state["new_uuid"] = self._copy(state, self.table)
            state["phase"] = "swap"
            self._save(state)
            reached("rebuild.copied")
        self._swap(state)
        self.report.reasons = dict(self.reasons.most_common())
        return self.report

    def dry_run(self) -> RebuildReport:
        self.report.dry_run = True
        state = load_state(self.spool, self.table)
        if state is not None:
            raise UsageError(f"table {self.table}: a rebuild into {state['staging']} is unfinished; "
                             f"`spoold rebuild {self.table}` finishes it")
        old = self._old()
        if ice.up_to_date(self.spec, old):
            self.report.nothing_to_do = True
            return self.report
        self.report.backup = ice.sibling(self.table, ice.BACKUP, "<stamp>")
        self.survey(old)
        return self.report

    def survey(self, old: Any) -> None:
        """Count what copying ``old`` would copy and quarantine (into the report, as a dry run); UsageError
        when the quarantine records would not fit in the room the table's quarantine has left."""
        self.report.dry_run = True
        validator = Validator(self.spec, *ice.target_types(self.spec, old))
        snap = snapshot_id(old)
        parts = ice.parts(old, snap)
        self.total = sum(p.rows for p in parts)
        seen: set[str] = set()
        size = 0
        for part in parts:
            in_part = line = 0
            for columns, rows in ice.read_part(old, snap or 0, part, self.config.flush.chunk_rows):
                verdict = validator.rows(columns, rows)
                self._count(len(rows), verdict.rejects)
                in_part += sum(len(record_line(self._reject(rej, columns, line))) for rej in verdict.rejects)
                line += len(rows)
                new = set(verdict.keys) - seen
                self.report.copied += len(new)
                self.report.deduplicated += len(verdict.keys) - len(new)
                seen |= new
            size += -(-in_part // 4096) * 4096  # a quarantine file takes whole blocks
        self.report.reasons = dict(self.reasons.most_common())
        room, budget = self._room()
        if size > room:
            raise UsageError(f"table {self.table}: a rebuild would quarantine {self.report.quarantined} row(s), "
                             f"{size} bytes as quarantine records, more than the {max(room, 0)} bytes its "
                             f"quarantine has left ([spool] quarantine_max_bytes = {budget}, and min_free_bytes); "
                             "raise quarantine_max_bytes, or replay or remove quarantine files, and run it again; "
                             "nothing was changed")

    def _room(self) -> tuple[int, int]:
        """(bytes the table's quarantine has left, its budget) as flush counts them."""
        budget = self.spool.bounds.limits.quarantine_max_bytes
        qdir = self.spool.table_dir(self.table) / QUARANTINE
        if qdir.is_dir():
            return self.spool.bounds.quarantine_room(qdir, qdir / ".rebuild-survey"), budget
        return (budget or 1 << 62), budget

    def _reject(self, rej: Any, columns: list[str], line: int) -> dict[str, Any]:
        return quarantine_record(rej.reason, f"{self.table} before its rebuild", line + rej.index + 1, key=rej.key,
                                 columns=columns, row=rej.row)

    def _old(self) -> Any:
        """The table as the catalog serves it now (UsageError: there is none)."""
        self.sink.tables.forget(self.spec)
        tbl = self.sink.load(self.spec)
        if tbl is None:
            raise UsageError(f"table {self.table}: not in the catalog (nothing to rebuild)")
        return tbl

    def _source(self, name: str) -> Any:
        """The old table, under its name or (once renamed) its backup name."""
        if name == self.table:
            return self._old()
        tbl = ice.load(self.sink.tables, name)
        if tbl is None:
            raise CatalogError(f"table {self.table}: its backup {name} is not in the catalog; left as it is (the "
                               f"state file {self._path()} says what was planned)")
        return tbl

    def _copy(self, state: dict[str, Any], name: str) -> str:
        """Copy every row of the old table's snapshot into staging; again while the old table moved on."""
        old = self._source(name)
        if str(old.metadata.table_uuid) != state["uuid"]:
            raise CatalogError(f"table {self.table} was replaced during its rebuild (uuid {old.metadata.table_uuid}, "
                               f"was {state['uuid']}); drop {state['staging']} and the state file "
                               f"{self._path()} to start again")
        types, required = ice.target_types(self.spec, old)
        staging = replace(self.spec, identifier=state["staging"])
        created = self.sink.tables.ensure(staging, types)  # loads what a kill left, or creates (and reloads)
        reached("rebuild.created")
        while True:
            snap = state["snapshot_id"]
            if "copied" not in state or state["copied"] != snap:  # (a state without it: copy again, keys settle)
                validator = Validator(self.spec, types, required)
                parts = ice.parts(old, snap)
                self.total = sum(p.rows for p in parts)
                self.report.rows = self.report.quarantined = 0  # (a copy again rewrites the same quarantine files)
                self.reasons.clear()
                for part in parts:
                    self._copy_part(old, snap, part, staging, validator)
                state["copied"] = snap
                self._save(state)
            old = self._source(name)
            if snapshot_id(old) == snap:
                return str(created.metadata.table_uuid)
            # Someone committed to the old table meanwhile (a backfill, another host): copy again, keys settle it.
            state["snapshot_id"] = snapshot_id(old)
            self._save(state)
            reached("rebuild.recopy")  # test-only mark: a newer snapshot is to copy, none of it copied yet

    def _copy_part(self, old: Any, snap: int, part: ice.Part, staging: TableSpec, validator: Validator) -> None:
        batch = Batch(validator.types)
        rejects: list[dict[str, Any]] = []
        seq = line = 0
        chunk = self.config.flush.chunk_rows
        for columns, rows in ice.read_part(old, snap, part, chunk):
            verdict = validator.rows(columns, rows)
            self._count(len(rows), verdict.rejects)
            rejects.extend(self._reject(rej, columns, line) for rej in verdict.rejects)
            line += len(rows)
            batch.add(verdict)
            if len(batch) >= chunk:
                self._commit(staging, batch, validator, part)
                batch = Batch(validator.types)
            if len(rejects) >= _QUARANTINE_PART:
                self._quarantine(part, seq, rejects)
                seq, rejects = seq + 1, []
        self._commit(staging, batch, validator, part)
        self._quarantine(part, seq, rejects)

    def _commit(self, staging: TableSpec, batch: Batch, validator: Validator, part: ice.Part) -> None:
        if not len(batch):
            return
        out = self.sink.commit(staging, batch, validator.types, {"spoold.op": "rebuild", "spoold.part": part.name})
        self.report.copied += out.committed
        self.report.deduplicated += out.deduplicated
        reached("rebuild.committed")  # test-only mark: a kill here must double nothing

    def _quarantine(self, part: ice.Part, seq: int, rejects: list[dict[str, Any]]) -> None:
        # Named after the data file and part: a copy done again replaces, never adds. A row whose file
        # another writer rewrote meanwhile (a compaction of the old table) is in another file already.
        name = f"{self.prefix}{part.name}-{seq:06d}"
        known = self._quarantined()
        rejects = [r for r in rejects if known.setdefault(r.get("key"), name) == name or r.get("key") is None]
        if rejects:
            self.spool.quarantine(self.table, name, rejects)
            self.report.quarantined += len(rejects)

    def _quarantined(self) -> dict[Any, str]:
        """The keys of the rows an earlier run of this rebuild quarantined, and the file each is in."""
        if self._known is None:
            self._known = {}
            for path in sorted(files(self.spool, self.table)):
                if path.name.startswith(self.prefix):
                    for rec in read(path):
                        self._known.setdefault(rec.get("key"), path.stem)
        return self._known

    def _count(self, rows: int, rejects: list[Any]) -> None:
        self.report.rows += rows
        self.reasons.update(reason_group(r.reason) for r in rejects)
        if self.progress is not None and self.total:
            self.progress.update(self.report.rows, self.report.rows / self.total)
        if self.report.dry_run:
            self.report.quarantined += len(rejects)

    def _swap(self, state: dict[str, Any]) -> None:
        """old → backup, staging → name; each step only if the catalog shows it still to do."""
        tables, old_uuid, new_uuid = self.sink.tables, state["uuid"], state["new_uuid"]
        at_name = ice.served_uuid(tables, self.table)
        if at_name == old_uuid:
            ice.rename(tables, self.table, state["backup"])
            reached("rebuild.backed_up")  # test-only mark: the name is free, the staging table not renamed yet
            at_name = None
        if at_name is None:
            backup = ice.load(tables, state["backup"])
            if backup is not None and ("copied" not in state or snapshot_id(backup) != state["copied"]):
                # a commit reached the old table after the copy's last look (another writer): copy it too
                self._copy(state, state["backup"])
            if ice.served_uuid(tables, state["staging"]) != new_uuid:
                raise CatalogError(f"table {self.table}: neither it nor its rebuilt copy {state['staging']} is in "
                                   f"the catalog; the old table is {state['backup']}")
            ice.rename(tables, state["staging"], self.table)
            at_name = new_uuid
        if at_name != new_uuid:
            raise CatalogError(f"table {self.table} (uuid {at_name}) is neither the table being rebuilt nor its "
                               f"rebuilt copy; left as it is (the state file {self._path()} says what was planned)")
        pin = self.spool.table_dir(self.table) / TABLE_UUID
        if pin.exists():  # this spool now commits to the rebuilt table
            write_state(pin, new_uuid.encode(), self.config.spool_group)
        remove_state(self.spool, self.table)
        log.info("table %s: rebuilt (%d row(s) copied, %d quarantined); the old table is %s until "
                 "`spoold rebuild %s --drop-backup`", self.table, self.report.copied, self.report.quarantined,
                 state["backup"], self.table)

    # -- the state file -------------------------------------------------------------------------------------------
    def _path(self) -> Any:
        return rebuild_state(self.spool.root, self.table)

    def _save(self, state: dict[str, Any]) -> None:
        for note in private_dir(self.spool.root / REBUILD_DIR):
            log.warning("spool %s: %s", self.spool.root, note)
        write_state(self._path(), orjson.dumps(state), self.config.spool_group)


def load_state(spool: Spool, table: str) -> dict[str, Any] | None:
    """The state of an unfinished rebuild of ``table`` (None: none). Only spoold's own is read: one in a
    private directory of the spool's owner, or (saved by an older spoold) its owner's file in the table's."""
    path = rebuild_state(spool.root, table)
    try:
        check_dir(path.parent, owner=os.lstat(spool.root).st_uid, private=True)
        data = read_state(path, spool.root, limit=64 << 10)
    except FileNotFoundError:
        path = spool.table_dir(table) / REBUILD_LEGACY
        try:
            data = read_state(path, spool.root, limit=64 << 10)
        except (FileNotFoundError, UnsafeFile):
            return None  # (a member's, a link: planted, it means nothing)
    except UnsafeFile:
        return None  # not spoold's directory (a member made it): no rebuild saved its state there
    try:
        state = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise CatalogError(f"table {table}: the rebuild state file {path} cannot be read ({e}); remove it only "
                           "if no rebuild was started") from None
    if not isinstance(state, dict) or state.get("phase") not in ("copy", "swap") or not all(
            isinstance(state.get(k), str) for k in ("uuid", "staging", "backup")):
        raise CatalogError(f"table {table}: the rebuild state file {path} is not one spoold wrote")
    return state
