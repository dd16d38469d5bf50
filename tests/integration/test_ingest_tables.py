"""``[ingest] listen`` and the spool it writes: a stuck table's lock, a reload, the producer group, rebuild's names."""

from __future__ import annotations

import fcntl
import grp
import os
import queue
import signal
import threading
from collections import Counter
from pathlib import Path

import orjson
import pytest
from support.cli import run_spoold
from support.daemonproc import DaemonProc, wait_for
from support.ingest import ingest_address, ingest_config, post
from support.tables import committed_counts
from support.testhooks import Hooks

from spoold.config import load_config
from spoold.errors import UsageError
from spoold.spool.spool import Spool

TABLES = "".join(f'[tables."app.{t}"]\n[tables."app.{t}".columns]\npart_id = "string!"\n' for t in ("events", "other"))
RESERVED = "staging or backup table of `spoold rebuild`"


def rows(*keys: str) -> bytes:
    return b"".join(orjson.dumps({"part_id": k}) + b"\n" for k in keys)


def test_a_table_whose_lock_a_producer_holds_stalls_no_other_table(tmp_path: Path) -> None:
    cfg = ingest_config(tmp_path, TABLES, ingest="retry_after_s = 1\n", flush="debounce_s = 60\nmax_delay_s = 60\n")
    hooks = Hooks(tmp_path / "hooks")
    d = DaemonProc(cfg, hooks.env(pause=False))
    try:
        addr = ingest_address(d)
        assert post(addr, "/v1/tables/app.events", rows("w"))[0] == 200  # its spool directory and lock file

        def appends() -> int:
            return sum(m.point == "ingest.append" for m in hooks.marks(d.proc.pid))

        # A producer (a member of the spool's group, say) holds app.events' append lock and does not let go.
        fd = os.open(load_config(cfg).spool_root / "app.events" / ".lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            answers: queue.Queue[tuple[str, int, dict[str, str]]] = queue.Queue()

            def send(key: str) -> None:
                code, headers, _ = post(addr, "/v1/tables/app.events", rows(key))
                answers.put((key, code, headers))

            first = threading.Thread(target=send, args=("e1",))
            first.start()
            wait_for(lambda: appends() == 2, "e1's group waiting for the held lock")
            later = [threading.Thread(target=send, args=(k,)) for k in ("e2", "e3")]
            for t in later:
                t.start()
            # Another table's request is answered while app.events' requests still wait for their lock.
            assert post(addr, "/v1/tables/app.other", rows("o1"))[0] == 200
            assert answers.empty()
            for t in [first, *later]:
                t.join(60)
            got = sorted(answers.get_nowait() for _ in range(3))
            assert [(k, code, h.get("retry-after")) for k, code, h in got] == [
                ("e1", 503, "1"), ("e2", 503, "1"), ("e3", 503, "1")]
            # One wait for the table's lock refused all three: none was tried again on its own.
            assert appends() == 3
        finally:
            os.close(fd)
        assert post(addr, "/v1/tables/app.events", rows("e1"))[0] == 200  # the lock free again: the retry lands
        assert d.stop() == 0
        assert committed_counts(cfg, "app.events") == Counter(["w", "e1"])
        assert committed_counts(cfg, "app.other") == Counter(["o1"])
    finally:
        d.close()


def test_a_reload_moves_ingest_to_the_new_spool_root(tmp_path: Path) -> None:
    cfg = ingest_config(tmp_path, TABLES)
    d = DaemonProc(cfg)
    try:
        addr = ingest_address(d)
        assert post(addr, "/v1/tables/app.events", rows("k0"))[0] == 200
        wait_for(lambda: committed_counts(cfg, "app.events") == Counter(["k0"]), "k0 committed")
        old_root = load_config(cfg).spool_root
        new_root = tmp_path / "spool2"
        cfg.write_text(cfg.read_text().replace(f'root = "{old_root}"', f'root = "{new_root}"'))
        d.signal(signal.SIGHUP)
        d.wait_ready(2)
        assert post(addr, "/v1/tables/app.events", rows("k1"))[0] == 200
        assert (new_root / "app.events").is_dir()  # under the root the daemon now flushes
        wait_for(lambda: committed_counts(cfg, "app.events") == Counter(["k0", "k1"]), "k1 committed")
    finally:
        d.close()


def test_a_spool_group_needs_a_token_on_the_listener(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    cfg = ingest_config(tmp_path, TABLES, spool=f'group = "{group}"', token=False)
    proc = run_spoold("run", "--config", str(cfg), timeout=60)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr
    assert err.count(b"\n") == 1 and b"spool.group is set" in err and b"ingest.token_file" in err, err
    # A running token-less listener keeps its configuration when a reload would add the group.
    without = cfg.read_text().replace(f'group = "{group}"\n', "")
    cfg.write_text(without)
    d = DaemonProc(cfg)
    try:
        cfg.write_text(without.replace("[spool]\n", f'[spool]\ngroup = "{group}"\n', 1))
        d.signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in d.log(), "the reload refused")
        assert "spool.group is set" in d.log() and d.proc.poll() is None
    finally:
        d.close()


def test_no_producer_writes_to_a_rebuild_s_staging_or_backup_table(tmp_path: Path) -> None:
    cfg = ingest_config(tmp_path, TABLES, ingest="any_table = true\n")
    names = ["app.events__backup_20260101T000000Z", "app.events__rebuild_20260101T000000Z"]
    d = DaemonProc(cfg)
    try:
        addr = ingest_address(d)
        for name in names:
            code, _, body = post(addr, f"/v1/tables/{name}", rows("x"))
            assert code == 403 and RESERVED in orjson.loads(body)["error"], body
        assert post(addr, "/v1/tables/app.events__backup_old", rows("x"))[0] == 200  # not a rebuild's name
    finally:
        d.close()
    (tmp_path / "one.jsonl").write_bytes(rows("x"))
    for name in names:
        proc = run_spoold("append", name, str(tmp_path / "one.jsonl"), "--config", str(cfg))
        assert proc.returncode == 2 and proc.stderr.count(b"\n") == 1 and RESERVED.encode() in proc.stderr
        with pytest.raises(UsageError, match="backup table"):
            Spool.from_config(load_config(cfg)).append(name, [{"part_id": "x"}])
    spool_root = load_config(cfg).spool_root
    assert not any((spool_root / n).exists() for n in names)
    cfg.write_text(cfg.read_text().replace("[ingest]\n", f'[ingest]\notlp_logs_table = "{names[0]}"\n'))
    proc = run_spoold("run", "--config", str(cfg), timeout=60)
    assert proc.returncode == 2 and b"ingest.otlp_logs_table" in proc.stderr and RESERVED.encode() in proc.stderr
