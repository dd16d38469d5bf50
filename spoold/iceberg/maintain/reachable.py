"""Which files a table's metadata references: what expiry may free and what orphan cleanup must keep.

A snapshot references its manifest list, the manifests in it and the data
and delete files in those. Files are compared by their path as the table's
FileIO resolves it (``file:///w/x`` and ``/w/x`` are one file, and so are
``s3://b/x`` and ``s3a://b/x``), the way Iceberg's own orphan cleanup
normalizes schemes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.manifest import ManifestEntryStatus, ManifestFile
from pyiceberg.table import Table
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.utils.concurrent import ExecutorFactory

from spoold.errors import CatalogError


def manifests_of(io: FileIO, snapshots: Iterable[Snapshot]) -> dict[str, ManifestFile]:
    """Every manifest the snapshots' manifest lists name, by path (each list read once, in parallel)."""
    lists = list(snapshots)
    out: dict[str, ManifestFile] = {}
    for manifests in ExecutorFactory.get_or_create().map(lambda s: s.manifests(io), lists):
        for m in manifests:
            out[m.manifest_path] = m
    return out


def files_of(io: FileIO, manifests: Iterable[ManifestFile], *, live: bool) -> dict[str, int]:
    """The content files the manifests list, by path, with their sizes.

    ``live``: only entries ADDED or EXISTING in their snapshot (a DELETED entry
    names a file its snapshot no longer reads); else every entry.
    """
    def entries(m: ManifestFile) -> list[tuple[str, int]]:
        return [(e.data_file.file_path, e.data_file.file_size_in_bytes)
                for e in m.fetch_manifest_entry(io, discard_deleted=False)
                if not live or e.status != ManifestEntryStatus.DELETED]

    out: dict[str, int] = {}
    for pairs in ExecutorFactory.get_or_create().map(entries, list(manifests)):
        out.update(pairs)
    return out


def metadata_files(tbl: Table) -> set[str]:
    """The table's metadata files its metadata names: the current one, the log, statistics files."""
    md = tbl.metadata
    out = {tbl.metadata_location, *(e.metadata_file for e in md.metadata_log)}
    out.update(s.statistics_path for s in md.statistics)
    out.update(s.statistics_path for s in md.partition_statistics)
    return out


def referenced(tbl: Table) -> set[str]:
    """Every file any snapshot, any manifest entry (even a DELETED one) or the metadata names.

    Deliberately wide: orphan cleanup deletes only what is outside this set.
    """
    snaps = tbl.metadata.snapshots
    manifests = manifests_of(tbl.io, snaps)
    return metadata_files(tbl) | {s.manifest_list for s in snaps} | set(manifests) | set(
        files_of(tbl.io, manifests.values(), live=False))


def statistics_of(md: TableMetadata, snapshot_ids: set[int]) -> set[str]:
    """Statistics files (puffin, partition stats) that belong to these snapshots."""
    return ({s.statistics_path for s in md.statistics if s.snapshot_id in snapshot_ids}
            | {s.statistics_path for s in md.partition_statistics if s.snapshot_id in snapshot_ids})


def fs_path(io: FileIO, location: str) -> str:
    """``location`` as the path the FileIO's filesystem knows it by (scheme and ``file://`` dropped)."""
    if isinstance(io, PyArrowFileIO):
        return io.parse_location(location, io.properties)[2]
    return location.split("://", 1)[-1]


def filesystem(io: FileIO, location: str) -> Any:
    """The pyarrow filesystem behind ``io`` for ``location`` (local, S3, GCS, ADLS, HDFS alike)."""
    if not isinstance(io, PyArrowFileIO):
        raise CatalogError(f"cannot list {location}: orphan cleanup needs pyiceberg's pyarrow FileIO "
                           f"(py-io-impl = pyiceberg.io.pyarrow.PyArrowFileIO), not {type(io).__name__}")
    scheme, netloc, _ = io.parse_location(location, io.properties)
    return io.fs_by_scheme(scheme, netloc)
