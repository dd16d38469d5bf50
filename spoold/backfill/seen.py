"""Backfill's seen-set: the keys a source row must not bring a second time.

It is the union of the keys committed to the table, the keys waiting in the
spool and the keys this run has already kept. Spooled keys are read with
flush's own reader (``spool.read_validated``) and a fresh :class:`Validator`,
exactly as a flush starting now would read them, so a line or row that flush
would quarantine is never "already captured": its row gets backfilled. The
scan is read-only (no rotation, no lock). A spool file that cannot be read
counts as not seen: a dedupe miss is harmless (the commit re-settles by key),
a dropped row is not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from spoold.config import TableSpec
from spoold.envelope import Validator
from spoold.iceberg.schema import table_types
from spoold.iceberg.sink import TableSink
from spoold.keys.index import KeyIndex
from spoold.spool.files import read_validated
from spoold.spool.held import spooled
from spoold.spool.spool import Spool

log = logging.getLogger("spoold.backfill.run")  # backfill's messages, under its logger name


def spooled_keys(spool: Spool, spec: TableSpec, validator: Validator) -> Iterator[tuple[Path, list[str] | None]]:
    """``(file, keys)`` for each pending spool file, keys as flush's reader sees them.

    Only rows that pass every envelope rule give keys. Read-only. A file that
    vanishes (flushed or rotated meanwhile) is skipped and the listing taken
    again, so rows moved from ``active.jsonl`` to a new flush file are still
    read. A file that cannot be read gives ``None``: its keys count as not seen.
    """
    done: set[str] = set()
    while True:
        todo = [p for p in spooled(spool, spec.identifier) if p.name not in done]
        if not todo:
            return
        for path in todo:
            done.add(path.name)
            keys: list[str] = []
            try:
                for _lineno, _raw, verdict in read_validated(path, validator):
                    keys.extend(verdict.keys)
            except FileNotFoundError:
                continue  # committed and removed by a flush, or rotated: the next listing shows it
            except OSError as e:
                log.warning("spool file %s unreadable, its keys count as not seen: %s", path, e.strerror or e)
                yield path, None
                continue
            yield path, keys


class SeenSet:
    """committed ∪ spooled ∪ kept by this run, looked up a group of keys at a time."""

    def __init__(self, sink: TableSink, spool: Spool, spec: TableSpec, hints: dict[str, str] | None = None) -> None:
        """Read the spooled keys, then the committed ones (and the table's columns as of those). ``hints``:
        the types of the table's sources (:func:`spoold.sources.detect.source_types`), as flush has them."""
        tbl = sink.load(spec)
        types, required = table_types(tbl.schema()) if tbl is not None else ({}, frozenset[str]())
        self.spooled = KeyIndex()
        self.unreadable_spool_files = 0
        # A fresh validator, as a flush starting now would make, so verdicts match flush's.
        for _path, keys in spooled_keys(spool, spec, Validator(spec, types, required, hints=hints)):
            if keys is None:
                self.unreadable_spool_files += 1
            else:
                self.spooled.add(keys)
        tbl = sink.load(spec)  # after the spool scan: rows flushed meanwhile are committed now
        if tbl is not None:
            types, required = table_types(tbl.schema())
        self.types, self.required = types, required  # what the run validates its rows against
        # The sink's own index, which each commit advances; while a commit runs, lookups may
        # miss its newest keys, which that commit settles anyway.
        self.committed = sink.committed(spec, tbl) if tbl is not None else sink.index(spec)
        # Keys this run has kept, so later copies count as duplicates in the source: the
        # current chunk's as a set (cheap lookups), earlier chunks' as fingerprints (16 B a key).
        self.taken = KeyIndex()
        self.chunk_keys: set[str] = set()
        self.chunk_fps: list[tuple[np.ndarray, np.ndarray]] = []

    def lookup(self, keys: list[str], fh: np.ndarray, fl: np.ndarray, *,
               unsettled: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks over ``keys`` (fingerprints ``fh``, ``fl``): committed, kept before by this run, spooled.

        A key is in at most one of them. ``unsettled``: earlier chunks may not be
        in the committed index yet (a dry run, or a commit still in flight).
        """
        n = len(keys)
        com = self.committed.contains_fingerprints(fh, fl)
        if unsettled:
            dup = self.taken.contains_fingerprints(fh, fl)
        else:  # earlier chunks are committed by now: only a committed key can be one we kept before
            dup = np.zeros(n, dtype=bool)
            hits = np.flatnonzero(com)
            if len(hits) and len(self.taken):
                dup[hits] = self.taken.contains_fingerprints(fh[hits], fl[hits])
        chunk = self.chunk_keys
        if chunk and not chunk.isdisjoint(keys):
            dup |= np.fromiter((k in chunk for k in keys), dtype=bool, count=n)
        com &= ~dup
        spo = np.zeros(n, dtype=bool)
        rest = np.flatnonzero(~(com | dup))
        if len(rest) and len(self.spooled):
            spo[rest] = self.spooled.contains_fingerprints(fh[rest], fl[rest])
        return com, dup, spo

    def take(self, keys: list[str], fps: tuple[np.ndarray, np.ndarray]) -> None:
        """Add keys the run keeps (``fps``: their fingerprints) to the current chunk."""
        self.chunk_keys.update(keys)
        self.chunk_fps.append(fps)

    def roll(self) -> None:
        """Move the chunk's keys into ``taken`` (one sorted run per chunk, not per group)."""
        if self.chunk_fps:
            self.taken.add_fingerprints(np.concatenate([h for h, _ in self.chunk_fps]),
                                        np.concatenate([lo for _, lo in self.chunk_fps]))
        self.chunk_keys, self.chunk_fps = set(), []
