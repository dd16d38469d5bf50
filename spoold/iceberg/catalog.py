"""The catalog connection and what its failures mean to spoold.

``load_catalog`` is given the config's ``[catalog]`` table as-is, so every
pyiceberg catalog works (sql/sqlite, sql/postgres, rest, glue...). Whatever
the catalog stack raises (SQLAlchemy, HTTP, S3, OS) becomes a retryable
:class:`CatalogError`, or a :class:`CommitConflict` when another committer won.
"""

from __future__ import annotations

import errno
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.catalog.memory import InMemoryCatalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    BadRequestError,
    CommitFailedException,
    NoSuchNamespaceError,
    NoSuchPropertyException,
    NoSuchTableError,
    NotInstalledError,
    RESTError,
    WaitingForLockException,
)

from spoold.config import Config
from spoold.errors import CatalogError, CommitConflict, ConfigError, DataError, SpooldError


def open_catalog(config: Config) -> Catalog:
    """Load the configured catalog, retrying a few times: several processes may create its tables at once."""
    uri = config.catalog_props.get("uri", "")
    if uri.startswith("sqlite:///") and Path(uri[len("sqlite:///"):]).parent == config.state_dir:
        # spoold's own state directory (embedded defaults): ours to create on first use
        config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for attempt in range(5):
        try:
            with catalog_errors("cannot open catalog"):
                return load_catalog(config.catalog_name, **config.catalog_props)
        except CatalogError:
            if attempt == 4:
                raise
            time.sleep(0.05 * 2**attempt + random.random() * 0.05)
    raise AssertionError("unreachable")


def exclusive_create(catalog: Catalog) -> bool:
    """True when creating a table that exists fails instead of replacing it.

    pyiceberg's SQL catalog (SQLite, PostgreSQL) creates with an INSERT under
    a primary key and commits with a compare-and-swap UPDATE, so no late
    create can undo a commit. Any other catalog (REST servers, subclasses, ...)
    is not assumed to be: SeaweedFS 4.48's REST create is check-then-write.
    """
    return type(catalog) in (SqlCatalog, InMemoryCatalog)


@contextmanager
def catalog_errors(what: str) -> Iterator[None]:
    """Turn whatever the catalog stack raises into spoold's errors: whose fault is it?

    The environment's (catalog or object store unreachable, disk full, a server error):
    retryable :class:`CatalogError`. Another committer's: :class:`CommitConflict`. The
    rows' own (a value Arrow or Parquet refuses, a partition value too long for a file
    name, a name the catalog rejects): :class:`DataError`, which flush isolates into
    quarantine instead of retrying the same rows forever.
    """
    try:
        yield
    except SpooldError:
        raise
    except (CommitFailedException, WaitingForLockException) as e:
        raise CommitConflict(f"{what}: {e}") from e
    except NoSuchPropertyException as e:
        raise ConfigError(f"catalog: {e}") from e
    except Exception as e:  # the catalog stack (SQLAlchemy, HTTP, S3, OS) has no common root
        message = f"{what}: {type(e).__name__}: {e}".splitlines()[0]
        if _contended(e):  # another committer holds the catalog's lock: refresh and retry as on a conflict
            raise CommitConflict(message) from e
        if _environmental(e):
            raise CatalogError(message) from e
        raise DataError(message) from e


# Libraries whose every exception is about reaching something (a database, a server, a bucket).
_TRANSPORT = ("sqlalchemy", "sqlite3", "psycopg", "pg8000", "requests", "urllib3", "http", "socket", "ssl",
              "botocore", "boto3", "s3fs", "fsspec", "aiohttp", "google", "azure", "adlfs", "gcsfs")


def _environmental(e: BaseException | None) -> bool:
    """True when some link of ``e``'s chain is a failure to reach or use the catalog, store or disk.

    OS errors are the environment's (no space, I/O, permissions, connection refused),
    except a file name too long, which a partition value causes and retrying never cures.
    Anything else (ValueError, TypeError, Arrow's errors, a 400 from a REST catalog...) is
    taken as the data's fault.
    """
    while e is not None:
        if isinstance(e, OSError):
            if e.errno != errno.ENAMETOOLONG and "name too long" not in str(e).lower():
                return True
        elif isinstance(e, RESTError) and not isinstance(e, BadRequestError):
            return True
        elif isinstance(e, (NoSuchTableError, NoSuchNamespaceError, NotInstalledError)):
            return True  # dropped meanwhile, or a missing driver: nothing to do with the rows
        elif type(e).__module__.split(".")[0] in _TRANSPORT:
            return True
        e = e.__cause__ or e.__context__
    return False


def _contended(e: BaseException | None) -> bool:
    """True for SQLite's "database is locked": another process is committing right now.

    SQLite answers a writer that would deadlock with another at once, without
    waiting out its busy timeout, so two flushers racing on one catalog see this
    routinely; it is as transient as a commit conflict.
    """
    while e is not None:
        text = str(e)
        if "database is locked" in text or "database table is locked" in text:
            return True
        e = e.__cause__ or e.__context__
    return False
