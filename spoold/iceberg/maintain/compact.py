"""Compaction: bin-pack a partition's small data files into files near the target size, one row per key.

Planning reads the current snapshot's manifests: per partition (of the
current spec), the data files below 3/4 of the target (Java Iceberg's
``min-file-size-bytes``) are taken in commit order (data sequence number,
then path) into groups of at most the target's worth of input, at least two
files each, none of which is over 2/3 of its group's bytes (see
``_worth_rewriting``). A table with delete files is left alone (spoold
writes none; a rewrite would have to apply them).

Rewriting a group streams it: a first pass reads the key column only and
decides which rows stay; a second pass reads each file's rows batch by batch
and writes the kept ones through pyiceberg's own Parquet writer (so the
table's write properties apply, as for a flush), cutting a new file once the
input behind the current one reaches the target. Memory is bounded by the
group's keys (16-byte fingerprints) plus one row group, not by the table
(~150 MB at a million rows a group). Which copy of a repeated key stays is
deterministic: the row of the earliest-committed file, then the
lowest position; a row is also dropped when an older file of the partition
outside the group holds its key (that file is its *witness*, and must still
be live when the rewrite commits: see :mod:`.rewrite`).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.fileformat import FileFormatFactory
from pyiceberg.io.pyarrow import ArrowScan, _to_requested_schema
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat, ManifestContent
from pyiceberg.schema import Schema, sanitize_column_names
from pyiceberg.table import FileScanTask, Table, TableProperties
from pyiceberg.typedef import Record
from pyiceberg.utils.properties import property_as_int

from spoold.errors import DataError
from spoold.iceberg.maintain.confine import Confine
from spoold.iceberg.snapshots import sync_local_files
from spoold.keys.index import KeyIndex, fingerprints
from spoold.keys.settle import repeats

log = logging.getLogger(__name__)
SMALL_FRACTION = 0.75  # a file below this share of the target is compacted (Java Iceberg's default)
MIN_GROUP_FILES = 2
_ROW_GROUP_BYTES = 16 << 20  # Arrow bytes buffered before a row group is written (~64k chat rows)


@dataclass(frozen=True, slots=True)
class Input:
    """A live data file and its data sequence number (its place in commit order)."""

    file: DataFile
    seq: int

    @property
    def order(self) -> tuple[int, str]:
        return self.seq, self.file.file_path


@dataclass
class Group:
    """Small files of one partition rewritten together, and the partition's older files outside it."""

    spec_id: int
    partition: Record
    inputs: list[Input]
    older: list[Input] = field(default_factory=list)

    @property
    def input_bytes(self) -> int:
        return sum(i.file.file_size_in_bytes for i in self.inputs)


@dataclass
class Rewrite:
    """A rewritten group, written but not committed."""

    group: Group
    outputs: list[DataFile] = field(default_factory=list)
    duplicates: int = 0
    witnesses: set[str] = field(default_factory=set)

    @property
    def seq(self) -> int:
        """The outputs' data sequence number: the group's earliest, so commit order stays as it was."""
        return min(i.seq for i in self.group.inputs)


def target_bytes(tbl: Table, default: int) -> int:
    """The table's ``write.target-file-size-bytes`` if it sets one, else ``default``."""
    return property_as_int(tbl.metadata.properties, TableProperties.WRITE_TARGET_FILE_SIZE_BYTES, default) or default


def live_files(tbl: Table) -> tuple[dict[str, Input], bool]:
    """The current snapshot's live data files by path, and whether it has any delete files."""
    snap = tbl.current_snapshot()
    files: dict[str, Input] = {}
    deletes = False
    if snap is None:
        return files, deletes
    for manifest in snap.manifests(tbl.io):
        for e in manifest.fetch_manifest_entry(tbl.io, discard_deleted=True):
            if manifest.content != ManifestContent.DATA or e.data_file.content != DataFileContent.DATA:
                deletes = True
            else:
                files[e.data_file.file_path] = Input(e.data_file, e.sequence_number or 0)
    return files, deletes


