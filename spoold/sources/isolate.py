"""Re-run a tailing pass that killed the daemon, one line at a time, out of process.

The tailer marks a pass (:class:`PassMarks`) before it encodes its lines and
clears the mark once their rows are spooled and the offset saved. A mark found
at start-up means the daemon died inside that pass (an encoder that crashes on
some value, the OOM killer): running the pass again in-process could die the
same way, forever. Instead a child process reads and encodes the marked range
a line at a time, reporting each line before and after; the line a child died
on is quarantined (its bytes are never parsed in the daemon) and a new child
goes on after it. The daemon only appends the children's envelope bytes.

A child runs isolated (``python -I``: neither the working directory nor
``PYTHON*`` variables nor the user's site directory shape what it imports)
and loads the daemon's own spoold package by its directory, so it runs the
same code as the daemon however that was installed. A child that does not finish within
``CHILD_TIMEOUT_S`` is killed and counts as dying on the line it was on. The
caller's ``tick`` (the daemon's watchdog) is called while a child runs and
between children.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from spoold._testhooks import reached
from spoold.errors import SpoolFull
from spoold.layout import PASS_SUFFIX, temp_name

log = logging.getLogger("spoold.sources.tail")

CHILD_TIMEOUT_S = 300.0
_TICK_S = 1.0  # how often ``tick`` is called while a child runs
# The child's entry: the daemon's own spoold package, by its directory (argv[1]), whatever -I leaves on sys.path.
_CHILD = """import importlib.util as u, os, sys
d = sys.argv.pop(1)
s = u.spec_from_file_location("spoold", os.path.join(d, "__init__.py"), submodule_search_locations=[d])
m = sys.modules["spoold"] = u.module_from_spec(s)
s.loader.exec_module(m)
from spoold.sources.isolate import main
main(sys.argv[1:])
"""
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../spoold


class PassMarks:
    """One small file per file being tailed, present only while a pass of it is between read and saved."""

    def __init__(self, tail_dir: Path) -> None:
        self.dir = tail_dir
        self._found: dict[str, dict[str, Any]] | None = None

    def found(self) -> dict[str, dict[str, Any]]:
        """The marks an earlier process left (read once: this process's own are cleared as it goes)."""
        if self._found is None:
            self._found = {}
            if self.dir.is_dir():
                for f in self.dir.glob(f"*{PASS_SUFFIX}"):
                    try:
                        self._found[f.stem] = orjson.loads(f.read_bytes())
                    except (OSError, orjson.JSONDecodeError) as e:
                        log.warning("pass mark %s unreadable (%s); ignored", f, e)
        return self._found

    def mark(self, key: str, **doc: Any) -> None:
        # Not fsync'd: it must survive the daemon's death, which the page cache does; after a power
        # loss the pass is simply run again as before.
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.dir / f"{key}{PASS_SUFFIX}"
        tmp = path.with_name(temp_name(path.name))
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb") as f:
                f.write(orjson.dumps(doc))
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):  # the spool's disk is full: wait for room, as appends do
                raise SpoolFull(f"no space left to mark a pass of {key}: {e.strerror}") from e
            raise

    def clear(self, key: str) -> None:
        self.found().pop(key, None)
        try:
            (self.dir / f"{key}{PASS_SUFFIX}").unlink()
        except FileNotFoundError:
            pass


@dataclass(slots=True)
class Isolated:
    """What the children made of a marked range: envelope lines, and (start, end, lineno, reason) to set aside."""

    envelopes: list[bytes] = field(default_factory=list)
    rows: int = 0
    bad: list[tuple[int, int, int, str]] = field(default_factory=list)
    end: int = 0
    lineno: int = 1
    inside: bool = False


def isolate(path: str, fmt: str, start: int, stop: int, lineno: int, max_line: int, inside: bool,
            tick: Callable[[], None] | None = None) -> Isolated:
    """Encode the lines of ``path`` that start in [``start``, ``stop``) in child processes (see module doc)."""
    out = Isolated(end=start, lineno=lineno, inside=inside)
    while out.end < stop:
        args = [sys.executable, "-I", "-c", _CHILD, _PACKAGE, path, fmt, str(out.end), str(stop),
                str(out.lineno), str(max_line), "1" if out.inside else "0"]
        stdout, stderr, rc, hung = _run(args, tick)
        _collect(stdout, out)
        if rc == 0:
            break
        # It died (or hung) on the first line it had not reported: found here by its newline, never parsed.
        s, e, n = _next_line(path, out.end, out.lineno, out.inside)
        if e == s:
            raise OSError(f"re-running {path} line by line failed: {stderr.decode(errors='replace')[-300:]}")
        if hung:
            why = f"reading or encoding this line took over {CHILD_TIMEOUT_S:g}s (the process was killed)"
        else:
            how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit {rc}"
            why = f"reading or encoding this line killed the process ({how})"
        out.bad.append((s, e, n, why))
        out.end, out.lineno, out.inside = e, n + 1, False
        log.warning("source %s line %d: %s; quarantined", path, n, why)
    return out


