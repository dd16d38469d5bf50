"""Orphan cleanup: delete files under a table's location that no metadata references, once old enough.

Orphans come from writers that died between writing a file and committing
it (spoold's own compactions included), from failed commits, from snapshot
expiry that was cut short or done by a tool that deletes nothing, and from
metadata files that already left the metadata log. The listing covers the
table's data and metadata paths and goes through the table's FileIO (its
pyarrow filesystem: local disks and object stores alike). It is taken first
and the metadata loaded afresh after it, so a commit that lands meanwhile is
seen; a file younger than the safety age
is never touched, as it may belong to a commit still in flight (Iceberg's
own ``deleteOrphanFiles`` defaults to 3 days for that reason). A table with
``gc.enabled = false`` is left alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyarrow.fs import FileSelector, FileType
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.table import Table
from pyiceberg.utils.properties import property_as_bool

from spoold.iceberg.catalog import catalog_errors
from spoold.iceberg.maintain.reachable import filesystem, fs_path, referenced

log = logging.getLogger(__name__)
_KEEP_NAMES = ("version-hint.text",)  # Hadoop catalogs' pointer to the current metadata


@dataclass
class Orphans:
    deleted: int = 0
    bytes: int = 0


def delete_orphans(tbl: Table, reload: Callable[[], Table | None], *, min_age_s: float, now: float | None = None,
                   dry_run: bool = False) -> Orphans:
    """Delete (or, ``dry_run``, count) the unreferenced files under ``tbl``'s location older than ``min_age_s``.

    ``reload`` loads the table afresh; it is called after the listing.
    """
    name = ".".join(tbl.name())
    out = Orphans()
    if not property_as_bool(tbl.metadata.properties, "gc.enabled", True):
        return out
    if not isinstance(tbl.io, PyArrowFileIO):  # (the fsspec FileIO cannot list with modification times)
        log.warning("table %s: orphan cleanup skipped: it needs pyiceberg's pyarrow FileIO, not %s", name,
                    type(tbl.io).__name__)
        return out
    now = time.time() if now is None else now
    with catalog_errors(f"cannot list the files of {name}"):
        listed = _list(tbl)
    fresh = reload()
    if fresh is None:
        return out  # dropped meanwhile: its files are the dropper's business
    with catalog_errors(f"cannot read the metadata of {name}"):
        keep = {fs_path(fresh.io, p) for p in referenced(fresh)}
    for path, (mtime, size, fs) in sorted(listed.items()):
        if path in keep or mtime > now - min_age_s or path.rsplit("/", 1)[-1] in _KEEP_NAMES:
            continue
        if not dry_run:
            try:
                fs.delete_file(path)
            except FileNotFoundError:
                continue
            except OSError as e:
                log.warning("table %s: cannot delete orphan %s: %s", name, path, e)
                continue
        out.deleted += 1
        out.bytes += size
    if out.deleted:
        log.info("table %s: %s %d orphan file(s), %d bytes", name, "would delete" if dry_run else "deleted",
                 out.deleted, out.bytes)
    return out


def _list(tbl: Table) -> dict[str, tuple[float, int, Any]]:
    """Every file under the table's data and metadata paths: mtime, size and filesystem.

    Only those two (``<location>/data`` and ``<location>/metadata`` unless the
    table moves them): a table located where other things live (another
    table, a warehouse root) must not see them as its orphans.
    """
    io = tbl.io
    provider = tbl.location_provider()
    roots = {fs_path(io, loc).rstrip("/"): loc for loc in (provider.data_path, provider.metadata_path)}
    out: dict[str, tuple[float, int, Any]] = {}
    for prefix, loc in roots.items():
        if any(prefix != q and prefix.startswith(q + "/") for q in roots):
            continue  # listed with the root that holds it
        fs = filesystem(io, loc)
        for info in fs.get_file_info(FileSelector(prefix, recursive=True, allow_not_found=True)):
            if info.type == FileType.File:
                # A filesystem that reports no time: treat the file as fresh, i.e. never delete it.
                mtime = info.mtime.timestamp() if info.mtime is not None else time.time()
                out[info.path] = (mtime, info.size or 0, fs)
    return out