def plan(tbl: Table, target: int) -> list[Group]:
    """The groups to rewrite now, oldest partition first."""
    files, deletes = live_files(tbl)
    if deletes:
        log.info("table %s has delete files: not compacting it", ".".join(tbl.name()))
        return []
    spec_id = tbl.metadata.default_spec_id
    parts: dict[tuple[int, Any], list[Input]] = defaultdict(list)
    for inp in files.values():
        parts[(inp.file.spec_id, tuple(inp.file.partition))].append(inp)
    groups = []
    for (sid, _), inputs in sorted(parts.items(), key=lambda kv: min(i.order for i in kv[1])):
        inputs.sort(key=lambda i: i.order)
        small = [i for i in inputs if sid == spec_id and i.file.file_format == FileFormat.PARQUET
                 and i.file.file_size_in_bytes < target * SMALL_FRACTION]
        packed: list[list[Input]] = []
        size = 0
        for inp in small:
            if not packed or size + inp.file.file_size_in_bytes > target:
                packed.append([])
                size = 0
            packed[-1].append(inp)
            size += inp.file.file_size_in_bytes
        if len(packed) > 1 and len(packed[-1]) < MIN_GROUP_FILES:
            lone = packed.pop()
            packed[-1] += lone  # a lone trailing file joins the group before it
        for chunk in packed:
            chunk = _worth_rewriting(chunk)
            if len(chunk) < MIN_GROUP_FILES:
                continue
            chosen = {i.file.file_path for i in chunk}
            newest = chunk[-1].order
            older = [i for i in inputs if i.file.file_path not in chosen and i.order < newest]
            groups.append(Group(sid, chunk[0].file.partition, chunk, older))
    return groups


def _worth_rewriting(chunk: list[Input]) -> list[Input]:
    """Without a file that would be over 2/3 of its group's bytes: rewriting it would mostly copy it.

    So a partition's compacted file grows geometrically (it joins a rewrite
    once half its size in new data has gathered), and each row is rewritten
    a few times (log1.5 of target / data per run), not at every run.
    """
    while len(chunk) >= MIN_GROUP_FILES:
        biggest = max(chunk, key=lambda i: i.file.file_size_in_bytes)
        if biggest.file.file_size_in_bytes * 3 <= 2 * sum(i.file.file_size_in_bytes for i in chunk):
            break
        chunk = [i for i in chunk if i is not biggest]
    return chunk


def rewrite(tbl: Table, group: Group, key: str, target: int, *, dry_run: bool = False) -> Rewrite:
    """Rewrite ``group`` into new data files (or, ``dry_run``, only count its repeated keys), at once."""
    out = Rewrite(group)
    for _ in rewrite_steps(tbl, out, key, target, dry_run=dry_run):
        pass
    return out


def rewrite_steps(tbl: Table, out: Rewrite, key: str, target: int, *,
                  dry_run: bool = False) -> Generator[None, None, None]:
    """Rewrite ``out.group`` into ``out.outputs``, pausing after each file read or written.

    The daemon runs one such piece between flushes, so a flush that falls due
    waits for one small file at most. The outputs are written and fsync'd but
    not committed; if the rewrite fails or is closed, the ones written so far
    are deleted.
    """
    try:
        keep = yield from _keep_masks(tbl, out.group, key, out)
        if not dry_run:
            yield from _write(tbl, out.group, keep, target, out)
    except BaseException:
        discard(tbl, out)
        raise


def discard(tbl: Table, rw: Rewrite) -> None:
    """Delete a rewrite's uncommitted outputs (best effort, and only inside the table's location:
    orphan cleanup gets any left)."""
    Confine(tbl).tidy(f.file_path for f in rw.outputs)
    rw.outputs = []


