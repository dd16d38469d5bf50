"""Which inodes the tailer follows, under which names, and where they went when rotated.

A :class:`Follow` is one inode of one table's source, keyed by (table,
device, inode), with its durable :class:`Position`. It is *live* while a name
the source's glob matches holds it; when that name moves on (a rename, a new
file at the name, a delete) the inode is looked for by inode in its directory
and, if found, followed under its new name as *rotated*: read to its end, and
forgotten once it has been quiet for ``rotated_quiet_s`` or is gone. Offsets
saved under ``<spool root>/.tail/`` are matched to inodes at start-up, so a
rename while spoold was stopped is found the same way; offsets of vanished
files and of sources no longer configured are pruned.
"""

from __future__ import annotations

import glob
import logging
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spoold.config import SourceSpec
from spoold.sources.globs import source_glob, under
from spoold.sources.position import Position, PositionStore, file_key
from spoold.sources.rotation import find_inode

log = logging.getLogger("spoold.sources.tail")


@dataclass(slots=True)
class Follow:
    """One tailed inode: where it is read, by which source, and whether a glob name still holds it."""

    key: str
    src: int
    pos: Position
    live: bool = True  # False: rotated out of its name; read to its end, then forgotten
    real: str = ""  # its real path when attached (a symlink's target): where rotation is looked for
    size: int = 0
    mtime_ns: int = 0
    failures: int = 0


