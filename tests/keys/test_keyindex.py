"""The committed-key index: a set of keys as sorted runs of 128-bit fingerprints.

A false "present" drops a row for good, a false "absent" doubles one: both
directions are checked against a plain Python set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from hashlib import blake2b

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from spoold.keys.index import KeyIndex, blake2b_fingerprints, fingerprints
from spoold.keys.settle import settle


def test_empty_index_holds_nothing() -> None:
    idx = KeyIndex()
    assert len(idx) == 0 and idx.nbytes == 0
    assert idx.contains(["a", ""]).tolist() == [False, False]
    assert idx.contains([]).tolist() == []


def test_added_keys_are_found_and_others_are_not() -> None:
    idx = KeyIndex("uuid-1")
    idx.add(["a:0", "a:1", "ключ", "😀", " "])
    idx.add(["a:0"])  # a duplicate is harmless
    assert idx.contains(["a:0", "a:1", "a:2", "ключ", "😀", " ", "", "A:0"]).tolist() == [
        True, True, False, True, True, True, False, False]
    assert idx.nbytes == 16 * len(idx)


def test_fingerprints_fall_back_to_blake2b_when_the_hash_key_is_not_secret() -> None:
    """With a fixed PYTHONHASHSEED anyone can compute hash(): a producer could craft colliding keys."""
    code = ("from spoold.keys.index import fingerprints, blake2b_fingerprints as b; k = ['part-1', 'x:0'];"
            "f = fingerprints(k); g = b(k); print((f[0] == g[0]).all() and (f[1] == g[1]).all())")
    for seed, want in (("0", "True"), ("12345", "True"), ("random", "False")):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == want, seed
    hi, lo = blake2b_fingerprints(["part-1"])
    digest = blake2b(b"part-1", digest_size=16).digest()
    assert (int(hi[0]), int(lo[0])) == (int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little"))


def test_many_small_adds_keep_few_runs_and_exact_answers() -> None:
    idx = KeyIndex()
    for flush in range(600):  # the daemon's life: one small add per commit
        idx.add([f"k{flush}-{i}" for i in range(50)])
    assert len(idx) == 30_000
    assert len(idx._runs) <= 16  # merged like an LSM tree: O(log n) runs to search
    probe = [f"k{f}-{i}" for f in range(0, 600, 7) for i in (0, 49)] + [f"k{f}-50" for f in range(600)]
    want = [not k.endswith("-50") for k in probe]
    assert idx.contains(probe).tolist() == want


def test_keys_sharing_the_first_64_bits_are_told_apart() -> None:
    """Runs are searched on the high half; equal high halves must compare the low half."""
    idx = KeyIndex()
    hi = np.array([7, 7, 7, 9], dtype=np.uint64)
    lo = np.array([3, 1, 2, 1], dtype=np.uint64)
    idx.add_fingerprints(hi, lo)
    q_hi = np.array([7, 7, 7, 7, 9, 9, 8], dtype=np.uint64)
    q_lo = np.array([1, 2, 3, 4, 1, 2, 1], dtype=np.uint64)
    assert idx.contains_fingerprints(q_hi, q_lo).tolist() == [True, True, True, False, True, False, False]


def test_clear_forgets_keys_and_snapshot() -> None:
    idx = KeyIndex("t1")
    idx.add(["a"])
    idx.snapshot_id, idx.built = 5, True
    idx.clear("t2")
    assert (idx.table_uuid, idx.snapshot_id, idx.built, len(idx)) == ("t2", None, False, 0)
    assert idx.contains(["a"]).tolist() == [False]


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(st.lists(st.text(max_size=12), max_size=40), max_size=25),
       probes=st.lists(st.text(max_size=12), max_size=60))
def test_index_answers_like_a_set(batches: list[list[str]], probes: list[str]) -> None:
    idx, ref = KeyIndex(), set()
    for b in batches:
        idx.add(b)
        ref.update(b)
        queries = probes + b[:3]
        assert idx.contains(queries).tolist() == [q in ref for q in queries]
    assert idx.contains(sorted(ref)).all()


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 20)), max_size=30), max_size=12),
       probes=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 21)), max_size=40))
def test_colliding_high_halves_answer_like_a_set_of_pairs(batches: list[list[tuple[int, int]]],
                                                          probes: list[tuple[int, int]]) -> None:
    """Tiny high halves force long runs of equal prefixes through every merge."""
    idx, ref = KeyIndex(), set()
    for b in batches:
        if b:
            idx.add_fingerprints(np.array([h for h, _ in b], dtype=np.uint64), np.array([lo for _, lo in b],
                                                                                        dtype=np.uint64))
        ref.update(b)
    q = probes + sorted(ref)
    got = idx.contains_fingerprints(np.array([h for h, _ in q], dtype=np.uint64),
                                    np.array([lo for _, lo in q], dtype=np.uint64))
    assert got.tolist() == [p in ref for p in q]


# -- settling on fingerprints (what a flush's commit does) -------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="abc", max_size=3), max_size=60), st.sets(st.text(alphabet="abc", max_size=3)))
def test_settle_on_fingerprints_keeps_what_settle_on_strings_keeps(keys: list[str], committed: set[str]) -> None:
    seen = [k in committed for k in keys]
    expected = settle(keys, seen)
    assert expected == [i for i, k in enumerate(keys) if k not in committed and k not in keys[:i]]
    fh, fl = fingerprints(keys)
    assert settle(keys, seen, (fh, fl, np.argsort(fh, kind="stable"))) == expected


def test_settle_on_fingerprints_copes_with_keys_sharing_a_high_half() -> None:
    """Astronomically rare for real keys; the sort must then order by both halves, or repeats go unnoticed."""
    hi = np.array([7, 7, 7, 7, 3, 7], dtype=np.uint64)
    lo = np.array([1, 2, 1, 2, 9, 1], dtype=np.uint64)  # keys: a b a b c a
    keys = ["a", "b", "a", "b", "c", "a"]
    fp = (hi, lo, np.argsort(hi, kind="stable"))
    assert settle(keys, [False] * 6, fp) == settle(keys, [False] * 6) == [0, 1, 4]
    assert settle(keys, [False, True, False, True, False, False], fp) == [0, 4]
