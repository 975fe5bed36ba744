"""Python function tasks and the SDK through real services (issue acceptance 1-3):
data flowing through function tasks, stop and os._exit in forked children, a SIGKILLed
zygote, and a workflow written with shoal.sdk applied by `shoal apply`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_task_types import run as start
from tests.e2e.test_task_types import task_log as log_of
from tests.e2e.test_task_types import tasks_by_name as by_task
from tests.support import JsonHandler, Stack, eventually, serving

pytestmark = pytest.mark.e2e

FLOW_TASKS = '''
import asyncio, os, subprocess, sys, time

def total(rows, answer):
    print(f"rows={rows!r} answer={answer!r}")
    return {"total": rows + answer}

async def doubled(total):
    await asyncio.sleep(0.05)
    return {"doubled": total * 2}

def refuse(reason):
    raise RuntimeError(f"refusing: {reason}")

def linger(pidfile):
    child = subprocess.Popen(["sleep", "120"])
    with open(pidfile, "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    time.sleep(120)

def leave(code):
    os._exit(code)

def steady(seconds):
    time.sleep(seconds)
    return {"done": True}

def fibo(n, x=0):
    def f(k):
        return k if k < 2 else f(k - 1) + f(k - 2)
    return {"value": f(n) + x}
'''

SDK_FILE = '''
from shoal.sdk import Workflow, python, shell

with Workflow("sdk-chain", params={"n": "10"}, description="written in Python") as wf:
    a = shell("a", "echo '${setValue(x=5)}'", outputs=["x"])
    b = python("b", function="flowtasks:fibo", args={"n": "${n}", "x": "${x}"},
               outputs=["value"], retries=1)
    c = shell("c", "echo value=${value}")
    a >> b >> c
'''

SDK_YAML = """
name: sdk-chain
description: written in Python
params: {n: "10"}
tasks:
  - {name: a, type: shell, command: "echo '${setValue(x=5)}'", outputs: [x]}
  - name: b
    type: python
    function: flowtasks:fibo
    args: {n: "${n}", x: "${x}"}
    outputs: [value]
    retries: 1
    depends_on: [a]
  - {name: c, type: shell, command: "echo value=${value}", depends_on: [b]}
