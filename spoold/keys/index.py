"""The committed-key index: which keys a table already holds, in 16 bytes a key.

Keys are stored as 128-bit fingerprints (two uint64 arrays), in a few sorted
runs that merge like an LSM tree, so adding a flush's keys costs about the
flush, and a lookup is a binary search per run. At 128 bits a false "already
committed" (which would drop a row) needs a collision with odds far below
those of a disk error; a Python set of 10M string keys would need ~1 GB, this
needs ~160 MB.

Fingerprints are only ever compared within one process (the index lives in
memory and is rebuilt from the table at start-up), so they come from the
interpreter's own keyed SipHash — ``hash(k)`` and ``hash(k + "\\0")`` under
its secret per-process key, four times cheaper than a BLAKE2b object per key.
When that key is not secret (``PYTHONHASHSEED`` fixed, e.g. for reproducible
builds), a producer could craft colliding keys, so BLAKE2b is used instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from hashlib import blake2b

import numpy as np

_MIN_RUN = 4096
_SECRET_HASH_KEY = bool(sys.flags.hash_randomization) and os.environ.get("PYTHONHASHSEED", "random") in ("", "random")


def fingerprints(keys: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) uint64 halves of each key's 128-bit fingerprint (valid within this process)."""
    if not _SECRET_HASH_KEY:
        return blake2b_fingerprints(keys)
    keys = keys if isinstance(keys, Sequence) else list(keys)
    n = len(keys)
    hi = np.fromiter(map(hash, keys), dtype=np.int64, count=n).view(np.uint64)
    lo = np.fromiter((hash(k + "\0") for k in keys), dtype=np.int64, count=n).view(np.uint64)
    return hi, lo


def blake2b_fingerprints(keys: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) uint64 halves of each key's 128-bit BLAKE2b digest (the same in every process)."""
    raw = b"".join([blake2b(k.encode("utf-8", "surrogatepass"), digest_size=16).digest() for k in keys])
    pairs = np.frombuffer(raw, dtype="<u8").reshape(-1, 2)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def _sorted_run(hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Ordered by the high half only: lookups compare the low half of every entry
    # sharing a high half, so no lexsort on both halves is needed (~50x slower).
    order = np.argsort(hi, kind="stable")
    return hi[order], lo[order]


def _merge(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted runs as one, in one pass and without a full-size index array.

    Concatenating and re-sorting would hold ~3 copies of the merged run at once
    (about +500 MB at 10M keys); this holds the output plus a mask.
    """
    (h1, l1), (h2, l2) = a, b
    at = np.searchsorted(h1, h2) + np.arange(len(h2))  # where each of b's entries lands in the output
    hi = np.empty(len(h1) + len(h2), dtype=h1.dtype)
    lo = np.empty_like(hi)
    from_a = np.ones(len(hi), dtype=bool)
    from_a[at] = False
    hi[at], lo[at] = h2, l2
    hi[from_a], lo[from_a] = h1, l1
    return hi, lo


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
            newer, older = self._runs.pop(), self._runs.pop()
            self._runs.append(_merge(older, newer))

    def contains(self, keys: Sequence[str]) -> np.ndarray:
        """A bool array: which of ``keys`` are in the index."""
        if not len(keys) or not self._runs:
            return np.zeros(len(keys), dtype=bool)
        return self.contains_fingerprints(*fingerprints(keys))

    def contains_fingerprints(self, qh: np.ndarray, ql: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
        """A bool array: which of the fingerprints ``(qh[i], ql[i])`` are in the index.

        ``order``: ``np.argsort(qh, kind="stable")``, if the caller has it already.
        """
        found = np.zeros(len(qh), dtype=bool)
        if not len(qh) or not self._runs:
            return found
        # Sorted queries let numpy's binary search start where the previous one ended.
        order = np.argsort(qh, kind="stable") if order is None else order
        sh, sl = qh[order], ql[order]
        hit = np.zeros(len(sh), dtype=bool)
        for hi, lo in self._runs:
            last = len(hi) - 1
            pos = np.minimum(np.searchsorted(hi, sh, side="left"), last)
            same_hi = hi[pos] == sh
            hit |= same_hi & (lo[pos] == sl)
            # A 64-bit prefix shared by several entries: the first one was not it, check the rest.
            more = same_hi & ~hit & (pos < last)
            more[more] = hi[pos[more] + 1] == sh[more]
            for i in np.flatnonzero(more):
                j = pos[i] + 1
                while j <= last and hi[j] == sh[i] and not hit[i]:
                    hit[i] = lo[j] == sl[i]
                    j += 1
        found[order] = hit
        return found
