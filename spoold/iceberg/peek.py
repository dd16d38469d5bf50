"""Read-only looks at a catalog's tables for ``spoold status``: their current metadata, as JSON.

Importing pyiceberg (with SQLAlchemy and pyarrow) takes most of a second, so
for the usual local setup, an SQLite catalog with a local warehouse, this
module reads pyiceberg's catalog table and the current metadata files itself
(sqlite3, orjson): status then answers in tens of milliseconds. Any other
catalog goes through pyiceberg. Either way the result is each table's metadata
document exactly as Iceberg writes it (``snapshots``, ``properties``...), plus
``metadata-location``; nothing here ever writes.
"""

from __future__ import annotations

import gzip
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import orjson

from spoold.catalog_keys import sqlite_path
from spoold.config import Config
from spoold.errors import SpooldError

Metadata = dict[str, Any]


def catalog_tables(config: Config, names: Iterable[str] | None = None) -> dict[str, Metadata]:
    """``{identifier: metadata}`` of the catalog's tables (only ``names`` when given; absent ones are left out).

    Raises :class:`SpooldError` (a message naming the ``[catalog]`` key or path)
    when the catalog cannot be read.
    """
    wanted = None if names is None else set(names)
    props = config.catalog_props
    db = sqlite_path(props)
    if db is not None and props.get("type", "sql") == "sql" and "py-io-impl" not in props:
        rows = _sqlite_rows(db, config.catalog_name)
        out: dict[str, Metadata] = {}
        for ident, location in rows.items():
            if wanted is None or ident in wanted:
                out[ident] = _read_metadata(location, props)
        return out
    return _through_pyiceberg(config, wanted)


def _sqlite_rows(db: Path, catalog_name: str) -> dict[str, str]:
    """``{identifier: metadata location}`` from pyiceberg's ``iceberg_tables``, opened read-only."""
    where = f"SQLite catalog {db} ([catalog] uri)"
    try:
        if not db.parent.is_dir():
            raise SpooldError(f"{where}: its directory {db.parent} does not exist")
        if not db.exists():
            return {}  # no commit yet: pyiceberg creates it on first use
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=2)
    except OSError as e:  # e.g. a producer-group member, who may read the spool but not the catalog
        raise SpooldError(f"{where}: {e.strerror or e}") from e
    except sqlite3.Error as e:
        raise SpooldError(f"{where}: {e}") from e
    try:
        try:
            rows = con.execute(
                "SELECT table_namespace, table_name, metadata_location, iceberg_type FROM iceberg_tables "
                "WHERE catalog_name = ?", (catalog_name,)).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return {}  # an empty database file
            if "iceberg_type" not in str(e):
                raise
            rows = [(*r, None) for r in con.execute(  # a catalog made by an older pyiceberg (no views)
                "SELECT table_namespace, table_name, metadata_location FROM iceberg_tables "
                "WHERE catalog_name = ?", (catalog_name,)).fetchall()]
    except sqlite3.Error as e:
        raise SpooldError(f"{where}: {e}") from e
    finally:
        con.close()
    return {f"{ns}.{name}": loc for ns, name, loc, kind in rows if loc and kind in (None, "TABLE")}


def _read_metadata(location: str, props: Mapping[str, str]) -> Metadata:
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        path = unquote(parsed.path) if parsed.scheme else location
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise SpooldError(f"cannot read table metadata {path}: {e.strerror}") from e
    else:  # an object store: only pyiceberg's FileIO knows how to reach it
        from pyiceberg.io import load_file_io

        from spoold.iceberg.catalog import catalog_errors

        with catalog_errors(f"cannot read table metadata {location}"), \
                load_file_io(dict(props), location).new_input(location).open() as f:
            data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise SpooldError(f"table metadata {location} is not valid JSON: {e}") from e
    doc["metadata-location"] = location
    return doc


def _through_pyiceberg(config: Config, wanted: set[str] | None) -> dict[str, Metadata]:
    from pyiceberg.exceptions import NoSuchTableError

    from spoold.iceberg.catalog import catalog_errors, open_catalog

    out: dict[str, Metadata] = {}
    with catalog_errors("cannot read the catalog"):
        catalog = open_catalog(config)
        if wanted is None:
            wanted = set()
            seen: set[tuple[str, ...]] = set()
            todo = list(catalog.list_namespaces())
            while todo:
                ns = tuple(todo.pop())
                if ns in seen:
                    continue
                seen.add(ns)
                wanted.update(".".join(t) for t in catalog.list_tables(ns))
                todo += [n for n in catalog.list_namespaces(ns) if tuple(n) != ns]
        for ident in sorted(wanted):
            try:
                tbl = catalog.load_table(ident)
            except NoSuchTableError:
                continue
            doc = orjson.loads(tbl.metadata.model_dump_json())  # what Iceberg writes as the metadata file
            doc["metadata-location"] = tbl.metadata_location
            out[ident] = doc
    return out

