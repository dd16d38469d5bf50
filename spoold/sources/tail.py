"""Live tailing of ``[[sources]]``: new complete lines → rows → spool, then a durable offset.

For every source glob, the files that exist now and those that appear later
are read from their saved offset with :func:`read_lines` (complete lines only,
so a partial last line waits), materialized with the same reader backfill
uses, appended to the spool (durable on return) and ONLY THEN is the file's
new offset published (atomic write under ``<spool root>/.tail/``). A crash in
between re-reads those lines; their keys make that harmless.

A file whose inode changed (replaced) or that shrank or was rewritten below
its offset (truncated) is read again from its start. Work per pass is bounded
so one huge file cannot hold up flushes. A bad source line is logged (rate
limited) and skipped; the tailer never stops on input.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from spoold._testhooks import reached
from spoold.config import SourceSpec
from spoold.errors import SpooldError
from spoold.scheduler import LogLimiter
from spoold.sources.reader import has_magic, jsonl_under, read_lines
from spoold.spool import Spool, write_atomic

log = logging.getLogger(__name__)

OFFSETS_DIR = ".tail"
MAX_LINES_PER_PASS = 50_000
MAX_BYTES_PER_PASS = 8 << 20  # transcript lines can be huge (tool output): bound memory too
_CHECK_BYTES = 64  # bytes just before the offset, to notice a file rewritten under us


@dataclass(slots=True)
class Offset:
    """Where reading resumes in one file, and how to tell it is still the same file."""

    path: str
    table: str
    dev: int = 0
    ino: int = 0
    offset: int = 0
    lineno: int = 1
    check: str = ""  # hash of the _CHECK_BYTES before ``offset``
    size: int = 0  # size when last looked at (for lag), not persisted as truth


@dataclass(slots=True)
class _Source:
    spec: SourceSpec
    pattern: str
    base: Path  # the longest directory prefix without wildcards: what to watch
    regex: re.Pattern[str]
    files: set[str] = field(default_factory=set)


class Tailer:
    """Tails the configured sources into ``spool`` (one thread; the daemon loop drives it)."""

    def __init__(
        self, spool: Spool, sources: Sequence[SourceSpec], *, max_lines: int = MAX_LINES_PER_PASS,
        max_bytes: int = MAX_BYTES_PER_PASS,
    ) -> None:
        self.spool = spool
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.dir = spool.root / OFFSETS_DIR
        self._sources = [_source(s) for s in sources]
        self._offsets: dict[str, Offset] = {}  # by offset-file key
        self._owner: dict[str, tuple[int, str]] = {}  # offset key → (source index, path)
        self._dirty: dict[str, None] = {}  # insertion-ordered: a file with more left goes to the back
        self._errors = LogLimiter()
        self._loaded = False

    # -- what to watch ----------------------------------------------------------
    def watch_paths(self) -> list[Path]:
        """Existing base directories of the source globs (a missing one is picked up by ``discover``)."""
        return sorted({s.base for s in self._sources if s.base.is_dir()})

    def wanted_paths(self) -> list[Path]:
        """Every base directory, existing or not."""
        return sorted({s.base for s in self._sources})

    def covers(self, path: str) -> bool:
        """True if ``path`` lies under one of the watched source directories."""
        return any(_under(path, s.base) for s in self._sources)

    # -- discovery --------------------------------------------------------------
    def discover(self) -> None:
        """Glob every source; start tailing new files, forget vanished ones."""
        self._load()
        for i, src in enumerate(self._sources):
            found = {os.path.abspath(p) for p in glob.glob(src.pattern, recursive=True) if os.path.isfile(p)}
            for path in found - src.files:
                self._add(i, path)
            for path in src.files - found:
                self._drop(i, path)
            for path in found & src.files:
                # Safety net for a missed event: anything that moved since the last look is read.
                key = _key(src.spec.table, path)
                off = self._offsets[key]
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if st.st_size != off.offset or (st.st_dev, st.st_ino) != (off.dev, off.ino):
                    self._dirty[key] = None
                off.size = st.st_size
        for key, off in list(self._offsets.items()):
            if key not in self._owner and not os.path.exists(off.path):
                self._offsets.pop(key)  # an offset of a file gone while we were not running
                (self.dir / f"{key}.json").unlink(missing_ok=True)

    def on_change(self, path: str, deleted: bool = False) -> bool:
        """A filesystem event at ``path``; True when it concerns a tailed (or newly matching) file."""
        hit = False
        for i, src in enumerate(self._sources):
            key = _key(src.spec.table, path)
            if path in src.files:
                self._dirty[key] = None
                hit = True
            elif not deleted and src.regex.match(path) and os.path.isfile(path):
                hit = self._add(i, path) or hit
        return hit

    def has_work(self) -> bool:
        return bool(self._dirty)

    # -- reading ----------------------------------------------------------------
    def run_pass(self, max_lines: int | None = None) -> dict[str, int]:
        """Read new complete lines of dirty files into the spool; rows appended per table.

        At most ``max_lines`` source lines (and about ``max_bytes`` bytes) are
        read; files with more left stay dirty, behind the others, for the next pass.
        """
        self._load()
        budget = self.max_lines if max_lines is None else max_lines
        byte_budget = self.max_bytes
        appended: dict[str, int] = {}
        for key in list(self._dirty):
            if budget <= 0 or byte_budget <= 0:
                break
            del self._dirty[key]
            owner = self._owner.get(key)
            if owner is None:
                continue
            src = self._sources[owner[0]]
            try:
                rows, lines, nbytes, more = self._read_file(src, self._offsets[key], budget, byte_budget)
            except FileNotFoundError:
                log.info("source %s: gone; no longer tailed", owner[1])
                self._drop(owner[0], owner[1])
                continue
            except (OSError, SpooldError) as e:
                # Cannot read it or cannot spool right now: the offset stays, the next event
                # or rescan tries again.
                self._log_error(f"io:{key}", "source %s: not tailed this time: %s", owner[1], e)
                continue
            budget -= lines
            byte_budget -= nbytes
            if rows:
                appended[src.spec.table] = appended.get(src.spec.table, 0) + rows
            if more:
                self._dirty[key] = None
        return appended

    def _read_file(self, src: _Source, off: Offset, budget: int, byte_budget: int) -> tuple[int, int, int, bool]:
        """Tail one file; returns (rows appended, lines read, bytes read, more left)."""
        st = os.stat(off.path)
        if not self._same_file(off, st):
            replaced = (off.dev, off.ino) != (st.st_dev, st.st_ino)
            log.info("source %s: %s; reading it again from the start", off.path,
                     "replaced" if replaced else "truncated or rewritten")
            off.offset, off.lineno, off.check = 0, 1, ""
        off.dev, off.ino, off.size = st.st_dev, st.st_ino, st.st_size
        if st.st_size <= off.offset:
            return 0, 0, 0, False
        rows: list[dict[str, object]] = []
        lines = 0
        end, lineno = off.offset, off.lineno
        more = False
        for line in read_lines(off.path, src.spec.format, off.offset, lineno=off.lineno):
            if line.error is not None:
                self._log_error(f"line:{src.spec.path}", "source %s line %d: skipped: %s",
                                line.path, line.lineno, line.error)
            else:
                rows.extend(line.rows)
            end, lineno = line.end, line.lineno + 1
            lines += 1
            if lines >= budget or end - off.offset >= byte_budget:
                more = True
                break
        if end == off.offset:
            return 0, lines, 0, False  # only a partial line (or blank lines) so far
        if rows:
            self.spool.append(src.spec.table, rows)  # durable when it returns ...
            reached("tail.appended")  # test-only mark: a crash here re-reads these lines
        check = _check_hash(off.path, end)
        read = end - off.offset
        off.offset, off.lineno, off.check = end, lineno, check
        self._save(off)  # ... and only then does the offset move past those lines
        return len(rows), lines, read, more

    @staticmethod
    def _same_file(off: Offset, st: os.stat_result) -> bool:
        if not off.ino:
            return True  # never read: start from offset 0 anyway
        if (off.dev, off.ino) != (st.st_dev, st.st_ino) or st.st_size < off.offset:
            return False
        return not off.check or _check_hash(off.path, off.offset) == off.check

    # -- lag ----------------------------------------------------------------------
    def lag(self) -> list[dict[str, Any]]:
        """Per source: files tailed, bytes read and bytes not yet read (as of the last look)."""
        out = []
        for src in self._sources:
            offs = [self._offsets[_key(src.spec.table, p)] for p in sorted(src.files)]
            done = sum(min(o.offset, o.size) for o in offs)
            out.append({
                "table": src.spec.table,
                "path": src.spec.path,
                "format": src.spec.format,
                "files": len(offs),
                "offset_bytes": done,
                "lag_bytes": sum(max(0, o.size - o.offset) for o in offs),
            })
        return out

    # -- offsets on disk ----------------------------------------------------------
    def _add(self, index: int, path: str) -> bool:
        src = self._sources[index]
        key = _key(src.spec.table, path)
        if key in self._owner:  # the same file under two globs of one table: tail it once
            return False
        if _under(path, Path(os.path.abspath(self.spool.root))):
            return False  # a glob that reaches into the spool must not tail spoold's own files
        src.files.add(path)
        self._owner[key] = (index, path)
        off = self._offsets.setdefault(key, Offset(path=path, table=src.spec.table))
        try:
            off.size = os.stat(path).st_size
        except OSError:
            pass
        self._dirty[key] = None
        return True

    def _drop(self, index: int, path: str) -> None:
        src = self._sources[index]
        key = _key(src.spec.table, path)
        src.files.discard(path)
        self._owner.pop(key, None)
        self._dirty.pop(key, None)
        if self._offsets.pop(key, None) is not None:
            try:
                (self.dir / f"{key}.json").unlink()
            except FileNotFoundError:
                pass

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not self.dir.is_dir():
            return
        for f in self.dir.glob("*.json"):
            try:
                doc = orjson.loads(f.read_bytes())
                off = Offset(path=doc["path"], table=doc["table"], dev=int(doc["dev"]), ino=int(doc["ino"]),
                             offset=int(doc["offset"]), lineno=int(doc["lineno"]), check=str(doc.get("check", "")))
            except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                # Unreadable offset: the file is read again from its start (keys make that harmless).
                log.warning("tail offsets %s unreadable (%s); that file will be re-read", f, e)
                continue
            self._offsets[_key(off.table, off.path)] = off

    def _save(self, off: Offset) -> None:
        if not self.dir.is_dir():
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        doc = {"path": off.path, "table": off.table, "dev": off.dev, "ino": off.ino, "offset": off.offset,
               "lineno": off.lineno, "check": off.check, "at": round(time.time(), 3)}
        write_atomic(self.dir / f"{_key(off.table, off.path)}.json", orjson.dumps(doc))

    def _log_error(self, key: str, msg: str, *args: object) -> None:
        suppressed = self._errors.allow(key, time.monotonic())
        if suppressed is None:
            return
        if suppressed:
            msg += f" (and {suppressed} more like it in the last minute)"
        log.warning(msg, *args)


def _key(table: str, path: str) -> str:
    return hashlib.sha256(f"{table}\0{path}".encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _check_hash(path: str, offset: int) -> str:
    if offset <= 0:
        return ""
    start = max(0, offset - _CHECK_BYTES)
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(offset - start)
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def _under(path: str, base: Path) -> bool:
    b = str(base)
    return path == b or path.startswith(b.rstrip("/") + "/")


def _source(spec: SourceSpec) -> _Source:
    pattern = os.path.abspath(os.path.expanduser(spec.path))
    if not has_magic(pattern) and os.path.isdir(pattern):
        pattern = jsonl_under(pattern)  # as backfill reads a directory
    parts = pattern.split("/")
    fixed = []
    for part in parts[:-1]:
        if has_magic(part):
            break
        fixed.append(part)
    base = Path("/".join(fixed) or "/")
    return _Source(spec, pattern, base, _glob_regex(pattern))


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex matching the paths ``glob.glob(pattern, recursive=True)`` would return (hidden names excluded)."""
    parts = pattern.split("/")
    out = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out.append(r"(?:(?!\.)[^/]+/)*" if not last else r"(?:(?!\.)[^/]+/?)*")
            continue
        out.append(_component_regex(part) + ("" if last else "/"))
    return re.compile("".join(out) + r"\Z")


def _component_regex(part: str) -> str:
    if not has_magic(part):
        return re.escape(part)
    out = [r"(?!\.)"] if part[0] in "*?[" else []
    i = 0
    while i < len(part):
        c = part[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = part.find("]", i + 2)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = part[i + 1 : j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)

