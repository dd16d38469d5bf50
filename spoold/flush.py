"""Flush: rotate → read with THE rules → quarantine → settle (committed only) → commit → clean up.

Large spools go in chunks of ``flush.chunk_rows`` rows, one commit each, so
memory stays bounded. A flush file is deleted only after every row it holds
is in a durable commit (or quarantined); if we die between commit and
cleanup, the next flush finds those keys committed, commits nothing new and
deletes the files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from spoold.config import Config
from spoold.envelope import Validator
from spoold.errors import SpooldError
from spoold.iceberg.schema import table_types
from spoold.iceberg.sink import CommitOutcome, Sink
from spoold.iceberg.verify import Keeper, recheck
from spoold.pipeline import CommitPipeline
from spoold.settle import Batch, gc_paused
from spoold.spool import Spool, quarantine_record, read_validated, write_atomic
from spoold.status import LAST_FLUSH

log = logging.getLogger(__name__)


@dataclass
class FlushResult:
    committed: int = 0
    deduplicated: int = 0
    quarantined: int = 0
    files: int = 0
    snapshot_id: int | None = None

    def summary(self) -> dict[str, int]:
        return {"committed": self.committed, "deduplicated": self.deduplicated, "quarantined": self.quarantined}


@dataclass
class _Chunk:
    batch: Batch
    files_done: list[Path] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


# Rejects are published per flush file, in parts cut at points that depend on the
# file alone (never on chunking, which shifts when earlier files are gone), so a
# retried flush rewrites the same quarantine files instead of adding copies.
_QUARANTINE_PART = 10_000  # records
_QUARANTINE_PART_BYTES = 64 << 20  # raw bytes of the lines they came from


def flush_table(config: Config, spool: Spool, sink: Sink, table: str, *, rotate: bool = True) -> FlushResult:
    """Commit everything pending for ``table`` once. Never raises on bad spool lines."""
    config.table(table)  # validates the identifier before anything is touched
    result = FlushResult()
    started = time.time()
    if not spool.table_dir(table).is_dir():
        return result  # nothing was ever spooled for it
    try:
        with spool.flush_lock(table):
            spool.sweep_temp(table)
            recheck(config, spool, sink, table)  # rows held for a table not verified yet: delete or re-queue
            if rotate:
                spool.rotate(table)
            files = spool.flush_files(table)
            result.files = len(files)
            if files:
                with gc_paused():
                    _flush_files(config, spool, sink, table, files, result)
    except SpooldError as e:
        _record(spool, table, started, result, f"error: {e}")
        raise
    if result.files:
        _record(spool, table, started, result, "ok")
    return result


def _flush_files(config: Config, spool: Spool, sink: Sink, table: str, files: list[Path], result: FlushResult) -> None:
    spec = config.table(table)
    tbl = sink.load(spec, reuse=True)  # stale columns surface as a conflict at commit, then it reloads
    types, required = table_types(tbl.schema()) if tbl is not None else ({}, frozenset[str]())
    validator = Validator(spec, types, required)
    chunk = _Chunk(Batch(validator.types))
    pipeline = CommitPipeline(sink, spec)  # chunk k commits while chunk k+1 is read
    keeper = Keeper(config, spool, table)

    def commit() -> None:
        nonlocal chunk
        batch, done, names = chunk.batch, chunk.files_done, chunk.names
        finished = {p.stem for p in done}
        # a file split across chunks goes on in the next one
        chunk = _Chunk(Batch(validator.types), names=[n for n in names[-1:] if n not in finished])
        if not len(batch):
            pipeline.join()  # the files' earlier rows may still be committing
            keeper.settled(names, done, None)
            return

        def committed(out: CommitOutcome) -> None:
            result.committed += out.committed
            result.deduplicated += out.deduplicated
            result.snapshot_id = out.snapshot_id or result.snapshot_id
            keeper.settled(names, done, out)  # every row is in a durable commit: deleted, or held until verified

        pipeline.submit(batch, validator, {"spoold.op": "flush", "spoold.files": ",".join(names)}, committed)

    def publish(path: Path, rejects: list[dict[str, Any]]) -> None:
        if rejects:
            spool.quarantine(table, f"{path.stem}-{rejects[0]['line']:010d}", rejects)
            result.quarantined += len(rejects)
            log.warning("table %s: quarantined %d bad line(s)/row(s) of %s, first: %s", table,
                        len(rejects), path.name, rejects[0]["reason"])

    try:
        for path in files:
            chunk.names.append(path.stem)
            rejects: list[dict[str, Any]] = []
            size = 0
            for lineno, raw, verdict in read_validated(path, validator):
                if verdict.error is not None:
                    rejects.append(quarantine_record(verdict.error, path.name, lineno, raw))
                    size += len(raw)
                else:
                    columns = _columns(raw) if verdict.rejects else None
                    for rej in verdict.rejects:
                        rejects.append(quarantine_record(
                            rej.reason, path.name, lineno, row_index=rej.index, columns=columns, row=rej.row
                        ))
                    size += len(raw) if verdict.rejects else 0
                    chunk.batch.add(verdict)
                if len(rejects) >= _QUARANTINE_PART or size >= _QUARANTINE_PART_BYTES:
                    publish(path, rejects)
                    rejects, size = [], 0
                if len(chunk.batch) >= config.flush.chunk_rows:
                    commit()
            publish(path, rejects)  # before the file can be deleted by the commit that finishes it
            chunk.files_done.append(path)
        commit()
        pipeline.join()
    finally:
        pipeline.close()
    # Hand a big flush's Arrow buffers back to the OS (~100 MB at 100k-row chunks): the daemon idles long after.
    pa.default_memory_pool().release_unused()


def _columns(raw: bytes) -> Any:
    try:
        return orjson.loads(raw).get("columns")
    except (orjson.JSONDecodeError, AttributeError):
        return None


def _record(spool: Spool, table: str, started: float, result: FlushResult, outcome: str) -> None:
    """Remember the last flush of ``table`` for ``spoold status``."""
    d = spool.table_dir(table)
    if d.is_dir():
        info = {"at": started, "duration_s": round(time.time() - started, 3), "result": outcome, **asdict(result)}
        write_atomic(d / LAST_FLUSH, orjson.dumps(info))


def flush_all(
    config: Config, spool: Spool, sink: Sink, tables: list[str] | None = None
) -> tuple[dict[str, FlushResult], dict[str, SpooldError]]:
    """Flush each table (all spooled tables by default); one table's failure doesn't stop the others."""
    results: dict[str, FlushResult] = {}
    errors: dict[str, SpooldError] = {}
    for table in tables if tables is not None else spool.tables():
        try:
            results[table] = flush_table(config, spool, sink, table)
        except SpooldError as e:
            log.error("table %s: flush failed: %s", table, e)
            errors[table] = e
    return results, errors
