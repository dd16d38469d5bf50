"""The catalog connection and what its failures mean to spoold.

``load_catalog`` is given the config's ``[catalog]`` table as-is, so every
pyiceberg catalog works (sql/sqlite, sql/postgres, rest, glue...). Whatever
the catalog stack raises (SQLAlchemy, HTTP, S3, OS) becomes a retryable
:class:`CatalogError`, or a :class:`CommitConflict` when another committer won,
or a :class:`ConfigError` when the ``[catalog]`` table itself is wrong. The
message is one line in spoold's terms: it names the ``[catalog]`` key or the
path involved, never a pyiceberg flag or environment variable.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

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

from spoold.catalog_keys import sqlite_path
from spoold.config import Config
from spoold.errors import CatalogError, CommitConflict, ConfigError, DataError, SpooldError, TableError
from spoold.redact import redact, redact_uri

log = logging.getLogger(__name__)
# The [catalog] of the catalog this process opened last: errors raised later, deep in a commit,
# do not say which catalog they came from. (A process serves one config; a reload opens anew.)
_props: Mapping[str, str] = {}


def open_catalog(config: Config) -> Catalog:
    """Load the configured catalog, retrying a few times: several processes may create its tables at once."""
    global _props
    _props = config.catalog_props
    _make_private(config)
    for attempt in range(5):
        try:
            with catalog_errors("cannot open catalog"):
                return load_catalog(config.catalog_name, **config.catalog_props)
        except CatalogError:
            if attempt == 4:
                raise
            time.sleep(0.05 * 2**attempt + random.random() * 0.05)
    raise AssertionError("unreachable")


def _make_private(config: Config) -> None:
    """Create the SQLite catalog file 0600 and a local warehouse 0700 (with any missing parents), so
    committed rows are as private as spooled ones (SQLite gives its journal the database's mode; nothing in
    a 0700 warehouse is readable by others, whatever mode the umask gives the files pyiceberg writes in it).
    Only what is missing: existing files keep the mode their owner chose. A missing directory for the
    catalog file is created only for spoold's own state directory; elsewhere SQLite reports it.
    """
    props = config.catalog_props
    db = sqlite_path(props)
    if db is not None and not db.exists():
        if db.parent == config.state_dir:
            config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError:
            pass  # created by another process meanwhile, or opening it will report the problem
    warehouse = props.get("warehouse", "")
    if warehouse.startswith("file://"):
        _mkdirs_private(Path(unquote(urlparse(warehouse).path)))


def _mkdirs_private(path: Path) -> None:
    """Create ``path`` and every missing parent 0700 (pyarrow would create the chain 0755 at the first write)."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
            os.chmod(d, 0o700)  # (mkdir's mode is masked by the umask; 0700 is what it means here)
        except FileExistsError:
            pass  # created by another process meanwhile: its mode is its creator's
        except OSError:
            return  # the first write reports it


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

    The config's (a wrong or missing ``[catalog]`` key): :class:`ConfigError`. The
    environment's (catalog or object store unreachable, disk full, a server error):
    retryable :class:`CatalogError`. Another committer's: :class:`CommitConflict`. The
    rows' own (a value Arrow refuses, a partition value too long for a file name, a
    request the catalog rejects): :class:`DataError`, which flush isolates into
    quarantine instead of retrying the same rows forever. Anything else (a table property
    another tool set that the writer refuses...) is the table's: :class:`TableError`, the
    rows stay spooled. Messages are in spoold's terms.
    """
    try:
        yield
    except SpooldError:
        raise
    except (CommitFailedException, WaitingForLockException) as e:
        raise CommitConflict(f"{what}: {e}") from e
    except Exception as e:  # the catalog stack (SQLAlchemy, HTTP, S3, OS) has no common root
        config_problem = _config_problem(e, _props)
        if config_problem is not None:
            raise ConfigError(config_problem) from e
        message = redact(f"{what}: {_describe(e, _props)}")  # the drivers' text may quote credentials
        if _contended(e):  # another committer holds the catalog's lock: refresh and retry as on a conflict
            raise CommitConflict(message) from e
        if _environmental(e):
            raise CatalogError(message) from e
        log.debug("%s: %s", what, message)  # the library's text, under -v
        problem = _data_problem(e)
        if problem is None:  # nothing shows the rows at fault: the table's (e.g. a bad table property)
            raise TableError(f"{what}: the table refused it ({type(e).__name__}; `-v` logs the details), "
                             "whatever the rows") from e
        # The rows' fault: said in spoold's words (it becomes a quarantine reason).
        raise DataError(f"{what}: {problem[0]}", problem[0], proven=problem[1]) from e


def _data_problem(e: BaseException) -> tuple[str, bool] | None:
    """What about the rows the table refused, in spoold's words (never a library's message), and whether the
    row's values are certainly at fault; None when nothing points at the rows."""
    for c in _chain(e):
        if isinstance(c, OSError) and (c.errno == errno.ENAMETOOLONG or "name too long" in str(c).lower()):
            return "a partition value makes a file name longer than the file system allows", True
        if isinstance(c, OverflowError) or type(c).__name__ in ("ArrowInvalid", "ArrowTypeError"):
            return "a value does not fit its column's type in the table", False
        if isinstance(c, BadRequestError):
            return "the catalog refused the commit as a bad request", False
    return None


