"""No task outlives its worker: a worker SIGKILLed mid-task leaves no process behind, and
the side effects of its tasks happen once, in the retries on another worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e


def _processes_with(markers: list[bytes]) -> list[int]:
    """Pids whose environment holds any of ``markers`` (``NAME=value``)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(m in env for m in markers):
            out.append(int(entry.name))
    return out


# The first attempt runs long enough for the kill to come mid-task even on a loaded
# machine; the retries are quick.
NAP = 'sleep $(( SHOAL_ATTEMPT == 1 ? 8 : 1 ))'


def _workflow(name: str, effects: Path) -> dict:
    shell = [{"name": f"sh{i}", "command": f"{NAP}; echo sh{i} >> {effects}",
              "retries": 2, "retry_interval": 1} for i in range(4)]
    # Python attempts are forked by the warm runner (a different parent than the worker).
    python = [{"name": f"py{i}", "type": "python", "retries": 2, "retry_interval": 1,
               "script": "import os, time\n"
                         "time.sleep(8 if os.environ['SHOAL_ATTEMPT'] == '1' else 1)\n"
                         f"open({str(effects)!r}, 'a').write('py{i}\\n')\n"}
              for i in range(2)]
    return {"name": name, "tasks": shell + python}


async def test_a_sigkilled_workers_tasks_die_with_it_and_run_once_in_the_retry(
        stack: Stack, tmp_path: Path):
    effects = tmp_path / "effects.txt"
    await stack.apply(_workflow("orphans", effects))
    victim = next(p for p in stack.processes if p.name == "worker")
    iid = (await stack.request("POST", "/api/v1/workflows/orphans/runs", json={})).json()[
        "instance_id"]

    async def all_running() -> bool:
        run = await stack.run_state(iid)
        return bool(run) and sum(t["state"] == "running" for t in run["tasks"]) == 6
    await eventually(all_running, timeout=60, what="the six tasks running")
    t0 = time.monotonic()
    first = [e["data"]["dispatch_id"] for e in await stack.events(iid)
             if e["type"] == "TaskDispatched"]
    markers = [f"SHOAL_DISPATCH_ID={d}".encode() for d in first]
    # "running" is the claim, sent before a process is spawned: wait for the processes.
    await eventually(lambda: asyncio.sleep(0, bool(_processes_with(markers))), timeout=30,
                     what="the tasks' processes visible before the kill")
    await asyncio.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))  # mid-task: 2 s of 8
    assert not effects.exists()
    victim.kill9()
    left: list[int] = []
    try:
        async def none_left() -> bool:
            left[:] = _processes_with(markers)
            return not left
        # Well before the tasks would have ended by themselves (6 s later).
        await eventually(none_left, timeout=3, what="no process of the killed worker left")
        stack.start("worker")
        run = await stack.wait_run(iid, timeout=120)
        assert run["state"] == "succeeded", run
        lines = sorted(effects.read_text().split())
        assert lines == sorted([f"sh{i}" for i in range(4)] + ["py0", "py1"]), lines
    finally:
        for pid in left:  # never leave the orphans of a failed run behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_a_worker_starting_kills_the_task_groups_a_dead_predecessor_left(
        bare_stack: Stack, tmp_path: Path):
    """The guard is killed too (say, the whole machine's processes of that user): the
    next worker on the machine finds the list on disk and kills what is left of it."""
    stack = bare_stack
    stack.start("api")
    await eventually(stack._healthy, timeout=60, what="API up")
    stack.start("orchestrator")
    stack.start("projector")
    first = stack.start("worker")
    effects = tmp_path / "effects.txt"
    await stack.apply({"name": "leftover", "tasks": [
        {"name": "t", "command": f"{NAP}; echo once >> {effects}", "retries": 2,
         "retry_interval": 1}]})
    iid = (await stack.request("POST", "/api/v1/workflows/leftover/runs", json={})).json()[
        "instance_id"]

    async def running() -> bool:
        run = await stack.run_state(iid)
        return bool(run) and run["tasks"] and run["tasks"][0]["state"] == "running"
    await eventually(running, timeout=60, what="the task running")
    dispatch = next(e["data"]["dispatch_id"] for e in await stack.events(iid)
                    if e["type"] == "TaskDispatched")
    marker = [f"SHOAL_DISPATCH_ID={dispatch}".encode()]
    # "running" is the claim, sent before the process is spawned: wait for the shell and
    # its `sleep` (killed before the shell forks it, nothing would outlive the worker).
    await eventually(lambda: asyncio.sleep(0, len(_processes_with(marker)) >= 2),
                     timeout=30, what="the task's shell and its sleep started")
    # The worker's guard: its child running shoal_worker.orphans (the worker's own
    # environment block shows its SHOAL_* values masked, so look it up by parent).
    guard = [p for p in _children_of(first.pid)
             if b"shoal_worker.orphans" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(guard) == 1
    os.kill(guard[0], signal.SIGKILL)   # the guard first, then the worker
    assert not effects.exists()
    first.kill9()
    # The shell's leader died with the worker (parent-death signal); its `sleep` is left.
    survivors = _processes_with(marker)
    try:
        assert survivors, "a group member outlives the worker without its guard"
        stack.start("worker")

        async def none_left() -> bool:
            return not _processes_with(marker)
        await eventually(none_left, timeout=30, what="the next worker killing the leftovers")
        run = await stack.wait_run(iid, timeout=120)
        assert run["state"] == "succeeded"
        assert effects.read_text().split() == ["once"], (run, [
            (e["type"], e["data"].get("attempt"), e["data"].get("worker_id"))
            for e in await stack.events(iid)])
    finally:
        for pid in _processes_with(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _children_of(parent: int) -> list[int]:
    """Live processes whose parent is ``parent``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            out.append(int(d.name))
    return out
