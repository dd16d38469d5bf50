"""Pure settling: gather validated rows column-wise; keep each key once, and only if unseen."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def settle(keys: Sequence[str], seen: Sequence[bool]) -> list[int]:
    """Positions to commit: the first occurrence of each key whose ``seen`` flag is false.

    ``seen[i]`` says whether ``keys[i]`` is already committed (flush) or already
    committed or spooled (backfill). Flush must pass committed keys only: its
    batch *is* the spool, so spooled keys would match every row and drop it.
    """
    keep: list[int] = []
    taken: set[str] = set()
    add = taken.add
    for i, k in enumerate(keys):
        if seen[i] or k in taken:
            continue
        add(k)
        keep.append(i)
    return keep
