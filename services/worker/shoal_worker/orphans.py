"""No task outlives its worker.

Each attempt runs as its own process group. Three layers make sure none is left running
when its worker dies, however it dies (SIGKILL, OOM killer, a crash):

1. The shell attempt's leader asks the kernel for SIGKILL when the worker dies
   (``PR_SET_PDEATHSIG``, set in the child between fork and exec: ``die_with_parent``).
2. A guard process, started with the worker in its own session, holds the list of the
   worker's task groups through a pipe. When the pipe closes (the worker is gone) it
   SIGKILLs every group still listed: the whole group, so what the task started dies
   too, and warm Python children (whose parent is the zygote) as well.
3. The same list is kept in a file under ``SHOAL_DATA_DIR/task-groups/``. A worker
   starting on the machine kills the groups listed by every predecessor that is no longer
   alive (a guard killed with its worker, a machine-wide kill) and removes its file.

The same file journals each attempt's end report from the moment the worker saw its
process end until the broker acknowledged the report; a shell attempt's own exit status
is also in its working directory the moment its shell exits (``executor.EXIT_FILE``), for
an end the worker did not see yet. A worker killed in between leaves it there; the next
worker starting on the machine adopts it and sends it (the report keeps its message id and
the dead worker's id, so the orchestrator takes it as the holder's, once): the attempt
counts as finished instead of being retried, and its side effect happens once. Written
without fsync: it covers the death of the worker process; a machine that goes down takes
the attempts' leases with it, and those are retried.

A group is killed only while it is verifiably the task's: its leader is alive with the
start time recorded at spawn, or (leader gone) a member still carries the attempt's
``SHOAL_DISPATCH_ID`` in its environment. An unrelated process that reused a pid is never
signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
# (an ended attempt: instance_id, task, attempt, dispatch_id, worker_id; its exit status)
# -> its end report as (message id, key, value).
Compose = Callable[[dict[str, Any], int], "tuple[str, str, str] | None"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In a forked child before exec: be SIGKILLed when ``parent`` (the worker) dies.
    If the worker already died before this ran, exit at once."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(137)


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields follow the last ')'.
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[19])


def _pgid_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[2])


def _carries(pid: int, dispatch_id: str) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"SHOAL_DISPATCH_ID={dispatch_id}".encode() in env.split(b"\0")


def is_task_group(pgid: int, leader_start: int | None, dispatch_id: str) -> bool:
    """Is process group ``pgid`` still the task's (see the module docstring)?"""
    now = start_time(pgid)
    if now is not None:
        return leader_start is not None and now == leader_start
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _pgid_of(int(entry.name)) == pgid and \
                _carries(int(entry.name), dispatch_id):
            return True
    return False


