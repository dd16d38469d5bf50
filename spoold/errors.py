"""One error root for spoold; each error says whether retrying can help."""

from __future__ import annotations

from spoold.redact import redact


class SpooldError(Exception):
    """Root of every error spoold raises on purpose.

    ``retryable`` tells the daemon loop whether backing off and trying again
    can succeed (catalog down, commit conflict) or not (bad config, bad input).
    ``exit_code`` is what the CLI exits with when this error reaches it.
    """

    retryable: bool = False
    exit_code: int = 1

    def __str__(self) -> str:
        # Messages often quote a URI or a driver's error: never with its credentials (spoold/redact.py).
        return redact(super().__str__())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class UsageError(SpooldError):
    """Bad command-line usage, bad input or a bad configuration (exit 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration file is missing a key, has an unknown one, or a bad value."""


class InputError(UsageError):
    """Input rows or files handed to the CLI are malformed; nothing was written."""


class SpoolError(SpooldError):
    """The spool on disk could not be read or written."""


class TableBusy(SpoolError):
    """Another flush of this table holds its flush lock (e.g. a `spoold flush` beside the daemon)."""

    retryable = True


class CatalogError(SpooldError):
    """The Iceberg catalog could not be reached or refused an operation."""

    retryable = True


class CommitConflict(CatalogError):
    """Another committer changed the table; refresh, settle again, retry."""


class SpoolFull(SpoolError):
    """An append would cross ``[spool] max_bytes`` or ``min_free_bytes``: nothing was appended.

    Retryable: a flush frees room. Nothing acknowledged is ever dropped to make room.
    """

    retryable = True


class QuarantineFull(SpoolFull):
    """Rejected rows that a replay could bring back do not fit the quarantine's budget: kept spooled, retried."""


class TableError(SpooldError):
    """The table itself can take no row, whatever the rows (e.g. a partition field that cannot take its column's
    type): the rows stay spooled and are tried again, until the table or the config is fixed."""

    retryable = True


class DataError(SpooldError):
    """The rows themselves cannot be committed (a column name or value the table cannot take).

    Not retryable: the same rows fail the same way every time, so flush isolates
    them into quarantine instead of retrying them forever. ``reason``: what about
    the rows was refused, for a quarantine record (the message says what failed too).
    ``proven``: the fault is certainly in the row's values (a partition value too long
    for a file name); otherwise a batch no row of which commits is the table's fault.
    """

    reason: str = ""
    proven: bool = False

    def __init__(self, message: str, reason: str = "", *, proven: bool = False) -> None:
        super().__init__(message)
        self.reason, self.proven = reason, proven


def one_line(e: BaseException) -> str:
    """An error as one log line (credentials removed): spoold's own message, or the exception's type and first line."""
    lines = redact(str(e)).strip().splitlines()
    text = lines[0] if lines else ""
    return text if isinstance(e, SpooldError) and text else f"{type(e).__name__}: {text}"


def error_class(e: BaseException) -> str:
    """What kind of failure ``e`` is, in a few words and never its text (``/health`` shows this)."""
    for cls, name in _CLASSES:
        if isinstance(e, cls):
            return name
    return "disk error" if isinstance(e, OSError) else "internal error"


_CLASSES: tuple[tuple[type[BaseException], str], ...] = (
    (CommitConflict, "commit conflict"), (CatalogError, "catalog unreachable"), (ConfigError, "configuration error"),
    (DataError, "rows refused by the table"), (TableError, "table cannot take rows"),
    (QuarantineFull, "quarantine full"), (SpoolFull, "spool full"),
    (TableBusy, "table busy"),
    (SpoolError, "spool error"), (UsageError, "bad input"),
)
