"""``spoold run`` in a terminal behaves like a foreground program (issue 21): closing the terminal stops it.

The daemon runs under a pseudo-terminal that is its controlling terminal, as in
a shell; closing the terminal's master side hangs it up and the kernel sends
SIGHUP. The daemon must drain (commit what is pending), exit 0 and leave the
spool root free for the next ``spoold run``. Without a terminal, SIGHUP reloads
(tests/integration/test_daemon.py::test_sighup_reloads_the_config_and_keeps_the_old_one_if_bad).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

from support.cli import run_spoold, write_config
from support.daemonproc import DEADLINE_S, DaemonProc
from support.tables import committed_keys

from spoold.testing.daemon import NotifySocket

TABLE = "term.rows"

# Makes the pseudo-terminal on fd 0 the controlling terminal of a new session, then becomes `spoold run`.
# With NOHUP=1 it ignores SIGHUP first, as `nohup` does.
_WITH_TERMINAL = (
    "import fcntl, os, signal, sys, termios\n"
    "os.setsid()\n"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    "if os.environ.pop('NOHUP', None): signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'spoold', *sys.argv[1:]])\n"
)


class _Terminal:
    """The master side of a pseudo-terminal, read (as a terminal window would) until closed."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.seen = bytearray()
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closing.is_set():
            if select.select([self.master], [], [], 0.05)[0]:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                self.seen += chunk[: max(0, (1 << 20) - len(self.seen))]

    def close(self) -> None:
        """Close the window: the reader lets go of the master first, so closing it is the last reference."""
        self._closing.set()
        self._reader.join(5)
        os.close(self.master)


def _start(cfg: Path, term: _Terminal, notify: NotifySocket, **env: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", _WITH_TERMINAL, "run", "--config", str(cfg)],
                            stdin=term.slave, stdout=term.slave, stderr=term.slave,
                            env={**os.environ, "NOTIFY_SOCKET": notify.address, **env})
    os.close(term.slave)
    return proc


def test_closing_the_terminal_drains_and_exits_0_and_frees_the_spool(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "[flush]\ndebounce_s = 300\nmax_delay_s = 600\n")
    term = _Terminal()
    notify = NotifySocket()
    try:
        proc = _start(cfg, term, notify)
        try:
            assert notify.wait(lambda: notify.ready >= 1, DEADLINE_S), bytes(term.seen).decode(errors="replace")
            assert run_spoold("append", TABLE, "--config", str(cfg), input=b'{"part_id": "a"}\n').returncode == 0
            term.close()
            rc = proc.wait(DEADLINE_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert rc == 0, bytes(term.seen).decode(errors="replace")
    finally:
        notify.close()
    assert committed_keys(cfg, TABLE) == ["a"]  # drained: the pending row was committed before the exit
    d = DaemonProc(cfg)  # the next `spoold run` starts: no "already running"
    assert d.stop() == 0


def test_under_nohup_closing_the_terminal_leaves_it_running(tmp_path: Path) -> None:
    """`nohup spoold run &` (the README's recipe): SIGHUP stays ignored, the daemon outlives the terminal."""
    cfg = write_config(tmp_path)
    term = _Terminal()
    notify = NotifySocket()
    try:
        proc = _start(cfg, term, notify, NOHUP="1")
        try:
            assert notify.wait(lambda: notify.ready >= 1, DEADLINE_S), bytes(term.seen).decode(errors="replace")
            term.close()
            proc.send_signal(signal.SIGHUP)  # as the shell forwards it; the hangup's own comes from the kernel
            stopping = lambda: any("STOPPING=1" in m for _, m in notify.messages)  # noqa: E731
            assert not notify.wait(stopping, 2.0)  # an event that must not come: a bounded look
            assert proc.poll() is None
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(DEADLINE_S) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        notify.close()
