"""A real ``spoold run`` under test: started, known to be ready, watched, stopped.

Readiness is systemd's own protocol: the daemon runs with ``NOTIFY_SOCKET``
naming a datagram socket this process binds, and the test goes on once
``READY=1`` arrives (and again after a reload), never after a guessed sleep.
The socket is read on a thread for the daemon's whole life: a datagram
socket nobody reads fills up, and the daemon's next notification would block.

The daemon dies with the test run: on Linux it gets SIGTERM when the process
that started it dies (``PR_SET_PDEATHSIG``, armed between fork and exec), so a
pytest killed with SIGKILL leaves no daemon behind; and it runs in a session of
its own, so a Ctrl-C in the terminal reaches pytest, which stops it in order.
A daemon that outlives its test anyway (another OS) stops once its config file
is gone with the test's temporary tree (see ``spoold.daemon.loop``).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import orjson
import pytest

from spoold.errors import SpooldError

if TYPE_CHECKING:
    from spoold.testing.env import SpooldEnv

READY_TIMEOUT_S = 120.0  # a loaded CI machine is slow to start Python; a failed start is seen at once anyway
_STOP_GRACE_S = 30.0  # beyond [flush] shutdown_timeout_s, before SIGKILL
_LOG_TAIL = 20
_POLL_S = 0.05  # between two looks at the catalog file's stat
_RECOUNT_S = 1.0  # a recount even without a visible change (mtime granularity)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class SpooldDaemon:
    """One ``spoold run`` process on a :class:`SpooldEnv`: what ``spoold_env.daemon()`` yields."""

    def __init__(self, env: SpooldEnv, number: int) -> None:
        self._env = env
        self.log_path = env.base / f"daemon-{number}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._notify: NotifySocket | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start ``spoold run --config <env's>`` and return once it has said READY=1."""
        self._notify = NotifySocket()
        env = {**os.environ, "NOTIFY_SOCKET": self._notify.address}  # os.environ is the env's isolated one
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "spoold", "run", "--config", str(self._env.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True, preexec_fn=_die_with_parent(),
            )
        self._wait_ready(1, "start")

    def reload(self) -> None:
        """SIGHUP: the daemon re-reads its config; returns once it is READY=1 again."""
        assert self.proc is not None and self._notify is not None
        seen = self._notify.ready
        self.proc.send_signal(signal.SIGHUP)
        self._wait_ready(seen + 1, "reload")

    def _wait_ready(self, count: int, what: str) -> None:
        __tracebackhide__ = True
        assert self.proc is not None and self._notify is not None
        notify = self._notify
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not notify.wait(lambda: notify.ready >= count, 0.2):
            if (rc := self.proc.poll()) is not None:
                self._fail(f"spoold run exited with code {rc} before it was ready ({what})")
            if time.monotonic() >= deadline:
                self._fail(f"spoold run sent no READY=1 within {READY_TIMEOUT_S:.0f}s ({what})")

    def wait_committed(self, table: str, n: int, timeout: float = 60.0) -> int:
        """Wait until ``table`` holds at least ``n`` committed rows; returns how many it holds.

        Cheap: it stats the catalog file and counts (from the current snapshot's
        summary) only when that changed. Fails the test, showing what was
        committed, what is still spooled or quarantined and the daemon's last log
        lines, after ``timeout`` seconds or as soon as the daemon has exited.
        """
        __tracebackhide__ = True  # the failure points at the test's line
        start = time.monotonic()
        deadline = start + timeout
        seen: Any = None
        counted_at = -_RECOUNT_S
        count = 0
        error = ""
        while True:
            now = time.monotonic()
            fingerprint = self._env.catalog_fingerprint()
            if fingerprint != seen or now - counted_at >= _RECOUNT_S:
                seen, counted_at = fingerprint, now
                try:
                    count, error = self._env.committed(table), ""
                except SpooldError as e:  # e.g. SQLite busy under the daemon's commit: look again
                    error = str(e)
                if count >= n:
                    return count
            if self.proc is None or (rc := self.proc.poll()) is not None:
                self._fail(self._report(table, n, count, now - start, error,
                                        f"spoold run exited with code {rc if self.proc else None}"))
            if now >= deadline:
                self._fail(self._report(table, n, count, now - start, error, "timed out"))
            time.sleep(_POLL_S)

    def log(self) -> str:
        """Everything the daemon has logged so far (stdout and stderr)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, *, check: bool = False) -> None:
        """SIGTERM (the daemon flushes what is pending), then SIGKILL if it does not exit in time.

        ``check``: fail the test if the daemon had already exited by itself.
        """
        __tracebackhide__ = True
        if self.proc is None or self._notify is None:
            return  # never started, or already stopped
        early = self.proc.poll()
        try:
            if early is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(self._env.config().flush.shutdown_timeout_s + _STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self._notify.close()
            self._notify = None
        if check and early is not None:
            self._fail(f"spoold run exited by itself, with code {early}, before the block ended")

    # -- failure reports ------------------------------------------------------------------------
    def _fail(self, headline: str) -> NoReturn:
        __tracebackhide__ = True
        pytest.fail(f"{headline}\n{self._log_tail()}", pytrace=True)

    def _log_tail(self) -> str:
        lines = self.log().splitlines()[-_LOG_TAIL:]
        head = f"  daemon log ({self.log_path}, pid {self.pid}), last {len(lines)} line(s):"
        return "\n".join([head, *(f"    {line}" for line in lines)] if lines else [head, "    (empty)"])

    def _report(self, table: str, n: int, count: int, waited: float, error: str, why: str) -> str:
        lines = [f"wait_committed({table!r}, {n}): {why} after {waited:.1f}s with {count} row(s) committed"]
        if error:
            lines.append(f"  last catalog error: {error}")
        try:
            rows = self._env.rows(table)
            key = self._env.config().table(table).key
            keys = [str(r.get(key)) for r in rows[:10]]
            if keys:
                lines.append(f"  committed keys: {', '.join(keys)}{', ...' if len(rows) > 10 else ''}")
        except SpooldError as e:
            lines.append(f"  cannot read the committed rows: {e}")
        lines.append(f"  spool: {_spool_line(self._env, table)}")
        return "\n".join(lines)


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when this process dies (None elsewhere).

    prctl is looked up here, in the parent: between fork and exec the child must
    do as little as possible (other threads' locks are copied held). Kept across
    the daemon's idle re-exec. The signal goes when the *thread* that started the
    daemon ends: the test's own thread, which outlives the ``daemon()`` block.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent, sigterm = os.getpid(), int(signal.SIGTERM)

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def _spool_line(env: SpooldEnv, table: str) -> str:
    """What is still spooled or was quarantined for ``table``, with the first quarantine reason."""
    from spoold.cli.status import spool_status

    s = spool_status(env._spool_handle(), table)
    text = f"{s['spooled_rows']} row(s) pending in {s['spooled_files']} file(s), {s['quarantined']} quarantined"
    qdir = env.spool_root / table / "quarantine"
    for path in sorted(qdir.glob("*.jsonl")) if qdir.is_dir() else []:
        try:
            with open(path, "rb") as f:
                reason = orjson.loads(f.readline()).get("reason")
        except (OSError, orjson.JSONDecodeError, AttributeError):
            continue
        return f"{text} (first reason: {reason})"
    return text


class NotifySocket:
    """The daemon's ``NOTIFY_SOCKET``: a datagram socket read on a thread; counts READY=1, keeps the last
    STATUS, and every datagram in order in ``messages`` as (monotonic time, text)."""

    def __init__(self) -> None:
        self._dir: str | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        if sys.platform == "linux":
            name = f"spoold-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)  # abstract: no path length limit, nothing left behind
            self.address = "@" + name
        else:  # a short path: tmp_path may be longer than a socket address may be
            self._dir = tempfile.mkdtemp(prefix="spoold-")
            self.address = os.path.join(self._dir, "notify")
            self.sock.bind(self.address)
        self.sock.settimeout(0.2)
        self.ready = 0
        self.status = ""
        self.messages: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._receive, name="spoold-notify", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                text = data.decode(errors="replace")
                self.messages.append((time.monotonic(), text))
                for field in text.split("\n"):
                    if field == "READY=1":
                        self.ready += 1
                    elif field.startswith("STATUS="):
                        self.status = field[len("STATUS="):]
                self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def close(self) -> None:
        self._closed = True
        self._thread.join()
        self.sock.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
