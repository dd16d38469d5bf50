"""Source formats: turn one line of a source file into table rows.

One reader per format, shared by ``spoold backfill`` and the daemon's live
tailing, so a given source line always materializes to the same rows with
the same keys, whichever path reads it.
"""

from __future__ import annotations

from spoold.sources.line import SourceLineError
from spoold.sources.reader import (
    FORMATS,
    SourceLine,
    expand_sources,
    materializer,
    read_lines,
)

__all__ = [
    "FORMATS",
    "SourceLine",
    "SourceLineError",
    "expand_sources",
    "materializer",
    "read_lines",
]
