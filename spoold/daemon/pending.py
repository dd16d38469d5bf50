"""What a table has pending in the spool, estimated cheaply for the daemon's scheduler.

The scheduler needs two figures per table: when the oldest pending row was
written (for ``max_delay_s``) and roughly how many rows wait (for
``max_rows``). Reading every envelope would cost a flush's worth of I/O on
each change, so both come from file sizes and each file's first envelope.
"""

from __future__ import annotations

import time

from spoold.spool import held
from spoold.spool.files import first_envelope
from spoold.spool.spool import Spool

_DEFAULT_RATIO = 1 / 200  # rows per byte when a pending file's first envelope is unreadable


class Pending:
    """Pending-row probes for the tables of one spool, cached per spool file."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._probes: dict[tuple[str, str, int], tuple[float, float]] = {}

    def probe(self, table: str) -> tuple[float | None, int]:
        """Oldest pending row time and an estimate of pending rows, from the spool files' sizes.

        Each file's first envelope gives its write time (``at``) and its rows per
        byte; that is cached per file (flush files are immutable, active.jsonl is
        keyed by inode), so a busy table costs a directory listing and stats.
        """
        first: float | None = None
        rows = 0.0
        seen = set()
        # Held files due for their look count too: the flush that follows looks (spoold/spool/held.py).
        for path in self.spool.pending(table) + held.due(self.spool, table, time.time()):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            key = (table, path.name, st.st_ino)
            seen.add(key)
            probe = self._probes.get(key)
            if probe is None:
                found = first_envelope(path)
                probe = found if found is not None else (st.st_mtime, _DEFAULT_RATIO)
                if found is not None:
                    self._probes[key] = probe
            at, ratio = probe
            first = at if first is None else min(first, at)
            rows += st.st_size * ratio
        for key in [k for k in self._probes if k[0] == table and k not in seen]:
            del self._probes[key]
        return first, int(rows)
