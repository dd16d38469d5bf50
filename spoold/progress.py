"""For long CLI runs: a tiny progress reporter on stderr, and a graceful Ctrl-C.

Stdlib only. On a terminal the bar is redrawn about five times a second; in a
log (no terminal) one line is written every ten seconds, so a long backfill
under systemd or CI shows it is alive without flooding the journal.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, TextIO

TTY_INTERVAL_S = 0.2
LOG_INTERVAL_S = 10.0
_BAR_WIDTH = 24


def format_eta(seconds: float | None) -> str:
    """``h:mm:ss`` or ``m:ss``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(seconds + 0.5)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def describe(label: str, rows: int, elapsed: float, fraction: float | None, bar: bool) -> str:
    """One progress line: rows, rows/s and the ETA extrapolated from ``fraction`` done."""
    rate = rows / elapsed if elapsed > 0 else 0.0
    eta = None
    if fraction is not None and fraction > 0:
        eta = elapsed * (1 - fraction) / fraction
    pct = "" if fraction is None else f"{min(fraction, 1.0) * 100:5.1f}% "
    head = label
    if bar and fraction is not None:
        filled = int(min(fraction, 1.0) * _BAR_WIDTH)
        head += " [" + "#" * filled + "-" * (_BAR_WIDTH - filled) + "]"
    return f"{head} {pct}{rows:,} rows, {rate:,.0f} rows/s, ETA {format_eta(eta)}"


class Progress:
    """Reports ``update(rows, fraction)`` calls on ``stream``, rate-limited.

    ``fraction`` is how much of the work is done (0..1), or None if unknown.
    Calls are cheap when nothing is due, so callers can report often.
    """

    def __init__(
        self,
        stream: TextIO,
        label: str = "progress",
        *,
        tty: bool | None = None,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.label = label
        self.tty = _isatty(stream) if tty is None else tty
        self.interval = interval if interval is not None else (TTY_INTERVAL_S if self.tty else LOG_INTERVAL_S)
        self.clock = clock
        self.started = clock()
        self._next = self.started + self.interval
        self._drawn = False

    def start(self) -> None:
        """(Re)start the clock that rows/s and the ETA are measured from."""
        self.started = self.clock()
        self._next = self.started + self.interval

    def update(self, rows: int, fraction: float | None) -> None:
        now = self.clock()
        if now < self._next:
            return
        self._next = now + self.interval
        line = describe(self.label, rows, now - self.started, fraction, self.tty)
        if self.tty:
            self.stream.write("\r\x1b[K" + line)
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Erase the bar (before other output goes to the same terminal)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False

    def filter(self, record: object) -> bool:
        """A logging filter: erase the bar before a log line is written under it."""
        self.clear()
        return True


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class StopOnInterrupt:
    """While entered, the first SIGINT only sets a flag (``stop()`` turns true); a second
    one raises KeyboardInterrupt at once. The previous handler is restored on exit.

    Signal handlers can only be installed from the main thread; elsewhere this is inert.
    """

    def __init__(self, notice: str = "stopping after the current step (Ctrl-C again to abort)") -> None:
        self.notice = notice
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __call__(self) -> bool:
        return self.requested

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        sys.stderr.write(f"\nspoold: {self.notice}\n")
        sys.stderr.flush()
