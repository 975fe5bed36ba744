"""Runs one task attempt as a process group in its own working directory."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from shoal.core.params import OutputParser
from shoal.core.render import RenderError
from shoal.infra import metrics
from shoal_worker.orphans import TaskGroups, die_with_parent
from shoal_worker.prepare import (
    Prepared,
    SecretMissing,
    Secrets,
    prepare,
    task_env,
)
from shoal_worker.warm import Child, WarmPython, ZygoteGone

LineSink = Callable[[list[tuple[str, str]]], Awaitable[None]]
Say = Callable[[str], Awaitable[None]]
# An sql or http attempt run in the worker's loop: given ``say`` and the rendered spec.
InLoop = Callable[[Say, dict[str, Any]], Awaitable["Outcome"]]
# Awaited before anything of the attempt runs: None to go ahead, else why it must not.
Gate = Callable[[], Awaitable[str | None]]


@dataclass(slots=True)
class Outcome:
    exit_code: int | None
    outputs: dict[str, str] = field(default_factory=dict)
    error: str = ""
    killed: bool = False
    refused: bool = False  # never ran: its claim was refused


def exit_code_of(returncode: int) -> int:
    """Map asyncio's negative 'killed by signal N' to the shell's 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


EXIT_FILE = ".shoal-exit"  # in the attempt's working directory: its shell's exit status

KILLED_CODES = {128 + signal.SIGKILL: "SIGKILL", 128 + signal.SIGTERM: "SIGTERM"}


def describe_exit(code: int) -> str:
    """How DolphinScheduler reads a shell exit code (0 ok, 137 killed, 127 not found)."""
    if code in KILLED_CODES:
        return f"killed by {KILLED_CODES[code]} (exit code {code})"
    if code == 127:
        return "command not found (exit code 127)"
    return f"exit code {code}"


