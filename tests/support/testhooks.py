"""The test side of ``spoold._testhooks``: switch marks on for a subprocess, pause it, read where it got.

A process started with :meth:`Hooks.env` appends a line to ``<dir>/marks`` at
every named point it passes, and stops at the point given as ``pause_at`` until
the test resumes or kills it. So a crash test can SIGKILL exactly inside the
window it means, and a random-timing soak can say which window each kill hit.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from support.daemonproc import wait_for

# Windows of a flush a kill can land in, named by the last mark the killed process wrote.
WINDOWS = {
    None: "before any commit was staged",
    "commit.staged": "inside a commit (files written, catalog not yet told)",
    "flush.committed": "after a commit, before its flush files were deleted",
    "flush.removed": "after a commit's cleanup, before the next one",
}


@dataclass(frozen=True)
class Mark:
    point: str
    pid: int
    n: int
    at: float


class Hooks:
    """Marks (and a pause) for the processes started with :meth:`env`, kept under ``directory``."""

    def __init__(self, directory: Path, pause_at: str | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)  # spoold honours only a private directory of its user, marked enabled
        (self.dir / "enabled").touch()
        self.pause_at = pause_at

    def env(self, pause: bool = True) -> dict[str, str]:
        """Environment for a spoold subprocess: marks on, and the pause unless ``pause=False``."""
        env = {"SPOOLD_TEST_HOOKS": str(self.dir), "SPOOLD_TEST_PAUSE_AT": ""}
        if pause and self.pause_at:
            env["SPOOLD_TEST_PAUSE_AT"] = self.pause_at
        return env

    def marks(self, pid: int | None = None) -> list[Mark]:
        try:
            text = (self.dir / "marks").read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            point, p, n, at = line.split()
            if pid is None or int(p) == pid:
                out.append(Mark(point, int(p), int(n), float(at)))
        return out

    def paused(self, pid: int) -> Mark | None:
        """Where process ``pid`` is paused, or None while it is not (yet)."""
        try:
            point, p, n, at = (self.dir / f"paused.{pid}").read_text().split()
        except FileNotFoundError:
            return None
        return Mark(point, int(p), int(n), float(at))

    def wait_paused(self, pid: int, alive: object = None) -> Mark:
        """Wait until ``pid`` pauses at ``pause_at``; it must get there (``alive()`` false fails at once)."""
        def check() -> Mark | bool | None:
            if callable(alive) and not alive():
                return True
            return self.paused(pid)

        got = wait_for(check, f"process {pid} to pause at {self.pause_at}")
        assert isinstance(got, Mark), f"process {pid} ended before it reached {self.pause_at}"
        return got

    def resume(self, pid: int) -> None:
        (self.dir / f"resume.{pid}").touch()

    def window(self, pid: int) -> str | None:
        """The last point ``pid`` marked (a key of :data:`WINDOWS`): where a kill of it landed."""
        marks = [m for m in self.marks(pid) if m.point in WINDOWS]
        return marks[-1].point if marks else None

    def span(self, pid: int) -> tuple[float, float] | None:
        """First and last mark time of ``pid`` (None: it marked nothing)."""
        times = [m.at for m in self.marks(pid)]
        return (min(times), max(times)) if times else None


def windows_hit(hooks: Hooks, pids: list[int]) -> Counter[str]:
    """How many of the killed ``pids`` landed in each window (by description)."""
    return Counter(WINDOWS[hooks.window(pid)] for pid in pids)


def overlapped(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    """True when two processes' marked spans intersect in time."""
    return a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]
