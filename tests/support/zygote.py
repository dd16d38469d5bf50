"""Real ``spoold`` processes without paying for their imports each time: a per-worker zygote that forks them.

Every ``spoold`` a test starts is a process of its own: its own pid, signals,
exit status, file descriptors, session, environment and working directory. What
a subprocess pays first is importing pyarrow, pyiceberg, SQLAlchemy and spoold
(about 1 s of CPU), and the suite starts over a thousand of them. The zygote is
one process per pytest worker that has imported them once; for each command it
forks a child that takes the caller's argv, environment, working directory,
umask and standard streams, then runs ``python -m spoold ...`` (or a script) in
it. The caller gets a :class:`Proc`, which behaves as the ``subprocess.Popen``
it replaces (pid, poll, wait, send_signal, kill, pipes).

A child also keeps what an exec'd child keeps of its caller: resource limits,
ignored signals, signal mask, CPU affinity, and (``user=``) runs as another user
as ``setpriv`` makes it. What it has that a freshly started interpreter would
not is what those modules did when imported. spoold's own modules that read the
environment then (``RELOAD``) run again in the child. pyiceberg reads its
configuration then (``PYICEBERG_*``, ``.pyiceberg.yaml`` in ``PYICEBERG_HOME``,
home or the working directory): a command whose environment or directories hold
any of it, whose environment differs in a ``PYTHON*`` or locale variable, or
whose ``sys.path`` puts another copy of a preloaded package (or a
``sitecustomize``) first, runs as a plain subprocess instead.

Known differences that remain, and what a test that depends on them does:
- memory, threads and imports: the child holds all the zygote imported (its RSS
  starts near 100 MB, numpy's BLAS threads never start, ``pyiceberg`` is in
  ``sys.modules`` from the start): a test measuring them takes a new
  interpreter (``SPOOLD_TEST_ZYGOTE=0`` in the command's environment,
  ``DaemonProc(fresh=True)``); tests/integration/test_fresh_commands.py runs
  every command once that way;
- the hash secret is the zygote's, shared by its children (set and dict order
  alike across them);
- at exit the child waits for its threads, runs ``atexit`` and flushes its
  streams, but does not free its objects (no destructors at shutdown);
- ``/proc/<pid>/cmdline`` and ``environ`` show the zygote's.
``SPOOLD_TEST_ZYGOTE=0`` in the suite's environment runs every command as a
plain subprocess, to compare.
"""

from __future__ import annotations

import atexit
import importlib
import json
import locale
import os
import resource
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

PRELOAD = ("pyarrow", "pyarrow.parquet", "pyarrow.compute", "pyarrow.fs", "numpy", "orjson", "sqlalchemy",
           "pydantic", "h11", "prometheus_client", "watchfiles", "pyiceberg.table", "pyiceberg.catalog.sql",
           "pyiceberg.catalog.rest", "pyiceberg.io.pyarrow", "pyiceberg.expressions.parser")
# spoold's modules that read the environment when imported (tests/testing/test_zygote.py keeps this list true):
# a child runs them again with its own. keys.index reads the interpreter's hash flag, which a fork keeps.
RELOAD = ("spoold._testhooks",)
NO_ZYGOTE = "SPOOLD_TEST_ZYGOTE"  # "0" (in the suite's or a command's environment): a plain subprocess
_HEADER = struct.Struct("!I")
_SAME_ENV = ("PYTHON", "LANG", "LC_")  # read by the interpreter at start-up: a child of the zygote keeps its own
# ... but PYTHONPATH, which only adds to sys.path: a child puts its own there instead of the zygote's.
_OWN_ENV = ("PYTHONPATH",)


def _pythonpath(env: Mapping[str, str], cwd: str) -> list[str]:
    """The entries ``PYTHONPATH`` puts on sys.path, as the interpreter does (relative ones, and "", by cwd)."""
    value = env.get("PYTHONPATH", "")
    return [os.path.join(cwd, e) if e else cwd for e in value.split(os.pathsep)] if value else []


