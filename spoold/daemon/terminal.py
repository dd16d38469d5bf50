"""What SIGHUP means to ``spoold run``: a hangup of its terminal, or systemd's ``ExecReload``.

A daemon started from a shell has a controlling terminal; closing that terminal
hangs it up and the kernel (or the shell) sends SIGHUP: a foreground program
stops then. A daemon without one (systemd, ``setsid``) gets SIGHUP only from
someone asking it to reload. Which of the two is decided once, at start:
whether ``/dev/tty`` opens. Under ``nohup`` (a terminal, SIGHUP ignored) the
signal stays ignored, as nohup asked.
"""

from __future__ import annotations

import os
import signal

__all__ = ["HUP_IGNORE", "HUP_RELOAD", "HUP_STOP", "hangup_means", "leave_terminal", "terminal_fds"]

HUP_RELOAD = "reload"
HUP_STOP = "stop"
HUP_IGNORE = "ignore"


def has_controlling_terminal() -> bool:
    """True when this process has a controlling terminal (``/dev/tty`` opens; ENXIO without one)."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def hangup_means() -> str:
    """What SIGHUP does to this daemon: ``HUP_STOP``, ``HUP_RELOAD`` or ``HUP_IGNORE`` (nohup)."""
    if not has_controlling_terminal():
        return HUP_RELOAD
    return HUP_IGNORE if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else HUP_STOP


def terminal_fds() -> tuple[int, ...]:
    """The standard streams that are a terminal, looked at while it is up (a hung-up one is no tty)."""
    return tuple(fd for fd in (0, 1, 2) if os.isatty(fd))


def leave_terminal(fds: tuple[int, ...]) -> None:
    """Point ``fds`` (the streams that were the hung-up terminal) at /dev/null, so the drain's log lines
    and the interpreter's last flush do not fail on it."""
    try:
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return
    try:
        for fd in fds:
            try:
                os.dup2(null, fd)
            except OSError:
                continue
    finally:
        os.close(null)
