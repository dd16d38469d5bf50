"""Configuration (SPEC "Configuration"): lookup order, embedded defaults, refusal of bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import run_spoold

from spoold import config as config_mod
from spoold.config import Column, ConfigError, PartitionField, load_config, parse_config


def _config(path: Path, spool: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[spool]\nroot = "{spool}"\n')
    return path


def _landed(*roots: Path) -> list[Path]:
    """Which of ``roots`` received the row appended to t.x."""
    return [r for r in roots if (r / "t.x" / "active.jsonl").is_file()]


# -- lookup order -----------------------------------------------------------------

def test_lookup_order_through_the_cli(tmp_path: Path) -> None:
    """--config beats $SPOOLD_CONFIG beats the user's config beats the embedded defaults; ./spoold.toml never counts."""
    roots = {n: tmp_path / f"spool-{n}" for n in ("arg", "env", "user")}
    arg = _config(tmp_path / "a" / "arg.toml", roots["arg"])
    env = _config(tmp_path / "e" / "env.toml", roots["env"])
    user = _config(tmp_path / "home" / ".config" / "spoold" / "spoold.toml", roots["user"])  # $HOME is tmp/home
    cwd_root = tmp_path / "spool-cwd"
    _config(tmp_path / "spoold.toml", cwd_root)  # the tests run in tmp_path: this one is ignored
    default_root = tmp_path / "xdg-state" / "spoold" / "spool"
    row = b'{"part_id": "a"}\n'

    r = run_spoold("append", "t.x", "--config", str(arg), input=row, env={"SPOOLD_CONFIG": str(env)})
    assert r.returncode == 0, r.stderr
    assert _landed(*roots.values(), default_root, cwd_root) == [roots["arg"]]

    r = run_spoold("append", "t.x", input=row, env={"SPOOLD_CONFIG": str(env)})
    assert r.returncode == 0, r.stderr
    assert _landed(*roots.values(), default_root, cwd_root) == [roots["arg"], roots["env"]]

    r = run_spoold("append", "t.x", input=row)
    assert r.returncode == 0, r.stderr
    assert _landed(*roots.values(), default_root, cwd_root) == list(roots.values())

    user.unlink()
    r = run_spoold("append", "t.x", input=row)
    assert r.returncode == 0, r.stderr
    assert _landed(*roots.values(), default_root, cwd_root) == [*roots.values(), default_root]


def test_user_config_comes_before_the_system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = _config(tmp_path / "etc" / "spoold.toml", tmp_path / "sys-spool")
    monkeypatch.setattr(config_mod, "SYSTEM_CONFIG", system)  # never the real /etc
    _config(tmp_path / "spoold.toml", tmp_path / "cwd-spool")  # the cwd: never read
    assert load_config().spool_root == tmp_path / "sys-spool"
    _config(tmp_path / "home" / ".config" / "spoold" / "spoold.toml", tmp_path / "user-spool")
    assert load_config().spool_root == tmp_path / "user-spool"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    assert load_config().spool_root == tmp_path / "sys-spool"  # $XDG_CONFIG_HOME replaces ~/.config
    _config(tmp_path / "xdg-config" / "spoold" / "spoold.toml", tmp_path / "xdg-spool")
    assert load_config().spool_root == tmp_path / "xdg-spool"


def test_embedded_defaults_under_xdg_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_mod, "SYSTEM_CONFIG", tmp_path / "no-such" / "spoold.toml")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    cfg = load_config()
    state = tmp_path / "xdg" / "spoold"
    assert cfg.path is None and cfg.state_dir == state
    assert cfg.spool_root == state / "spool"
    assert cfg.catalog_name == "spoold"
    assert dict(cfg.catalog_props) == {
        "type": "sql",
        "uri": f"sqlite:///{state / 'catalog.db'}",
        "warehouse": f"file://{state / 'warehouse'}",
    }
    assert cfg.tables == {} and cfg.sources == ()
    assert (cfg.flush.debounce_s, cfg.flush.max_delay_s) == (120, 600)


def test_embedded_defaults_prefer_systemd_state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_mod, "SYSTEM_CONFIG", tmp_path / "no-such" / "spoold.toml")
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path / 'sd'}:{tmp_path / 'other'}")
    cfg = load_config()
    assert cfg.state_dir == tmp_path / "sd" and cfg.spool_root == tmp_path / "sd" / "spool"
    assert cfg.catalog_props["uri"] == f"sqlite:///{tmp_path / 'sd' / 'catalog.db'}"


def test_embedded_defaults_fall_back_to_home_local_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_mod, "SYSTEM_CONFIG", tmp_path / "no-such" / "spoold.toml")
    monkeypatch.delenv("XDG_STATE_HOME")
    assert load_config().state_dir == tmp_path / "home" / ".local" / "state" / "spoold"


