"""Configuration: TOML file, environment and embedded defaults, resolved once.

Lookup order (docs/configuration.md): ``--config PATH``, ``$SPOOLD_CONFIG``,
``$XDG_CONFIG_HOME/spoold/spoold.toml`` (``~/.config/...``),
``/etc/spoold/spoold.toml``; with none of them, embedded defaults under
``$STATE_DIRECTORY`` (systemd) or ``$XDG_STATE_HOME/spoold``. Never the
current directory: a producer hook runs wherever its user happens to be, and a
``spoold.toml`` there (an untrusted checkout) must not choose where rows go or
which catalog class is imported. A relative ``XDG_*`` value is ignored, as the
XDG Base Directory spec says.
Everything is validated here, at load time, so a typo fails before any row
moves: unknown keys, bad types and bad table identifiers are refused with one
line naming the key.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from spoold.catalog_keys import validate_catalog
from spoold.coltypes import TypeSyntax, parse_declared
from spoold.errors import ConfigError, UsageError
from spoold.redact import remember
from spoold.settings import DaemonSettings, FlushSettings, IngestSettings, MaintainSettings, SpoolLimits

COLUMN_TYPES = ("string", "int", "long", "float", "double", "boolean", "timestamptz", "date")
SOURCE_FORMATS = ("jsonl", "transcript")
DEFAULT_KEY = "part_id"
DEFAULT_LEGACY_KEY = ("message_id", "part_index")
DEFAULT_MAX_COLUMNS = 1000  # [tables] max_columns: a table's columns beyond this are refused (their rows quarantined)
SYSTEM_CONFIG = Path("/etc/spoold/spoold.toml")

_IDENT_RE = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)+")
_TRANSFORM_RE = re.compile(
    r"(?:(?P<fn>identity|year|month|day|hour|void)\((?P<col>\w+)\)"
    r"|(?P<pfn>bucket|truncate)\[(?P<n>[1-9][0-9]*)\]\((?P<pcol>\w+)\)"
    r"|(?P<bare>\w+))"
)
# The column types each transform can take (Iceberg's rules, as pyiceberg's ``can_transform`` has them; void
# takes any). ``json`` is a string column; nested columns are not primitive, so none of these takes them.
_TRANSFORM_TAKES = {
    "year": ("timestamptz", "date"), "month": ("timestamptz", "date"), "day": ("timestamptz", "date"),
    "hour": ("timestamptz",),
    "bucket": ("int", "long", "date", "timestamptz", "string", "json"),
    "truncate": ("int", "long", "string", "json"),
    "identity": (*COLUMN_TYPES, "json"),
}


def validate_identifier(ident: str) -> str:
    """Return ``ident`` if it is ``namespace.name`` with parts of ``[A-Za-z0-9_]+``.

    Anything else is refused, never rewritten, so two identifiers can never
    map to one spool directory and nothing lands outside the spool root.
    """
    if not isinstance(ident, str) or not _IDENT_RE.fullmatch(ident):
        raise UsageError(
            f"bad table identifier {ident!r}: expected namespace.name, each part of [A-Za-z0-9_]+"
        )
    return ident


# `spoold rebuild`'s own tables beside ``<table>``: ``<table>__rebuild_<stamp>`` (staging, dropped once swapped in)
# and ``<table>__backup_<stamp>`` (the old table, purged by --drop-backup). No producer writes rows to them.
REBUILD_STAGING, REBUILD_BACKUP = "__rebuild_", "__backup_"
REBUILD_STAMP, REBUILD_STAMP_RE = "%Y%m%dT%H%M%SZ", r"\d{8}T\d{6}Z"  # time.strftime of UTC, and what it makes
_REBUILD_NAME_RE = re.compile(rf".*(?:{REBUILD_STAGING}|{REBUILD_BACKUP}){REBUILD_STAMP_RE}")


def writable_table(ident: str) -> str:
    """``ident`` if rows may be written to it: a valid identifier that names none of `spoold rebuild`'s tables."""
    validate_identifier(ident)
    if _REBUILD_NAME_RE.fullmatch(ident):
        raise UsageError(f"table {ident}: a name ending in __rebuild_<stamp> or __backup_<stamp> is a staging or "
                         "backup table of `spoold rebuild`; rows cannot be written to it")
    return ident


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class PartitionField:
    transform: str  # identity, year, month, day, hour, void, bucket, truncate
    column: str
    param: int | None = None

    def __str__(self) -> str:
        if self.param is not None:
            return f"{self.transform}[{self.param}]({self.column})"
        return f"{self.transform}({self.column})"