# Libraries whose every exception is about reaching something (a database, a server, a bucket).
_TRANSPORT = ("sqlalchemy", "sqlite3", "psycopg", "pg8000", "requests", "urllib3", "http", "socket", "ssl",
              "botocore", "boto3", "s3fs", "fsspec", "aiohttp", "google", "azure", "adlfs", "gcsfs")


def _environmental(e: BaseException | None) -> bool:
    """True when some link of ``e``'s chain is a failure to reach or use the catalog, store or disk.

    OS errors are the environment's (no space, I/O, permissions, connection refused),
    except a file name too long, which a partition value causes and retrying never cures.
    Anything else (ValueError, TypeError, Arrow's errors, a 400 from a REST catalog...) is
    the rows' or the table's (see :func:`_data_problem`).
    """
    while e is not None:
        if isinstance(e, OSError):
            if e.errno != errno.ENAMETOOLONG and "name too long" not in str(e).lower():
                return True
        elif isinstance(e, RESTError) and not isinstance(e, BadRequestError):
            return True
        elif isinstance(e, (NoSuchTableError, NoSuchNamespaceError, NotInstalledError)):
            return True  # dropped meanwhile, or a missing driver: nothing to do with the rows
        elif isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "can't start new thread" in str(e)):
            return True  # the host's limits (memory, TasksMax=): the rows are fine, quarantining them would be wrong
        elif type(e).__module__.split(".")[0] in _TRANSPORT:
            return True
        e = e.__cause__ or e.__context__
    return False


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _first_line(e: BaseException) -> str:
    lines = redact(str(e)).strip().splitlines()  # drivers quote the URI they could not reach
    return lines[0] if lines else type(e).__name__


def _config_problem(e: BaseException, props: Mapping[str, str]) -> str | None:
    """The ``[catalog]`` mistake behind ``e``, in spoold's words; None when it is not one."""
    text = str(e)
    if (isinstance(e, NoSuchPropertyException) and "URI" in text) or "URI missing" in text:
        return "`[catalog] uri` is missing"
    if "Could not infer the catalog type from the uri" in text:
        uri = redact_uri(props.get("uri", ""))
        return f"[catalog] type is missing and cannot be told from uri {uri!r}: set [catalog] type"
    if isinstance(e, NotInstalledError):
        missing = next((c.name for c in _chain(e) if isinstance(c, ModuleNotFoundError) and c.name), None)
        pip = re.search(r"pip install (.*)$", text)
        return (f"[catalog] type {props.get('type', '?')!r} needs the Python module {missing or '?'!r}, which "
                f"is not installed" + (f" (pip install {pip.group(1)})" if pip else ""))
    if m := re.match(r"Could not initialize FileIO: (.*)", text):
        return f"[catalog] py-io-impl: cannot load {m.group(1)!r}"
    if "No default path is set" in text:
        return "`[catalog] warehouse` is missing: spoold needs it to create tables"
    if isinstance(e, NoSuchPropertyException):
        return f"[catalog]: {_spoold_terms(redact(text))}"
    return None


def _describe(e: BaseException, props: Mapping[str, str]) -> str:
    """One line saying what failed, naming the catalog's path or URI ([catalog] uri)."""
    chain = list(_chain(e))
    root = chain[-1]
    db = sqlite_path(props)
    if db is not None and any(type(c).__module__ == "sqlite3" for c in chain):
        sqlite_error = next(c for c in chain if type(c).__module__ == "sqlite3")
        hint = " (does its directory exist, and may spoold write there?)" if "unable to open" in str(
            sqlite_error) else ""
        return f"SQLite catalog {db} ([catalog] uri): {_first_line(sqlite_error)}{hint}"
    if any(type(c).__module__.startswith(("requests", "urllib3")) for c in chain) or isinstance(root, OSError) and \
            isinstance(root, (ConnectionError, TimeoutError)):
        return f"cannot reach the catalog at {redact_uri(props.get('uri', '?'))} ([catalog] uri): {_first_line(root)}"
    return _spoold_terms(f"{type(e).__name__}: {_first_line(e)}")


_ENV_RE = re.compile(r"PYICEBERG_CATALOG__\w+?__(\w+)")


def _spoold_terms(text: str) -> str:
    """pyiceberg's advice speaks of its CLI flags and environment variables; spoold has ``[catalog]`` keys."""
    text = re.sub(r"please provide (it )?using --(\w+), the config or environment variable \S+",
                  lambda m: f"set [catalog] {m.group(2)}", text)
    text = _ENV_RE.sub(lambda m: f"[catalog] {m.group(1).lower().replace('__', '.')}", text)
    return re.sub(r"(?<![\w-])--(uri|warehouse|catalog)\b", r"[catalog] \1", text)


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
