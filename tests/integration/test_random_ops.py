"""A random mix of appends, re-sent keys, rotations, flushes and commit-then-crash leftovers (seeded).

Whatever the order, every key appended is committed exactly once and the
spool ends empty. Each step prints what it decided, so a failing seed can be
replayed (``SPOOLD_TEST_SEED=N``) and read step by step.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from support.cli import write_config

from spoold.config import load_config
from spoold.flush.flush import flush_table
from spoold.iceberg.sink import Sink
from spoold.spool.spool import Spool

TABLE = "app.events"


def test_random_spool_operations_keep_every_row_exactly_once(tmp_path: Path, rng: random.Random) -> None:
    chunk_rows = rng.choice([3, 40, 1000])
    config = load_config(write_config(tmp_path, f"[flush]\nchunk_rows = {chunk_rows}\n"))
    spool = Spool.from_config(config)
    sink = Sink(config)
    expected: list[str] = []
    print(f"chunk_rows {chunk_rows}")
    for step in range(30):
        op = rng.choices(["append", "resend", "rotate", "flush", "leftover"], weights=[5, 2, 2, 2, 1])[0]
        if op == "append":
            keys = [f"k{len(expected) + i}" for i in range(rng.randint(1, 60))]
            expected += keys
            spool.append(TABLE, [{"part_id": k, "step": step} for k in keys])
            detail = f"{len(keys)} new keys"
        elif op == "resend" and expected:
            keys = rng.sample(expected, min(len(expected), rng.randint(1, 20)))
            spool.append(TABLE, [{"part_id": k, "step": step} for k in keys])
            detail = f"{len(keys)} keys again: {keys[:3]}"
        elif op == "rotate":
            detail = str(spool.rotate(TABLE) is not None)
        elif op == "flush":
            fresh = rng.random() < 0.3  # a restarted daemon: a cold sink
            if fresh:
                sink = Sink(config)
            detail = "cold sink" if fresh else "warm sink"
            flush_table(config, spool, sink, TABLE)
        elif op == "leftover":  # a crash between a commit and its cleanup: the files come back
            spool.rotate(TABLE)
            saved = {p: p.read_bytes() for p in spool.flush_files(TABLE)}
            flush_table(config, spool, sink, TABLE)
            for path, data in saved.items():
                path.write_bytes(data)
            detail = f"{len(saved)} files back"
        else:
            detail = "nothing to re-send"
        print(f"step {step}: {op} {detail}")
    flush_table(config, spool, Sink(config), TABLE)
    tbl = Sink(config).load(config.table(TABLE))
    got = Counter(tbl.scan().to_arrow().column("part_id").to_pylist()) if tbl is not None else Counter()
    assert got == Counter(expected), "lost or doubled keys"
    assert spool.pending(TABLE) == []
