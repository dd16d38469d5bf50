"""Settling: which rows of a batch to commit — each key once, and only if not already seen."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def settle(
    keys: Sequence[str], seen: Sequence[bool] | np.ndarray, fp: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
) -> list[int]:
    """Positions to commit: the first occurrence of each key whose ``seen`` flag is false.

    ``seen[i]`` says whether ``keys[i]`` is already committed (flush) or already
    committed or spooled (backfill). Flush must pass committed keys only: its
    batch *is* the spool, so spooled keys would match every row and drop it.
    With ``fp``, the keys' 128-bit fingerprints (what the committed-key index
    compares) and the stable argsort of their high halves, repeats are found
    in that order instead of by hashing strings.
    """
    seen = np.asarray(seen, dtype=bool)
    if fp is not None:
        return np.flatnonzero(~(seen | repeats(*fp))).tolist()
    unseen = np.flatnonzero(~seen).tolist()
    everyone = len(unseen) == len(keys)
    cand = keys if everyone else [keys[i] for i in unseen]
    m = len(cand)
    # Built from the back, so each key ends up mapped to its first position (C speed, no Python loop).
    first = dict(zip(reversed(cand), range(m - 1, -1, -1)))
    pos = range(m) if len(first) == m else sorted(first.values())
    return list(pos) if everyone else [unseen[p] for p in pos]


def repeats(hi: np.ndarray, lo: np.ndarray, order: np.ndarray) -> np.ndarray:
    """True where a fingerprint occurred at a smaller position already (``order``: hi's stable argsort)."""
    sh = hi[order]  # equal fingerprints stay in position order
    same_hi = sh[1:] == sh[:-1]
    rep = np.zeros(len(hi), dtype=bool)
    if not same_hi.any():
        return rep
    sl = lo[order]
    if (same_hi & (sl[1:] != sl[:-1])).any():  # two keys share a high half: sort on both (rare, slower)
        order = np.lexsort((lo, hi))
        sh, sl = hi[order], lo[order]
        same_hi = sh[1:] == sh[:-1]
    rep[order[1:]] = same_hi & (sl[1:] == sl[:-1])
    return rep