@dataclass(frozen=True, slots=True)
class TableSpec:
    """What spoold knows of a table before it looks at the catalog."""

    identifier: str
    key: str = DEFAULT_KEY
    legacy_key: tuple[str, ...] = DEFAULT_LEGACY_KEY
    partition_by: tuple[PartitionField, ...] = ()
    columns: tuple[Column, ...] = ()  # empty: inferred from the first envelopes
    declared: bool = False
    partitioned: bool = False  # partition_by is in the config: an existing table's spec is evolved to match it
    max_columns: int = DEFAULT_MAX_COLUMNS  # [tables] max_columns: no new column past this many

    def column_types(self) -> dict[str, str]:
        return {c.name: c.type for c in self.columns}

    def required(self) -> frozenset[str]:
        return frozenset(c.name for c in self.columns if c.required)


@dataclass(frozen=True, slots=True)
class SourceSpec:
    table: str
    path: str
    format: str
    follow_symlinks_outside: bool = False  # tail files a symlink leads to outside the glob's base directory


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration; frozen, so it can be shared freely."""

    path: Path | None
    state_dir: Path
    spool_root: Path
    spool_group: str | None
    spool_share_sources: bool  # [spool] group_readable_sources: tailed tables' rows readable by the group
    catalog_name: str
    catalog_props: Mapping[str, str]
    flush: FlushSettings = field(default_factory=FlushSettings)
    spool_limits: SpoolLimits = field(default_factory=SpoolLimits)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    maintain: MaintainSettings = field(default_factory=MaintainSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    tables: Mapping[str, TableSpec] = field(default_factory=dict)
    sources: tuple[SourceSpec, ...] = ()
    max_columns: int = DEFAULT_MAX_COLUMNS

    def table(self, identifier: str) -> TableSpec:
        """The declared spec of ``identifier``, or the default (inferred) one."""
        validate_identifier(identifier)
        spec = self.tables.get(identifier)
        return spec if spec is not None else TableSpec(identifier=identifier, max_columns=self.max_columns)


def _xdg_dir(var: str, default: str) -> Path:
    """``$var`` if it is an absolute path, else ``~/default`` (the XDG spec: relative values are invalid)."""
    value = os.environ.get(var, "")
    return Path(value) if os.path.isabs(value) else Path.home() / default


def _default_state_dir() -> Path:
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    return _xdg_dir("XDG_STATE_HOME", ".local/state") / "spoold"


def user_config_path() -> Path:
    """The user's own config file: ``$XDG_CONFIG_HOME/spoold/spoold.toml`` (``~/.config/spoold/spoold.toml``)."""
    return _xdg_dir("XDG_CONFIG_HOME", ".config") / "spoold" / "spoold.toml"