class Followed:
    """The follows of a set of sources, the names that hold them, and their offsets on disk."""

    def __init__(self, store: PositionStore, sources: Sequence[SourceSpec], spool_root: Path,
                 rotated_quiet_s: float) -> None:
        self.store, self.rotated_quiet_s = store, rotated_quiet_s
        self.globs = [source_glob(s) for s in sources]
        self.follows: dict[str, Follow] = {}
        self.dirty: dict[str, None] = {}  # insertion-ordered: a file with more left goes to the back
        self._root = os.path.abspath(spool_root)
        self._real_root = os.path.realpath(spool_root)
        self._refused: set[str] = set()  # symlinks refused for leading outside their glob's base (logged once)
        self._names: dict[tuple[int, str], str] = {}  # (source index, path the glob matches) → follow key
        self._links: dict[str, set[tuple[int, str]]] = {}  # a symlink's target → the names pointing at it
        self._stored: dict[str, tuple[int, Position]] | None = None  # offsets on disk not attached yet
        self._index: tuple[set[str], dict[str, str]] | None = None  # see _rotated_index

    def spec(self, f: Follow) -> SourceSpec:
        return self.globs[f.src].spec

    # -- what to watch ----------------------------------------------------------
    def wanted_paths(self) -> list[Path]:
        """Source directories, and those of symlink targets and rotated files outside them."""
        bases = {g.base for g in self.globs}
        extra = self._rotated_index()[0]
        return sorted(bases | {Path(d) for d in extra if not any(under(d, b) for b in bases)})

    def covers(self, path: str) -> bool:
        """True if an event at ``path`` may concern a followed file."""
        return (any(under(path, g.base) for g in self.globs) or path in self._links
                or os.path.dirname(path) in self._rotated_index()[0])

    def _rotated_index(self) -> tuple[set[str], dict[str, str]]:
        """(directories of symlink targets and rotated files, rotated path → key), kept until a follow
        changes: every event asks, and there may be thousands of follows."""
        if self._index is None:
            rotated = {f.pos.path: k for k, f in self.follows.items() if not f.live}
            self._index = {os.path.dirname(p) for p in [*self._links, *rotated]}, rotated
        return self._index

    # -- names ----------------------------------------------------------------------
    def discover(self) -> None:
        """Glob every source; follow new files, notice moved and vanished ones, retire rotated ones."""
        self.load()
        for i, g in enumerate(self.globs):
            found = {os.path.abspath(p) for p in glob.glob(g.pattern, recursive=True)}
            for path in sorted(found):
                self._look(i, path)
            for j, path in [n for n in self._names if n[0] == i and n[1] not in found]:
                self._look(j, path)
        assert self._stored is not None
        for key, (i, pos) in list(self._stored.items()):  # offsets whose file no glob name holds now
            del self._stored[key]
            self._adopt(key, i, pos)
        for key in [k for k, f in self.follows.items() if not f.live]:
            self.check_rotated(key)

    def on_change(self, path: str) -> bool:
        """A filesystem event at ``path``; True when it concerns a followed (or newly matching) file."""
        self.load()
        hit = False
        for i, name in list(self._links.get(path, ())):
            hit = self._look(i, name, event=True) or hit
        for i, g in enumerate(self.globs):
            if g.matches(path):
                hit = self._look(i, path, event=True) or hit
        key = self._rotated_index()[1].get(path)
        if key is not None:
            self.check_rotated(key)
            hit = True
        return hit

    def moved(self, f: Follow) -> None:
        """``f``'s path is gone or holds another inode: look at its names again (or where it went)."""
        names = [n for n, k in self._names.items() if k == f.key]
        for i, name in names:
            self._look(i, name)
        if not names and f.key in self.follows:
            self.check_rotated(f.key)

    def _look(self, i: int, path: str, *, event: bool = False) -> bool:
        """Compare what ``path`` (a name source ``i`` matches) holds now with what we follow there."""
        old = self._names.get((i, path))
        try:
            st = os.stat(path)
            ok = stat.S_ISREG(st.st_mode) and self._allowed(i, path)
        except OSError:
            ok = False
        if not ok:
            if old is None:
                return False
            self._unname(i, path)
            self._detach(old, path)
            return True
        key = file_key(self.globs[i].spec.table, st.st_dev, st.st_ino)
        if old == key:
            f = self.follows[key]
            if event or st.st_size != f.pos.offset or st.st_mtime_ns != f.mtime_ns:
                self.dirty[key] = None
            f.size = st.st_size
            return True
        if old is not None:
            self._unname(i, path)
            self._detach(old, path)
        self._attach(i, path, st, key)
        return True

    def _allowed(self, i: int, path: str) -> bool:
        """May source ``i`` tail ``path``? Judged by where the path really leads (every symlink resolved):

        never spoold's own files (a symlinked directory under the glob may lead into the spool root),
        and a symlink's target outside the glob's base only with ``follow_symlinks_outside``: whoever
        can write into a source directory must not make the daemon read any file the daemon can.
        The file is then read by this inode only (its identity is checked at every open).
        """
        real = os.path.realpath(path)
        if under(path, self._root) or under(real, self._real_root):
            return False  # the spool's own files match many globs: no log line for each
        g = self.globs[i]
        if g.spec.follow_symlinks_outside or under(real, os.path.realpath(g.base)):
            self._refused.discard(path)
            return True
        if path not in self._refused:
            self._refused.add(path)
            log.warning("source %s: not tailed: it leads to %s, outside %s (set [[sources]] "
                        "follow_symlinks_outside = true to allow)", path, real, g.base)
        return False

    def _attach(self, i: int, path: str, st: os.stat_result, key: str) -> None:
        self._index = None
        f = self.follows.get(key)
        if f is None:
            assert self._stored is not None
            stored = self._stored.pop(key, None)
            pos = stored[1] if stored is not None else Position(path, st.st_dev, st.st_ino)
            pos.path = path
            f = self.follows[key] = Follow(key, i, pos)
            if stored is None:
                self._save_new(f)
        elif not f.live:
            f.live, f.pos.path = True, path  # a rotated file got a name the glob matches: tailed on as usual
        self._names[(i, path)] = key
        f.real = os.path.realpath(path)
        if f.real != path:
            self._links.setdefault(f.real, set()).add((i, path))
        f.size = st.st_size
        self.dirty[key] = None

    def _unname(self, i: int, path: str) -> None:
        self._index = None
        self._names.pop((i, path), None)
        for real, names in list(self._links.items()):
            names.discard((i, path))
            if not names:
                del self._links[real]

    def _detach(self, key: str, name: str) -> None:
        """The inode ``key`` no longer has the name ``name``: follow it under another, or where it moved."""
        f = self.follows.get(key)
        if f is None:
            return
        self._index = None
        others = [other for (_, other), k in self._names.items() if k == key]
        if others:
            f.pos.path = others[0]
            return
        found = find_inode([os.path.dirname(name), os.path.dirname(f.real)], f.pos.identity)
        if found is None:
            self.forget(key, f"source {name}: gone")
            return
        f.live, f.pos.path, f.real = False, found, os.path.realpath(found)
        for j, g in enumerate(self.globs):
            if g.spec.table == self.spec(f).table and g.matches(found):
                self._names[(j, found)] = key  # moved to a name the glob matches: an ordinary tailed file
                f.live = True
        if not f.live:
            log.info("source %s: rotated to %s; reading it to its end", name, found)
        self.dirty[key] = None

    def _adopt(self, key: str, i: int, pos: Position) -> None:
        """A saved offset whose inode no glob name holds: rotated while spoold was stopped, or gone."""
        try:
            st = os.stat(pos.path)
            here = (st.st_dev, st.st_ino) == pos.identity and stat.S_ISREG(st.st_mode)
        except OSError:
            here = False
        found = pos.path if here else find_inode([os.path.dirname(pos.path)], pos.identity)
        if found is not None and under(os.path.realpath(found), self._real_root):
            found = None  # never spoold's own files, whatever an offset file says
        if found is None:
            self.store.delete(key)
            log.info("source %s: gone; its offset is forgotten", pos.path)
            return
        if found != pos.path:
            log.info("source %s: rotated to %s while spoold was stopped; reading it to its end", pos.path, found)
        pos.path, self._index = found, None
        self.follows[key] = Follow(key, i, pos, live=False, real=os.path.realpath(found))
        self.dirty[key] = None

    def add_copy(self, f: Follow, copy: str) -> None:
        """Follow ``copy`` (a rotated copy of ``f``, starting with what ``f`` had read) from ``f``'s offset, first."""
        st = os.stat(copy)
        key = file_key(self.spec(f).table, st.st_dev, st.st_ino)
        old = self.follows.get(key)
        if old is not None and (old.live or self._unchanged(old)):
            return  # already tailed under its own name, or this copy is being read already
        # (else a copy written over an older one in place, e.g. by cp: that one's bytes are gone)
        pos = Position(copy, st.st_dev, st.st_ino, f.pos.offset, f.pos.lineno, 0, f.pos.head_len, f.pos.head,
                       f.pos.tail, f.pos.inside)
        c = self.follows[key] = Follow(key, f.src, pos, live=False, real=os.path.realpath(copy))
        self._index = None
        self.save(c)  # before the original's offset can move: a crash must not skip the copy
        self.dirty = {key: None, **self.dirty}

    @staticmethod
    def _unchanged(f: Follow) -> bool:
        try:
            fd = os.open(f.pos.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            return f.pos.same_file(fd, os.fstat(fd))
        finally:
            os.close(fd)

    def check_rotated(self, key: str) -> None:
        """Read a rotated file on, find it again if it moved, or forget it once read and quiet."""
        f = self.follows[key]
        try:
            st = os.stat(f.pos.path)
            moved = (st.st_dev, st.st_ino) != f.pos.identity
        except OSError:
            moved = True
        if moved:
            found = find_inode([os.path.dirname(f.pos.path), os.path.dirname(f.real)], f.pos.identity)
            if found is None:
                self.forget(key, f"source {f.pos.path}: gone")
                return
            f.pos.path, self._index = found, None
            self.dirty[key] = None
        elif st.st_size != f.pos.offset:
            self.dirty[key] = None
        elif time.time() - st.st_mtime >= self.rotated_quiet_s:
            self.forget(key, f"source {f.pos.path} (rotated): read to its end")

    def forget(self, key: str, why: str | None = None) -> None:
        """Stop following ``key`` and delete its offset (``why``: logged, with any bytes left unread)."""
        self._index = None
        f = self.follows.pop(key, None)
        self.dirty.pop(key, None)
        for n in [n for n, k in self._names.items() if k == key]:
            self._unname(*n)
        self.store.delete(key)
        if f is not None and why is not None:
            unread = max(0, f.size - f.pos.offset)
            if unread:
                log.warning("%s with %d byte(s) never read (gone before spoold could read them)", why, unread)
            else:
                log.info("%s; no longer tailed", why)

    # -- offsets on disk ----------------------------------------------------------
    def load(self) -> None:
        """Read the saved offsets (once); those of sources no longer configured are deleted."""
        if self._stored is not None:
            return
        self._stored = {}
        for key, doc in self.store.load().items():
            i = self._source_of(doc)
            if i is None:
                self.store.delete(key)
                continue
            pos = Position.from_doc(doc)
            new = file_key(self.globs[i].spec.table, pos.dev, pos.ino)
            if new != key:  # an offset file of an older spoold (named by path): kept under its new name
                self.store.save(new, pos, **self._extra(i, bool(doc.get("live", True))))
                self.store.delete(key)
            self._stored[new] = (i, pos)

    def save(self, f: Follow) -> None:
        """Publish ``f``'s position (durable when this returns)."""
        self.store.save(f.key, f.pos, **self._extra(f.src, f.live))

    def _save_new(self, f: Follow) -> None:
        """Remember a new file at once, before any line of it is read: if it is renamed while spoold
        is stopped, the next start finds it by this inode, and no line written before is lost.
        Not fsync'd (losing it in a crash loses nothing the old tailer kept): cheap for thousands."""
        try:
            self.store.save(f.key, f.pos, sync=False, **self._extra(f.src, f.live))
        except OSError as e:  # the spool's disk: its first read saves it again
            log.warning("cannot save the offset of %s yet: %s", f.pos.path, e)

    def _source_of(self, doc: dict[str, Any]) -> int | None:
        mine = [i for i, g in enumerate(self.globs) if g.spec.table == doc.get("table")]
        return next((i for i in mine if self.globs[i].spec.path == doc.get("source")),
                    next((i for i in mine if self.globs[i].matches(str(doc.get("path")))), None))

    def _extra(self, i: int, live: bool) -> dict[str, Any]:
        spec = self.globs[i].spec
        return {"table": spec.table, "source": spec.path, "format": spec.format, "live": live}