def kill_group(pgid: int, leader_start: int | None, dispatch_id: str) -> bool:
    """SIGKILL the group if it is verifiably the task's; True if it was signalled."""
    if not is_task_group(pgid, leader_start, dispatch_id):
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class TaskGroups:
    """The worker's list of running task groups: in its guard process and on disk."""

    def __init__(self, data_dir: Path, worker_id: str, compose: Compose | None = None) -> None:
        self.dir = data_dir / "task-groups"
        self.worker_id = worker_id
        self.compose = compose
        self.path = self.dir / f"{os.getpid()}.json"
        self.groups: dict[int, tuple[int | None, str]] = {}
        # Attempts starting or running here: how to report one's end (dispatch id ->).
        self.attempts: dict[str, dict[str, Any]] = {}
        self.guard: subprocess.Popen[bytes] | None = None
        # End reports not yet acknowledged by the broker: message id -> (key, value).
        self.pending: dict[str, tuple[str, str]] = {}

    def start(self) -> int:
        """Kill what dead predecessors left and adopt their unsent end reports (in
        ``pending``), then start the guard; the groups killed."""
        self.dir.mkdir(parents=True, exist_ok=True)
        killed = reap_predecessors(self.dir, self.pending, self.compose)
        self._save()
        if killed:
            log.warning("killed %d task process groups left by a worker that died here",
                        killed)
        self.guard = subprocess.Popen(
            [sys.executable, "-m", "shoal_worker.orphans"], stdin=subprocess.PIPE,
            start_new_session=True, close_fds=True)
        return killed

    def expect(self, dispatch_id: str, ended: dict[str, Any]) -> None:
        """An attempt about to start (before its process exists: under load the process
        may end before the worker records its group) and how to report its end."""
        self.attempts[dispatch_id] = ended
        self._save()

    def add(self, pgid: int, dispatch_id: str) -> None:
        leader = start_time(pgid)
        self.groups[pgid] = (leader, dispatch_id)
        self._tell(f"+ {pgid} {leader if leader is not None else '-'} {dispatch_id}\n")
        self._save()

    def remove(self, pgid: int | None, dispatch_id: str | None = None) -> None:
        if dispatch_id is not None and self.attempts.pop(dispatch_id, None) is not None \
                and (pgid is None or pgid not in self.groups):
            self._save()
        if pgid is None or pgid not in self.groups:
            return
        del self.groups[pgid]
        self._tell(f"- {pgid}\n")
        self._save()

    def finish(self, pgid: int | None, dispatch_id: str, message_id: str, key: bytes,
               value: bytes) -> None:
        """The attempt's process ended: its group is gone, its end report is journaled
        until ``reported``."""
        if pgid is not None and self.groups.pop(pgid, None) is not None:
            self._tell(f"- {pgid}\n")
        self.attempts.pop(dispatch_id, None)
        self.pending[message_id] = (key.decode(), value.decode())
        self._save()

    def adopt(self) -> dict[str, tuple[str, str]]:
        """The unsent end reports of workers sharing this directory that died since (a
        worker checks now and then, so a sibling sends them without waiting for a
        successor to start); they are journaled here until reported."""
        adopted: dict[str, tuple[str, str]] = {}
        reap_predecessors(self.dir, adopted, self.compose)
        adopted = {m: r for m, r in adopted.items() if m not in self.pending}
        if adopted:
            self.pending.update(adopted)
            self._save()
        return adopted

    def reported(self, message_id: str) -> None:
        if self.pending.pop(message_id, None) is not None:
            self._save()

    def close(self) -> None:
        """A clean stop: nothing left to guard."""
        if self.guard is not None and self.guard.stdin is not None:
            self.groups.clear()
            self._tell("clear\n")
            with contextlib.suppress(OSError):
                self.guard.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.guard.wait(5)
        with contextlib.suppress(OSError):
            self.path.unlink()

    def _tell(self, line: str) -> None:
        if self.guard is None or self.guard.stdin is None:
            return
        try:
            self.guard.stdin.write(line.encode())
            self.guard.stdin.flush()
        except OSError as exc:  # the guard died: the file still covers a successor
            log.warning("task group guard gone: %r", exc)

    def _save(self) -> None:
        data = {"pid": os.getpid(), "start": start_time(os.getpid()),
                "worker_id": self.worker_id,
                "groups": [[g, s, d] for g, (s, d) in self.groups.items()],
                "attempts": [[d, e] for d, e in self.attempts.items()],
                "pending": [[m, k, v] for m, (k, v) in self.pending.items()]}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.path)


def reap_predecessors(directory: Path, adopt: dict[str, tuple[str, str]] | None = None,
                      compose: Compose | None = None) -> int:
    """Kill the task groups listed by workers no longer alive; the groups killed. Their
    end reports not yet sent go into ``adopt``: those journaled, and (``compose``) those
    of shell attempts that ended (their exit status written) before the worker saw it."""
    killed = 0
    for f in directory.glob("*.json"):
        try:
            data = json.loads(f.read_text())
            pid, started = int(data["pid"]), data.get("start")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid == os.getpid() or (start_time(pid) is not None and start_time(pid) == started):
            continue  # that worker is alive (another worker sharing the data directory)
        for dispatch_id, ended in data.get("attempts", []):
            if adopt is not None and compose is not None and isinstance(ended, dict):
                report = _ended(ended, str(dispatch_id), str(data.get("worker_id")), compose)
                if report is not None:
                    adopt[report[0]] = (report[1], report[2])
        for pgid, leader, dispatch_id in data.get("groups", []):
            if kill_group(int(pgid), leader, str(dispatch_id)):
                killed += 1
                log.warning("killed task group %s (dispatch %s) left by worker %s",
                            pgid, dispatch_id, data.get("worker_id"))
        if adopt is not None:
            for message_id, key, value in data.get("pending", []):
                adopt[str(message_id)] = (str(key), str(value))
        with contextlib.suppress(OSError):
            f.unlink()
    return killed


def _ended(ended: dict[str, Any], dispatch_id: str, worker_id: str,
           compose: Compose) -> tuple[str, str, str] | None:
    """The end report of a listed attempt whose shell wrote its exit status, or None."""
    try:
        code = int(Path(str(ended["exit"])).read_text().strip())
    except (OSError, ValueError, KeyError):
        return None  # still running when its worker died, or killed: the lease decides
    return compose({**ended, "dispatch_id": dispatch_id, "worker_id": worker_id}, code)


def _guard() -> None:
    """The guard: follow the list on stdin; at end of input, kill what is listed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the worker
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    groups: dict[int, tuple[int | None, str]] = {}
    for raw in sys.stdin.buffer:
        parts = raw.decode().split()
        if parts[:1] == ["+"] and len(parts) == 4:
            groups[int(parts[1])] = (None if parts[2] == "-" else int(parts[2]), parts[3])
        elif parts[:1] == ["-"] and len(parts) == 2:
            groups.pop(int(parts[1]), None)
        elif parts == ["clear"]:
            groups.clear()
    for pgid, (leader, dispatch_id) in groups.items():
        kill_group(pgid, leader, dispatch_id)


if __name__ == "__main__":
    _guard()