def _run(args: list[str], tick: Callable[[], None] | None) -> tuple[bytes, bytes, int, bool]:
    """Run a child to its end or ``CHILD_TIMEOUT_S`` (then kill it): (stdout, stderr, exit status, hung)."""
    if tick is not None:
        tick()
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    with subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        while True:
            try:
                stdout, stderr = proc.communicate(timeout=max(0.01, min(_TICK_S, deadline - time.monotonic())))
                return stdout, stderr, proc.returncode, False
            except subprocess.TimeoutExpired:
                if tick is not None:
                    tick()
                if time.monotonic() >= deadline:
                    proc.kill()
                    stdout, stderr = proc.communicate()  # what it reported before it hung is kept
                    return stdout, stderr, proc.returncode, True


def _next_line(path: str, pos: int, lineno: int, inside: bool) -> tuple[int, int, int]:
    """(start, end, lineno) of the first non-blank line from ``pos`` (the rest of a long one: its line)."""
    with open(path, "rb", buffering=0) as f:
        f.seek(pos)
        start, blank = pos, not inside
        while block := f.read(1 << 20):
            i = 0
            while True:
                nl = block.find(b"\n", i)
                if blank and block[i : nl if nl >= 0 else len(block)].strip():
                    blank = False
                if nl < 0:
                    break
                if not blank:
                    return start, pos + nl + 1, lineno
                start, lineno, i = pos + nl + 1, lineno + 1, nl + 1
            pos += len(block)
    return start, pos, lineno


def _collect(stdout: bytes, out: Isolated) -> None:
    """Take the lines a child finished (each: a JSON header, then its envelope lines) into ``out``."""
    lines = stdout.split(b"\n")
    i = 0
    while i < len(lines) and lines[i]:
        try:
            doc = orjson.loads(lines[i])
        except orjson.JSONDecodeError:  # a header cut off by the child's death: as if never finished
            return
        n = doc["envelopes"]
        if i + 1 + n > len(lines) - 1:  # its envelopes were cut off by its death: as if never finished
            return
        out.envelopes += [x + b"\n" for x in lines[i + 1 : i + 1 + n]]
        i += 1 + n
        out.rows += doc["rows"]
        if doc["reason"] is not None:
            out.bad.append((doc["start"], doc["end"], doc["lineno"], doc["reason"]))
        out.end, out.lineno, out.inside = doc["end"], doc["next_lineno"], doc["inside"]


def _child(path: str, fmt: str, start: int, stop: int, lineno: int, max_line: int, inside: bool) -> None:
    from spoold.sources.pack import pack
    from spoold.sources.reader import read_lines

    w = sys.stdout.buffer
    fd = os.open(path, os.O_RDONLY)
    for line in read_lines(path, fmt, start, lineno=lineno, fd=fd, max_line=max_line, inside=inside):
        if line.start >= stop:
            break
        reached("tail.isolate.line")  # test-only: a test kills the child here to stand for an encoder's crash
        envs, poison = pack([line], max_line) if line.error is None else ([], [(line, line.error)])
        is_open = bool(line.long and line.long.open)
        doc = {"start": line.start, "end": line.end, "lineno": line.lineno, "reason": poison[0][1] if poison else None,
               "envelopes": len(envs), "rows": sum(n for _, n in envs),
               "next_lineno": line.lineno + (0 if is_open else 1), "inside": is_open}
        w.write(orjson.dumps(doc) + b"\n" + b"".join(e for e, _ in envs))
        w.flush()  # reported before the next line: what a later death leaves is known good
    os.close(fd)


def main(a: list[str]) -> None:
    """The child's entry (see ``_CHILD``): path, format, start, stop, lineno, max_line, inside."""
    _child(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), int(a[5]), a[6] == "1")


if __name__ == "__main__":
    main(sys.argv[1:])
