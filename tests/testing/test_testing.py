"""The ``spoold_env`` fixture's own rules, used in-process (the plugin is registered in this suite too)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from spoold.config import load_config
from spoold.errors import ConfigError, UsageError
from spoold.testing import SpooldEnv


def test_a_declaration_is_written_to_the_config(spoold_env: SpooldEnv) -> None:
    assert spoold_env.table("ev.rows", {"id": "string!", 'a "quoted" col': "long"}, key="id",
                            partition_by=["bucket[4](id)"], legacy_key=["m", "i"]) == "ev.rows"
    spec = load_config(os.environ["SPOOLD_CONFIG"]).table("ev.rows")
    assert (spec.key, spec.legacy_key, [str(p) for p in spec.partition_by]) == ("id", ("m", "i"), ["bucket[4](id)"])
    assert spec.column_types() == {"id": "string", 'a "quoted" col': "long"} and spec.required() == {"id"}
    assert load_config().spool_root == spoold_env.spool_root


def test_a_bad_declaration_fails_at_once_and_changes_nothing(spoold_env: SpooldEnv) -> None:
    before = spoold_env.config_path.read_text()
    with pytest.raises(ConfigError, match=r"columns\.id: unknown type 'strin'"):
        spoold_env.table("ev.rows", {"id": "strin"}, key="id")
    with pytest.raises(ConfigError, match="key column 'nope' is not among the declared columns"):
        spoold_env.table("ev.rows", {"id": "string"}, key="nope")
    with pytest.raises(UsageError, match="bad table identifier"):
        spoold_env.table("rows", {"id": "string"})
    with pytest.raises(ConfigError, match="unknown config key flush.debounce"):
        with spoold_env.daemon(debounce=1):
            pass
    assert spoold_env.config_path.read_text() == before


def test_a_table_is_declared_before_its_first_use(spoold_env: SpooldEnv) -> None:
    spoold_env.append("ev.rows", [{"part_id": "a"}])
    with pytest.raises(UsageError, match="before its first use"):
        spoold_env.table("ev.rows", {"part_id": "string"})


def test_rows_of_a_table_that_does_not_exist(spoold_env: SpooldEnv) -> None:
    assert spoold_env.rows("ev.none") == []
    assert spoold_env.flush("ev.none") == {"ev.none": {"committed": 0, "deduplicated": 0, "quarantined": 0}}


def test_the_outer_environment_comes_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outer = {"SPOOLD_CONFIG": "/outer/spoold.toml", "PYICEBERG_CATALOG__SPOOLD__URI": "sqlite:////outer.db",
             "pyiceberg_max_workers": "2", "STATE_DIRECTORY": "/outer/state", "NOTIFY_SOCKET": "@outer",
             "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1", "XDG_STATE_HOME": "/outer/xdg"}
    for k, v in outer.items():
        monkeypatch.setenv(k, v)
    env = SpooldEnv(tmp_path / "env")
    try:
        assert os.environ["SPOOLD_CONFIG"] == str(env.config_path)
        assert os.environ["XDG_STATE_HOME"].startswith(str(tmp_path))
        assert (Path(os.environ["PYICEBERG_HOME"]) / ".pyiceberg.yaml").is_file()
        assert [k for k in outer if k in os.environ and os.environ[k] == outer[k]] == []
        env.append("ev.rows", [{"part_id": "a"}])
        assert load_config().spool_root == env.spool_root
    finally:
        env.close()
    assert {k: os.environ.get(k) for k in outer} == outer
    assert env.spool_root.is_dir()  # the files stay in tmp_path for a failed test's post-mortem


def test_an_env_leaves_no_file_open(tmp_path: Path) -> None:
    """Spool lock files and the catalog's connections are closed: a long suite would run out of descriptors."""

    def use(env: SpooldEnv) -> None:
        for t in ("ev.a", "ev.b"):
            env.append(t, [{"part_id": "x"}])
        assert env.flush()["ev.b"]["committed"] == 1 and len(env.rows("ev.a")) == 1

    warm = SpooldEnv(tmp_path / "warm")  # one-time imports and thread pools are not the env's
    use(warm)
    warm.close()
    before = sorted(os.listdir("/proc/self/fd"))
    env = SpooldEnv(tmp_path / "env")
    try:
        use(env)
        assert len(os.listdir("/proc/self/fd")) > len(before)
    finally:
        env.close()
    assert sorted(os.listdir("/proc/self/fd")) == before
