"""The ``[catalog]`` keys spoold knows, per catalog type, checked at config load (pure, no pyiceberg).

``[catalog]`` passes through to pyiceberg's ``load_catalog``, which ignores
keys it does not know: a typo (``urii``) would only surface at the first
commit, as a pyiceberg message naming flags and environment variables spoold
does not have. The keys below are the ones pyiceberg 0.12 reads (its catalog
modules and FileIO implementations; ``tests/test_catalog_keys.py`` checks the
list against pyiceberg's own constants), so an unknown key is refused at load
time with the nearest known one suggested.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import unquote

from spoold.errors import ConfigError

# FileIO (PyArrow and fsspec): every catalog type hands its properties to the FileIO it loads.
_AWS = ("client.profile-name", "client.region", "client.access-key-id", "client.secret-access-key",
        "client.session-token", "client.role-arn", "client.role-session-name")
_S3 = ("s3.profile-name", "s3.anonymous", "s3.endpoint", "s3.access-key-id", "s3.secret-access-key",
       "s3.session-token", "s3.region", "s3.resolve-region", "s3.proxy-uri", "s3.connect-timeout",
       "s3.request-timeout", "s3.signer", "s3.signer.uri", "s3.signer.endpoint", "s3.role-arn",
       "s3.role-session-name", "s3.force-virtual-addressing", "s3.retry-strategy-impl",
       "s3.server-side-encryption", "s3.sse-kms-key-id")
_HDFS = ("hdfs.host", "hdfs.port", "hdfs.user", "hdfs.kerberos_ticket")
_ADLS = ("adls.connection-string", "adls.credential", "adls.account-name", "adls.account-key", "adls.sas-token",
         "adls.tenant-id", "adls.client-id", "adls.client-secret", "adls.account-host",
         "adls.blob-storage-authority", "adls.dfs-storage-authority", "adls.blob-storage-scheme",
         "adls.dfs-storage-scheme", "adls.token", "adls.anon")
_GCS = ("gcs.oauth2.token", "gcs.oauth2.token-expires-at", "gcs.project-id", "gcs.access", "gcs.consistency",
        "gcs.cache-timeout", "gcs.requester-pays", "gcs.session-kwargs", "gcs.service.host",
        "gcs.default-bucket-location", "gcs.version-aware")
_HF = ("hf.endpoint", "hf.token")
FILE_IO_KEYS = frozenset((*_AWS, *_S3, *_HDFS, *_ADLS, *_GCS, *_HF, "py-io-impl", "buffer-size"))

# Read by every catalog type (``type`` chooses it; ``warehouse`` places new tables).
COMMON_KEYS = frozenset({"type", "warehouse"}) | FILE_IO_KEYS

CATALOG_KEYS: dict[str, frozenset[str]] = {
    "sql": frozenset({"uri", "echo", "pool_pre_ping", "schema_version", "init_catalog_tables"}),
    "rest": frozenset({
        "uri", "credential", "token", "prefix", "scope", "audience", "resource", "oauth2-server-uri",
        "rest.sigv4-enabled", "rest.signing-region", "rest.signing-name", "rest.sigv4.max-retries",
        "snapshot-loading-mode", "scan-planning-mode", "view-endpoints-supported", "rest-page-size",
        "namespace-separator",
    }),
    "hive": frozenset({"uri", "ugi", "hive.hive2-compatible", "hive.kerberos-authentication",
                       "hive.kerberos-service-name", "lock-check-min-wait-time", "lock-check-max-wait-time",
                       "lock-check-retries"}),
    "glue": frozenset({"glue.id", "glue.skip-archive", "glue.endpoint", "glue.profile-name", "glue.region",
                       "glue.access-key-id", "glue.secret-access-key", "glue.session-token", "glue.max-retries",
                       "glue.retry-mode"}),
    "dynamodb": frozenset({"table-name", "dynamodb.profile-name", "dynamodb.region", "dynamodb.access-key-id",
                           "dynamodb.secret-access-key", "dynamodb.session-token"}),
    "bigquery": frozenset({"gcp.bigquery.project-id", "gcp.bigquery.location", "gcp.bigquery.credential-file",
                           "gcp.bigquery.credentials-info"}),
    "in-memory": frozenset(),
}
# Key families read by prefix: HTTP headers sent to a REST catalog (and its S3 signer).
CATALOG_PREFIXES: dict[str, tuple[str, ...]] = {"rest": ("header.",)}
NEEDS_URI = frozenset({"sql", "rest", "hive"})
_URI_SCHEMES = (("http", "rest"), ("thrift", "hive"), ("sqlite", "sql"), ("postgresql", "sql"))


def catalog_type(props: Mapping[str, str]) -> str | None:
    """The catalog type ``props`` select: ``type``, else inferred from ``uri`` as pyiceberg does.

    None when neither says (or ``py-catalog-impl`` names a custom catalog).
    """
    if "type" in props:
        return props["type"].lower()
    uri = props.get("uri", "")
    return next((t for scheme, t in _URI_SCHEMES if uri.startswith(scheme)), None)


def validate_catalog(props: Mapping[str, str]) -> None:
    """Refuse what pyiceberg would only trip over later: unknown keys, a missing ``uri``, an unknown type.

    Errors name the ``[catalog]`` key, never a pyiceberg flag or environment variable.
    """
    if "py-catalog-impl" in props:
        if "type" in props:
            raise ConfigError("[catalog] has both type and py-catalog-impl: set one of them")
        return  # a custom catalog class: its keys are its own
    typ = catalog_type(props)
    if "type" in props and typ not in CATALOG_KEYS:
        raise ConfigError(f"[catalog] type: unknown catalog type {props['type']!r}{_hint(typ or '', CATALOG_KEYS)}"
                          f" (expected one of {', '.join(CATALOG_KEYS)})")
    if typ is None:
        every = COMMON_KEYS.union(*CATALOG_KEYS.values())
        for key in props:
            if key not in every and not key.startswith(("header.",)):
                raise ConfigError(f"unknown key [catalog] {key}{_hint(key, every)}")
        if "uri" not in props:
            raise ConfigError("`[catalog] uri` is missing (or set [catalog] type)")
        raise ConfigError(f"[catalog] type is missing and cannot be told from uri {props['uri']!r}: "
                          f"set type to one of {', '.join(CATALOG_KEYS)}")
    known = COMMON_KEYS | CATALOG_KEYS[typ]
    prefixes = CATALOG_PREFIXES.get(typ, ())
    for key in props:
        if key not in known and not key.startswith(prefixes):
            raise ConfigError(f"unknown key [catalog] {key}{_hint(key, known)} "
                              f"(a {typ} catalog takes: {', '.join(sorted(known - FILE_IO_KEYS))}, "
                              "and FileIO keys such as s3.endpoint)")
    if typ in NEEDS_URI and not props.get("uri"):
        raise ConfigError(f"`[catalog] uri` is missing (a {typ} catalog needs it)")


def _hint(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def sqlite_path(props: Mapping[str, str]) -> Path | None:
    """The database file of an SQLite catalog (``uri = "sqlite:///<path>"``); None for any other catalog."""
    uri = props.get("uri", "")
    if not uri.startswith("sqlite:///") or uri.startswith("sqlite:///:memory:"):
        return None
    return Path(unquote(uri[len("sqlite:///"):].split("?")[0]))
