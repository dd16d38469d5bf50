"""Pure settling: gather validated rows column-wise; keep each key once, and only if unseen."""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from spoold.envelope import LineResult


class Batch:
    """Validated rows of one commit, column-wise (a column absent from a row is null)."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.values: dict[str, list[Any]] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, result: LineResult) -> None:
        """Append one validated envelope's rows."""
        m = len(result.keys)
        if not m:
            return
        n = len(self.keys)
        for name in result.values:
            if name not in self.values:
                self.values[name] = [None] * n
        for name, col in self.values.items():
            vals = result.values.get(name)
            col.extend(vals if vals is not None else [None] * m)
        self.keys.extend(result.keys)

    def add_rows(self, keys: Sequence[str], values: dict[str, list[Any]]) -> None:
        """Append already-aligned columns (``values[c][i]`` belongs to ``keys[i]``)."""
        self.add(LineResult(columns=list(values), keys=list(keys), values=values))


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic GC while a batch of ~a million small row lists and dicts is built.

    Each collection would walk every live row; with the collector on, parsing
    takes two to three times as long. Rows hold no reference cycles; whatever
    cyclic garbage the catalog stack leaves meanwhile is collected afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def settle(keys: Sequence[str], seen: Sequence[bool] | np.ndarray) -> list[int]:
    """Positions to commit: the first occurrence of each key whose ``seen`` flag is false.

    ``seen[i]`` says whether ``keys[i]`` is already committed (flush) or already
    committed or spooled (backfill). Flush must pass committed keys only: its
    batch *is* the spool, so spooled keys would match every row and drop it.
    """
    unseen = np.flatnonzero(~np.asarray(seen, dtype=bool)).tolist()
    everyone = len(unseen) == len(keys)
    cand = keys if everyone else [keys[i] for i in unseen]
    m = len(cand)
    # Built from the back, so each key ends up mapped to its first position (C speed, no Python loop).
    first = dict(zip(reversed(cand), range(m - 1, -1, -1)))
    pos = range(m) if len(first) == m else sorted(first.values())
    return list(pos) if everyone else [unseen[p] for p in pos]