# -- the zygote ------------------------------------------------------------------------------------------
def _serve(path: str) -> dict[str, Any] | None:
    """Accept requests until the worker goes (EOF on stdin); in a forked child, return its request."""
    for name in (*PRELOAD, *_spoold_modules()):
        importlib.import_module(name)
    ours = _pythonpath(os.environ, os.getcwd())
    if sys.path[1:1 + len(ours)] != ours:
        raise RuntimeError(f"PYTHONPATH is not where the interpreter puts it: {sys.path}")
    import gc

    gc.freeze()  # what is here now is never collected: a child's collections touch (copy) none of it
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C ends the worker, whose going ends this (EOF below)
    waiting: dict[int, socket.socket] = {}  # child pid -> the connection that asked for it
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        readable, _, _ = select.select([listener, wake_r, sys.stdin], [], [])
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1):
            return None  # the worker has gone
        if wake_r in readable:
            os.read(wake_r, 4096)
            _reap(waiting)
        if listener in readable:
            conn, _ = listener.accept()
            fds: list[int] = []
            try:  # a caller gone mid-request (a timeout), or a failed fork, costs that request only
                request, fds = _receive(conn)
                pid = os.fork()
            except (OSError, EOFError, ValueError, struct.error) as e:
                print(f"test zygote: a request failed: {e!r}", file=sys.stderr)
                pid = -1
            if pid == 0:
                try:
                    request["pythonpath_slots"] = len(ours)
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                    for s in (listener, *waiting.values()):
                        s.close()
                    os.close(wake_r)
                    os.close(wake_w)
                    conn.close()
                    _become(request, fds)
                except BaseException:  # never back into the loop above: this is not the zygote
                    import traceback

                    traceback.print_exc()
                    os._exit(127)
                return request
            for fd in fds:
                os.close(fd)
            if pid < 0:
                conn.close()
                continue
            waiting[pid] = conn
            try:
                conn.sendall(b"%d\n" % pid)
            except OSError:
                pass  # the caller is gone; its child runs on and is reaped as usual
            _reap(waiting)  # it may be gone already, its SIGCHLD before we listened for it


def _spoold_modules() -> list[str]:
    """spoold's modules, but its pytest plugin (it imports pytest) and ``__main__`` (run, never imported)."""
    import pkgutil

    import spoold

    return [m.name for m in pkgutil.walk_packages(spoold.__path__, "spoold.")
            if not m.name.startswith(("spoold.testing", "spoold.__main__"))]


def _reap(waiting: dict[int, socket.socket]) -> None:
    while waiting:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = waiting.pop(pid, None)
        if conn is not None:
            try:
                conn.sendall(b"%d\n" % os.waitstatus_to_exitcode(status))
            except OSError:
                pass  # the caller stopped waiting
            conn.close()


def _receive(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    while len(data) < _HEADER.size or len(data) < _HEADER.size + _HEADER.unpack_from(data)[0]:
        more = conn.recv(1 << 16)
        if not more:
            raise EOFError("request cut short")
        data += more
    return json.loads(data[_HEADER.size:]), list(fds)


def _become(request: dict[str, Any], fds: list[int]) -> None:
    """In the child: the caller's process state, as a new interpreter started by it would have."""
    if request["setsid"]:
        os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # as subprocess does (close_fds): the zygote's, the fds sent
    os.umask(request["umask"])
    os.chdir(request["cwd"])
    for name, limits in request["rlimits"].items():  # what an exec'd child inherits from its caller:
        resource.setrlimit(getattr(resource, name), tuple(limits))
    for signum in request["ignored"]:  # ... its ignored signals (handled ones are reset by exec)
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, request["sigmask"])  # ... its blocked ones
    os.sched_setaffinity(0, request["affinity"])
    if request["user"] is not None:  # as setpriv --reuid --regid --clear-groups would
        uid, gid = request["user"]
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        import ctypes

        ctypes.CDLL(None).prctl(4, 1)  # PR_SET_DUMPABLE: an exec after setuid makes a process dumpable again
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()
    argv = request["argv"]
    sys.argv = list(argv)
    sys.orig_argv = list(request["orig_argv"])  # what a re-exec of itself runs (the daemon's lean restart)
    sys.path[0] = os.getcwd() if request["module"] else os.path.dirname(os.path.abspath(argv[0]))
    sys.path[1:1 + request["pythonpath_slots"]] = _pythonpath(request["env"], request["cwd"])
    for name in RELOAD:
        importlib.reload(sys.modules[name])