def _default_config_path(arg: str | os.PathLike[str] | None) -> Path | None:
    if arg is not None:
        path = Path(arg)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    env = os.environ.get("SPOOLD_CONFIG")
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path} (from $SPOOLD_CONFIG)")
        return path
    for candidate in (user_config_path(), SYSTEM_CONFIG):  # never ./spoold.toml: see the module docstring
        if candidate.is_file():
            return candidate
    return None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Find, read and validate the configuration (see the module docstring)."""
    cfg_path = _default_config_path(path)
    data: dict[str, Any] = {}
    if cfg_path is not None:
        try:
            data = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config {cfg_path}: {e}") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config {cfg_path}: invalid TOML: {e}") from e
    return parse_config(data, path=cfg_path)


def parse_config(data: Mapping[str, Any], *, path: Path | None = None) -> Config:
    """Validate an already-parsed TOML document into a :class:`Config`."""
    _only_keys(data, "", {"spool", "catalog", "flush", "daemon", "maintain", "ingest", "tables", "sources"})
    base = path.parent if path is not None else Path.cwd()
    state_dir = _default_state_dir()

    spool = _table(data, "spool")
    _only_keys(spool, "spool.", {"root", "group", "group_readable_sources", *SpoolLimits.__dataclass_fields__})
    root = _path(spool, "spool.root", base) or state_dir / "spool"
    group = _opt(spool, "spool.group", str)
    if group is not None:
        try:
            grp.getgrnam(group)
        except KeyError:
            raise ConfigError(f"spool.group: no such group {group!r} (create it, or remove the key)") from None
    share_sources = _opt(spool, "spool.group_readable_sources", bool) or False
    limits = _settings(SpoolLimits, {k: v for k, v in spool.items()
                                     if k not in ("root", "group", "group_readable_sources")}, "spool")

    catalog = dict(_table(data, "catalog"))
    name = catalog.pop("name", "spoold")
    if not isinstance(name, str) or not name:
        raise ConfigError("catalog.name: expected a non-empty string")
    if not catalog:
        catalog = {
            "type": "sql",
            "uri": f"sqlite:///{state_dir / 'catalog.db'}",
            "warehouse": f"file://{state_dir / 'warehouse'}",
        }
    props = {}
    for k, v in catalog.items():
        if isinstance(v, (dict, list)):
            raise ConfigError(f"catalog.{k}: expected a scalar value")
        props[k] = str(v).lower() if isinstance(v, bool) else str(v)
    remember(props)  # from now on its password or token is masked wherever it appears
    validate_catalog(props)

    flush = _settings(FlushSettings, _table(data, "flush"), "flush")
    if flush.debounce_s > flush.max_delay_s:
        raise ConfigError("flush.debounce_s: must not exceed flush.max_delay_s")
    daemon = _settings(DaemonSettings, _table(data, "daemon"), "daemon")
    if daemon.listen:
        host, _ = parse_listen(daemon.listen)
        if not daemon.listen_public and not is_loopback(host):
            raise ConfigError(f"daemon.listen = {daemon.listen!r} is not a loopback address: /metrics and /health "
                              "would be open to the network; set [daemon] listen_public = true to allow it")
    tables_t = dict(_table(data, "tables"))
    # A plain key beside the tables: no table is named so (identifiers have a dot), so they cannot collide.
    max_columns = tables_t.pop("max_columns", DEFAULT_MAX_COLUMNS)
    if type(max_columns) is not int or max_columns < 1:
        raise ConfigError("tables.max_columns: expected a positive integer")
    tables = {ident: _parse_table(ident, t, max_columns) for ident, t in tables_t.items()}
    sources = tuple(_parse_source(i, s, base) for i, s in enumerate(_list(data, "sources")))
    ingest = _ingest(_table(data, "ingest"), base)
    if ingest.listen and ingest.otlp_logs_table not in tables:
        tables[ingest.otlp_logs_table] = otlp_logs_spec(ingest.otlp_logs_table, max_columns)
    return Config(
        path=path,
        state_dir=state_dir,
        spool_root=root,
        spool_group=group,
        spool_share_sources=share_sources,
        catalog_name=name,
        catalog_props=props,
        flush=flush,
        spool_limits=limits,
        daemon=daemon,
        maintain=_settings(MaintainSettings, _table(data, "maintain"), "maintain"),
        ingest=ingest,
        tables=tables,
        sources=sources,
        max_columns=max_columns,
    )


def _ingest(t: Mapping[str, Any], base: Path) -> IngestSettings:
    """``[ingest]``: its listen address parses, its files are absolute paths (relative to the config's directory),
    its table names are identifiers; the token rule for a non-loopback address is checked where it is served."""
    s = _settings(IngestSettings, t, "ingest")
    paths = {k: str(_path(t, f"ingest.{k}", base) or "") for k in ("token_file", "tls_cert", "tls_key")}
    if bool(paths["tls_cert"]) != bool(paths["tls_key"]):
        raise ConfigError("ingest.tls_cert and ingest.tls_key: set both or neither")
    if s.listen:
        parse_listen(s.listen, "ingest.listen")
    try:
        writable_table(s.otlp_logs_table)
    except UsageError as e:
        raise ConfigError(f"ingest.otlp_logs_table: {e}") from None
    return replace(s, **paths)


# The OTLP logs table's columns (docs/ingest.md), after the OpenTelemetry logs data model; attributes,
# resource attributes and a body that is not a string are JSON text.
OTLP_LOGS_COLUMNS = (
    ("record_id", "string!"), ("time", "timestamptz"), ("observed_time", "timestamptz"),
    ("severity_number", "int"), ("severity_text", "string"), ("event_name", "string"), ("body", "string"),
    ("attributes", "string"), ("resource_attributes", "string"), ("scope_name", "string"),
    ("scope_version", "string"), ("trace_id", "string"), ("span_id", "string"), ("flags", "long"),
)


def otlp_logs_spec(identifier: str, max_columns: int = DEFAULT_MAX_COLUMNS) -> TableSpec:
    """The OTLP logs table as spoold declares it when the config does not."""
    cols = tuple(Column(n, t.removesuffix("!"), t.endswith("!")) for n, t in OTLP_LOGS_COLUMNS)
    return TableSpec(identifier=identifier, key="record_id", legacy_key=(), columns=cols, declared=True,
                     max_columns=max_columns)


def _settings(cls: type[Any], t: Mapping[str, Any], section: str) -> Any:
    """A settings section (``[flush]``, ``[daemon]``...) into its dataclass, typed by the defaults.

    Booleans take true/false, strings strings, numbers positive numbers (integers where
    the default is one); zero only where the class lists the key in ``ZERO_OK``.
    """
    d = cls()
    _only_keys(t, f"{section}.", set(cls.__dataclass_fields__))
    values: dict[str, Any] = {}
    for k, v in t.items():
        want = type(getattr(d, k))
        if want is bool or want is str:
            if not isinstance(v, want):
                raise ConfigError(f"{section}.{k}: expected {'true or false' if want is bool else 'a string'}")
            values[k] = v
            continue
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if want is int:
            ok = ok and isinstance(v, int)
        if not ok or v < 0 or (v == 0 and k not in cls.ZERO_OK):
            raise ConfigError(f"{section}.{k}: expected a positive {'integer' if want is int else 'number'}")
        values[k] = want(v)
    return cls(**values)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1): only this host can connect."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name may resolve to anything (a LAN address, all interfaces)


def parse_listen(listen: str, key: str = "daemon.listen") -> tuple[str, int]:
    """``[daemon] listen`` as (host, port): ``HOST:PORT``, an IPv6 host in brackets; port 0 picks a free one."""
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535 or (":" in host and "[" not in listen):
        raise ConfigError(f"{key}: expected HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:9464), got {listen!r}")
    return host, int(port)


def _parse_table(ident: str, t: Any, max_columns: int = DEFAULT_MAX_COLUMNS) -> TableSpec:
    where = f"tables.{ident!r}"
    try:
        validate_identifier(ident)
    except UsageError as e:
        raise ConfigError(f"{where}: {e}") from None
    if not isinstance(t, Mapping):
        raise ConfigError(f"{where}: expected a table")
    _only_keys(t, f"{where}.", {"key", "legacy_key", "partition_by", "columns"})
    key = _opt(t, f"{where}.key", str) or DEFAULT_KEY
    legacy = t.get("legacy_key", list(DEFAULT_LEGACY_KEY))
    if not isinstance(legacy, list) or not all(isinstance(x, str) and x for x in legacy):
        raise ConfigError(f"{where}.legacy_key: expected a list of column names")
    columns = []
    for name, typ in _table(t, "columns").items():
        if not isinstance(typ, str):
            raise ConfigError(f"{where}.columns.{name}: expected a type such as 'string', 'long!' or 'list<string>'")
        try:
            canonical, required = parse_declared(typ)
        except TypeSyntax as e:
            raise ConfigError(f"{where}.columns.{name}: {e} in {typ!r}") from None
        columns.append(Column(name, canonical, required))
    types = {c.name: c.type for c in columns}
    if columns and key not in types:
        raise ConfigError(f"{where}.key: key column {key!r} is not among the declared columns")
    if types.get(key, "string") != "string":
        raise ConfigError(f"{where}.columns.{key}: the key column must be a string")
    parts = []
    for expr in _opt(t, f"{where}.partition_by", list) or []:
        m = _TRANSFORM_RE.fullmatch(expr) if isinstance(expr, str) else None
        if m is None:
            raise ConfigError(f"{where}.partition_by: bad transform {expr!r} (e.g. 'day(ts)', 'bucket[16](id)')")
        if m["bare"]:
            parts.append(PartitionField("identity", m["bare"]))
        elif m["fn"]:
            parts.append(PartitionField(m["fn"], m["col"]))
        else:
            parts.append(PartitionField(m["pfn"], m["pcol"], int(m["n"])))
    _check_partitions(where, parts, {key: "string", **types})
    return TableSpec(ident, key, tuple(legacy), tuple(parts), tuple(columns), declared=True,
                     partitioned="partition_by" in t, max_columns=max_columns)


def _check_partitions(where: str, parts: list[PartitionField], types: Mapping[str, str]) -> None:
    """Refuse a partition field no table could take: its column undeclared (an inferred type is known only
    once rows arrive, too late to refuse), of a type its transform cannot take, or two fields of one column."""
    for i, p in enumerate(parts):
        typ = types.get(p.column)
        if typ is None:
            raise ConfigError(f"{where}.partition_by: {p} names column {p.column!r}, which {where}.columns does "
                              f"not declare (declare its type there, e.g. {p.column} = "
                              f"\"{_TRANSFORM_TAKES.get(p.transform, COLUMN_TYPES)[0]}\")")
        takes = _TRANSFORM_TAKES.get(p.transform)
        if takes is not None and typ not in takes:
            raise ConfigError(f"{where}.partition_by: {p} cannot partition column {p.column!r}, declared {typ}: "
                              f"{p.transform} takes {', '.join(t for t in takes if t in COLUMN_TYPES)}")
        if p in parts[:i]:
            raise ConfigError(f"{where}.partition_by: {p} is named twice")
        same = next((q for q in parts[:i] if q.column == p.column), None)
        if same is not None:  # Iceberg refuses two time transforms of a column; pyiceberg writes none with two fields
            raise ConfigError(f"{where}.partition_by: {same} and {p} both partition column {p.column!r}: "
                              "a table is partitioned one way per column (keep one)")


def _parse_source(i: int, s: Any, base: Path) -> SourceSpec:
    where = f"sources[{i}]"
    if not isinstance(s, Mapping):
        raise ConfigError(f"{where}: expected a table")
    _only_keys(s, f"{where}.", {"table", "path", "format", "follow_symlinks_outside"})
    table = _opt(s, f"{where}.table", str)
    path = _opt(s, f"{where}.path", str)
    fmt = _opt(s, f"{where}.format", str) or "jsonl"
    if not table or not path:
        raise ConfigError(f"{where}: 'table' and 'path' are required")
    try:
        writable_table(table)
    except UsageError as e:
        raise ConfigError(f"{where}.table: {e}") from None
    if fmt not in SOURCE_FORMATS:
        raise ConfigError(f"{where}.format: expected one of {', '.join(SOURCE_FORMATS)}")
    outside = s.get("follow_symlinks_outside", False)
    if not isinstance(outside, bool):
        raise ConfigError(f"{where}.follow_symlinks_outside: expected true or false")
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = str(base / path)
    return SourceSpec(table, path, fmt, outside)


def _only_keys(t: Mapping[str, Any], prefix: str, allowed: set[str]) -> None:
    for k in t:
        if k not in allowed:
            raise ConfigError(f"unknown config key {prefix}{k} (allowed: {', '.join(sorted(allowed))})")


def _table(t: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = t.get(key, {})
    if not isinstance(v, Mapping):
        raise ConfigError(f"{key}: expected a table")
    return v


def _list(t: Mapping[str, Any], key: str) -> list[Any]:
    v = t.get(key, [])
    if not isinstance(v, list):
        raise ConfigError(f"{key}: expected an array of tables ([[{key}]])")
    return v


def _opt(t: Mapping[str, Any], where: str, typ: type) -> Any:
    v = t.get(where.rsplit(".", 1)[-1])
    if v is not None and not isinstance(v, typ):
        raise ConfigError(f"{where}: expected a {typ.__name__}")
    return v


def _path(t: Mapping[str, Any], where: str, base: Path) -> Path | None:
    v = _opt(t, where, str)
    if not v:
        return None
    p = Path(os.path.expanduser(v))
    return p if p.is_absolute() else base / p
