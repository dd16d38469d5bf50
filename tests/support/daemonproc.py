"""A real ``spoold run`` subprocess for tests, ready once it says READY=1, and polling with generous deadlines.

Readiness is systemd's protocol, as for the daemons of ``spoold.testing``: the
daemon gets a ``NOTIFY_SOCKET`` of its own, read by the plugin's reader
(``spoold.testing.daemon``), and a test goes on once ``READY=1`` arrives. Every
other wait polls until a deadline; the deadlines are generous so a loaded
machine only makes the tests slower, never wrong.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spoold.testing.daemon import NotifySocket
from support import zygote

DEADLINE_S = 90.0


class DaemonProc:
    """A ``spoold run`` subprocess; its stdout and stderr go to a file the test can read.

    Ready (``ready=True``) once it has sent READY=1; a daemon meant to fail at start-up takes ``ready=False``.
    ``fresh=True``: a new interpreter, not a child of the worker's zygote (tests/support/zygote.py), for a test
    that measures what the daemon imports, holds in memory or runs as threads.
    """

    def __init__(self, cfg: Path, env: dict[str, str] | None = None, *args: str, ready: bool = True,
                 fresh: bool = False) -> None:
        self.cfg = cfg
        self.log_path = cfg.parent / f"daemon-{uuid.uuid4().hex[:8]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()
        self.notify = NotifySocket()
        self.proc = zygote.popen([sys.executable, "-m", "spoold", "run", "--config", str(cfg), *args],
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True,  # no controlling terminal: SIGHUP reloads
                                     env={**os.environ, **(env or {}), "NOTIFY_SOCKET": self.notify.address,
                                          **({zygote.NO_ZYGOTE: "0"} if fresh else {})})
        if ready:
            self.wait_ready()

    def wait_ready(self, count: int = 1, timeout: float = DEADLINE_S) -> None:
        """Wait until the daemon has sent READY=1 ``count`` times (a reload or a re-exec sends it again)."""
        deadline = time.monotonic() + timeout
        while not self.notify.wait(lambda: self.notify.ready >= count, 0.2):
            rc = self.proc.poll()
            assert rc is None, f"spoold run exited with {rc} before READY=1:\n{self.log()}"
            assert time.monotonic() < deadline, f"no READY=1 from spoold run within {timeout:.0f}s:\n{self.log()}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = DEADLINE_S) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()

    def close(self) -> None:
        """Kill the daemon if it still runs and stop reading its NOTIFY_SOCKET (after the test: its last
        datagrams, STOPPING=1 among them, are read while the test still looks)."""
        self.kill()
        self.notify.close()


def wait_for(cond: Callable[[], Any], what: str, timeout: float = DEADLINE_S, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def http_get(address: str, path: str) -> tuple[int, bytes]:
    """GET ``http://address/path``: (status, body), error statuses included."""
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
