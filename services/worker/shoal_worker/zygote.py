"""The warm Python runner: a single-threaded process that forks one child per attempt.

Started by the worker as ``python -m shoal_worker.zygote FD`` where FD is its end of a
``SOCK_SEQPACKET`` socket pair. It imports Python's own start-up, this runtime and the
modules in ``SHOAL_PYTHON_PRELOAD`` once; afterwards a Python attempt costs a ``fork``
instead of an interpreter start-up (≈1 ms instead of ≈38 ms).

Protocol (every message one JSON object, one datagram):

* worker → zygote, on the control socket: a request ``{workdir, env_set, env_unset,
  script | function + args, outputs, code_path}`` (the environment as a difference from
  the zygote's own) carrying two file descriptors: the attempt's own socket (``conn``)
  and the write end of its output pipe. The zygote hands it to a spare child.
* zygote → worker, on ``conn``: ``{"pid": N}`` once forked, ``{"exit": CODE}`` once the
  child is reaped (128 + N for a signal, as the shell reports it).
* child → worker, on ``conn``: ``{"running": MONOTONIC}`` just before user code runs and
  ``{"result": CODE, "outputs": {...}, "error": TEXT}`` when it ends by itself. If the
  zygote dies while a child runs, the child still reports its own end, so the attempt
  is not lost; only a child that also dies abruptly (``os._exit``, a signal) during a
  zygote's death leaves its exit code unknown.

The child is a new session (its own process group, so the worker's stop and timeout
reach it and everything it starts), with its own cwd, environment, stdout/stderr and
``sys.argv``. User code never runs in the worker, nor in the zygote.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import inspect
import json
import os
import runpy
import selectors
import signal
import socket
import sys
import time
import traceback
from collections.abc import Mapping
from typing import Any

MAX_MESSAGE = 1024 * 1024
# Read from the environment at start (preloads, code path, the interpreter's own path),
# then removed, so the forked children start from a task's environment only.
START_ONLY = ("SHOAL_CODE_PATH", "SHOAL_PYTHON_PRELOAD", "PYTHONPATH", "PYTHONHOME")
DROP_VAR = "SHOAL_ZYGOTE_DROP"  # the names of START_ONLY to remove after the start
MAX_ERROR = 8 * 1024  # of a traceback kept in the failure event; the log has it whole


def _send(sock: socket.socket, msg: Mapping[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the worker went away: nobody to tell
        sock.send(json.dumps(msg, default=str).encode())


def exit_code_of(status: int) -> int:
    """A wait status as the shell reports it: the exit code, or 128 + signal number."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class FunctionNotFound(Exception):
    """The function task names a module or callable that is not there."""


def _resolve(function: str) -> Any:
    """``pkg.module:attr.path`` → the object; errors name what was not found."""
    module_name, _, attr_path = function.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise FunctionNotFound(f"function '{function}': cannot import module '{module_name}': "
                          f"{exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise FunctionNotFound(f"function '{function}': '{module_name}' has no attribute "
                              f"'{attr_path}'") from None
    if not callable(obj):
        raise FunctionNotFound(f"function '{function}': '{attr_path}' is not callable")
    return obj


def _call(function: str, args: Mapping[str, Any]) -> Any:
    fn = _resolve(function)
    result = fn(**args)
    if inspect.isawaitable(result):
        import asyncio

        async def wait() -> Any:
            return await result

        result = asyncio.run(wait())
    return result


def _outputs(result: Any, declared: list[str]) -> tuple[dict[str, str], str]:
    """Declared outputs from a returned mapping (values as var-pool text), and a note for
    the log when something else was returned."""
    if result is None:
        return {}, ""
    if not isinstance(result, Mapping):
        return {}, (f"note: the function returned a {type(result).__name__}; only a dict "
                    "gives outputs")
    out = {}
    for name in declared:
        if name in result:
            v = result[name]
            out[name] = v if isinstance(v, str) else json.dumps(v, default=str)
    return out, ""


def _user_traceback(exc: BaseException) -> str:
    """The traceback without the runner's own frames (they say nothing about the task)."""
    te = traceback.TracebackException.from_exception(exc)
    here = os.path.abspath(__file__)
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if os.path.abspath(f.filename) != here])
    return "".join(te.format())


def run_child(data: bytes, conn: socket.socket, out_fd: int) -> None:
    """In the forked child: become the attempt, run it, report, exit. Never returns."""
    code, error = 1, ""
    outputs: dict[str, str] = {}
    try:
        req = json.loads(data)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        os.close(devnull)
        workdir = req["workdir"]
        os.chdir(workdir)
        for key in req.get("env_unset", ()):
            os.environ.pop(key, None)
        os.environ.update(req.get("env_set", {}))
        extra = [p for p in req.get("code_path", []) if p]
        script = req.get("script")
        if script:
            extra.insert(0, os.path.dirname(script))
        sys.path[:0] = extra
        sys.argv = [script or req["function"]]
        # Fresh line-buffered text streams on the new fds, so output reaches the log as
        # it is written, as with `python -u`.
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace",  # noqa: SIM115
                          closefd=False)
        sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace",  # noqa: SIM115
                          closefd=False)
        _send(conn, {"running": time.monotonic(), "pid": os.getpid()})
        try:
            if script:
                runpy.run_path(script, run_name="__main__")
                code = 0
            else:
                result = _call(req["function"], req.get("args") or {})
                outputs, note = _outputs(result, list(req.get("outputs") or []))
                if note:
                    print(note, file=sys.stderr)
                code = 0
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code & 0xFF
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except FunctionNotFound as exc:
            error = str(exc)
            print(f"ERROR: {error}", file=sys.stderr)
            code = 1
        except BaseException as exc:  # noqa: BLE001 - any failure of user code fails it
            error = _user_traceback(exc)
            print(error, file=sys.stderr, end="")
            code = 1
        with contextlib.suppress(Exception):
            import threading

            threading._shutdown()  # type: ignore[attr-defined]  # as at interpreter exit
        with contextlib.suppress(Exception):
            import atexit

            atexit._run_exitfuncs()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - set-up failed: say so, never return to the loop
        error = "the warm Python runner could not start the attempt:\n" + traceback.format_exc()
        code = 1
    if len(error) > MAX_ERROR:
        error = "...\n" + error[-MAX_ERROR:]
    _send(conn, {"result": code, "outputs": outputs, "error": error})
    os._exit(code)


