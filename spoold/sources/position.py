"""A durable position in a source file: where reading resumes, and whether it is still the same file.

Live tailing (offsets under ``<spool root>/.tail/``) and backfill (cursors
under ``<spool root>/.backfill/<table>/``) share this one rule: a position
moves past a line only once the rows of that line are durable (spooled,
committed or quarantined), so a crash re-reads lines and never skips them.

"Still the same file" means: the same identity (``st_dev``, ``st_ino``), at
least ``offset`` bytes, and the same fingerprint of the first ``offset``
bytes. The fingerprint hashes the first :data:`HEAD_BYTES` (so the whole
prefix of a small file) and the :data:`TAIL_BYTES` just before the offset:
a file rewritten in place with the same size and the same last bytes (a new
first line, an unchanged footer) no longer matches. Checking costs two
``pread`` calls of at most 68 KiB, whatever the file's size, so a transcript
that grows by many small appends pays little per append. (A same-size
change strictly between the head and the tail of a file over 64 KiB is the
one rewrite it cannot see.)
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from spoold.layout import temp_name
from spoold.safefile import UnsafeFile, open_file, private_dir, read_file
from spoold.spool.spool import write_atomic

log = logging.getLogger(__name__)

HEAD_BYTES = 64 << 10
TAIL_BYTES = 4 << 10
_SWEEP_AGE_S = 3600.0


@dataclass(slots=True)
class Position:
    """Where reading resumes in one file (``offset``, the 1-based ``lineno`` there) and its fingerprint.

    ``skip``: rows of the line at ``offset`` already taken (backfill's limit may
    cut a line of several rows). ``head == ""`` with a non-zero offset: no
    fingerprint was recorded (an older offset file); identity and size decide.
    """

    path: str
    dev: int = 0
    ino: int = 0
    offset: int = 0
    lineno: int = 1
    skip: int = 0
    head_len: int = 0
    head: str = ""
    tail: str = ""
    inside: bool = False  # ``offset`` is inside a line over max_line_bytes, quarantined already: skip its rest

    @property
    def identity(self) -> tuple[int, int]:
        return self.dev, self.ino

    def same_file(self, fd: int, st: os.stat_result) -> bool:
        """True if the open file ``fd`` (``st``: its fstat) is this position's file, unchanged up to ``offset``."""
        return (st.st_dev, st.st_ino) == self.identity and self.prefix_matches(fd, st.st_size)

    def prefix_matches(self, fd: int, size: int) -> bool:
        """True if ``fd`` (``size`` bytes) starts with the bytes this position has read (any identity)."""
        if size < self.offset:
            return False
        if self.offset == 0 or not self.head:
            return True
        return _hash(fd, 0, self.head_len) == self.head and self.tail == _hash(fd, *self._tail_span(self.offset))

    def move(self, fd: int, st: os.stat_result, offset: int, lineno: int, skip: int = 0, inside: bool = False) -> None:
        """Move to ``offset`` in the open file ``fd`` (``st``: its fstat), fingerprinting the bytes before it."""
        self.inside = inside
        same = (st.st_dev, st.st_ino) == self.identity and self.head_len == HEAD_BYTES and offset >= HEAD_BYTES
        self.dev, self.ino = st.st_dev, st.st_ino
        self.offset, self.lineno, self.skip = offset, lineno, skip
        if not same:  # a full head of the same file was checked by same_file already: it cannot have changed
            self.head_len = min(offset, HEAD_BYTES)
            self.head = _hash(fd, 0, self.head_len) if offset else ""
        self.tail = _hash(fd, *self._tail_span(offset)) if offset else ""

    def reset(self) -> None:
        """Back to the start of the file (a truncated, rewritten or replaced file is read again)."""
        self.offset, self.lineno, self.skip, self.inside = 0, 1, 0, False
        self.head_len, self.head, self.tail = 0, "", ""

    def _tail_span(self, offset: int) -> tuple[int, int]:
        start = max(self.head_len, offset - TAIL_BYTES)
        return start, offset - start

    def to_doc(self) -> dict[str, Any]:
        return {"path": self.path, "dev": self.dev, "ino": self.ino, "offset": self.offset, "lineno": self.lineno,
                "skip": self.skip, "head_len": self.head_len, "head": self.head, "tail": self.tail,
                **({"inside": True} if self.inside else {})}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Position:
        """The position a :meth:`to_doc` document describes; KeyError/TypeError/ValueError if it is not one."""
        return cls(path=str(doc["path"]), dev=int(doc["dev"]), ino=int(doc["ino"]), offset=int(doc["offset"]),
                   lineno=int(doc["lineno"]), skip=int(doc.get("skip", 0)), head_len=int(doc.get("head_len", 0)),
                   head=str(doc.get("head", "")), tail=str(doc.get("tail", "")), inside=doc.get("inside") is True)


