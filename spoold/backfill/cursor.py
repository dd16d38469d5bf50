"""Backfill's cursors: per table and source file, where the next run goes on.

A cursor is a :class:`Position` saved under ``<spool root>/.backfill/<table>/``
with the same rule as a tailing offset: it moves past a line only once the
rows of that line are committed, spooled or quarantined, i.e. after the
commit that holds them is durable. So repeated ``--limit`` runs walk through
the whole history, and a run stopped anywhere (Ctrl-C, a crash, a catalog
outage) goes on from the last durable chunk. A file that is no longer the
one the cursor was taken in (replaced, truncated, rewritten) is read from its
start; keys make re-reading harmless.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path

from spoold.layout import BACKFILL_DIR
from spoold.safefile import private_dir
from spoold.sources.position import Position, PositionStore, file_key

log = logging.getLogger("spoold.backfill.run")



class Cursors:
    """The cursors of one table's source files: where to start, marks reached, saved once durable.

    ``restart``: start every file from its beginning (the cursors are still
    moved by this run). ``save=False`` (a dry run): read them, never move them.
    """

    def __init__(self, spool_root: Path, table: str, *, restart: bool = False, save: bool = True) -> None:
        if save and spool_root.is_dir():  # cursors are the daemon user's alone (a link planted here is moved aside)
            for note in private_dir(spool_root / BACKFILL_DIR):
                log.warning("backfill cursors: %s", note)
        self.store = PositionStore(spool_root / BACKFILL_DIR / table)
        self.saving = save
        docs = {} if restart else self.store.load()
        self._saved = {str(d["path"]): Position.from_doc(d) for d in docs.values()}
        self.marks: dict[str, Position] = {}  # reached by the reader, durable once their chunk commits
        self.resumed = 0  # files this run went on reading after their cursor

    def start(self, path: str, fd: int) -> Position:
        """Where to read ``path`` (open as ``fd``) from: its cursor if it is still that file, else its start."""
        st = os.fstat(fd)
        pos = self._saved.get(path)
        if pos is not None and pos.same_file(fd, st):
            self.resumed += pos.offset > 0
            return replace(pos)
        if pos is not None and pos.offset:
            log.info("source %s: replaced, truncated or rewritten since the last run; reading it from its start",
                     path)
        return Position(path, st.st_dev, st.st_ino)

    def unread(self, path: str) -> bool:
        """True if ``path`` may hold lines past its cursor (cheap: sizes only, no fingerprint)."""
        pos = self._saved.get(path)
        try:
            return pos is None or os.stat(path).st_size > pos.offset
        except OSError:
            return False

    def mark(self, pos: Position, fd: int, offset: int, lineno: int, skip: int = 0) -> None:
        """The reader got to ``offset`` in ``pos``'s file (open as ``fd``); ``skip`` rows of the line there."""
        if (offset, skip) != (pos.offset, pos.skip):
            pos.move(fd, os.fstat(fd), offset, lineno, skip)
            self.marks[pos.path] = replace(pos)

    def take(self) -> dict[str, Position]:
        """The marks so far (for the chunk being committed), cleared."""
        marks, self.marks = self.marks, {}
        return marks

    def save(self, marks: dict[str, Position]) -> None:
        """Publish ``marks``: call only once every row before them is durable."""
        if not self.saving:
            return
        for path, pos in marks.items():
            self.store.save(file_key(path), pos)
            self._saved[path] = pos
