"""Issue 19, hostile input: no value, line or row crashes spoold's encoder, and every bound is a clean refusal.

The encoder paths run in subprocesses: on an orjson that corrupts its heap
(3.12.0, 3.13.0) the crash is a SIGABRT, which must fail the test, not the run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest
from support.cli import run_spoold, write_config
from support.hostile import REPRODUCER, crash_line

from spoold.errors import InputError, UsageError
from spoold.sources.reader import read_lines
from spoold.spool.spool import Spool

T = "app.events"
TESTS = str(Path(__file__).parent)


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_the_issues_orjson_reproducer_exits_cleanly_against_the_installed_orjson(tmp_path: Path) -> None:
    proc = run_python(REPRODUCER, tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "clean", (
        f"orjson {orjson.__version__} crashed on the issue 19 reproducer (exit {proc.returncode}): "
        f"{proc.stderr[-300:]} -- pyproject.toml must exclude this release")


def test_the_crash_value_goes_through_every_encode_path_of_spoold_and_is_refused_cleanly(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.jsonl").write_bytes(b'{"part_id":"a"}\n' + crash_line() + b'{"part_id":"b"}\n')
    proc = run_python(f"""
        import sys; sys.path.insert(0, {TESTS!r})
        import orjson
        from support.hostile import crash_line
        from spoold.config import SourceSpec
        from spoold.envelope import envelopes
        from spoold.errors import InputError
        from spoold.sources.tail import Tailer
        from spoold.spool.spool import Spool
        row = orjson.loads(crash_line())
        for call in (lambda: list(envelopes([row])), lambda: Spool("spool").append("{T}", [row])):
            try:
                call()
                raise SystemExit("encoded a value nested past the limit")
            except InputError as e:
                assert "nested too deeply" in str(e), e
        t = Tailer(Spool("spool"), [SourceSpec(table="{T}", path="src/*.jsonl", format="jsonl")])
        t.discover()
        t.run_pass()
        print(sorted(p.name for p in Spool("spool").pending("{T}")), len(list((Spool("spool").table_dir("{T}") /
              "quarantine").glob("*.jsonl"))))
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["['active.jsonl']", "1"], proc.stdout


@pytest.mark.parametrize(("value", "why"), [
    (float("nan"), "nan (not a JSON number)"),
    (float("-inf"), "-inf (not a JSON number)"),
    (2**64, "an integer beyond 64 bits"),
    (-(2**63) - 1, "an integer beyond 64 bits"),
    ({"a": [1, float("inf")]}, "inf (not a JSON number)"),
])
def test_the_python_api_refuses_nan_infinity_and_integers_beyond_64_bits(tmp_path: Path, value: object,
                                                                        why: str) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(InputError, match="cannot spool") as e:
        spool.append(T, [{"part_id": "k", "x": value}])
    assert isinstance(e.value, UsageError) and why in str(e.value)
    assert spool.pending(T) == []  # nothing written, not even a null in its place
    spool.append(T, [{"part_id": "k", "x": 2**64 - 1}, {"part_id": "j", "x": 1.5}])  # the edges still go


def test_a_source_integer_beyond_64_bits_is_a_bad_line_not_a_double(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_bytes(b'{"n":18446744073709551616}\n{"n":-9223372036854775809}\n{"n":"18446744073709551616"}\n'
                  b'{"n":18446744073709551615}\n')
    got = [(x.rows, x.error) for x in read_lines(f, "jsonl")]
    assert got == [([], "integer 18446744073709551616 is beyond 64 bits"),
                   ([], "integer -9223372036854775809 is beyond 64 bits"),
                   ([{"n": "18446744073709551616"}], None), ([{"n": 18446744073709551615}], None)]


def test_spoold_append_refuses_a_line_longer_than_max_line_bytes_naming_it(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("[spool]\n", "[spool]\nmax_line_bytes = 1024\n", 1))
    data = b'{"part_id":"a"}\n' + b'{"part_id":"b","x":"' + b"y" * 2000 + b'"}\n' + b'{"part_id":"c"}\n'
    proc = run_spoold("append", T, "--config", str(cfg), input=data)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.decode().strip().endswith("line 2: longer than max_line_bytes (1024 bytes)"), proc.stderr
    assert Spool(tmp_path / "state" / "spool").pending(T) == []  # all or nothing
    ok = b'{"part_id":"a","x":"' + b"y" * 990 + b'"}\n'  # under the bound as input, over it once enveloped
    proc = run_spoold("append", T, "--config", str(cfg), input=b'{"part_id":"z"}\n' + ok)
    assert proc.returncode == 2 and b"line 2: a row is" in proc.stderr, proc.stderr
    assert run_spoold("append", T, "--config", str(cfg), input=b'{"part_id":"z"}\n').returncode == 0


def test_a_source_line_over_max_line_bytes_is_streamed_past_never_held(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    with open(f, "wb") as out:
        out.write(b'{"a":1}\n{"b":"')
        out.write(b"x" * (3 << 20))
        out.write(b'"}\n{"c":3}\n')
    got = list(read_lines(f, "jsonl", max_line=1 << 20))
    assert [x.rows for x in got] == [[{"a": 1}], [], [{"c": 3}]]
    long = got[1].long
    assert long is not None and (long.length, long.open, long.head[:6]) == ((3 << 20) + 8, False, b'{"b":"')
    assert "longer than max_line_bytes" in (got[1].error or "")