def _run_child(request: dict[str, Any]) -> int:
    """Run the child's program; its exit status, after what an interpreter does at exit that others can see:
    wait for its non-daemon threads, run its ``atexit`` functions, flush its streams. Not the rest (freeing
    every object), which would touch, and so copy, every page it shares with the zygote."""
    import runpy

    try:
        if request["module"]:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        else:
            script = request["argv"][0]
            try:
                open(script, "rb").close()
            except OSError as e:  # as the interpreter says it, and its status
                print(f"{sys.executable}: can't open file {script!r}: [Errno {e.errno}] {e.strerror}", file=sys.stderr)
                return 2
            runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        code = -signal.SIGINT  # as the interpreter ends on an uncaught one: killed by SIGINT
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        code = 120  # as the interpreter's own exit when its last flush fails
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


# -- the caller's side -----------------------------------------------------------------------------------
class _Zygote:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="spoold-zygote-")
        self.path = os.path.join(self.dir, "sock")
        self.home = home = os.path.join(self.dir, "home")  # also its working directory
        os.mkdir(home)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYICEBERG_")}
        env |= {"HOME": home, "PYICEBERG_HOME": home}
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), self.path], cwd=home, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.env = env
        self.ready = False
        atexit.register(self.close)

    def wait_ready(self) -> None:
        """Until it has imported what it preloads (it started with the worker: meanwhile, the worker collected)."""
        if not self.ready:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            if line != b"ready\n":
                raise RuntimeError(f"the test zygote did not start: {line!r}")
            self.ready = True

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


_zygote: _Zygote | None = None
_lock = threading.Lock()


def start() -> None:
    """Start this process's zygote now (a worker does at its start), so that it is ready when a test needs it."""
    global _zygote
    with _lock:
        if _zygote is None or _zygote.proc.poll() is not None:
            _zygote = _Zygote()


def _get() -> _Zygote:
    start()
    assert _zygote is not None
    with _lock:
        _zygote.wait_ready()
    return _zygote


