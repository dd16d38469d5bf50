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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from spoold._testhooks import reached
from spoold.config import Config
from spoold.durable import write_state
from spoold.envelope import Validator
from spoold.errors import SpooldError, TableBusy
from spoold.flush.pipeline import CommitPipeline
from spoold.flush.rebuild import pending
from spoold.flush.verify import Keeper, recheck
from spoold.iceberg.schema import table_types
from spoold.iceberg.sink import CommitOutcome, TableSink
from spoold.keys.batch import Batch, gc_paused
from spoold.layout import LAST_FLUSH
from spoold.sources.detect import source_types
from spoold.spool.files import quarantine_record, read_validated
from spoold.spool.spool import LockHeld, Spool

log = logging.getLogger(__name__)


@dataclass
class FlushResult:
    committed: int = 0
    deduplicated: int = 0
    quarantined: int = 0
    files: int = 0
    snapshot_id: int | None = None
    interrupted: bool = False  # stop() ended it early; the rest stays spooled

    def summary(self) -> dict[str, int]:
        return {"committed": self.committed, "deduplicated": self.deduplicated, "quarantined": self.quarantined}


@dataclass
class _Chunk:
    batch: Batch
    files_done: list[Path] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    bytes: int = 0  # of the spool lines whose rows are in ``batch``


# Rejects are published per flush file, in parts cut at points that depend on the
# file alone (never on chunking, which shifts when earlier files are gone), so a
# retried flush rewrites the same quarantine files instead of adding copies.
_QUARANTINE_PART = 10_000  # records
_QUARANTINE_PART_BYTES = 64 << 20  # raw bytes of the lines they came from


def flush_table(config: Config, spool: Spool, sink: TableSink, table: str, *, rotate: bool = True, wait: bool = True,
                stop: Callable[[], bool] | None = None, tick: Callable[[], None] | None = None,
                result: FlushResult | None = None) -> FlushResult:
    """Commit everything pending for ``table`` once. Never raises on bad spool lines or poison rows.

    ``wait=False``: raise :class:`TableBusy` at once if another flush of this table
    (another process, e.g. ``spoold flush``) holds it, instead of waiting for it.
    ``stop()`` is asked between chunks: once true, what was read is committed and the
    flush ends early (``interrupted``; the rest stays spooled). ``tick()`` is called
    between chunks and while a commit is awaited, at least about once a second.
    ``result``, if given, is filled in as the flush goes: what a flush that fails committed is known.
    An append lock held past its bound (:class:`LockHeld`) only skips the rotation: the files rotated
    before are flushed, then it is raised.
    """
    config.table(table)  # validates the identifier before anything is touched
    result = FlushResult() if result is None else result
    started = time.time()
    if not spool.table_dir(table).is_dir():
        return result  # nothing was ever spooled for it
    try:
        with spool.flush_lock(table, wait=wait):
            if (staging := pending(spool, table)) is not None:  # the table may be missing between its renames
                raise TableBusy(f"table {table} is being rebuilt (into {staging}); its rows stay spooled until "
                                f"it has finished: `spoold rebuild {table}` finishes it (`spoold rebuild {table} "
                                "--abort` rolls it back while it is still copying)")
            spool.sweep_temp(table)
            recheck(config, spool, sink, table)  # rows held for a table not verified yet: delete or re-queue
            held: LockHeld | None = None
            if rotate:
                try:
                    spool.rotate(table)
                except LockHeld as e:  # the rows appended since the last rotation wait; those rotated go now
                    held = e
            files = spool.flush_files(table)
            result.files = len(files)
            if files:
                with gc_paused():
                    _Flush(config, spool, sink, table, result, stop, tick).run(files)
            if held is not None:
                if result.files:
                    _record(spool, table, started, result, "ok")
                raise held  # the caller still learns of the held lock (the daemon backs the table off)
    except SpooldError as e:
        if not isinstance(e, TableBusy):
            _record(spool, table, started, result, f"error: {e}")
            log.debug("table %s: flush failed: %s", table, e)  # every failure, under -v (callers rate-limit theirs)
        raise
    if result.files:
        _record(spool, table, started, result, "ok")
    return result


