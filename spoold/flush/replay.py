"""``spoold quarantine replay TABLE``: validate quarantined records again; re-spool what passes now.

Each record is judged by THE envelope rules against the current config and the
table's current schema (so a config that widened ``int`` to ``long`` lets the
rows that overflowed pass), according to its kind:

- ``line``: a spool line, validated as flush validates spool lines;
- ``row``: one row (a list beside the envelope's ``columns``, or a row object);
- ``source``: a source line, read again with its format's reader.

Rows that pass go back through the normal append path (``Spool.append``, one
fsync), and only then is the record removed from its quarantine file (the file
is rewritten atomically with what stays). Flush then settles them against the
committed keys like any spooled row. A replay killed anywhere leaves each row in
quarantine, in the spool, or in both; both is harmless (flush keeps one row per
key, and replaying again re-spools a key the table already has: deduplicated),
so nothing is lost and nothing doubled.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from spoold._testhooks import reached
from spoold.config import Config
from spoold.envelope import LineResult, Validator, columnize
from spoold.sources import SourceLineError, materializer
from spoold.sources.detect import source_types
from spoold.spool.quarantine import files, read
from spoold.spool.spool import Spool, fsync_dir, write_atomic

log = logging.getLogger(__name__)


@dataclass
class ReplaySummary:
    """``replayed``: records whose rows went back to the spool; ``kept``: records still in quarantine."""

    replayed: int = 0
    kept: int = 0
    dry_run: bool = False
    rows: int = 0  # rows re-spooled (a line record may hold many)
    table: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def replay(config: Config, table: str, *, dry_run: bool = False, sink: Any = None) -> ReplaySummary:
    """Replay ``table``'s quarantine once (see the module docstring). Raises CatalogError if the table
    cannot be read (its schema decides what passes), SpoolFull/SpoolError if the spool refuses the rows.
    """
    from spoold.iceberg.schema import table_types  # the table's schema: only the flush stack reads it
    from spoold.iceberg.sink import Sink

    spec = config.table(table)
    spool = Spool.from_config(config)
    summary = ReplaySummary(dry_run=dry_run, table=table)
    paths = files(spool, table)
    if not paths:
        return summary
    tbl = (sink or Sink(config)).load(spec)
    types, required = table_types(tbl.schema()) if tbl is not None else ({}, frozenset[str]())
    validator = Validator(spec, types, required, hints=source_types(config, table))
    for path in files(spool, table):
        # A flush of this table publishes quarantine files too; locked per file, so a daemon's
        # flush (and its watchdog) never waits for a whole large replay.
        with spool.flush_lock(table):
            _replay_file(spool, table, path, validator, summary)
    return summary


def _replay_file(spool: Spool, table: str, path: Path, validator: Validator, summary: ReplaySummary) -> None:
    rows: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    replayed = 0
    for rec in read(path):
        passed, stays = judge(rec, validator)
        if passed:
            replayed += 1
            rows += passed
        kept += stays
    summary.replayed += replayed
    summary.kept += len(kept)
    summary.rows += len(rows)
    if not replayed or summary.dry_run:
        return
    spool.append(table, rows)  # durable (fsync'd) before any record goes
    reached("replay.respooled")  # test-only mark: a crash here leaves the rows in both places
    if kept:
        write_atomic(path, b"".join(orjson.dumps(r, default=str) + b"\n" for r in kept), spool.file_mode)
    else:
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)
    log.info("table %s: replayed %d record(s) of %s (%d row(s) re-spooled), %d kept", table, replayed,
             path.name, len(rows), len(kept))
    reached("replay.removed")  # test-only mark: a crash here has finished this file, not the next


def judge(rec: dict[str, Any], validator: Validator) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Validate one record again: ``(rows that pass now, records that stay)``.

    A record that still fails stays with its new reason (the first one is kept
    as ``first_reason``); one whose rows now pass only in part leaves a ``row``
    record for each row that still fails.
    """
    kind = rec.get("kind") or ("row" if "row" in rec else "line")
    row = rec.get("row")
    if kind == "row" and isinstance(row, list) and isinstance(rec.get("columns"), list):
        return _split(rec, rec["columns"], [row], validator, as_objects=False)
    if kind == "row" and isinstance(row, dict) and row:
        cols, matrix = columnize([row])
        return _split(rec, cols, matrix, validator, as_objects=True)
    raw = _raw(rec)
    if raw is None or kind == "row":
        return [], [rec]  # nothing to judge: kept as it is
    if kind == "source":
        try:
            objects = materializer(str(rec.get("format")))(raw)
        except (SourceLineError, ValueError) as e:
            return [], [_still(rec, str(e))]
        if not objects:
            return [], [_still(rec, "the source line gives no rows")]
        cols, matrix = columnize(objects)
        return _split(rec, cols, matrix, validator, as_objects=True)
    verdict = validator.line(raw, True)
    if verdict.error is not None:
        return [], [_still(rec, verdict.error)]
    env = orjson.loads(raw)
    return _split(rec, env["columns"], env["rows"], validator, as_objects=False, verdict=verdict)


def _split(rec: dict[str, Any], columns: list[str], rows: list[Any], validator: Validator, *, as_objects: bool,
           verdict: LineResult | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    verdict = verdict if verdict is not None else validator.rows(columns, rows)
    bad = {r.index: r.reason for r in verdict.rejects}
    passed = [dict(zip(columns, r)) for i, r in enumerate(rows) if i not in bad]
    if len(rows) == 1 and bad:
        return [], [_still(rec, bad[0])]
    stays = []
    for i, reason in sorted(bad.items()):
        row = dict(zip(columns, rows[i])) if as_objects and isinstance(rows[i], list) else rows[i]
        extra = {} if as_objects else {"columns": columns}
        stays.append(_still({k: v for k, v in rec.items() if k not in ("raw", "raw_b64", "raw_escaped", "kind")}
                            | {"kind": "row", "row": row, "row_index": i, **extra}, reason))
    return passed, stays


def _still(rec: dict[str, Any], reason: str) -> dict[str, Any]:
    if reason == rec.get("reason"):
        return rec
    out = dict(rec)
    out.setdefault("first_reason", rec.get("reason"))
    out["reason"] = reason
    return out


def _raw(rec: dict[str, Any]) -> bytes | None:
    if isinstance(rec.get("raw_b64"), str):
        try:
            return base64.b64decode(rec["raw_b64"], validate=True)
        except ValueError:
            return None
    raw = rec.get("raw")
    return raw.encode("utf-8") if isinstance(raw, str) else None
