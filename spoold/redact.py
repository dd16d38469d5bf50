"""Secrets never leave: credentials are scrubbed from every text spoold shows, logs or writes.

A ``[catalog] uri`` may carry ``user:password@`` or ``?token=...``, and the
catalog stack (pyiceberg, SQLAlchemy, requests) repeats it, or a
``password=...``, in its exception messages. :func:`redact` removes userinfo
and query strings from every URI in a text, masks ``key=value`` pairs whose key
names a secret, and replaces any secret literal the configuration holds
(:func:`remember`, called at config load) wherever it appears. It is applied at
the boundaries: error messages (:class:`spoold.errors.SpooldError`), log
records, ``spoold status``, the daemon's state files and ``/health``.

A leaf: no spoold imports.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

MASK = "***"
# scheme://user:password@host -> scheme://host (userinfo never contains "/", whitespace or quotes)
_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#@'\"<>]*@")
# scheme://host/path?query#frag -> scheme://host/path (a query string may hold a token or a signature)
_QUERY = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s?#'\"<>]*)\?[^\s#'\"<>]*")
# password=x, 'token': 'x', s3.secret-access-key=x ... (the key must end there: token_file is no secret)
_SECRET_WORDS = (r"password|passwd|pwd|token|secret|credential|credentials|api[_-]?key|access[_-]?key(?:[_-]?id)?"
                 r"|secret[_-]?access[_-]?key|session[_-]?token|authorization|signature|connection[_-]?string"
                 r"|account[_-]?key")
_KEY = (rf"(?i)((?:\b[\w.\-]*?(?:{_SECRET_WORDS})\s*=|['\"][\w.\-]*?(?:{_SECRET_WORDS})['\"]\s*:"
        r"|\bauthorization\s*:)\s*)")
_QUOTED_VALUE = re.compile(_KEY + r"(['\"])[^'\"]*\2")  # password='a b' -> password='***'
_VALUE = re.compile(_KEY + r"(?:(?:bearer|basic)\s+)?[^\s'\",;&)}\]]+")  # password=x -> password=***
_SECRET_PROP = re.compile(rf"(?i)(?:^|[_.\-])(?:{_SECRET_WORDS})$")
_MIN_LITERAL = 4  # shorter literals would mangle ordinary words; the patterns above still catch them

_literals: frozenset[str] = frozenset()


def redact_uri(uri: str) -> str:
    """``uri`` without its userinfo (``user:password@``) and its query string."""
    return _QUERY.sub(r"\1", _USERINFO.sub(r"\1", uri))


def redact(text: str) -> str:
    """``text`` with every URI's userinfo and query string removed and secrets masked."""
    if not text:
        return text
    for lit in _literals:  # first: a password holding '@' would otherwise be cut in two by the URI rule
        if lit in text:
            text = text.replace(lit, MASK)
    text = redact_uri(text)
    text = _QUOTED_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}{m.group(2)}", text)
    return _VALUE.sub(lambda m: f"{m.group(1)}{MASK}", text)


def redact_doc(doc: Any) -> Any:
    """A JSON-like document with :func:`redact` applied to every string in it (keys included)."""
    if isinstance(doc, str):
        return redact(doc)
    if isinstance(doc, Mapping):
        return {redact(k) if isinstance(k, str) else k: redact_doc(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [redact_doc(v) for v in doc]
    return doc


def secrets_of(props: Mapping[str, str]) -> set[str]:
    """The secret literals of a ``[catalog]`` table: URI passwords and query values, and secret-named keys."""
    found: set[str] = set()
    for key, value in props.items():
        if _SECRET_PROP.search(key):
            found.add(value)
        if "://" in value:
            try:
                parts = urlsplit(value)
                password, query = parts.password, parts.query
            except ValueError:
                continue
            if password:
                found.update({password, unquote(password)})
            for pair in filter(None, re.split(r"[&;]", query)):
                found.update({pair.partition("=")[2], unquote(pair.partition("=")[2])})
    return {s for s in found if len(s) >= _MIN_LITERAL}


def remember(props: Mapping[str, str]) -> None:
    """Replace the secrets of this ``[catalog]`` table wherever they appear from now on (never forgotten:
    a reloaded config's old password may still sit in a message)."""
    global _literals
    _literals = _literals | secrets_of(props)


class RedactingFormatter(logging.Formatter):
    """Wraps a log formatter: the whole formatted record (message and traceback) goes through :func:`redact`."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))