class Attempt:
    """One running attempt; ``kill`` ends its whole process group."""

    def __init__(self, dispatch: dict[str, Any], data_dir: Path, base_env: dict[str, str],
                 on_lines: LineSink | None = None, keep_workdir: str = "failed",
                 run_as: str | None = None,
                 in_loop: InLoop | None = None,
                 warm: WarmPython | None = None, code_path: tuple[str, ...] = (),
                 received_at: float | None = None, groups: TaskGroups | None = None,
                 gate: Gate | None = None) -> None:
        self.dispatch = dispatch
        self.workdir = (data_dir / "work" / dispatch["instance_id"] / dispatch["task"]
                        / str(dispatch["attempt"]))
        self.base_env = base_env
        self.proc: asyncio.subprocess.Process | None = None
        self.killed_for: str | None = None
        self.on_lines = on_lines
        self.keep_workdir = keep_workdir
        self.run_as = run_as
        self.in_loop = in_loop
        self._inner: asyncio.Future[Outcome] | None = None
        self.warm = warm
        self.code_path = code_path
        self.received_at = time.monotonic() if received_at is None else received_at
        self.pid: int | None = None  # leader of the attempt's process group once started
        self.prepared = Prepared(dispatch)  # rendered at run time, with its secrets
        self.groups = groups  # the worker's task groups, killed if the worker dies
        self.gate = gate
        self.cleared = gate is None  # past its gate: it runs (or ran) here

    async def run(self) -> Outcome:
        """Render the dispatch (secrets resolved), run it, and keep its secrets out of what
        leaves the attempt: log lines, outputs and error read ``***`` in their place."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self.prepared = prepare(self.dispatch, Secrets(self.base_env))
        except (SecretMissing, RenderError) as exc:
            refused = await self._through_gate()
            if refused is not None:
                return refused
            error = f"could not start: {exc}"
            if self.on_lines is not None:
                await self.on_lines([(datetime.now(UTC).isoformat(), f"ERROR: {error}")])
            return self._finish(Outcome(exit_code=None, error=error))
        prepared = self.prepared
        if prepared.secrets and self.on_lines is not None:
            ship = self.on_lines

            async def masked(lines: list[tuple[str, str]]) -> None:
                await ship([(stamp, prepared.mask(ln)) for stamp, ln in lines])
            self.on_lines = masked
        refused = await self._through_gate()
        if refused is not None:
            return refused
        if self.killed_for is not None:  # killed while it waited: never start it
            return self._finish(Outcome(exit_code=None, error=f"killed ({self.killed_for})",
                                        killed=True))
        outcome = await self._run()
        if prepared.secrets:
            outcome.error = prepared.mask(outcome.error)
            outcome.outputs = {k: prepared.mask(v) for k, v in outcome.outputs.items()}
        return outcome

    async def _through_gate(self) -> Outcome | None:
        """Wait at the gate (the worker's claim); the outcome of a refused attempt."""
        if self.gate is not None:
            refusal = await self.gate()
            if refusal is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
                return Outcome(exit_code=None, error=refusal, refused=True)
        self.cleared = True
        return None

    async def _run(self) -> Outcome:
        d = self.prepared.dispatch
        if self.in_loop is not None:
            return await self._run_in_loop(self.in_loop)
        env = self._env()
        if d["task_type"] == "python" and (self.warm is not None or
                                           "function" in (d.get("spec") or {})):
            return await self._run_warm(env)
        if d["task_type"] == "python":
            script, argv = self.workdir / "task.py", [sys.executable]
        else:
            script, argv = self.workdir / "task.sh", ["bash"]
            env = {**env, "BASH_ENV": str(self._exit_hook())}
            if self.groups is not None and not d.get("outputs"):
                # Before the process exists (see TaskGroups.expect); not one with
                # outputs: they are parsed from its output, which dies with the worker.
                self.groups.expect(d["dispatch_id"], {
                    "instance_id": d["instance_id"], "task": d["task"],
                    "attempt": d["attempt"], "exit": str(self.workdir / EXIT_FILE)})
        script.write_text(d["command"])
        log_path = self.workdir / "task.log"
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, str(script), cwd=self.workdir, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # own process group: kill reaches every child
                user=self.run_as,
                # Never outlive the worker (see shoal_worker.orphans).
                preexec_fn=functools.partial(die_with_parent, os.getpid()),
            )
        except (OSError, ValueError, KeyError) as exc:  # KeyError/ValueError: unknown user
            return Outcome(exit_code=None, error=f"could not start: {exc}")
        self._started(self.proc.pid)
        if self.killed_for:  # a kill that came while the process was being started
            self.signal(signal.SIGKILL)
        assert self.proc.stdout is not None
        parser = OutputParser(d.get("outputs", []))
        with log_path.open("wb") as log:
            reader = asyncio.create_task(_copy_output(self.proc.stdout, log, self.on_lines,
                                                      parser, self._mask()))
            code = exit_code_of(await self.proc.wait())
            await _settle(reader)
        return await self._conclude(code, parser)

    def _mask(self) -> Callable[[str], str] | None:
        return self.prepared.mask if self.prepared.secrets else None

    def _exit_hook(self) -> Path:
        """A file bash sources before the task's script (``BASH_ENV``): it unsets
        BASH_ENV (shells the task starts do not read it) and sets an EXIT trap that writes
        the shell's exit status to :data:`EXIT_FILE`. A worker killed after the task ended
        but before it saw the end leaves that file for the next worker on the machine,
        which reports the end (see ``shoal_worker.orphans``). A script that replaces its
        shell (``exec``) or sets its own EXIT trap writes none: its attempt is retried."""
        hook: Path = self.workdir / ".shoal-exit.sh"
        record = "echo $? > " + shlex.quote(str(self.workdir / EXIT_FILE))
        hook.write_text(f"unset BASH_ENV\ntrap {shlex.quote(record)} EXIT\n")
        return hook

    def _started(self, pid: int) -> None:
        self.pid = pid
        if self.groups is not None:
            self.groups.add(pid, self.dispatch["dispatch_id"])

    def _env(self) -> dict[str, str]:
        """The task's environment: an allow-list of the worker's (see prepare.task_env)."""
        d = self.prepared.dispatch
        return task_env(self.base_env, d.get("env", {}), {
            "SHOAL_INSTANCE_ID": d["instance_id"], "SHOAL_WORKFLOW": d.get("workflow", ""),
            "SHOAL_TASK": d["task"], "SHOAL_ATTEMPT": str(d["attempt"]),
            "SHOAL_DISPATCH_ID": d["dispatch_id"],
            "SHOAL_SCHEDULE_TIME": d.get("schedule_time") or ""})

    async def _run_warm(self, env: dict[str, str]) -> Outcome:
        """A Python attempt forked from the warm runner: a script, or a function call."""
        d = self.prepared.dispatch
        spec = d.get("spec") or {}
        if self.warm is None:
            return Outcome(exit_code=None, error="could not start: function tasks need the "
                                                 "warm Python runner")
        base = self.warm.env
        request: dict[str, Any] = {"workdir": str(self.workdir),
                                   # Only what differs from the runner's own environment.
                                   "env_set": {k: v for k, v in env.items()
                                               if base.get(k) != v},
                                   "env_unset": [k for k in base if k not in env],
                                   "outputs": list(d.get("outputs", [])),
                                   "code_path": list(self.code_path)}
        if "function" in spec:
            request |= {"function": spec["function"], "args": spec.get("args") or {}}
        else:
            script = self.workdir / "task.py"
            script.write_text(d["command"])
            request["script"] = str(script)
        read_fd, write_fd = os.pipe()
        try:
            child = await self.warm.spawn(request, write_fd)
        except ZygoteGone as exc:
            os.close(read_fd)
            return Outcome(exit_code=None, error=f"could not start: {exc}")
        finally:
            os.close(write_fd)
        self._started(child.pid)
        if self.killed_for:  # a kill that came while the child was being forked
            self.signal(signal.SIGKILL)
        loop = asyncio.get_running_loop()
        stream = asyncio.StreamReader(limit=_CHUNK * 4)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(read_fd, "rb", 0))
        parser = OutputParser(d.get("outputs", []))
        try:
            with (self.workdir / "task.log").open("wb") as log:
                reader = asyncio.create_task(_copy_output(stream, log, self.on_lines, parser,
                                                          self._mask()))
                await child.wait()
                self._record_start(child)
                await _settle(reader)
        finally:
            transport.close()
        result = child.result or {}
        parser.outputs.update(result.get("outputs") or {})
        if child.code is None:
            return self._finish(Outcome(
                exit_code=None, outputs=parser.outputs,
                error="exit code unknown: the task ended while the warm Python runner was "
                      "down"))
        return await self._conclude(child.code, parser, str(result.get("error") or ""))

    def _record_start(self, child: Child) -> None:
        if child.running_at is not None:
            metrics.PYTHON_START.observe(max(child.running_at - self.received_at, 0.0))

    async def _conclude(self, code: int, parser: OutputParser, error: str = "") -> Outcome:
        """The outcome of an ended process: killed, failed (with ``error`` or what the
        exit code means) or succeeded with its outputs."""
        if self.killed_for:
            return self._finish(Outcome(exit_code=code, error=f"killed ({self.killed_for})",
                                        killed=True))
        if code == 0 and parser.errors:
            error = "; ".join(parser.errors)
            if self.on_lines is not None:
                await self.on_lines([(datetime.now(UTC).isoformat(), f"ERROR: {error}")])
            return self._finish(Outcome(exit_code=1, outputs=parser.outputs, error=error))
        return self._finish(Outcome(exit_code=code, outputs=parser.outputs,
                                    error="" if code == 0 else error or describe_exit(code)))

    def _finish(self, outcome: Outcome) -> Outcome:
        """Keep or remove the working directory as configured (failed: keep on failure)."""
        keep = {"always": True, "never": False}.get(self.keep_workdir, outcome.exit_code != 0)
        if not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return outcome

    async def _run_in_loop(self, runner: InLoop) -> Outcome:
        """An sql/http attempt: a coroutine in this process, logged like a process's output
        (into task.log and shipped), killed by cancelling it."""
        with (self.workdir / "task.log").open("wb") as log:
            mask = self._mask()

            async def say(text: str) -> None:
                lines = (mask(text) if mask else text).split("\n")
                log.write(("\n".join(lines) + "\n").encode())
                if self.on_lines is not None:
                    stamp = datetime.now(UTC).isoformat()
                    await self.on_lines([(stamp, ln) for ln in lines])

            if self.killed_for is not None:  # killed before it began: never run it
                await say(f"killed ({self.killed_for})")
                return self._finish(Outcome(exit_code=None, error=f"killed ({self.killed_for})",
                                            killed=True))
            spec = dict(self.prepared.dispatch.get("spec") or {})
            self._inner = asyncio.ensure_future(runner(say, spec))
            try:
                outcome = await asyncio.shield(self._inner)
            except asyncio.CancelledError:
                if self.killed_for is None or not self._inner.cancelled():
                    self._inner.cancel()  # the worker itself is stopping
                    raise
                outcome = Outcome(exit_code=None, error=f"killed ({self.killed_for})",
                                  killed=True)
                await say(f"killed ({self.killed_for})")
            except Exception as exc:  # noqa: BLE001 - reported as the attempt's failure
                outcome = Outcome(exit_code=None, error=f"{type(exc).__name__}: {exc}")
                await say(f"ERROR: {outcome.error}")
        return self._finish(outcome)

    def signal(self, sig: int) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    async def kill(self, reason: str, grace: float) -> None:
        """SIGTERM the whole process group, SIGKILL whatever is left after ``grace``; an
        in-loop attempt is cancelled."""
        self.killed_for = reason
        if self._inner is not None:
            self._inner.cancel()
            return
        self.signal(signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + grace
        # A process group's end has no event to wait on: poll it.
        while asyncio.get_running_loop().time() < deadline and self._group_alive():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        self.signal(signal.SIGKILL)

    def _group_alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            os.killpg(self.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True


async def _settle(reader: asyncio.Task[None]) -> None:
    """A background child may keep the output pipe open after the task's main process
    ended; read what it wrote for a moment, then stop waiting for it."""
    done, _ = await asyncio.wait({reader}, timeout=2.0)
    if not done:
        reader.cancel()


_CHUNK = 64 * 1024
_MAX_LINE = 1024 * 1024  # a longer "line" is cut; setValue markers are short


async def _copy_output(stream: asyncio.StreamReader, log: BinaryIO,
                       on_lines: LineSink | None, parser: OutputParser,
                       mask: Callable[[str], str] | None = None) -> None:
    """Copy the process output to ``log`` and ``on_lines``, feeding ``parser`` each line.

    Reads chunks rather than lines so a line of any length cannot break the reader; every
    line is stamped with the time its chunk was read. With ``mask`` (an attempt with
    secrets), the log file gets whole masked lines instead of raw chunks, so a secret
    split across two reads is still found.
    """
    pending = b""
    while chunk := await stream.read(_CHUNK):
        if mask is None:
            log.write(chunk)
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if len(pending) > _MAX_LINE:
            lines.append(pending)
            pending = b""
        text = [ln.decode("utf-8", "replace") for ln in lines]
        for ln in text:
            parser.feed(ln)
        if mask is not None:
            text = [mask(ln) for ln in text]
            log.write("".join(ln + "\n" for ln in text).encode())
        if on_lines is not None and text:
            stamp = datetime.now(UTC).isoformat()
            await on_lines([(stamp, ln) for ln in text])
    if pending:
        last = pending.decode("utf-8", "replace")
        parser.feed(last)
        if mask is not None:
            last = mask(last)
            log.write(last.encode())
        if on_lines is not None:
            await on_lines([(datetime.now(UTC).isoformat(), last)])
