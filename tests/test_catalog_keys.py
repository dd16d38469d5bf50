"""``[catalog]`` is checked at load time, and pyiceberg's failures come back in spoold's terms."""

from __future__ import annotations

import importlib.util
import re
import sqlite3
from pathlib import Path

import pytest
from support.cli import write_config

from spoold.catalog_keys import CATALOG_KEYS, COMMON_KEYS, FILE_IO_KEYS, validate_catalog
from spoold.config import load_config, parse_config
from spoold.errors import CatalogError, ConfigError

SQL = {"type": "sql", "uri": "sqlite:////x/catalog.db", "warehouse": "file:///x/wh"}


def refused(catalog: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config({"catalog": catalog})
    return str(e.value)


def test_a_typo_is_refused_with_the_key_it_resembles() -> None:
    msg = refused({"type": "sql", "urii": "sqlite:////x/c.db", "warehouse": "file:///x"})
    assert msg.startswith("unknown key [catalog] urii (did you mean uri?)")
    msg = refused({**SQL, "s3.endpiont": "http://s3"})
    assert "unknown key [catalog] s3.endpiont (did you mean s3.endpoint?)" in msg
    msg = refused({"urii": "sqlite:////x/c.db"})  # no type: the typo is still what is named
    assert msg.startswith("unknown key [catalog] urii (did you mean uri?)")


@pytest.mark.parametrize("catalog", [{"type": "sql"}, {"type": "rest"}, {"type": "hive"}, {"warehouse": "file:///x"}])
def test_a_missing_uri_is_named_in_spoolds_terms(catalog: dict[str, str]) -> None:
    msg = refused(catalog)
    assert msg.startswith("`[catalog] uri` is missing")
    assert "--uri" not in msg and "PYICEBERG" not in msg


def test_an_unknown_type_or_an_unrecognizable_uri_is_refused() -> None:
    assert "unknown catalog type 'sqll' (did you mean sql?)" in refused({**SQL, "type": "sqll"})
    assert "cannot be told from uri" in refused({"uri": "ftp://x"})


@pytest.mark.parametrize("catalog", [
    SQL,
    {"uri": "sqlite:////x/c.db", "warehouse": "file:///x"},  # type inferred from the uri, as pyiceberg does
    {"type": "rest", "uri": "http://c:8181", "warehouse": "s3://b/w", "s3.endpoint": "http://s3:8333",
     "s3.access-key-id": "k", "s3.secret-access-key": "s", "s3.force-virtual-addressing": "false",
     "header.X-Iceberg-Access-Delegation": "vended-credentials", "credential": "a:b"},
    {"type": "glue", "glue.region": "eu-west-1", "client.region": "eu-west-1", "warehouse": "s3://b/w"},
    {"type": "sql", "uri": "postgresql+psycopg2://u@h/db", "warehouse": "s3://b/w", "py-io-impl":
     "pyiceberg.io.fsspec.FsspecFileIO", "pool_pre_ping": "true"},
    {"py-catalog-impl": "mine.Catalog", "anything": "goes"},  # a custom catalog's keys are its own
], ids=["sql", "inferred", "rest-s3", "glue", "postgres-fsspec", "custom"])
def test_what_pyiceberg_reads_is_accepted(catalog: dict[str, str]) -> None:
    validate_catalog(catalog)


def test_header_keys_are_a_rest_catalogs_only() -> None:
    assert "unknown key [catalog] header.X-Y" in refused({**SQL, "header.X-Y": "1"})


@pytest.mark.parametrize(("module", "kinds"), [
    ("pyiceberg.io", None),
    ("pyiceberg.catalog.sql", "sql"),
    ("pyiceberg.catalog.rest", "rest"),
    ("pyiceberg.catalog.hive", "hive"),
    ("pyiceberg.catalog.glue", "glue"),
    ("pyiceberg.catalog.dynamodb", "dynamodb"),
    ("pyiceberg.catalog.bigquery_metastore", "bigquery"),
])
def test_the_known_keys_cover_pyicebergs_own_property_names(module: str, kinds: str | None) -> None:
    """A pyiceberg upgrade that adds a property makes this fail, instead of spoold refusing a valid key."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin)
    source = (path.parent / "__init__.py" if path.name != "__init__.py" and path.is_dir() else path).read_text()
    constants = dict(re.findall(r'^([A-Z][A-Z0-9_]*) = "([^"]*)"$', source, re.MULTILINE))  # read, not imported:
    prefixes = {  # glue, hive... need optional dependencies
        None: ("S3_", "GCS_", "ADLS_", "HDFS_", "HF_", "AWS_"),
        "sql": (),
        "rest": ("SIGV4", "OAUTH2_SERVER_URI", "SNAPSHOT_LOADING_MODE", "SCAN_PLANNING_MODE", "PAGE_SIZE",
                 "NAMESPACE_SEPARATOR_PROPERTY", "VIEW_ENDPOINTS_SUPPORTED", "CREDENTIAL", "AUDIENCE", "RESOURCE"),
        "hive": ("HIVE2_COMPATIBLE", "HIVE_KERBEROS_AUTH", "HIVE_KERBEROS_SERVICE_NAME", "LOCK_CHECK_"),
        "glue": ("GLUE_",),
        "dynamodb": ("DYNAMODB_PROFILE", "DYNAMODB_REGION", "DYNAMODB_ACCESS", "DYNAMODB_SECRET",
                     "DYNAMODB_SESSION", "DYNAMODB_TABLE_NAME"),
        "bigquery": ("GCP_",),
    }[kinds]
    known = COMMON_KEYS | (CATALOG_KEYS[kinds] if kinds else FILE_IO_KEYS)
    names = {name: value for name, value in constants.items() if name.startswith(prefixes) and
             not name.endswith(("_DEFAULT", "_CLIENT")) and value and value[0].islower() and ":" not in value}
    if kinds == "sql":  # the SQL catalog reads its keys as literals
        names = {k: k for k in ("echo", "pool_pre_ping", "init_catalog_tables", "schema_version")}
        assert all(f'"{k}"' in source for k in names)
    assert names, f"no property constants found in {module}: the filter needs updating"
    missing = {name: value for name, value in names.items() if value not in known}
    assert not missing, f"pyiceberg reads keys spoold would refuse: {missing}"


def test_a_sqlite_catalog_that_cannot_be_opened_names_its_path(tmp_path: Path) -> None:
    from spoold.iceberg.sink import Sink

    (tmp_path / "blocker").write_text("")
    db = tmp_path / "blocker" / "catalog.db"
    cfg = load_config(write_config(tmp_path, catalog=f'[catalog]\ntype = "sql"\nuri = "sqlite:///{db}"\n'
                                                      f'warehouse = "file://{tmp_path}/wh"\n'))
    with pytest.raises(CatalogError) as e:
        Sink(cfg).load(cfg.table("a.b"))
    msg = str(e.value)
    assert str(db) in msg and "[catalog] uri" in msg and "\n" not in msg, msg


def test_a_rest_catalog_that_cannot_be_reached_names_its_uri(tmp_path: Path) -> None:
    from spoold.iceberg.sink import Sink

    cfg = load_config(write_config(tmp_path, catalog='[catalog]\ntype = "rest"\nuri = "http://127.0.0.1:9"\n'))
    with pytest.raises(CatalogError) as e:
        Sink(cfg).load(cfg.table("a.b"))
    assert "http://127.0.0.1:9 ([catalog] uri)" in str(e.value)


def test_a_catalog_without_a_warehouse_is_named_when_a_table_is_created(tmp_path: Path) -> None:
    from spoold.iceberg.sink import Sink

    cfg = load_config(write_config(tmp_path, catalog=f'[catalog]\ntype = "sql"\n'
                                                      f'uri = "sqlite:///{tmp_path}/c.db"\n'))
    with pytest.raises(ConfigError) as e:
        Sink(cfg).tables.ensure(cfg.table("a.b"), {"part_id": "string"})
    assert "`[catalog] warehouse` is missing" in str(e.value)


def test_pyicebergs_own_words_are_translated() -> None:
    from spoold.iceberg.catalog import _spoold_terms

    text = ("URI missing, please provide using --uri, the config or environment variable "
            "PYICEBERG_CATALOG__SPOOLD__URI")
    assert _spoold_terms(text) == "URI missing, set [catalog] uri"
    assert _spoold_terms("see PYICEBERG_CATALOG__X__S3__ENDPOINT") == "see [catalog] s3.endpoint"


def test_the_sqlite_catalog_and_the_warehouse_are_created_private(tmp_path: Path) -> None:
    from spoold.iceberg.sink import Sink

    cfg = load_config(write_config(tmp_path))
    sink = Sink(cfg)
    sink.tables.ensure(cfg.table("a.b"), {"part_id": "string"})
    db = tmp_path / "state" / "catalog.db"
    assert sqlite3.connect(db).execute("select count(*) from iceberg_tables").fetchone() == (1,)
    assert db.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state" / "warehouse").stat().st_mode & 0o777 == 0o700
