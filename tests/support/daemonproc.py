"""A real ``spoold run`` subprocess for tests, polling with generous deadlines, and a fake NOTIFY_SOCKET.

Every wait polls until a deadline; the deadlines are generous so a loaded
machine only makes the tests slower, never wrong.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEADLINE_S = 90.0


class DaemonProc:
    """A ``spoold run`` subprocess; its stderr goes to a file the test can read."""

    def __init__(self, cfg: Path, env: dict[str, str] | None = None) -> None:
        self.cfg = cfg
        self.log_path = cfg.parent / f"daemon-{uuid.uuid4().hex[:8]}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "spoold", "run", "--config", str(cfg)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        wait_for(lambda: "spoold running" in self.log() or self.proc.poll() is not None, "daemon start-up")
        assert self.proc.poll() is None, self.log()

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


def wait_for(cond: Callable[[], Any], what: str, timeout: float = DEADLINE_S, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


@contextmanager
def notify_socket() -> Iterator[tuple[str, list[tuple[float, str]]]]:
    """A private NOTIFY_SOCKET; yields its address and the (time, datagram) pairs received."""
    name = f"spoold-test-{uuid.uuid4().hex}"
    got: list[tuple[float, str]] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(0.1)
        done = threading.Event()

        def receive() -> None:
            while not done.is_set():
                try:
                    got.append((time.monotonic(), sock.recv(65536).decode()))
                except TimeoutError:
                    continue

        rx = threading.Thread(target=receive)
        rx.start()
        try:
            yield "@" + name, got
        finally:
            done.set()
            rx.join()


def http_get(address: str, path: str) -> tuple[int, bytes]:
    """GET ``http://address/path``: (status, body), error statuses included."""
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
