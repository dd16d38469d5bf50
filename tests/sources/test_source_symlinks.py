"""Symlinks in tailed sources (issue 19, "the rest"): judged by where they really lead.

Whoever can write into a source directory can make symlinks there. The tailer
must never read the daemon's own spool through one (a symlinked directory under
a ``**`` glob led the daemon to tail its own files), and, unless the source says
``follow_symlinks_outside = true``, never a file outside the glob's base (any file
the daemon may read would land in a table or its quarantine). Symlinks whose
target stays inside the base (``current.jsonl -> data/2026.jsonl``) are tailed as
before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from support.cli import run_spoold, write_config
from support.daemonproc import DaemonProc, wait_for
from support.tables import read_table, spooled_keys

from spoold.config import SourceSpec
from spoold.sources.tail import Tailer
from spoold.spool.files import QUARANTINE
from spoold.spool.spool import Spool

TABLE = "t.src"


def line(key: str) -> bytes:
    return orjson.dumps({"part_id": key}) + b"\n"


def spooled(spool: Spool, table: str = TABLE) -> list[str]:
    return spooled_keys(spool, table)


def drain(t: Tailer) -> None:
    t.discover()
    while t.has_work():
        t.run_pass()


@pytest.fixture
def src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    (d / "a.jsonl").write_bytes(line("a1"))
    return d


def test_a_symlinked_directory_into_the_spool_root_is_never_tailed(spool: Spool, src: Path) -> None:
    spool.append("t.other", [{"part_id": "spooled"}])
    (src / "sneaky").symlink_to(spool.root)  # src/sneaky/t.other/active.jsonl is the spool's own file
    t = Tailer(spool, [SourceSpec(TABLE, str(src / "**" / "*.jsonl"), "jsonl", follow_symlinks_outside=True)])
    drain(t)
    assert spooled(spool) == ["a1"]
    assert not t.on_change(str(src / "sneaky" / "t.other" / "active.jsonl"))
    assert t.lag()[0]["files"] == 1
    assert not (spool.root / TABLE / QUARANTINE).exists()


def test_a_symlink_to_a_file_outside_the_base_is_refused_by_default(
    spool: Spool, src: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "private" / "secret.jsonl"
    secret.parent.mkdir()
    secret.write_bytes(line("secret"))
    (src / "leak.jsonl").symlink_to(secret)
    (src / "dir").symlink_to(secret.parent)  # and through a symlinked directory under a ** glob
    t = Tailer(spool, [SourceSpec(TABLE, str(src / "**" / "*.jsonl"), "jsonl")])
    with caplog.at_level(logging.WARNING, "spoold.sources.tail"):
        drain(t)
        drain(t)  # a second look logs nothing new
    assert spooled(spool) == ["a1"] and t.lag()[0]["files"] == 1
    assert t.watch_paths() == [src]  # the target's directory is not watched either
    refused = [r.getMessage() for r in caplog.records if "not tailed" in r.getMessage()]
    assert len(refused) == 2 and all("follow_symlinks_outside" in m for m in refused), refused


def test_a_symlink_inside_the_base_is_tailed(spool: Spool, src: Path) -> None:
    (src / "data").mkdir()
    (src / "data" / "2026.log").write_bytes(line("c1"))
    (src / "current.jsonl").symlink_to("data/2026.log")  # relative, inside src/
    drain(Tailer(spool, [SourceSpec(TABLE, str(src / "*.jsonl"), "jsonl")]))
    assert sorted(spooled(spool)) == ["a1", "c1"]


def test_follow_symlinks_outside_allows_them(spool: Spool, src: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "real.log").write_bytes(line("e1"))
    (src / "linked.jsonl").symlink_to(tmp_path / "elsewhere" / "real.log")
    drain(Tailer(spool, [SourceSpec(TABLE, str(src / "*.jsonl"), "jsonl", follow_symlinks_outside=True)]))
    assert sorted(spooled(spool)) == ["a1", "e1"]


def test_a_bad_follow_symlinks_outside_is_refused_naming_the_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f'[[sources]]\ntable = "{TABLE}"\npath = "{tmp_path}/*.jsonl"\n'
                                 'follow_symlinks_outside = "yes"\n', name="bad.toml")
    r = run_spoold("status", "--config", str(cfg))
    err = r.stderr.decode()
    assert r.returncode == 2 and err.count("\n") == 1 and "sources[0].follow_symlinks_outside" in err, err


def test_the_daemon_tails_neither_its_spool_nor_files_outside_through_symlinks(
    tmp_path: Path, src: Path, daemons: Callable[..., DaemonProc]
) -> None:
    cfg = write_config(tmp_path, "[flush]\ndebounce_s = 0.2\nmax_delay_s = 1.0\n"
                                 f'[[sources]]\ntable = "{TABLE}"\npath = "{src}/**/*.jsonl"\n')
    spool_root = tmp_path / "state" / "spool"
    spool_root.mkdir(parents=True)
    (src / "sneaky").symlink_to(spool_root)  # the daemon's own active.jsonl and flush files, by a ** glob
    secret = tmp_path / "private.jsonl"
    secret.write_bytes(line("secret"))
    (src / "leak.jsonl").symlink_to(secret)

    def committed() -> list[str]:
        try:
            return sorted(read_table(cfg, TABLE).column("part_id").to_pylist())
        except AssertionError:  # not created yet
            return []

    d = daemons(cfg)
    wait_for(lambda: committed() == ["a1"], "a1 committed")
    with open(src / "a.jsonl", "ab") as f:
        f.write(line("a2"))
    wait_for(lambda: "a2" in committed(), "a2 committed")
    assert committed() == ["a1", "a2"]  # nothing of the spool's own lines, nothing of the secret
    assert not (spool_root / TABLE / QUARANTINE).exists()
    log = d.log()
    assert "leak.jsonl: not tailed" in log and "Traceback" not in log
    assert d.stop() == 0