def _prefault() -> None:
    """In a spare, before it has work: touch what every attempt touches, so the copy-on-
    write page faults after fork (each one costly on a virtual machine) happen now and
    not between a request and user code."""
    gc.collect()
    json.loads(json.dumps({"env_set": {"K": "v" * 64}, "args": [1, 2.5, None, True]}))
    with open(os.devnull, "w", buffering=1, encoding="utf-8") as f:
        f.write("")


class Zygote:
    """Accepts requests on the control socket and hands each to a spare child: a child
    forked in advance that already left the zygote's session and waits for one request.
    A fork costs a millisecond or more on small machines; done ahead, it is not in the
    path from request to user code. A new spare is forked right after each hand-over."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.children: dict[int, socket.socket] = {}
        self.spare: tuple[int, socket.socket] | None = None
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def serve(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd fires
        self.selector.register(self.control, selectors.EVENT_READ, "control")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "child")
        self._fork_spare()
        _send(self.control, {"ready": os.getpid()})
        while True:
            for key, _ in self.selector.select():
                if key.data == "control":
                    if not self._accept():
                        return
                else:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self.wake_r, 512):
                            pass
            self._reap()

    def _fork_spare(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:
            try:
                ours.close()
                self._in_child()
                os.setsid()  # its own process group: a stop reaches it and all it starts
                _prefault()
                theirs.send(b"r")
                data, fds, _, _ = socket.recv_fds(theirs, MAX_MESSAGE, 2)
                theirs.close()
                if data and len(fds) == 2:
                    run_child(data, socket.socket(fileno=fds[0]), fds[1])
            finally:
                os._exit(0)  # the zygote went away before giving it work
        theirs.close()
        self.spare = (pid, ours)

    def _hand_over(self, data: bytes, fds: list[int]) -> int | None:
        """Give the request to the spare (forking one if there is none); its pid."""
        for _ in (1, 2):
            if self.spare is None:
                self._fork_spare()
            assert self.spare is not None
            pid, sock = self.spare
            self.spare = None
            try:
                ready = sock.recv(1)  # the spare has left our session
                if ready:
                    socket.send_fds(sock, [data], fds)
                    return pid
            except OSError:
                pass
            finally:
                sock.close()
        return None

    def _accept(self) -> bool:
        try:
            data, fds, _, _ = socket.recv_fds(self.control, MAX_MESSAGE, 2)
        except InterruptedError:
            return True
        except OSError:
            return False
        if not data:
            return False  # the worker closed its end: it is stopping (children go on)
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            return True
        conn = socket.socket(fileno=fds[0])
        pid = self._hand_over(data, fds)
        os.close(fds[1])
        if pid is None:
            _send(conn, {"refused": "could not fork a child"})
            conn.close()
        else:
            self.children[pid] = conn
            _send(conn, {"pid": pid})
        if self.spare is None:
            self._fork_spare()
        return True

    def _in_child(self) -> None:
        """Drop the zygote's own machinery in a fresh child."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self.selector.close()
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)
        self.control.close()
        for other in self.children.values():
            other.close()
        self.children.clear()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.spare is not None and self.spare[0] == pid:
                self.spare[1].close()
                self.spare = None  # a spare died waiting: fork another
                self._fork_spare()
            conn = self.children.pop(pid, None)
            if conn is not None:
                _send(conn, {"exit": exit_code_of(status)})
                conn.close()


def _preload() -> None:
    code_path = [p for p in os.environ.get("SHOAL_CODE_PATH", "").split(":") if p]
    sys.path[:0] = code_path
    import asyncio  # noqa: F401 - async def tasks need it; import it once here

    for name in filter(None, (m.strip() for m in
                              os.environ.get("SHOAL_PYTHON_PRELOAD", "").split(","))):
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a bad preload is reported, not fatal
            print(f"warm Python runner: could not preload {name!r}: {exc!r}", file=sys.stderr,
                  flush=True)
    for p in code_path:  # children put SHOAL_CODE_PATH first themselves
        with contextlib.suppress(ValueError):
            sys.path.remove(p)


def _become_subreaper() -> None:
    """Orphans of tasks (a background process whose task ended) become our children, so
    they are reaped at once and a stopped task's process group vanishes when it ends,
    whatever reaps orphans on this machine (Linux only; elsewhere nothing changes)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def main() -> None:
    fd = int(sys.argv[1])
    _become_subreaper()
    # Ctrl-C in a terminal reaches the whole foreground group: the worker decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=fd)
    _preload()
    for name in os.environ.pop(DROP_VAR, "").split(","):
        os.environ.pop(name, None)
    # What is imported now is shared by every child: keep the collector from walking
    # (and so copying) those pages in each child.
    gc.collect()
    gc.freeze()
    Zygote(control).serve()


if __name__ == "__main__":
    main()