def _others_can_read(path: str) -> bool:
    """Whether a user with no claim on ``path`` (``other``) can reach and read it."""
    p = Path(path).resolve()
    try:
        return all(d.stat().st_mode & stat.S_IXOTH for d in p.parents) and bool(p.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def _forkable(argv: Sequence[str], env: Mapping[str, str], cwd: str,
              user: tuple[int, int] | None = None) -> str | None:
    """The module (or "" for a script) a zygote's child can run for ``argv``, or None for a plain subprocess."""
    if "0" in (os.environ.get(NO_ZYGOTE), env.get(NO_ZYGOTE)) or len(argv) < 2 or argv[0] != sys.executable:
        return None
    if any(k.startswith("PYICEBERG_") and k != "PYICEBERG_HOME" for k in env):
        return None
    homes = (env.get("PYICEBERG_HOME"), env.get("HOME"), cwd)
    if any(h and os.path.exists(os.path.join(h, ".pyiceberg.yaml")) for h in homes):
        return None
    zygote = _get()
    theirs = zygote.env
    if any(env.get(k) != theirs.get(k) for k in {*env, *theirs} if k.startswith(_SAME_ENV) and k not in _OWN_ENV):
        return None
    if user is not None and not all(_others_can_read(p) for p in (
            os.path.dirname(_main_path("spoold")), sysconfig.get_paths()["purelib"],
            *(os.path.join(cwd, a) for a in argv[1:2] if a.endswith(".py")))):
        return None  # the zygote read these as its own user: another would not have loaded them
    if argv[1] == "-m" and len(argv) >= 3 and argv[2] == "spoold":
        module, first = "spoold", cwd  # sys.path[0]: the working directory
    elif argv[1].endswith(".py") and not argv[1].startswith("-"):
        module, first = "", os.path.dirname(os.path.join(cwd, argv[1]))  # ... the script's directory
    else:
        return None
    ours, zygotes = _pythonpath(env, cwd), _pythonpath(theirs, zygote.home)
    added = [first, *(p for p in ours if p not in zygotes)]
    if any(os.path.exists(os.path.join(p, f"{m}.py")) for p in added[1:] for m in ("sitecustomize", "usercustomize")):
        return None  # a new interpreter would run it at start-up
    names = {m.split(".")[0] for m in (*PRELOAD, "spoold")}
    if any(os.path.exists(os.path.join(p, name)) or os.path.exists(os.path.join(p, f"{name}.py"))
           for p in (*added, *(p for p in zygotes if p not in ours)) for name in names):
        return None  # another copy of what the zygote imported (a mutated spoold, say) is, or is no more, first
    return module


class Proc:
    """A child of the zygote, used as a ``subprocess.Popen``."""

    def __init__(self, argv: Sequence[str], *, stdin: Any = None, stdout: Any = None, stderr: Any = None,
                 env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
                 start_new_session: bool = False, module: str = "spoold",
                 user: tuple[int, int] | None = None) -> None:
        self.args = list(argv)
        self.returncode: int | None = None
        self.stdin: IO[bytes] | None = None
        self.stdout: IO[bytes] | None = None
        self.stderr: IO[bytes] | None = None
        env = dict(os.environ if env is None else env)
        cwd = os.path.abspath(cwd if cwd is not None else os.getcwd())
        theirs: list[int] = []  # the child's ends, closed here once sent
        try:
            fd0, self.stdin = self._end(stdin, 0, theirs, write=False)
            fd1, self.stdout = self._end(stdout, 1, theirs, write=True)
            fd2, self.stderr = (fd1, None) if stderr == subprocess.STDOUT else self._end(stderr, 2, theirs,
                                                                                         write=True)
            umask = _umask()
            argv = [_main_path(module), *self.args[3:]] if module else self.args[1:]  # the child's sys.argv
            request = json.dumps({"argv": argv, "orig_argv": self.args, "env": env, "cwd": cwd, "umask": umask,
                                  "setsid": start_new_session, "module": module, "user": user,
                                  **_inherited()}).encode()
            self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._conn.connect(_get().path)
            socket.send_fds(self._conn, [_HEADER.pack(len(request)) + request], [fd0, fd1, fd2])
        finally:
            for fd in theirs:
                os.close(fd)
        self._reply = self._conn.makefile("rb")
        line = self._reply.readline()
        if not line:
            raise RuntimeError("the test zygote did not fork")
        self.pid = int(line)

    @staticmethod
    def _end(spec: Any, std: int, theirs: list[int], *, write: bool) -> tuple[int, IO[bytes] | None]:
        """The fd the child gets for its stream ``std``, and the caller's end of a pipe (PIPE) if any."""
        if spec is None:
            return std, None
        if spec == subprocess.DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR)
            theirs.append(fd)
            return fd, None
        if spec == subprocess.PIPE:
            r, w = os.pipe()
            theirs.append(w if write else r)
            return (w, open(r, "rb")) if write else (r, open(w, "wb"))  # noqa: SIM115 - the caller's
        return (spec if isinstance(spec, int) else spec.fileno()), None

    def _ended(self, timeout: float | None) -> bool:
        """Whether the zygote has sent the exit status (poll(2): the caller may hold fds past select's 1024)."""
        p = select.poll()
        p.register(self._reply, select.POLLIN)
        return bool(p.poll(None if timeout is None else max(0, int(timeout * 1000))))

    def poll(self) -> int | None:
        if self.returncode is None and self._ended(0):
            self._finish()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not self._ended(timeout):
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self._finish()
        assert self.returncode is not None
        return self.returncode

    def _finish(self) -> None:
        line = self._reply.readline()
        if not line:
            raise RuntimeError(f"the test zygote went away before pid {self.pid} ended")
        self.returncode = int(line)
        self._reply.close()
        self._conn.close()

    def send_signal(self, sig: int) -> None:
        try:
            running = self.poll() is None
        except RuntimeError:  # the zygote went away: its child may run on, and must still be stoppable
            running = True
        if running:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, input: bytes | None = None, timeout: float | None = None) -> tuple[Any, Any]:
        """Feed ``input``, read both pipes to their end, wait: ``subprocess.Popen.communicate``'s contract,
        ``timeout`` over all of it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out: dict[str, bytes] = {}

        def drain(name: str, f: IO[bytes]) -> None:
            out[name] = f.read()
            f.close()

        def feed(f: IO[bytes]) -> None:
            try:
                if input:
                    f.write(input)
                f.close()
            except BrokenPipeError:
                pass

        threads = [threading.Thread(target=drain, args=(n, f), daemon=True)
                   for n, f in (("stdout", self.stdout), ("stderr", self.stderr)) if f is not None and not f.closed]
        if self.stdin is not None and not self.stdin.closed:
            threads.append(threading.Thread(target=feed, args=(self.stdin,), daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():  # the child (or a grandchild holding a pipe) is not done
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return out.get("stdout"), out.get("stderr")

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        for f in (self.stdin, self.stdout, self.stderr):
            if f is not None:
                f.close()
        self.wait()


def _umask() -> int:
    """This process's umask, read without changing it (another thread may be making files)."""
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)


