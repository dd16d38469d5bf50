"""The Iceberg side of ``spoold rebuild``: read a table's rows back as JSON values, create, rename, drop.

The orchestration (phases, the state file, the validator) is :mod:`spoold.flush.rebuild`;
this module only talks to the catalog and the table's files (docs/commands.md).
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import logging
import re
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
from pyarrow.fs import FileSelector, FileType
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.table import FileScanTask, Table

from spoold.coltypes import parse
from spoold.config import REBUILD_BACKUP, REBUILD_STAGING, REBUILD_STAMP_RE, TableSpec
from spoold.errors import CatalogError
from spoold.iceberg.catalog import catalog_errors
from spoold.iceberg.maintain.confine import Confine, uri
from spoold.iceberg.maintain.owner import is_metadata, marked, marker_uuid, markers_at, metadata_uuid
from spoold.iceberg.maintain.reachable import filesystem, fs_path
from spoold.iceberg.schema import fits, partition_spec, table_types, type_tree
from spoold.iceberg.tables import Tables

log = logging.getLogger(__name__)
BACKUP, STAGING = REBUILD_BACKUP, REBUILD_STAGING  # names no producer may write to (config.writable_table)


def sibling(table: str, kind: str, stamp: str) -> str:
    """``<ns>.<name><kind><stamp>``: a name in the table's namespace that spoold's identifier rules accept."""
    return f"{table}{kind}{stamp}"


def backups(tables: Tables, table: str) -> list[str]:
    """The backup tables ``spoold rebuild`` left of ``table`` (oldest first)."""
    ns, name = table.rsplit(".", 1)
    pattern = re.compile(re.escape(name + BACKUP) + REBUILD_STAMP_RE)
    with catalog_errors(f"cannot list the tables of {ns}"):
        try:
            idents = tables.catalog().list_tables(ns)
        except NoSuchNamespaceError:  # a namespace that is gone has no backups
            return []
    return sorted(f"{ns}.{i[-1]}" for i in idents if pattern.fullmatch(i[-1]))


def served_uuid(tables: Tables, identifier: str) -> str | None:
    """The uuid of the table the catalog serves under ``identifier`` (None: no such table)."""
    with catalog_errors(f"cannot load {identifier}"):
        try:
            return str(tables.catalog().load_table(identifier).metadata.table_uuid)
        except NoSuchTableError:
            return None


def rename(tables: Tables, old: str, new: str) -> None:
    with catalog_errors(f"cannot rename {old} to {new}"):
        tables.catalog().rename_table(old, new)
    log.info("table %s: renamed to %s", old, new)


def target_types(spec: TableSpec, tbl: Table) -> tuple[dict[str, str], frozenset[str]]:
    """The rebuilt table's columns: the old table's, with the config's declared types over them."""
    types, required = table_types(tbl.schema())
    declared = spec.column_types()
    out = {**types, **declared}
    for name, typ in out.items():
        if parse(typ) is None:
            raise CatalogError(f"table {spec.identifier}: column {name!r} is {typ}, which spoold cannot write; "
                               "a rebuild would lose it")
    return out, required - set(declared)


def up_to_date(spec: TableSpec, tbl: Table) -> bool:
    """True when the table already has the config's declared types and partition spec."""
    schema = tbl.schema()
    for col in spec.columns:
        try:
            field = schema.find_field(col.name)
        except ValueError:
            continue  # a new column: flush adds it
        have, want = type_tree(field), parse(col.type)
        if have != want and not (fits(want, have) and fits(have, want)):  # (string and json are one type)
            return False
    want = [(f.source_id, str(f.transform)) for f in partition_spec(spec, schema).fields]
    have = [(f.source_id, str(f.transform)) for f in tbl.spec().fields]
    return want == have


@dataclass(frozen=True)
class Part:
    """One data file of the snapshot being copied: a stable ``name`` (for quarantine files) and its rows."""

    name: str
    task: FileScanTask
    rows: int


def parts(tbl: Table, snapshot_id: int | None) -> list[Part]:
    """The data files of ``snapshot_id`` (with their deletes), in a stable order."""
    if snapshot_id is None:
        return []
    with catalog_errors(f"cannot plan a scan of {'.'.join(tbl.name())}"):
        tasks = list(tbl.scan(snapshot_id=snapshot_id).plan_files())
    out = [Part(hashlib.sha256(t.file.file_path.encode()).hexdigest()[:16], t, t.file.record_count) for t in tasks]
    return sorted(out, key=lambda p: p.name)


def read_part(tbl: Table, snapshot_id: int, part: Part, max_rows: int) -> Iterator[tuple[list[str], list[list[Any]]]]:
    """The rows of one data file as JSON values (timestamps and dates as ISO-8601), at most ``max_rows`` at a time."""
    scan = tbl.scan(snapshot_id=snapshot_id)
    with catalog_errors(f"cannot read {part.task.file.file_path}"):
        reader = ArrowScan(tbl.metadata, tbl.io, scan.projection(), AlwaysTrue()).to_record_batches([part.task])
        for whole in reader:
            for rb in (whole.slice(at, max_rows) for at in range(0, whole.num_rows, max_rows)):
                columns = rb.schema.names
                values = [_column(rb.column(i)) for i in range(rb.num_columns)]
                yield columns, list(map(list, zip(*values))) if values else []


