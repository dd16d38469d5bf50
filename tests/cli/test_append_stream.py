"""Large `spoold append` inputs: streamed, validated a batch at a time, published whole or not at all (issue 16)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from support.cli import run_spoold, write_config
from support.tables import spooled_keys

from spoold.config import TableSpec, load_config
from spoold.envelope import Validator
from spoold.spool.files import ACTIVE
from spoold.spool.spool import STAGE_BYTES, Spool

TABLE = "app.events"
DECLARED = f"""
[tables."{TABLE}"]
[tables."{TABLE}".columns]
part_id = "string!"
n = "long"
ts = "timestamptz"
text = "string"
"""


def rows(n: int, start: int = 0) -> bytes:
    return b"".join(orjson.dumps({"part_id": f"k{i}", "n": i, "ts": f"2026-01-01T00:00:{i % 60:02d}Z",
                                  "text": "x" * 200}) + b"\n" for i in range(start, start + n))


def test_a_large_input_is_published_as_one_flush_file_after_what_was_appended_before(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, DECLARED)
    assert run_spoold("append", TABLE, "--config", str(cfg), input=rows(3)).returncode == 0
    big = rows(40_000, start=3)
    assert len(big) > STAGE_BYTES
    out = run_spoold("append", TABLE, "--config", str(cfg), "--json", input=big)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"table": TABLE, "appended": 40_000}
    spool = Spool.from_config(load_config(cfg))
    files = spool.flush_files(TABLE)
    assert len(files) == 2 and not (spool.table_dir(TABLE) / ACTIVE).exists()  # the earlier rows rotated first
    assert spooled_keys(cfg, TABLE) == [f"k{i}" for i in range(40_003)]  # spool order is input order
    assert not list(spool.table_dir(TABLE).glob(".*.tmp"))


def test_a_bad_line_at_the_end_of_a_large_input_appends_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, DECLARED)
    data = rows(40_000) + b'{"part_id": "bad", "n": "seven"}\n'
    out = run_spoold("append", TABLE, "--config", str(cfg), input=data)
    assert out.returncode == 2
    assert out.stderr.decode() == "spoold: error: line 40001: column 'n': cannot cast \"seven\" to long\n"
    spool = Spool.from_config(load_config(cfg))
    assert spool.pending(TABLE) == [] and not list(spool.table_dir(TABLE).glob(".*"))


def test_the_first_bad_line_is_named_whether_it_fails_to_parse_or_to_validate(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, DECLARED)
    data = rows(5) + b'{"part_id": "b", "n": 1.5}\n' + rows(5, 10) + b"not json\n"
    out = run_spoold("append", TABLE, "--config", str(cfg), input=data)
    assert out.returncode == 2 and out.stderr.decode().startswith("spoold: error: line 6: column 'n'")


def test_memory_stays_bounded_whatever_the_input_size(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, DECLARED)
    src = tmp_path / "rows.jsonl"
    with open(src, "wb") as f:
        for i in range(0, 200_000, 20_000):
            f.write(rows(20_000, i))  # ~50 MB
    # The CLI's own peak (VmHWM: ru_maxrss would carry the forking test process's peak over the exec).
    code = ("import sys\nfrom spoold.cli.entry import main\nrc = main(sys.argv[1:])\n"
            "hwm = [x for x in open('/proc/self/status') if x.startswith('VmHWM')][0].split()[1]\n"
            "print(int(hwm) // 1024, rc, file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code, "append", TABLE, str(src), "--config", str(cfg)],
                         capture_output=True, text=True)
    peak_mb, rc = map(int, out.stderr.split()[-2:])
    assert rc == 0, out.stderr
    assert peak_mb < 100, f"{peak_mb} MB for a {src.stat().st_size / 2**20:.0f} MB input"


values = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(),
                   st.text(max_size=8), st.sampled_from(["2026-01-01T00:00:00Z", "2026-02-30T00:00:00Z",
                                                         "2026-01-01 10:00:00+02:00", "2026-01-01", "20260101"]),
                   st.lists(st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(values, min_size=4, max_size=4), min_size=1, max_size=80))
def test_checking_only_gives_the_verdicts_of_casting(matrix: list[list[object]]) -> None:
    """`spoold append` validates with ``cast=False``; flush casts. Same rows rejected, same reasons."""
    spec = TableSpec("app.t", columns=(), declared=False)
    cols = ["part_id", "ts", "n", "x"]
    matrix = [[f"k{i}", *r[1:]] for i, r in enumerate(matrix)]
    table_types = {"ts": "timestamptz", "n": "long", "d": "date"}
    a = Validator(spec, table_types).rows(cols, matrix)
    b = Validator(spec, table_types, cast=False).rows(cols, matrix)
    assert [(r.index, r.reason) for r in a.rejects] == [(r.index, r.reason) for r in b.rejects]
    assert a.keys == b.keys