"""


class _Answer(JsonHandler):
    def do_GET(self) -> None:
        self.reply(200, {"answer": 1})


@pytest.fixture
def answer() -> Iterator[str]:
    with serving(_Answer) as base:
        yield f"{base}/answer"


@pytest.fixture
def code(tmp_path: Path) -> Path:
    root = tmp_path / "code"
    root.mkdir()
    (root / "flowtasks.py").write_text(textwrap.dedent(FLOW_TASKS))
    return root


@pytest.fixture
async def pystack(bare_stack: Stack, code: Path) -> Stack:
    """The whole stack, with the code path on every service (the API checks modules)."""
    s = bare_stack
    s.start("api", SHOAL_CODE_PATH=str(code))
    await eventually(s._healthy, timeout=60, what="API /healthz")
    s.start("orchestrator")
    s.start("projector")
    s.start("worker", SHOAL_CODE_PATH=str(code))
    return s


async def test_function_tasks_take_shell_and_http_outputs_and_pass_theirs_on(
        pystack: Stack, answer: str):
    stack = pystack
    published = await stack.apply({"name": "py-flow", "tasks": [
        {"name": "extract", "command": "echo '${setValue(rows=42)}'", "outputs": ["rows"]},
        {"name": "ask", "type": "http", "url": answer, "outputs": {"answer": "$.answer"}},
        {"name": "sum", "type": "python", "function": "flowtasks:total",
         "args": {"rows": "${rows}", "answer": "${answer}"}, "outputs": ["total"],
         "depends_on": ["extract", "ask"]},
        {"name": "double", "type": "python", "function": "flowtasks:doubled",
         "args": {"total": "${total}"}, "outputs": ["doubled"], "depends_on": ["sum"]},
        {"name": "show", "command": "echo doubled=${doubled}", "depends_on": ["double"]}]})
    assert published["warnings"] == []
    iid = await start(stack, "py-flow")
    run = await stack.wait_run(iid)
    tasks = by_task(run)
    assert run["state"] == "succeeded", tasks
    assert tasks["sum"]["outputs"] == {"total": "43"}  # 42 (shell) + 1 (http), as numbers
    assert tasks["double"]["outputs"] == {"doubled": "86"}  # async def
    assert "rows=42 answer=1" in await log_of(stack, iid, "sum")
    assert "doubled=86" in await log_of(stack, iid, "show")
    dispatched = [e for e in await stack.events(iid) if e["type"] == "TaskDispatched"
                  and e["data"]["task"] == "sum"]
    assert dispatched[0]["data"]["spec"]["args"] == {"rows": 42, "answer": 1}


async def test_an_exception_fails_the_task_with_its_traceback_in_log_and_event(
        pystack: Stack):
    stack = pystack
    await stack.apply({"name": "py-refuse", "tasks": [
        {"name": "refuse", "type": "python", "function": "flowtasks:refuse",
         "args": {"reason": "bad day"}}]})
    iid = await start(stack, "py-refuse")
    run = await stack.wait_run(iid)
    assert run["state"] == "failed" and by_task(run)["refuse"]["exit_code"] == 1
    failed = [e for e in await stack.events(iid) if e["type"] == "TaskFailed"]
    assert "RuntimeError: refusing: bad day" in failed[0]["data"]["error"]
    assert "Traceback" in failed[0]["data"]["error"]
    text = await eventually(lambda: _log_with(stack, iid, "refuse", "RuntimeError"),
                            what="the traceback in the log")
    assert "flowtasks.py" in text


async def _log_with(stack: Stack, iid: str, task: str, needle: str) -> str | None:
    text = await log_of(stack, iid, task)
    return text if needle in text else None


async def test_unknown_functions_warn_at_publish_and_fail_naming_them(pystack: Stack):
    stack = pystack
    published = await stack.apply({"name": "py-missing", "tasks": [
        {"name": "m", "type": "python", "function": "nowhere.to_be:found"}]})
    assert [w["path"] for w in published["warnings"]] == ["tasks[0].function"]
    assert "nowhere.to_be" in published["warnings"][0]["message"]
    run = await stack.wait_run(await start(stack, "py-missing"))
    failed = [e for e in await stack.events(run["instance_id"]) if e["type"] == "TaskFailed"]
    assert "cannot import module 'nowhere.to_be'" in failed[0]["data"]["error"]


async def test_stop_kills_a_function_task_and_its_children(pystack: Stack, tmp_path: Path):
    stack = pystack
    pidfile = tmp_path / "linger.pids"
    await stack.apply({"name": "py-linger", "tasks": [
        {"name": "linger", "type": "python", "function": "flowtasks:linger",
         "args": {"pidfile": str(pidfile)}}]})
    iid = await start(stack, "py-linger")
    await eventually(lambda: _pids(pidfile), timeout=30, what="the task's pids")
    pids = await _pids(pidfile)
    assert pids is not None
    r = await stack.request("POST", f"/api/v1/runs/{iid}/stop")
    assert r.status_code == 202
    stopped_at = time.monotonic()
    await eventually(lambda: _all_gone(pids), timeout=10, interval=0.05,
                     what="the function and its child gone")
    print(f"stop request -> processes gone: {time.monotonic() - stopped_at:.2f}s")
    run = await stack.wait_run(iid, ("stopped",))
    assert by_task(run)["linger"]["state"] == "killed"


async def _pids(path: Path) -> list[int] | None:
    text = path.read_text() if path.exists() else ""
    return [int(p) for p in text.split()] if len(text.split()) == 2 else None


async def _all_gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        return False
    return True


async def test_os_exit_fails_only_that_attempt_with_its_code(pystack: Stack):
    stack = pystack
    await stack.apply({"name": "py-exit", "failure_strategy": "continue", "tasks": [
        {"name": "leave", "type": "python", "function": "flowtasks:leave",
         "args": {"code": 3}},
        {"name": "steady", "type": "python", "function": "flowtasks:steady",
         "args": {"seconds": 1.0}, "outputs": ["done"]}]})
    run = await stack.wait_run(await start(stack, "py-exit"))
    tasks = by_task(run)
    assert (tasks["leave"]["state"], tasks["leave"]["exit_code"]) == ("failed", 3)
    assert tasks["steady"]["state"] == "succeeded"
    assert tasks["steady"]["outputs"] == {"done": "true"}


def _zygote_of(worker_pid: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == worker_pid and b"shoal_worker.zygote" in cmdline:
            return int(entry.name)
    return None


async def test_a_sigkilled_zygote_loses_no_attempt(pystack: Stack):
    stack = pystack
    await stack.apply({"name": "py-zygote", "tasks": [
        *[{"name": f"s{i}", "type": "python", "function": "flowtasks:steady",
           "args": {"seconds": 2.0}, "outputs": ["done"]} for i in range(4)],
        {"name": "after", "type": "python", "function": "flowtasks:fibo",
         "args": {"n": 10}, "outputs": ["value"], "depends_on": [f"s{i}" for i in range(4)]}]})
    iid = await start(stack, "py-zygote")

    async def all_running() -> bool:
        run = await stack.run_state(iid)
        return bool(run) and sum(t["state"] == "running" for t in run["tasks"]) == 4
    await eventually(all_running, timeout=30, what="four function tasks running")
    worker = next(p for p in stack.processes if p.name == "worker")
    zygote = _zygote_of(worker.pid)
    assert zygote is not None, "the worker runs a warm Python runner"
    os.kill(zygote, signal.SIGKILL)
    run = await stack.wait_run(iid, timeout=60)
    tasks = by_task(run)
    assert run["state"] == "succeeded", [e["data"] for e in await stack.events(iid)
                                         if e["type"] in ("TaskFailed", "TaskKilled")]
    assert all(t["attempt"] == 1 for t in tasks.values()), "no attempt was lost and retried"
    assert tasks["after"]["outputs"] == {"value": "55"}
    new = _zygote_of(worker.pid)
    assert new not in (None, zygote), "a new zygote ran the task after the kill"
    assert worker.alive()


async def test_a_workflow_written_with_the_sdk_is_applied_by_shoal_apply_and_runs(
        pystack: Stack, tmp_path: Path, code: Path):
    stack = pystack
    path = tmp_path / "sdk_chain.py"
    path.write_text(textwrap.dedent(SDK_FILE))
    env = {**os.environ, "SHOAL_API_URL": stack.api, "SHOAL_API_TOKEN": stack.tokens["admin"]}
    done = subprocess.run([sys.executable, "-m", "shoal.cli", "apply", str(path)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "sdk-chain version 1 (published)" in done.stdout
    r = await stack.request("GET", "/api/v1/workflows/sdk-chain")
    assert r.status_code == 200
    # The SDK's dict is the YAML's: publishing the YAML changes nothing.
    r = await stack.request("POST", "/api/v1/workflows", content=SDK_YAML,
                            headers={"content-type": "application/yaml"})
    assert r.status_code == 200 and r.json() == {"name": "sdk-chain", "version": 1,
                                                 "changed": False, "warnings": []}
    sys.path.insert(0, str(tmp_path))
    try:
        import sdk_chain  # the same file, imported here
    finally:
        sys.path.pop(0)
    assert sdk_chain.wf.to_dict() == yaml.safe_load(SDK_YAML)
    run = await stack.wait_run(await start(stack, "sdk-chain"))
    assert run["state"] == "succeeded"
    assert by_task(run)["b"]["outputs"] == {"value": "60"}  # fibo(10) + x
