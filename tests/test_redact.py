"""spoold/redact.py: credentials are scrubbed from URIs and from the text drivers put in their errors."""

from __future__ import annotations

import logging
import sys

import pytest

from spoold import redact as r
from spoold.errors import CatalogError, one_line


@pytest.fixture(autouse=True)
def _fresh_literals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(r, "_literals", frozenset())


@pytest.mark.parametrize("uri, want", [
    ("http://alice:s3cr3t@127.0.0.1:8181/catalog", "http://127.0.0.1:8181/catalog"),
    ("postgresql+psycopg2://u:pw@db.example/spoold", "postgresql+psycopg2://db.example/spoold"),
    ("https://h/v1?token=abc&x=1#frag", "https://h/v1#frag"),
    ("s3://bucket/path?X-Amz-Signature=zz", "s3://bucket/path"),
    ("sqlite:////var/lib/spoold/catalog.db", "sqlite:////var/lib/spoold/catalog.db"),
    ("https://user@h/", "https://h/"),
])
def test_uris_lose_userinfo_and_query(uri: str, want: str) -> None:
    assert r.redact_uri(uri) == want
    assert r.redact(f"cannot reach {uri!r} ([catalog] uri)") == f"cannot reach {want!r} ([catalog] uri)"


def test_secret_key_values_are_masked_and_ordinary_text_is_not() -> None:
    text = ("connect(dsn='host=h password=hunter2 user=u') {'password': 'a b', 'token': \"t\"} "
            "s3.secret-access-key=AKIA Authorization: Bearer xyz")
    out = r.redact(text)
    for secret in ("hunter2", "a b", '"t"', "AKIA", "xyz"):
        assert secret not in out
    assert "password=***" in out and "s3.secret-access-key=***" in out
    plain = "token_file = /etc/t; catalog.token: expected a scalar value; table a.b: 3 rows"
    assert r.redact(plain) == plain
    assert r.redact(r.redact(text)) == r.redact(text)  # idempotent


def test_the_configured_secrets_are_replaced_wherever_they_appear() -> None:
    r.remember({"uri": "http://alice:p%40ss-word@h/c?token=tok-123", "credential": "client:sekrit-1", "type": "rest"})
    assert r.redact("auth failed for p@ss-word and p%40ss-word, tok-123, client:sekrit-1") == \
        "auth failed for *** and ***, ***, ***"
    r.remember({"uri": "http://a:pw@h/"})  # too short to replace as a bare word: only inside the URI
    assert r.redact("pw: a password") == "pw: a password"


def test_errors_and_log_lines_are_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    e = CatalogError("cannot reach http://alice:s3cr3t@h/c")
    assert str(e) == one_line(e) == "cannot reach http://h/c" and "s3cr3t" not in repr(e)
    assert one_line(ValueError("postgresql://u:pw@h/db")) == "ValueError: postgresql://h/db"
    fmt = r.RedactingFormatter(logging.Formatter("%(levelname)s %(message)s"))
    try:
        raise RuntimeError("at http://alice:s3cr3t@h/c")
    except RuntimeError:
        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed: %s", ("password=hunter2",),
                                exc_info=sys.exc_info())
    out = fmt.format(rec)
    assert "Traceback" in out and "s3cr3t" not in out and "hunter2" not in out and "alice" not in out


def test_documents_are_scrubbed_at_every_depth() -> None:
    doc = {"a": ["http://u:p@h/x", {"b": "password=zz"}], "n": 1, "none": None}
    assert r.redact_doc(doc) == {"a": ["http://h/x", {"b": "password=***"}], "n": 1, "none": None}


def test_a_password_holding_an_at_sign_is_masked_whole() -> None:
    """urllib and requests take the last '@' as the end of the userinfo: the URI rule alone would cut at the
    first one and leave the password's tail in the text."""
    r.remember({"uri": "https://bob:p@ssw0rd-XYZ@host/catalog"})
    out = r.redact("cannot reach https://bob:p@ssw0rd-XYZ@host/catalog: refused")
    assert "ssw0rd" not in out and "XYZ" not in out
