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

Only what is provably the table's goes: a data or metadata path outside the
table's location (``write.*.path``) is not listed unless the config allows
it, every delete passes :class:`~.confine.Confine`, and a location shared
with another table is refused whole (see :mod:`.owner`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyarrow.fs import FileSelector, FileType
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.table import Table
from pyiceberg.utils.properties import property_as_bool

from spoold.iceberg.catalog import catalog_errors
from spoold.iceberg.maintain import owner
from spoold.iceberg.maintain.confine import Confine, uri
from spoold.iceberg.maintain.reachable import filesystem, fs_path, referenced

log = logging.getLogger(__name__)
_KEEP_NAMES = ("version-hint.text",)  # Hadoop catalogs' pointer to the current metadata


@dataclass
class Orphans:
    deleted: int = 0
    bytes: int = 0
    refused: str = ""  # why the sweep was refused ("": it was not)
    paths_outside: int = 0  # data/metadata paths not swept: outside the location


@dataclass(frozen=True, slots=True)
class _File:
    location: str  # as the FileIO takes it
    mtime: float
    size: int


def delete_orphans(tbl: Table, reload: Callable[[], Table | None], *, min_age_s: float, now: float | None = None,
                   dry_run: bool = False, outside_location: bool = False) -> Orphans:
    """Delete (or, ``dry_run``, count) the unreferenced files under ``tbl``'s location older than ``min_age_s``.

    ``reload`` loads the table afresh; it is called after the listing.
    ``outside_location``: also sweep a ``write.data.path`` / ``write.metadata.path``
    outside the location (``[maintain] orphans_outside_location``).
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
    provider = tbl.location_provider()
    paths = [provider.data_path, provider.metadata_path]
    confine = Confine(tbl, extra=paths if outside_location else ())
    roots = [p for p in paths if confine.covers(p)]
    for p in paths:
        if p not in roots:
            out.paths_outside += 1
            log.warning("table %s: orphan cleanup skips %s: it is outside the table's location %s (set "
                        "[maintain] orphans_outside_location = true if that path is this table's alone)",
                        name, p, tbl.location())
    with catalog_errors(f"cannot list the files of {name}"):
        out.refused = _claim(tbl, dry_run)
        if out.refused:
            return _refuse(name, out)
        listed = _list(tbl, roots)
    fresh = reload()
    if fresh is None:
        return out  # dropped meanwhile: its files are the dropper's business
    uuid = str(fresh.metadata.table_uuid)
    with catalog_errors(f"cannot read the metadata of {name}"):
        keep = {_same(fs_path(fresh.io, p)) for p in referenced(fresh)}
        out.refused = _foreign(fresh, uuid, listed, keep) if uuid == str(tbl.metadata.table_uuid) else \
            f"the table was replaced meanwhile (uuid {tbl.metadata.table_uuid} → {uuid})"
    if out.refused:
        return _refuse(name, out)
    for path, f in sorted(listed.items()):
        base = path.rsplit("/", 1)[-1]
        if path in keep or f.mtime > now - min_age_s or base in _KEEP_NAMES or base.startswith(owner.MARKER):
            continue
        if not dry_run:
            try:
                if not confine.delete(f.location):
                    continue
            except FileNotFoundError:
                continue
            except OSError as e:
                log.warning("table %s: cannot delete orphan %s: %s", name, path, e)
                continue
        elif not confine.allows(f.location):
            continue
        out.deleted += 1
        out.bytes += f.size
    if out.deleted:
        log.info("table %s: %s %d orphan file(s), %d bytes", name, "would delete" if dry_run else "deleted",
                 out.deleted, out.bytes)
    return out


def _refuse(name: str, out: Orphans) -> Orphans:
    log.warning("table %s: orphan cleanup refused: %s", name, out.refused)
    return out


def _claim(tbl: Table, dry_run: bool) -> str:
    """Mark the location as the table's (unless ``dry_run``), then look for others' markers; why to refuse."""
    if not dry_run and not owner.marked(tbl):
        try:
            owner.mark(tbl)
        except OSError as e:
            return f"cannot write its owner marker {owner.marker_location(tbl)}: {e}"
    others = owner.markers_at(tbl) - {str(tbl.metadata.table_uuid)}
    if others:
        return (f"its location {tbl.location()} is shared with other table(s) (owner marker of uuid "
                f"{', '.join(sorted(others))}); only this table's files may be there")
    return ""


def _foreign(tbl: Table, uuid: str, listed: dict[str, _File], keep: set[str]) -> str:
    """Why the listed files show another table's presence ("": they do not).

    Another table's owner marker, or a metadata file this table does not
    reference whose table uuid is another's (or cannot be read: not provably
    this table's). An empty metadata file (a write cut short) is nobody's: an orphan like any other.
    """
    for path, f in sorted(listed.items()):
        other = owner.marker_uuid(path)
        if other is not None and other != uuid:
            return f"another table's owner marker {f.location} (uuid {other}) is among its files"
        if owner.is_metadata(path) and path not in keep:
            found = owner.metadata_uuid(tbl, f.location)
            if found is None:
                return f"{f.location} names no table uuid spoold can read: it may be another table's"
            if found and found != uuid:
                return f"{f.location} is another table's metadata (uuid {found}): its location is shared"
    return ""


def _list(tbl: Table, roots: list[str]) -> dict[str, _File]:
    """Every file under ``roots`` (the table's data and metadata paths), by filesystem path.

    Only those two (``<location>/data`` and ``<location>/metadata`` unless the
    table moves them): a table located where other things live (another
    table, a warehouse root) must not see them as its orphans.
    """
    io = tbl.io
    prefixes = {fs_path(io, loc).rstrip("/"): loc for loc in roots}
    out: dict[str, _File] = {}
    for prefix, loc in prefixes.items():
        if any(prefix != q and prefix.startswith(q + "/") for q in prefixes):
            continue  # listed with the root that holds it
        scheme, netloc, _ = io.parse_location(loc, io.properties)  # type: ignore[attr-defined]
        fs: Any = filesystem(io, loc)
        for info in fs.get_file_info(FileSelector(prefix, recursive=True, allow_not_found=True)):
            if info.type == FileType.File:
                # A filesystem that reports no time: treat the file as fresh, i.e. never delete it.
                mtime = info.mtime.timestamp() if info.mtime is not None else time.time()
                out[_same(info.path)] = _File(uri(scheme, netloc, info.path), mtime, info.size or 0)
    return out


def _same(path: str) -> str:
    """``path`` as compared with the references: repeated slashes as one. A local disk takes ``a//b`` for
    ``a/b`` (spoold's compaction of an unpartitioned table used to write ``data//file`` into its manifests,
    and the listing says ``data/file``); on an object store they may be two keys, and then both are kept."""
    return re.sub("/{2,}", "/", path)
