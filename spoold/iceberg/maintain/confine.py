"""Where maintenance may delete: only under the table's own location, each path resolved first.

A table's metadata is written by anyone with access to its catalog: a
manifest may name any path, and ``write.data.path`` / ``write.metadata.path``
may point anywhere, so neither proves a file is the table's. Every delete by
maintenance (expiry, orphan cleanup, compaction's tidy-up) goes through
:meth:`Confine.delete`, which deletes a path only when it lies under the
table's location (``location`` + ``/``), compared after normalizing both:

- a local path (``file://`` or none) resolved with ``os.path.realpath``
  (``..`` and symlinks, so a symlinked directory inside the table cannot lead
  out of it);
- an object store key with a ``.`` or ``..`` segment is refused (stores take
  them literally, other tools may not), and the scheme (``s3a``/``s3n`` are
  ``s3``) and bucket or host must be the location's.

``extra`` roots (orphan cleanup's write paths, when
``[maintain] orphans_outside_location`` allows them) widen that, for orphan
cleanup only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlparse

from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.table import Table

log = logging.getLogger(__name__)
_ALIASES = {"": "file", "s3a": "s3", "s3n": "s3", "gcs": "gs"}
_NETLOC_IN_PATH = ("hdfs", "viewfs")  # pyiceberg's fs paths omit the host for these only


@dataclass(frozen=True, slots=True)
class Place:
    """A path as compared: canonical scheme, bucket or host, and normalized path (no trailing slash)."""

    scheme: str
    netloc: str
    path: str

    def holds(self, other: Place) -> bool:
        """True when ``other`` is this place or lies under it."""
        return (other.scheme, other.netloc) == (self.scheme, self.netloc) and (
            other.path == self.path or other.path.startswith(self.path + "/"))


def resolve(io: FileIO, location: str) -> Place | None:
    """``location`` normalized for comparison; None when it cannot be trusted (relative, dot segments)."""
    if isinstance(io, PyArrowFileIO):
        scheme, netloc, path = io.parse_location(location, io.properties)
        if scheme not in _NETLOC_IN_PATH and scheme != "file":
            path = path[len(netloc):]  # (pyiceberg puts the bucket in front; it is compared on its own)
    else:
        u = urlparse(location)
        scheme, netloc, path = u.scheme, u.netloc, u.path
    scheme = _ALIASES.get(scheme.lower(), scheme.lower())
    if scheme == "file":
        if not os.path.isabs(path):
            return None
        return Place("file", "", os.path.realpath(path).rstrip("/"))
    if any(seg in (".", "..") for seg in path.split("/")):
        return None
    return Place(scheme, netloc, "/" + path.strip("/"))


def uri(scheme: str, netloc: str, fs_path: str) -> str:
    """A pyarrow filesystem path back as a location the FileIO takes (the inverse of ``fs_path``)."""
    if scheme == "file":
        return fs_path
    if scheme in _NETLOC_IN_PATH:
        return f"{scheme}://{netloc}{fs_path}"
    return f"{scheme}://{fs_path}"


class Confine:
    """The one check before maintenance deletes a file of ``tbl``."""

    def __init__(self, tbl: Table, extra: Iterable[str] = ()) -> None:
        self.io = tbl.io
        self.name = ".".join(tbl.name())
        self.location = tbl.location()
        roots = [resolve(self.io, loc) for loc in (self.location, *extra)]
        # A root that resolves to nothing or to "/" would allow everything (or be a lie): it allows nothing.
        self.roots = [r for r in roots if r is not None and r.path not in ("", "/")]

    def covers(self, location: str) -> bool:
        """True when ``location`` (a file or a directory) is the table's location or under it (or an extra root)."""
        p = resolve(self.io, location)
        return p is not None and any(r.holds(p) for r in self.roots)

    def allows(self, path: str) -> bool:
        """True when maintenance may delete ``path``: strictly under one of the roots."""
        p = resolve(self.io, path)
        return p is not None and any(r.holds(p) and p != r for r in self.roots)

    def delete(self, path: str) -> bool:
        """Delete ``path`` if :meth:`allows` it; True if deleted. Raises what the FileIO raises."""
        if not self.allows(path):
            log.debug("table %s: not deleting %s: outside its location %s", self.name, path, self.location)
            return False
        self.io.delete(path)
        return True

    def tidy(self, paths: Iterable[str]) -> None:
        """Best-effort deletes of files this process wrote and no commit took (what fails is an orphan)."""
        for path in paths:
            try:
                self.delete(path)
            except OSError:
                pass