def test_default_spool_and_catalog_follow_state_when_only_tables_are_configured(tmp_path: Path) -> None:
    path = tmp_path / "only-tables.toml"
    path.write_text('[tables."chat.parts".columns]\npart_id = "string!"\n')
    cfg = load_config(path)
    assert cfg.spool_root == tmp_path / "xdg-state" / "spoold" / "spool"
    assert cfg.catalog_props["type"] == "sql"


def test_missing_config_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found: .*nope.toml"):
        load_config(tmp_path / "nope.toml")
    r = run_spoold("status", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and r.stderr.decode().count("\n") == 1 and "nope.toml" in r.stderr.decode()
    r = run_spoold("status", env={"SPOOLD_CONFIG": str(tmp_path / "env-nope.toml")})
    assert r.returncode == 2 and "env-nope.toml" in r.stderr.decode() and "SPOOLD_CONFIG" in r.stderr.decode()


# -- contents ---------------------------------------------------------------------------

FULL = """
[spool]
root = "spool-here"
group = "adm"

[catalog]
name = "lake"
type = "sql"
uri = "sqlite:////x/catalog.db"
warehouse = "file:///x/wh"
"init_catalog_tables" = true

[flush]
debounce_s = 2
max_delay_s = 10.5

[tables."chat.parts"]
key = "part_id"
legacy_key = ["message_id", "part_index"]
partition_by = ["day(ts)", "bucket[16](part_id)", "role"]
[tables."chat.parts".columns]
part_id = "string!"
message_id = "string"
part_index = "int"
ts = "timestamptz"
role = "string"

[tables."a.b.c"]
key = "id"
legacy_key = []

[[sources]]
table = "chat.parts"
path = "~/logs/*.jsonl"
format = "transcript"

[[sources]]
table = "a.b.c"
path = "rel/*.jsonl"
"""


def test_a_full_config_is_read_as_written(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "spoold.toml"
    path.parent.mkdir()
    path.write_text(FULL)
    cfg = load_config(path)
    assert cfg.path == path
    assert cfg.spool_root == tmp_path / "conf" / "spool-here"  # relative to the config file
    assert cfg.spool_group == "adm"
    assert cfg.catalog_name == "lake"
    assert dict(cfg.catalog_props) == {"type": "sql", "uri": "sqlite:////x/catalog.db", "warehouse": "file:///x/wh",
                                       "init_catalog_tables": "true"}
    assert (cfg.flush.debounce_s, cfg.flush.max_delay_s) == (2.0, 10.5)
    parts = cfg.tables["chat.parts"]
    assert parts.declared and parts.key == "part_id" and parts.legacy_key == ("message_id", "part_index")
    assert parts.partition_by == (PartitionField("day", "ts"), PartitionField("bucket", "part_id", 16),
                                  PartitionField("identity", "role"))
    assert parts.columns[0] == Column("part_id", "string", True) and parts.columns[2] == Column("part_index", "int")
    assert parts.required() == frozenset({"part_id"})
    abc = cfg.table("a.b.c")
    assert abc.key == "id" and abc.legacy_key == () and abc.columns == ()
    undeclared = cfg.table("x.y")
    assert not undeclared.declared and undeclared.key == "part_id"
    assert cfg.sources[0].path == str(tmp_path / "home" / "logs" / "*.jsonl") and cfg.sources[0].format == "transcript"
    assert cfg.sources[1].path == str(tmp_path / "conf" / "rel" / "*.jsonl") and cfg.sources[1].format == "jsonl"


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ('spol = 1', "spol"),
        ('[spool]\nrooot = "/x"', "spool.rooot"),
        ('[flush]\ndebounce = 3', "flush.debounce"),
        ('[tables."a.b"]\nkeys = "x"', "keys"),
        ('[[sources]]\ntable = "a.b"\npath = "/x"\npaths = "/y"', "sources[0].paths"),
    ],
)
def test_unknown_keys_are_refused_naming_the_key(toml: str, names: str) -> None:
    import tomllib

    with pytest.raises(ConfigError, match="unknown config key") as e:
        parse_config(tomllib.loads(toml))
    assert names in str(e.value)


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ("[spool]\nroot = 5", "spool.root"),
        ("[spool]\ngroup = 0", "spool.group"),
        ("spool = 3", "spool"),
        ('[catalog]\nname = ""', "catalog.name"),
        ("[catalog]\nuri = {a = 1}", "catalog.uri"),
        ('[flush]\ndebounce_s = "fast"', "flush.debounce_s"),
        ("[flush]\ndebounce_s = true", "flush.debounce_s"),
        ("[flush]\nmax_delay_s = -1", "flush.max_delay_s"),
        ("[flush]\nmax_rows = 1.5", "flush.max_rows"),
        ("[flush]\ndebounce_s = 700\nmax_delay_s = 600", "flush.debounce_s"),
        ('[tables."a.b".columns]\nx = "strin"', "columns.x"),
        ('[tables."a.b".columns]\nx = "string!!"', "columns.x"),
        ('[tables."a.b".columns]\nx = 1', "columns.x"),
        ('[tables."a.b"]\nkey = 1', "key"),
        ('[tables."a.b"]\nkey = "id"\n[tables."a.b".columns]\nx = "string"', "key"),
        ('[tables."a.b"]\nkey = "n"\n[tables."a.b".columns]\nn = "long"', "columns.n"),
        ('[tables."a.b"]\nlegacy_key = "m"', "legacy_key"),
        ('[tables."a.b"]\nlegacy_key = ["m", 1]', "legacy_key"),
        ('[tables."a.b"]\npartition_by = ["days(ts)x"]', "partition_by"),
        ('[tables."a.b"]\npartition_by = "day(ts)"', "partition_by"),
        ('[tables."a.b"]\npartition_by = ["day(ts)"]\n[tables."a.b".columns]\npart_id = "string"',
         "partition_by"),
        ('[tables."a.b"]\ncolumns = 3', "columns"),
        ('tables = 3', "tables"),
        ('[[sources]]\ntable = "a.b"', "sources[0]"),
        ('[[sources]]\ntable = "a.b"\npath = "/x"\nformat = "csv"', "sources[0].format"),
        ('[[sources]]\ntable = "a.b"\npath = 3', "sources[0].path"),
        ("sources = 3", "sources"),
        ('[ingest]\nlisten = "4318"', "ingest.listen"),
        ('[ingest]\nlisten = "127.0.0.1:4318"\nmax_body_bytes = 0', "ingest.max_body_bytes"),
        ('[ingest]\ntls_cert = "/c.pem"', "ingest.tls_cert and ingest.tls_key"),
        ('[ingest]\notlp_logs_table = "logs"', "ingest.otlp_logs_table"),
        ('[ingest]\nany_table = "yes"', "ingest.any_table"),
        ('[ingest]\nport = 4318', "ingest.port"),
    ],
)
def test_bad_types_are_refused_naming_the_key(toml: str, names: str) -> None:
    import tomllib

    with pytest.raises(ConfigError) as e:
        parse_config(tomllib.loads(toml))
    assert names in str(e.value), str(e.value)


