"""The committed-key index: which keys a table already holds, in 16 bytes a key.

Keys are stored as 128-bit BLAKE2b fingerprints (two uint64 arrays), in a few
sorted runs that merge like an LSM tree, so adding a flush's keys costs about
the flush, and a lookup is a binary search per run. At 128 bits a false
"already committed" (which would drop a row) needs a collision with odds far
below those of a disk error; a Python set of 10M string keys would need ~1 GB,
this needs ~160 MB.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from hashlib import blake2b

import numpy as np

_MIN_RUN = 4096


def fingerprints(keys: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) uint64 halves of each key's 128-bit BLAKE2b digest."""
    raw = b"".join([blake2b(k.encode("utf-8", "surrogatepass"), digest_size=16).digest() for k in keys])
    pairs = np.frombuffer(raw, dtype="<u8").reshape(-1, 2)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def _sorted_run(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((lo, hi))
    return hi[order], lo[order]


class KeyIndex:
    """A set of keys as fingerprints; tracks the table snapshot it reflects."""

    def __init__(self, table_uuid: str | None = None) -> None:
        self.table_uuid = table_uuid
        self.snapshot_id: int | None = None
        self.built = False  # True once it reflects ``snapshot_id`` (None: the empty table)
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(len(h) for h, _ in self._runs)

    @property
    def nbytes(self) -> int:
        return sum(h.nbytes + lo.nbytes for h, lo in self._runs)

    def clear(self, table_uuid: str | None = None) -> None:
        self.table_uuid = table_uuid
        self.snapshot_id = None
        self.built = False
        self._runs = []

    def add(self, keys: Sequence[str]) -> None:
        """Add keys (duplicates are harmless: lookups only ask 'is it there')."""
        if len(keys):
            self.add_fingerprints(*fingerprints(keys))

    def add_fingerprints(self, hi: np.ndarray, lo: np.ndarray) -> None:
        if not len(hi):
            return
        self._runs.append(_sorted_run(hi, lo))
        # Merge while the newest run is at least half the size of the one before it,
        # keeping O(log n) runs and amortised O(log n) work per key.
        while len(self._runs) > 1 and (
            len(self._runs[-1][0]) * 2 >= len(self._runs[-2][0]) or len(self._runs[-2][0]) < _MIN_RUN
        ):
            (h2, l2), (h1, l1) = self._runs.pop(), self._runs.pop()
            self._runs.append(_sorted_run(np.concatenate((h1, h2)), np.concatenate((l1, l2))))

    def contains(self, keys: Sequence[str]) -> np.ndarray:
        """A bool array: which of ``keys`` are in the index."""
        if not len(keys) or not self._runs:
            return np.zeros(len(keys), dtype=bool)
        return self.contains_fingerprints(*fingerprints(keys))

    def contains_fingerprints(self, qh: np.ndarray, ql: np.ndarray) -> np.ndarray:
        found = np.zeros(len(qh), dtype=bool)
        for hi, lo in self._runs:
            left = np.searchsorted(hi, qh, side="left")
            right = np.searchsorted(hi, qh, side="right")
            span = right - left
            one = span == 1
            found[one] |= lo[left[one]] == ql[one]
            for i in np.nonzero(span > 1)[0]:  # 64-bit prefix collision: check every candidate
                found[i] |= bool((lo[left[i] : right[i]] == ql[i]).any())
        return found
