"""Who owns a table's location: the owner marker, and the proof orphan cleanup needs before it deletes.

Orphan cleanup deletes what the table's metadata does not reference, so it
is only safe where every file under the listed paths belongs either to this
table or to no table. Two catalogs (or two catalog names) sharing a
warehouse put their ``chat.parts`` at one location; a table may also be
located inside another's data directory. spoold therefore records a table's
uuid in ``<location>/.spoold-owner-<uuid>`` (when it creates the table, and
before a first orphan cleanup), and orphan cleanup refuses a table whose
location holds another uuid's marker, or whose listed paths hold a marker or
a ``*.metadata.json`` of another table (or one whose table uuid cannot be
read). A marker is named by its uuid, so two tables never overwrite each
other's (an object store has no exclusive create), and each writes its own
before it looks for others: of two first sweeps at once, at least one sees
the other's marker, and the metadata files are there in any case. Dot files
are skipped by Iceberg's own orphan cleanup (Java's hidden-path filter), so
other tools leave the marker alone.
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib

from pyarrow.fs import FileSelector, FileType
from pyiceberg.table import Table

from spoold.iceberg.maintain.reachable import filesystem, fs_path

log = logging.getLogger(__name__)
MARKER = ".spoold-owner-"
METADATA_SUFFIX = ".metadata.json"
_HEAD = 64 << 10  # the table uuid is among the first fields of a metadata file
_UUID_RE = re.compile(rb'"table-uuid"\s*:\s*"([0-9A-Fa-f-]{32,36})"')


def marker_location(tbl: Table) -> str:
    return f"{tbl.location().rstrip('/')}/{MARKER}{tbl.metadata.table_uuid}"


def marked(tbl: Table) -> bool:
    """True when the table's own marker is at its location."""
    return bool(tbl.io.new_input(marker_location(tbl)).exists())


def mark(tbl: Table) -> None:
    """Write the table's owner marker (its uuid) at its location. Raises OSError."""
    with tbl.io.new_output(marker_location(tbl)).create(overwrite=True) as f:
        f.write(f"{tbl.metadata.table_uuid}\n".encode())


def mark_quietly(tbl: Table) -> None:
    """:func:`mark`, best effort (a table spoold just created): a later orphan cleanup retries."""
    try:
        mark(tbl)
        others = markers_at(tbl) - {str(tbl.metadata.table_uuid)}
    except Exception as e:  # the FileIO stack (OS, S3, a FileIO that cannot list...) has no common root
        log.info("table %s: cannot write its owner marker %s: %s", ".".join(tbl.name()), marker_location(tbl), e)
        return
    if others:
        log.warning("table %s: its location %s is shared with other table(s) (uuid %s): its orphan files will "
                    "never be cleaned up", ".".join(tbl.name()), tbl.location(), ", ".join(sorted(others)))


def markers_at(tbl: Table) -> set[str]:
    """The uuids of the owner markers directly at the table's location."""
    loc = tbl.location().rstrip("/")
    fs = filesystem(tbl.io, loc)
    infos = fs.get_file_info(FileSelector(fs_path(tbl.io, loc), recursive=False, allow_not_found=True))
    return {name[len(MARKER):] for i in infos if i.type == FileType.File
            and (name := i.path.rsplit("/", 1)[-1]).startswith(MARKER)}


def marker_uuid(path: str) -> str | None:
    """The uuid a marker's file name names (None: not a marker)."""
    name = path.rsplit("/", 1)[-1]
    return name[len(MARKER):] if name.startswith(MARKER) else None


def is_metadata(path: str) -> bool:
    return path.endswith(METADATA_SUFFIX)


def metadata_uuid(tbl: Table, location: str) -> str | None:
    """The ``table-uuid`` a metadata file names: "" for an empty file, None when none can be read.

    Only its head is read (gzip'd ones too, ``*.gz.metadata.json``).
    """
    with tbl.io.new_input(location).open() as f:
        head = f.read(_HEAD)
    if not head:
        return ""
    if head[:2] == b"\x1f\x8b":
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, _HEAD)
        except (zlib.error, gzip.BadGzipFile):
            return None
    m = _UUID_RE.search(head)
    return m.group(1).decode().lower() if m else None
