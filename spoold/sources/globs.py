"""A ``[[sources]]`` path as the tailer watches it: the glob, the directory to watch, a matcher for events."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from spoold.config import SourceSpec
from spoold.sources.reader import has_magic, jsonl_under


@dataclass(frozen=True, slots=True)
class SourceGlob:
    """One configured source: its glob (absolute), the longest directory prefix without wildcards
    (what to watch), and a regex matching exactly the paths the glob would return."""

    spec: SourceSpec
    pattern: str
    base: Path
    regex: re.Pattern[str]

    def matches(self, path: str) -> bool:
        return self.regex.match(path) is not None


def source_glob(spec: SourceSpec) -> SourceGlob:
    """The :class:`SourceGlob` of ``spec`` (a directory means every ``*.jsonl`` under it, as for backfill)."""
    pattern = os.path.abspath(os.path.expanduser(spec.path))
    if not has_magic(pattern) and os.path.isdir(pattern):
        pattern = jsonl_under(pattern)
    fixed = []
    for part in pattern.split("/")[:-1]:
        if has_magic(part):
            break
        fixed.append(part)
    return SourceGlob(spec, pattern, Path("/".join(fixed) or "/"), glob_regex(pattern))


def under(path: str, base: Path | str) -> bool:
    """True if ``path`` is ``base`` or lies below it."""
    b = str(base)
    return path == b or path.startswith(b.rstrip("/") + "/")


def glob_regex(pattern: str) -> re.Pattern[str]:
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