# -- pass 1: which rows stay ------------------------------------------------------------------------------
def _fingerprints(tbl: Table, inp: Input, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A file's keys as 128-bit fingerprints (16 bytes a row, as the committed-key index holds them), and nulls."""
    his, los, nulls = [], [], []
    for batch in _batches(tbl, tbl.schema().select(key), inp):
        col = batch.column(0)
        hi, lo = fingerprints([k or "" for k in col.to_pylist()])
        his.append(hi)
        los.append(lo)
        nulls.append(col.is_null().to_numpy(zero_copy_only=False))
    if not his:
        return np.empty(0, np.uint64), np.empty(0, np.uint64), np.empty(0, bool)
    return np.concatenate(his), np.concatenate(los), np.concatenate(nulls)


def _keep_masks(tbl: Table, group: Group, key: str, out: Rewrite) -> Generator[None, None, list[np.ndarray]]:
    """Per input, a bool mask of the rows to keep; counts the dropped ones in ``out.duplicates``.

    Keys are compared as fingerprints, not strings: ~30 bytes a row in all,
    where Arrow strings and their hash table took ~10 times that.
    """
    if key not in tbl.schema().column_names:  # nothing to deduplicate on: every row stays
        return [np.ones(i.file.record_count, dtype=bool) for i in group.inputs]
    parts = []
    for inp in group.inputs:
        parts.append(_fingerprints(tbl, inp, key))
        yield
    sizes = [len(p[0]) for p in parts]
    hi, lo, null = (np.concatenate([p[j] for p in parts]) for j in range(3))
    del parts
    rank = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    # The flush's own rule: the first occurrence of a key stays (here: the earliest-committed copy).
    keep = null | ~repeats(hi, lo, np.argsort(hi, kind="stable"))
    orders = [i.order for i in group.inputs]
    for other in group.older:
        later = np.flatnonzero(keep & ~null & (rank >= _first_rank_after(orders, other.order)))
        if not len(later):
            continue
        theirs = KeyIndex()
        ohi, olo, onull = _fingerprints(tbl, other, key)
        theirs.add_fingerprints(ohi[~onull], olo[~onull])
        hit = theirs.contains_fingerprints(hi[later], lo[later])
        if hit.any():
            keep[later[hit]] = False
            out.witnesses.add(other.file.file_path)
        yield
    out.duplicates = int(len(keep) - keep.sum())
    bounds = np.cumsum([0, *sizes])
    return [keep[bounds[i]:bounds[i + 1]] for i in range(len(sizes))]


def _first_rank_after(orders: list[tuple[int, str]], o: tuple[int, str]) -> int:
    return next((r for r, x in enumerate(orders) if x > o), len(orders))


# -- pass 2: write the kept rows ----------------------------------------------------------------------------
def _write(tbl: Table, group: Group, keep: list[np.ndarray], target: int, out: Rewrite) -> Iterator[None]:
    md = tbl.metadata
    schema = md.schema()
    file_schema = sanitize_column_names(schema)
    model = FileFormatFactory.get(FileFormat.PARQUET)
    write_uuid = uuid.uuid4()
    writer: Any = None
    path = ""
    buffer: list[pa.RecordBatch] = []
    buffered = written_in = 0

    def flush_rows() -> None:
        nonlocal buffer, buffered
        if buffer:
            writer.write(pa.Table.from_batches(buffer))
        buffer, buffered = [], 0

    def close() -> None:
        nonlocal writer
        flush_rows()
        with writer:
            pass
        out.outputs.append(_data_file(tbl, group, path, writer.result()))
        sync_local_files([path])
        writer = None

    try:
        for inp, mask in zip(group.inputs, keep):
            at = 0
            for batch in _batches(tbl, schema, inp):
                m = mask[at:at + len(batch)]
                at += len(batch)
                if len(m) != len(batch):
                    raise DataError(f"{inp.file.file_path}: more rows than keys read (changed under us?)")
                if not m.any():
                    continue
                rows = batch if m.all() else batch.filter(pa.array(m))
                if writer is None:
                    spec = md.specs()[group.spec_id]
                    # (no partition key for an unpartitioned spec: its path "" would make "data//file")
                    path = tbl.location_provider().new_data_location(
                        f"00000-{len(out.outputs)}-{write_uuid}.parquet",
                        _PartitionPath(spec, group.partition, schema) if spec.fields else None)
                    writer = model.create_writer(tbl.io.new_output(path), file_schema, md.properties)
                buffer.append(_to_requested_schema(file_schema, schema, rows, include_field_ids=True,
                                                   format_model=model))
                buffered += buffer[-1].nbytes
                if buffered >= _ROW_GROUP_BYTES:
                    flush_rows()
            if at != len(mask):
                raise DataError(f"{inp.file.file_path}: {at} rows read, {len(mask)} keys (changed under us?)")
            written_in += int(inp.file.file_size_in_bytes * mask.sum() / max(1, len(mask)))
            if writer is not None and written_in >= target:
                close()
                written_in = 0
            yield
        if writer is not None:
            close()
    except BaseException:
        if writer is not None:  # the file being written is no output yet: remove it too
            with contextlib.suppress(Exception):
                writer.close()
            Confine(tbl).tidy([path])
        raise


def _data_file(tbl: Table, group: Group, path: str, stats: Any) -> DataFile:
    f = DataFile.from_args(
        content=DataFileContent.DATA, file_path=path, file_format=FileFormat.PARQUET, partition=group.partition,
        file_size_in_bytes=len(tbl.io.new_input(path)), sort_order_id=None, equality_ids=None, key_metadata=None,
        **stats.to_serialized_dict(),
    )
    f.spec_id = group.spec_id  # not a field of the file (from_args drops it)
    return f


def _batches(tbl: Table, projection: Schema, inp: Input) -> Iterator[pa.RecordBatch]:
    """A file's rows as the table's current schema sees them, streamed batch by batch."""
    scan = ArrowScan(tbl.metadata, tbl.io, projection, AlwaysTrue())
    # The public to_record_batches() materializes a whole file at once; this streams it.
    yield from scan._record_batches_from_scan_tasks_and_deletes([FileScanTask(inp.file)], {})


class _PartitionPath:
    """What a location provider needs of a partition key: its path."""

    def __init__(self, spec: Any, partition: Record, schema: Schema) -> None:
        self._path = spec.partition_to_path(partition, schema)

    def to_path(self) -> str:
        return str(self._path)
