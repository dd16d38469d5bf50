"""The suite's zygote (tests/support/zygote.py): its children are the processes plain subprocesses would be."""

from __future__ import annotations

import ast
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import zygote
from support.paths import REPO

SCRIPT = """import os, resource, signal, sys, time
print(repr((sys.argv, sys.orig_argv, os.getcwd(), os.environ.get("SPOOLD_TEST_MARK"), sys.path[0])))
print(oct(os.umask(0)), os.getsid(0) == os.getpid(), time.tzname[0], resource.getrlimit(resource.RLIMIT_NOFILE),
      signal.getsignal(signal.SIGHUP), sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])), file=sys.stderr)
sys.stdout.flush()
code = sys.stdin.read()
if code == "sleep":
    time.sleep(60)
sys.exit(int(code) if code else None)
"""


def both(tmp_path: Path, *args: str, stdin: bytes = b"", **kw: object) -> list[subprocess.CompletedProcess[bytes]]:
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    argv = [sys.executable, str(script), *args]
    env = {**os.environ, "SPOOLD_TEST_MARK": "m", "TZ": "CET-1"}
    with zygote.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                      cwd=tmp_path, **kw) as forked:  # type: ignore[arg-type]
        assert isinstance(forked, zygote.Proc)
        out, err = forked.communicate(stdin, 60)
    plain = subprocess.run(argv, input=stdin, capture_output=True, env=env, cwd=tmp_path, timeout=60, **kw)
    return [subprocess.CompletedProcess(argv, forked.returncode, out, err), plain]


@pytest.mark.parametrize("stdin", [b"", b"3"])
def test_a_forked_child_sees_what_a_subprocess_sees(tmp_path: Path, stdin: bytes) -> None:
    zygote.run([sys.executable, "-m", "spoold", "--help"])  # the zygote runs before what follows changes
    old = os.umask(0o027)
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, limits[1]))
    hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
    try:
        forked, plain = both(tmp_path, "a b", "--x", stdin=stdin, start_new_session=True)
    finally:
        os.umask(old)
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        signal.signal(signal.SIGHUP, hup)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR2])
    assert forked.returncode == plain.returncode == (3 if stdin else 0)
    assert forked.stdout == plain.stdout and forked.stderr == plain.stderr, (forked, plain)
    assert b"'m'" in forked.stdout
    assert forked.stderr.startswith(b"0o27 True CET (512, ")
    assert b") 1 [<Signals.SIGUSR2: 12>]" in forked.stderr  # SIGHUP: 1 (SIG_IGN)


def test_an_uncaught_interrupt_ends_a_child_as_sigint_and_input_is_within_the_timeout(tmp_path: Path) -> None:
    script = tmp_path / "interrupted.py"
    script.write_text("import time\ntime.sleep(0.5)\nraise KeyboardInterrupt\n")
    argv = [sys.executable, str(script)]
    assert zygote.run(argv, capture_output=True, timeout=60).returncode == subprocess.run(
        argv, capture_output=True, timeout=60).returncode == -signal.SIGINT
    with pytest.raises(subprocess.TimeoutExpired):  # 4 MiB nobody reads: the write itself must time out
        zygote.run(argv, input=bytes(4 << 20), capture_output=True, timeout=0.2)


def test_a_killed_child_reports_the_signal_and_wait_times_out_before(tmp_path: Path) -> None:
    (tmp_path / "probe.py").write_text(SCRIPT)
    proc = zygote.popen([sys.executable, str(tmp_path / "probe.py")], stdin=subprocess.PIPE,
                        stdout=subprocess.DEVNULL)
    assert isinstance(proc, zygote.Proc)
    assert proc.stdin is not None
    proc.stdin.write(b"sleep")
    proc.stdin.close()
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(0.2)
    assert proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


def test_what_a_new_interpreter_would_read_differently_sends_a_command_to_a_plain_subprocess(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "spoold", "--help"]

    def forked(env: dict[str, str] | None = None) -> bool:
        proc = zygote.popen(argv, stdout=subprocess.DEVNULL, env=env)
        assert proc.wait(60) == 0
        return isinstance(proc, zygote.Proc)

    assert forked()
    home = Path(os.environ["HOME"])
    (home / ".pyiceberg.yaml").write_text("catalog: {}\n")
    assert not forked()  # pyiceberg's configuration file
    (home / ".pyiceberg.yaml").unlink()
    assert not forked({**os.environ, "PYICEBERG_CATALOG__X__URI": "sqlite://"})  # ... or its variables
    assert not forked({**os.environ, "PYTHONHASHSEED": "7"})  # the interpreter's own
    (tmp_path / "tools").mkdir()
    assert forked({**os.environ, "PYTHONPATH": str(tmp_path / "tools")})  # a path of its own is put in its place
    (tmp_path / "tools" / "sitecustomize.py").write_text("")
    assert not forked({**os.environ, "PYTHONPATH": str(tmp_path / "tools")})  # ... unless it runs code at start
    shutil.copytree(REPO / "spoold", tmp_path / "copy" / "spoold", ignore=shutil.ignore_patterns("__pycache__"))
    assert not forked({**os.environ, "PYTHONPATH": str(tmp_path / "copy")})  # ... or has another spoold


def reads_environment_at_import(path: Path) -> bool:
    """Whether a module's top-level statements (not its functions' bodies) name ``os.environ`` or getenv."""
    body = [n for n in ast.parse(path.read_text()).body
            if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return any(isinstance(n, ast.Attribute) and n.attr in ("environ", "getenv", "environb")
               for stmt in body for n in ast.walk(stmt))


def test_the_modules_a_child_imports_again_are_those_that_read_the_environment_when_imported() -> None:
    package = REPO / "spoold"
    found = {".".join(p.relative_to(REPO).with_suffix("").parts) for p in package.rglob("*.py")
             if "testing" not in p.parts and reads_environment_at_import(p)}
    # keys.index reads whether hashes are randomized: a fork keeps its zygote's interpreter, so the same answer.
    assert found - {"spoold.keys.index"} == set(zygote.RELOAD)


@pytest.mark.skipif(os.geteuid() != 0, reason="running as another user needs root")
def test_a_child_run_as_another_user_is_that_user_as_setpriv_makes_it(tmp_path: Path, base: Path) -> None:
    hidden, script = tmp_path / "ids.py", base / "ids.py"  # in pytest's root-only tree, and where all can read
    for p in (hidden, script):
        p.write_text("import os\nprint(os.getresuid(), os.getresgid(), os.getgroups(), os.listdir('/proc/self/fd'))\n")
        p.chmod(0o644)
    for p, code in ((script, 0), (hidden, 2)):
        argv = [sys.executable, str(p)]
        forked = zygote.run(argv, user=(65534, 65533), capture_output=True, timeout=60)
        plain = subprocess.run(["setpriv", "--reuid=65534", "--regid=65533", "--clear-groups", "--", *argv],
                               capture_output=True, timeout=60)
        assert forked.returncode == plain.returncode == code, (forked.stderr, plain.stderr)
        assert (forked.stdout, forked.stderr) == (plain.stdout, plain.stderr)
