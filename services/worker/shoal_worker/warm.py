"""The worker's side of the warm Python runner (see :mod:`shoal_worker.zygote`).

One zygote per worker, started lazily and restarted when it dies: an attempt that finds
it dead starts a new one and still runs. Children report their ends to the worker over
their own socket, so a zygote's death does not lose the attempts it had started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.infra import metrics
from shoal_worker.prepare import task_env
from shoal_worker.zygote import DROP_VAR, START_ONLY

log = logging.getLogger("shoal.worker.warm")

_MAX = 1024 * 1024
READY_TIMEOUT = 30.0


class ZygoteGone(Exception):
    """The zygote died before it forked the attempt's child (the attempt may be retried)."""


@dataclass(slots=True)
class Child:
    """One forked attempt: its pid (= its process group) and its report socket."""

    pid: int
    conn: socket.socket
    running_at: float | None = None   # time.monotonic() when user code started
    result: dict[str, Any] | None = None
    exit_code: int | None = None
    notes: list[str] = field(default_factory=list)

    async def wait(self) -> None:
        """Until the zygote reports the exit, or the socket closes (every holder gone)."""
        loop = asyncio.get_running_loop()
        try:
            while self.exit_code is None:
                data = await loop.sock_recv(self.conn, _MAX)
                if not data:
                    return
                self.take(json.loads(data))
        finally:
            self.conn.close()

    def take(self, msg: Mapping[str, Any]) -> None:
        if "running" in msg:
            self.running_at = float(msg["running"])
        elif "result" in msg:
            self.result = dict(msg)
        elif "exit" in msg:
            self.exit_code = int(msg["exit"])

    @property
    def code(self) -> int | None:
        """The exit code: the zygote's (from wait), else the child's own report."""
        if self.exit_code is not None:
            return self.exit_code
        return int(self.result["result"]) if self.result is not None else None


class WarmPython:
    """Starts, feeds and restarts the zygote of one worker."""

    def __init__(self, env: Mapping[str, str], run_as: str | None = None,
                 start_env: Mapping[str, str] | None = None) -> None:
        self.env = dict(env)  # what the zygote's os.environ is once started
        self.start_env = dict(start_env or {})  # read at its start, then dropped
        self.run_as = run_as
        self.proc: asyncio.subprocess.Process | None = None
        self.control: socket.socket | None = None
        self._lock = asyncio.Lock()
        self.started = 0  # how many zygotes this worker started (restarts + 1)

    @classmethod
    def for_worker(cls, worker_env: Mapping[str, str], run_as: str | None = None
                   ) -> WarmPython:
        """The runner of a worker whose environment is ``worker_env``: it starts from a
        task's environment (no credential of the worker, so neither its ``os.environ`` nor
        ``/proc/PID/environ`` shows one), plus what it reads at start and then drops
        (:data:`zygote.START_ONLY`)."""
        clean = task_env(worker_env, {}, {})
        start_only = {k: worker_env[k] for k in START_ONLY
                      if k in worker_env and k not in clean}
        start_only[DROP_VAR] = ",".join(start_only)
        return cls(clean, run_as=run_as, start_env=start_only)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    async def start(self) -> None:
        """Start the zygote now (otherwise the first Python attempt starts it)."""
        await self._ensure()

    async def _ensure(self) -> socket.socket:
        async with self._lock:
            if self.control is not None and self.proc is not None and \
                    self.proc.returncode is None:
                return self.control
            if self.proc is not None:
                log.warning("warm Python runner (pid %s) exited with %s; starting a new one",
                            self.proc.pid, self.proc.returncode)
            self._close_control()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ours.setblocking(False)
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "shoal_worker.zygote", str(theirs.fileno()),
                    pass_fds=(theirs.fileno(),), env={**self.env, **self.start_env},
                    user=self.run_as,
                    stdin=asyncio.subprocess.DEVNULL)
            finally:
                theirs.close()
            loop = asyncio.get_running_loop()
            try:
                ready = await asyncio.wait_for(loop.sock_recv(ours, _MAX), READY_TIMEOUT)
            except TimeoutError:
                ready = b""
            if not ready:
                ours.close()
                raise ZygoteGone("the warm Python runner did not start")
            self.control = ours
            self.started += 1
            metrics.ZYGOTE_STARTS.inc()
            log.info("warm Python runner started (pid %s)", self.proc.pid)
            return ours

    async def spawn(self, request: Mapping[str, Any], out_fd: int) -> Child:
        """Fork a child for ``request`` writing to ``out_fd``; a dead zygote is replaced
        (up to twice). The caller keeps ``out_fd`` and closes it after this returns."""
        for tries in (1, 2, 3):
            control = await self._ensure()
            used = self.proc
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ours.setblocking(False)
            try:
                try:
                    await self._send(control, json.dumps(request).encode(),
                                     [theirs.fileno(), out_fd])
                finally:
                    theirs.close()
                child = Child(pid=0, conn=ours)
                loop = asyncio.get_running_loop()
                while not child.pid:  # the child's own first word may come before ours
                    data = await loop.sock_recv(ours, _MAX)
                    msg = json.loads(data) if data else {}
                    if not msg or "refused" in msg:
                        raise ZygoteGone(str(msg.get("refused") or "the warm Python runner "
                                                                   "exited before it forked "
                                                                   "the attempt"))
                    child.pid = int(msg.get("pid") or 0)
                    child.take(msg)
            except (OSError, ZygoteGone) as exc:
                ours.close()
                await self._forget(used)
                if tries == 3:
                    raise ZygoteGone(str(exc)) from exc
                log.warning("warm Python runner lost (%s); restarting it", exc)
            else:
                return child
        raise AssertionError("unreachable")

    async def _send(self, control: socket.socket, data: bytes, fds: list[int]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                socket.send_fds(control, [data], fds)
            except BlockingIOError:
                # The zygote is busy forking; wait until the socket takes data again.
                fut: asyncio.Future[None] = loop.create_future()
                loop.add_writer(control.fileno(), fut.set_result, None)
                try:
                    await fut
                finally:
                    loop.remove_writer(control.fileno())
            else:
                return

    async def _forget(self, used: asyncio.subprocess.Process | None) -> None:
        """After a failed exchange with ``used``: make sure the next attempt starts a
        fresh zygote. A newer zygote (another attempt's failure already replaced it) is
        left alone: it may be forking a child for that attempt right now."""
        async with self._lock:
            proc = self.proc
            if proc is not used:
                return
            if proc is not None and proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5)
            self._close_control()

    def _close_control(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None

    async def close(self) -> None:
        """Closing the control socket ends the zygote; running children go on."""
        self._close_control()
        proc = self.proc
        if proc is not None and proc.returncode is None:
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