def _hash(fd: int, start: int, length: int) -> str:
    if length <= 0:
        return ""
    data = os.pread(fd, length, start)
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def file_key(*parts: object) -> str:
    """A stable file name for a position, from what identifies it (table, path or inode...)."""
    text = "\0".join(map(str, parts))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


class PositionStore:
    """A directory of positions, one small JSON file each, published atomically.

    Each document is a :class:`Position` plus whatever fields its owner adds
    (the table, the source...). A document that cannot be read is skipped with
    a warning: its file is then read from the start, which keys make harmless.
    """

    def __init__(self, directory: Path, mode: int = 0o600) -> None:
        self.dir = directory
        self.mode = mode
        self._checked = False

    def _private(self) -> None:
        """The directory is this user's alone: producers of a group spool cannot plant or read positions."""
        if not self._checked or not self.dir.is_dir():
            for note in private_dir(self.dir):
                log.warning("positions: %s", note)
            self._checked = True

    def load(self) -> dict[str, dict[str, Any]]:
        """Every stored document by key (stale temp files of a killed save are swept)."""
        out: dict[str, dict[str, Any]] = {}
        if not self.dir.is_dir():
            return out
        self._private()
        cutoff = time.time() - _SWEEP_AGE_S
        for f in self.dir.iterdir():
            if f.name.startswith(".") and f.name.endswith(".tmp"):
                try:
                    if f.lstat().st_mtime < cutoff:
                        f.unlink()
                except OSError:
                    pass
                continue
            if f.suffix != ".json":
                continue
            try:
                doc = orjson.loads(read_file(f, owner=os.geteuid(), limit=1 << 20))
                Position.from_doc(doc)
            except (OSError, UnsafeFile, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                log.warning("position file %s unreadable (%s); that file will be read from its start", f, e)
                continue
            out[f.stem] = doc
        return out

    def save(self, key: str, pos: Position, *, sync: bool = True, **extra: Any) -> None:
        """Publish ``pos`` (and ``extra`` fields) under ``key``: durable when this returns.

        ``sync=False``: atomic but not fsync'd, for a position whose loss costs
        nothing but a re-read (a new file noted at offset 0): thousands of new
        files at start-up must not cost two fsyncs each.
        """
        if not self.dir.parent.is_dir():
            self.dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._private()
        doc = orjson.dumps({**pos.to_doc(), **extra, "at": round(time.time(), 3)})
        path = self.dir / f"{key}.json"
        if sync:
            write_atomic(path, doc, self.mode)
            return
        tmp = path.with_name(temp_name(path.name))
        with open(open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.mode), "wb") as f:
            f.write(doc)
        os.replace(tmp, path)

    def delete(self, key: str) -> None:
        """Forget ``key`` (a file no longer read)."""
        try:
            (self.dir / f"{key}.json").unlink()
        except FileNotFoundError:
            pass


__all__ = ["HEAD_BYTES", "TAIL_BYTES", "Position", "PositionStore", "file_key"]