def _column(col: pa.Array) -> list[Any]:
    """An Arrow column's values as JSON values, read by its type: a map (which Arrow gives as key/value pairs,
    an empty one as ``[]``) becomes an object at any depth, as the validator takes it."""
    if not _has_map(col.type):
        return [_json(v) for v in col.to_pylist()]
    return [_typed(v, col.type) for v in col.to_pylist()]


def _has_map(t: pa.DataType) -> bool:
    if pa.types.is_map(t):
        return True
    if pa.types.is_struct(t):
        return any(_has_map(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _has_map(t.value_type)
    return False


def _typed(v: Any, t: pa.DataType) -> Any:
    if v is None:
        return None
    if pa.types.is_map(t):
        return {str(k): _typed(x, t.item_type) for k, x in v}
    if pa.types.is_struct(t):
        return {t.field(i).name: _typed(v.get(t.field(i).name), t.field(i).type) for i in range(t.num_fields)}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return [_typed(x, t.value_type) for x in v]
    return _json(v)


def _json(v: Any) -> Any:
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, dict):
        return {str(k): _json(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, (decimal.Decimal, uuidlib.UUID)):
        return str(v)
    return str(v)


# -- dropping a backup -------------------------------------------------------------------------------------------
def owned_location(tbl: Table) -> bool:
    """True when the table's location holds its own owner marker and no other table's (maintain/owner.py)."""
    uuid = str(tbl.metadata.table_uuid)
    try:
        return marked(tbl) and markers_at(tbl) <= {uuid}
    except Exception as e:  # the FileIO stack has no common root
        log.info("table %s: cannot check its location's owner: %s", ".".join(tbl.name()), e)
        return False


def load(tables: Tables, identifier: str) -> Table | None:
    with catalog_errors(f"cannot load {identifier}"):
        try:
            return tables.catalog().load_table(identifier)
        except NoSuchTableError:
            return None


def drop(tables: Tables, identifier: str) -> None:
    """Drop ``identifier`` from the catalog (its files stay; see :func:`purge`)."""
    with catalog_errors(f"cannot drop {identifier}"):
        try:
            tables.catalog().drop_table(identifier)
        except NoSuchTableError:
            return
    log.info("table %s: dropped from the catalog", identifier)


def purge(tbl: Table, *, metadata: bool) -> tuple[int, str | None]:
    """Delete the files under a backup table's own location: ``(files deleted, why none)``.

    ``metadata=False`` (before the table is dropped): all but its metadata files and owner
    marker, so a purge killed half-way leaves a table that loads and is purged again;
    ``metadata=True`` (once dropped): everything left. Only where no other table's marker
    or metadata file is there; otherwise nothing is deleted.
    """
    uuid = str(tbl.metadata.table_uuid)
    name, loc = ".".join(tbl.name()), tbl.location().rstrip("/")
    confine = Confine(tbl)
    fs = filesystem(tbl.io, loc)
    try:
        infos = fs.get_file_info(FileSelector(fs_path(tbl.io, loc), recursive=True, allow_not_found=True))
    except OSError as e:
        return 0, f"cannot list {loc}: {e}"
    parsed = urlparse(loc)
    files = [uri(parsed.scheme or "file", parsed.netloc, i.path) for i in infos if i.type == FileType.File]
    for path in files:
        if marker_uuid(path) not in (None, uuid):
            return 0, f"{loc} holds another table's owner marker"
        if is_metadata(path):
            try:
                other = metadata_uuid(tbl, path)
            except OSError:
                other = None
            if other not in (uuid, ""):
                return 0, f"{loc} holds another table's metadata ({path})"
    if not metadata:
        files = [p for p in files if not is_metadata(p) and marker_uuid(p) is None]
    deleted = 0
    for path in sorted(files, key=lambda p: marker_uuid(p) is not None):  # the marker last
        try:
            deleted += confine.delete(path)
        except FileNotFoundError:
            pass
    if metadata and (parsed.scheme or "file") == "file":
        _remove_empty_dirs(fs, fs_path(tbl.io, loc))
    log.debug("table %s: deleted %d file(s) under %s", name, deleted, loc)
    return deleted, None


def _remove_empty_dirs(fs: Any, root: str) -> None:
    """A local location's directories the purge emptied, deepest first (object stores have none)."""
    try:
        infos = fs.get_file_info(FileSelector(root, recursive=True, allow_not_found=True))
    except OSError:
        return
    if any(i.type == FileType.File for i in infos):
        return  # something stayed (a file that could not be deleted): keep the tree
    for d in sorted((i.path for i in infos if i.type == FileType.Directory), key=len, reverse=True) + [root]:
        try:
            fs.delete_dir(d)
        except OSError:
            pass