def _inherited() -> dict[str, Any]:
    """What a child exec'd from here would keep: resource limits, ignored signals, signal mask, CPU affinity."""
    rlimits = {name: resource.getrlimit(getattr(resource, name)) for name in dir(resource)
               if name.startswith("RLIMIT_")}
    ignored = [int(s) for s in signal.valid_signals()
               if s not in (signal.SIGKILL, signal.SIGSTOP) and signal.getsignal(s) == signal.SIG_IGN]
    return {"rlimits": rlimits, "ignored": ignored, "sigmask": sorted(int(s) for s in
                                                                      signal.pthread_sigmask(signal.SIG_BLOCK, [])),
            "affinity": sorted(os.sched_getaffinity(0))}


def _main_path(module: str) -> str:
    import importlib.util

    spec = importlib.util.find_spec(f"{module}.__main__")
    assert spec is not None and spec.origin is not None
    return spec.origin


def _as_user(argv: Sequence[str], user: tuple[int, int] | None) -> list[str]:
    """``argv`` run as ``user`` (uid, gid) with no other group, by ``setpriv``, for a plain subprocess."""
    if user is None:
        return list(argv)
    return ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups", "--", *argv]


def popen(argv: Sequence[str], **kw: Any) -> Proc | subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **kw)``, forked by the zygote where that is the same (see the module doc)."""
    env = dict(os.environ if kw.get("env") is None else kw["env"])
    cwd = os.path.abspath(kw.get("cwd") or os.getcwd())
    module = _forkable(argv, env, cwd, kw.get("user"))
    if module is None or set(kw) - {"stdin", "stdout", "stderr", "env", "cwd", "start_new_session", "user"}:
        return subprocess.Popen(_as_user(argv, kw.pop("user", None)), **kw)
    return Proc(argv, module=module, **kw)


def run(argv: Sequence[str], *, input: bytes | None = None, capture_output: bool = False,
        env: Mapping[str, str] | None = None, timeout: float | None = None, cwd: str | os.PathLike[str] | None = None,
        check: bool = False, stdout: Any = None, stderr: Any = None, user: tuple[int, int] | None = None,
        **kw: Any) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run``, forked by the zygote where that is the same (see the module doc). ``user``: (uid,
    gid) to run as, with no other group."""
    text = kw.pop("text", False)
    if kw:  # preexec_fn=...: left to subprocess
        return subprocess.run(_as_user(argv, user), input=input, capture_output=capture_output, env=env,
                              timeout=timeout, cwd=cwd, check=check, stdout=stdout, stderr=stderr, text=text, **kw)
    if text:  # as subprocess's text mode: the locale's encoding, universal newlines
        encoding = locale.getpreferredencoding(False)
        done = run(argv, input=None if input is None else input.encode(encoding), capture_output=capture_output,
                   env=env, timeout=timeout, cwd=cwd, check=check, stdout=stdout, stderr=stderr, user=user)
        done.stdout, done.stderr = (None if b is None else b.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")
                                    for b in (done.stdout, done.stderr))
        return done
    if capture_output:
        stdout = stderr = subprocess.PIPE
    extra = {} if user is None else {"user": user}
    with popen(argv, stdin=subprocess.PIPE if input is not None else None, stdout=stdout, stderr=stderr,
               env=env, cwd=cwd, **extra) as proc:
        try:
            out, err = proc.communicate(input, timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    done = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
    if check:
        done.check_returncode()
    return done


if __name__ == "__main__":
    job = _serve(sys.argv[1])
    if job is None:
        sys.exit(0)
    os._exit(_run_child(job))
