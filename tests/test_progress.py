"""The progress printer and the graceful Ctrl-C used by long CLI runs (``spoold backfill``)."""

from __future__ import annotations

import io
import os
import signal

import pytest

from spoold.progress import Progress, StopOnInterrupt, describe, format_eta


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- progress -----------------------------------------------------------------------------


def test_format_eta() -> None:
    assert format_eta(None) == "?"
    assert format_eta(5) == "0:05"
    assert format_eta(125) == "2:05"
    assert format_eta(3 * 3600 + 61) == "3:01:01"


def test_describe_extrapolates_the_eta_from_the_fraction_done() -> None:
    line = describe("backfill t.x", 50_000, 10.0, 0.25, bar=True)
    assert "[######------------------]" in line and "25.0%" in line
    assert "50,000 rows" in line and "5,000 rows/s" in line and "ETA 0:30" in line
    assert describe("b", 10, 1.0, None, bar=True).endswith("ETA ?")


def test_progress_on_a_terminal_redraws_one_line_at_most_five_times_a_second() -> None:
    out, clock = io.StringIO(), _Clock()
    p = Progress(out, "bf", tty=True, clock=clock)
    p.update(10, 0.1)
    assert out.getvalue() == ""  # nothing before the first interval
    clock.now += 0.25
    p.update(20, 0.2)
    p.update(30, 0.3)  # too soon after the last draw
    assert out.getvalue().count("\r\x1b[K") == 1 and "20 rows" in out.getvalue()
    assert "\n" not in out.getvalue()
    p.clear()
    assert out.getvalue().endswith("\r\x1b[K")


def test_progress_without_a_terminal_writes_a_line_every_ten_seconds() -> None:
    out, clock = io.StringIO(), _Clock()
    p = Progress(out, "bf", tty=False, clock=clock)
    for _ in range(50):
        clock.now += 0.5
        p.update(1000, None)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all("\r" not in ln and "1,000 rows" in ln for ln in lines)
    p.clear()  # nothing to erase in a log
    assert len(out.getvalue().splitlines()) == 2


# -- Ctrl-C ------------------------------------------------------------------------------


def test_first_sigint_sets_the_flag_second_aborts_and_the_handler_is_restored(
        capsys: pytest.CaptureFixture[str]) -> None:
    before = signal.getsignal(signal.SIGINT)
    with StopOnInterrupt("stopping soon") as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGINT)
        assert stop()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    assert "stopping soon" in capsys.readouterr().err


def test_a_log_line_erases_the_bar_first() -> None:
    import logging

    out, clock = io.StringIO(), _Clock()
    p = Progress(out, "bf", tty=True, clock=clock)
    handler = logging.StreamHandler(out)
    handler.addFilter(p)
    log = logging.getLogger("test-progress-filter")
    log.addHandler(handler)
    try:
        clock.now += 1
        p.update(5, 0.5)
        log.warning("hello")
    finally:
        log.removeHandler(handler)
    assert out.getvalue().endswith("\r\x1b[Khello\n")  # the bar is gone before the log line
