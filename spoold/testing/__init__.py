"""spoold's pytest plugin: the ``spoold_env`` fixture (docs/testing.md).

Installing spoold registers this module with pytest (entry point group
``pytest11``, name ``spoold``; ``-p no:spoold`` turns it off). pytest then
imports it in every run of everyone who installed spoold, so it imports only
pytest and the standard library: the fixture's machinery loads when a test
asks for ``spoold_env``, and pyarrow/pyiceberg only once that test reads rows
or flushes in-process. It defines no hooks, options or markers, so a run that
does not use the fixture behaves exactly as without the plugin.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from spoold.testing.daemon import SpooldDaemon
    from spoold.testing.env import SpooldEnv

__all__ = ["SpooldDaemon", "SpooldEnv", "spoold_env"]


@pytest.fixture
def spoold_env(tmp_path: Path) -> Iterator[SpooldEnv]:
    """A private spool, SQLite catalog and warehouse under ``tmp_path``, with ``SPOOLD_CONFIG`` pointing at them.

    The code under test, the ``spoold`` commands it runs and the daemons the test
    starts all use them; nothing of the machine's own spoold or pyiceberg setup
    leaks in. Everything is stopped, closed and restored when the test ends.
    """
    from spoold.testing.env import SpooldEnv

    env = SpooldEnv(tmp_path / "spoold_env")
    try:
        yield env
    finally:
        env.close()


def __getattr__(name: str) -> Any:
    # The classes, for type hints in users' tests, without loading them with the plugin.
    if name == "SpooldEnv":
        from spoold.testing.env import SpooldEnv

        return SpooldEnv
    if name == "SpooldDaemon":
        from spoold.testing.daemon import SpooldDaemon

        return SpooldDaemon
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