@pytest.mark.parametrize("ident", ["chat", "../x", ".a.b", "a..b", "a/b", "a.b.", "a.b-c", "a. b", "é.b", ""])
def test_bad_table_identifiers_are_refused(ident: str) -> None:
    import tomllib

    with pytest.raises(ConfigError, match="bad table identifier") as e:
        parse_config(tomllib.loads(f'[tables."{ident}"]\nkey = "k"'))
    assert repr(ident) in str(e.value)
    with pytest.raises(ConfigError, match=r"sources\[0\].table: bad table identifier" if ident else "required"):
        parse_config(tomllib.loads(f'[[sources]]\ntable = "{ident}"\npath = "/x"'))


def test_a_bad_config_fails_the_cli_with_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[spool]\nroot = "/tmp/x"\nrooot = "/tmp/y"\n')
    for args in (("status",), ("append", "t.x"), ("flush",)):
        r = run_spoold(*args, "--config", str(path), input=b"")
        err = r.stderr.decode()
        assert r.returncode == 2 and err.count("\n") == 1 and "spool.rooot" in err, err
    path.write_text("[spool\n")
    r = run_spoold("status", "--config", str(path))
    err = r.stderr.decode()
    assert r.returncode == 2 and err.count("\n") == 1 and "invalid TOML" in err and "bad.toml" in err, err


def test_idle_restart_may_be_zero_but_not_negative(tmp_path: Path) -> None:
    from spoold.config import parse_config

    assert parse_config({"flush": {"idle_restart_s": 0}}).flush.idle_restart_s == 0
    with pytest.raises(ConfigError, match="flush.idle_restart_s"):
        parse_config({"flush": {"idle_restart_s": -1}})
    with pytest.raises(ConfigError, match="flush.debounce_s"):
        parse_config({"flush": {"debounce_s": 0}})


def test_a_spool_group_that_does_not_exist_is_refused_at_load(tmp_path: Path) -> None:
    """Caught when the config is read (exit 2, naming the key), not at the first append (exit 1)."""
    from support.cli import run_spoold, write_config

    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("[spool]\n", '[spool]\ngroup = "no-such-group-spoold"\n', 1))
    proc = run_spoold("status", "--config", str(cfg))
    assert proc.returncode == 2, proc.stderr
    assert b"spool.group: no such group 'no-such-group-spoold'" in proc.stderr