class _Flush:
    """One flush of one table: read each file with THE rules, cut chunks by rows and bytes, commit."""

    def __init__(self, config: Config, spool: Spool, sink: TableSink, table: str, result: FlushResult,
                 stop: Callable[[], bool] | None, tick: Callable[[], None] | None) -> None:
        self.config, self.spool, self.sink, self.table, self.result = config, spool, sink, table, result
        self.stop, self.tick = stop, tick
        spec = config.table(table)
        tbl = sink.load(spec, reuse=True)  # stale columns surface as a conflict at commit, then it reloads
        types, required = table_types(tbl.schema()) if tbl is not None else ({}, frozenset[str]())
        self.validator = Validator(spec, types, required, hints=source_types(config, table))
        self.chunk = _Chunk(Batch(self.validator.types))
        # chunk k commits while k+1 is read
        self.pipeline = CommitPipeline(sink, spec, spool, "flush", self._rejected, tick)
        self.keeper = Keeper(config, spool, table)

    def run(self, files: list[Path]) -> None:
        settings = self.config.flush
        try:
            for path in files:
                if self.stop is not None and self.stop():
                    self.result.interrupted = True
                    break
                self.chunk.names.append(path.stem)
                if not self._read(path, settings.chunk_rows, settings.chunk_bytes):
                    self.result.interrupted = True
                    break
                self.chunk.files_done.append(path)
            self._commit()
            self.pipeline.join()
        finally:
            self.pipeline.close()
        # Hand a big flush's Arrow buffers back to the OS (~100 MB at 100k-row chunks): the daemon idles long after.
        pa.default_memory_pool().release_unused()

    def _read(self, path: Path, chunk_rows: int, chunk_bytes: int) -> bool:
        """Feed one file's lines to the chunks; False if ``stop()`` ended the flush inside it."""
        rejects: list[dict[str, Any]] = []
        size = 0
        for lineno, raw, verdict in read_validated(path, self.validator, self.spool.bounds.limits.max_line_bytes):
            if verdict.error is not None:
                rejects.append(quarantine_record(verdict.error, path.name, lineno, raw))
                size += len(raw)
            else:
                columns = _columns(raw) if verdict.rejects else None
                for rej in verdict.rejects:
                    rejects.append(quarantine_record(
                        rej.reason, path.name, lineno, row_index=rej.index, key=rej.key, columns=columns, row=rej.row
                    ))
                size += len(raw) if verdict.rejects else 0
                if verdict.keys:
                    self.chunk.batch.add(verdict)
                    self.chunk.bytes += len(raw)
            if len(rejects) >= _QUARANTINE_PART or size >= _QUARANTINE_PART_BYTES:
                self._publish(path, rejects)
                rejects, size = [], 0
            if len(self.chunk.batch) >= chunk_rows or self.chunk.bytes >= chunk_bytes:
                self._commit()
                if self.stop is not None and self.stop():
                    return False
        self._publish(path, rejects)  # before the file can be deleted by the commit that finishes it
        return True

    def _commit(self) -> None:
        chunk = self.chunk
        finished = {p.stem for p in chunk.files_done}
        # a file split across chunks goes on in the next one
        self.chunk = _Chunk(Batch(self.validator.types), names=[n for n in chunk.names[-1:] if n not in finished])
        if self.tick is not None:
            self.tick()
        if not len(chunk.batch):
            self.pipeline.join()  # the files' earlier rows may still be committing
            self.keeper.commit_done(chunk.names, chunk.files_done, None)
            return
        result, done = self.result, chunk.files_done

        def committed(out: CommitOutcome) -> None:
            result.committed += out.committed
            result.deduplicated += out.deduplicated
            result.snapshot_id = out.snapshot_id or result.snapshot_id
            # every row of these files is in a durable commit (or quarantine) now: deleted, or held until verified
            reached("flush.committed")  # test-only mark: a crash here must double nothing
            self.keeper.commit_done(chunk.names, done, out)
            reached("flush.removed")

        props = {"spoold.op": "flush", "spoold.files": ",".join(chunk.names)}
        self.pipeline.submit(chunk.batch, self.validator, props, committed)

    def _rejected(self, reason: str) -> None:
        """A row no commit can take was quarantined (on the commit thread)."""
        self.result.quarantined += 1

    def _publish(self, path: Path, rejects: list[dict[str, Any]]) -> None:
        if rejects:
            self.spool.quarantine(self.table, f"{path.stem}-{rejects[0]['line']:010d}", rejects)
            self.result.quarantined += len(rejects)
            log.warning("table %s: quarantined %d bad line(s)/row(s) of %s, first: %s", self.table,
                        len(rejects), path.name, rejects[0]["reason"])


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
        write_state(d / LAST_FLUSH, orjson.dumps(info), spool.group)


def flush_all(
    config: Config, spool: Spool, sink: TableSink, tables: list[str] | None = None
) -> tuple[dict[str, FlushResult], dict[str, SpooldError]]:
    """Flush each table (all spooled tables by default); one table's failure doesn't stop the others."""
    results: dict[str, FlushResult] = {}
    errors: dict[str, SpooldError] = {}
    for table in tables if tables is not None else spool.tables():
        try:
            results[table] = flush_table(config, spool, sink, table)
        except SpooldError as e:
            errors[table] = e  # the caller reports it, once
        except Exception as e:  # a bug must not cost the other tables their flush, nor the report
            log.debug("table %s: flush failed", table, exc_info=True)  # the caller reports it; -v shows where
            errors[table] = SpooldError(f"internal error: {type(e).__name__}: {e}")
    return results, errors
