"""The flush stack's weight on a long-running daemon: loaded early off the loop, handed back when idle.

The flush stack (pyarrow, pyiceberg: ~1 s, ~100 MB) is imported only once a
table has rows pending, on a thread, so an idle daemon starts small and the
first commit does not pay for the import. After each flush the daemon gives
back what the stack holds between flushes (minutes apart): idle catalog
connections and freed buffers.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any, NoReturn

from spoold.daemon import systemd

log = logging.getLogger("spoold.daemon.loop")  # the daemon's own messages, under its logger name


def preload() -> threading.Thread:
    """Import the flush stack on a daemon thread while the first rows wait out their debounce.

    Neither start-up memory nor the first commit's latency pays for it then.
    """
    thread = threading.Thread(target=_import_flush_stack, name="spoold-preload", daemon=True)
    thread.start()
    return thread


def _import_flush_stack() -> None:
    try:
        import spoold.flush.flush  # noqa: F401
        import spoold.iceberg.sink  # noqa: F401
    except Exception as e:  # the flush itself will report it
        log.debug("preloading the flush stack: %s", e)


def release(sink: Any) -> None:
    """Close idle catalog connections between flushes (the key indexes stay).

    An idle daemon then holds no connection that a catalog restart, a moved
    SQLite file or a server's idle timeout could leave stale.
    """
    try:
        sink.close()
    except Exception as e:  # best effort: the next flush reconnects anyway
        log.debug("releasing catalog connections: %s", e)
    _trim_memory()


def _trim_memory() -> None:
    """Hand a flush's freed buffers back to the OS, so an idle daemon stays small.

    Arrow's pool and glibc's malloc both keep freed memory for reuse; between
    flushes (minutes apart) that is just resident weight.
    """
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except Exception as e:
        log.debug("releasing Arrow memory: %s", e)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def loaded() -> bool:
    """True once the flush stack has been imported into this process."""
    return "pyiceberg" in sys.modules


def restart_lean() -> NoReturn:
    """Replace this process by a fresh ``spoold run``: same pid, arguments and environment.

    CPython never hands back what importing the flush stack took (module
    objects, SQLAlchemy, Arrow; ~120 MB); a fresh image starts at ~25 MB and
    loads it again only when rows are pending. Everything that matters is on
    disk (spool, tail offsets), and Python opens files close-on-exec, so no
    lock outlives the old image. The committed-key index is rebuilt at the
    next flush (one scan of the key column).
    """
    systemd.notify("STATUS=idle: restarting to hand back memory")
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.execv(sys.executable, sys.orig_argv)
