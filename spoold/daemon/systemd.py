"""sd_notify for ``Type=notify`` units, stdlib only; a no-op outside systemd."""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["notify", "watchdog_interval_s"]

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send ``fields`` (e.g. ``"READY=1"``, ``"STATUS=..."``) as one datagram to ``$NOTIFY_SOCKET``.

    Returns True when the datagram was sent; False without ``$NOTIFY_SOCKET`` or on
    any socket error (logged at debug: a lost notification must never stop the daemon).
    """
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr or not fields:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall("\n".join(fields).encode())
    except OSError as e:
        log.debug("sd_notify %r failed: %s", fields, e)
        return False
    return True


def watchdog_interval_s() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, or None when disabled.

    Honours ``$WATCHDOG_PID``: when set, the watchdog is ours only if it names this process.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None
