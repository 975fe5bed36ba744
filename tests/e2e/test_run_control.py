"""Run control and policies end to end: real services, broker, Postgres and processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers signal 0 until reaped; it runs nothing.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


async def start(stack: Stack, workflow: str, **body) -> str:
    r = await stack.request("POST", f"/api/v1/workflows/{workflow}/runs", json=body)
    assert r.status_code == 202, r.text
    return r.json()["instance_id"]


async def task_state(stack: Stack, iid: str, task: str, state: str) -> dict | None:
    run = await stack.run_state(iid)
    if not run:
        return None
    rows = [t for t in run["tasks"] if t["task"] == task]
    return rows[-1] if rows and rows[-1]["state"] == state else None


async def wait_task(stack: Stack, iid: str, task: str, state: str, timeout: float = 30):
    return await eventually(lambda: task_state(stack, iid, task, state), timeout=timeout,
                            what=f"{task} {state}")


async def control(stack: Stack, iid: str, action: str, expect: int = 202) -> dict:
    r = await stack.request("POST", f"/api/v1/runs/{iid}/{action}")
    assert r.status_code == expect, r.text
    return r.json()


async def test_stop_kills_the_whole_process_group_and_ends_stopped(stack: Stack, tmp_path):
    await stack.apply({"name": "long", "tasks": [
        {"name": "sleeper", "command": f"echo $$ > {tmp_path}/main\n"
                                       f"sleep 60 & echo $! > {tmp_path}/child\nwait"},
        {"name": "after", "command": "echo never", "depends_on": ["sleeper"]}]})
    iid = await start(stack, "long")
    await wait_task(stack, iid, "sleeper", "running")
    await eventually(lambda: _exists(tmp_path / "child"), what="child pid file")
    pids = [int((tmp_path / n).read_text()) for n in ("main", "child")]
    assert not any(gone(p) for p in pids)
    t0 = time.monotonic()
    await control(stack, iid, "stop")
    run = await stack.wait_run(iid, states=("stopped",), timeout=15)
    elapsed = time.monotonic() - t0
    assert elapsed < 5, f"stopped after {elapsed:.1f}s"
    assert all(gone(p) for p in pids), "a process of the task survived the stop"
    assert [(t["task"], t["state"]) for t in run["tasks"]] == [("sleeper", "killed")]
    # Pause, resume, stop of a finished run are refused with the current state.
    refused = await control(stack, iid, "pause", expect=409)
    assert refused["state"] == "stopped"


async def _exists(p: Path) -> bool:
    return p.exists() and p.read_text().strip() != ""


async def test_pause_lets_the_running_task_finish_and_resume_completes(stack: Stack):
    await stack.apply({"name": "pausable", "tasks": [
        {"name": "first", "command": "sleep 2"},
        {"name": "second", "command": "echo second", "depends_on": ["first"]}]})
    iid = await start(stack, "pausable")
    await wait_task(stack, iid, "first", "running")
    await control(stack, iid, "pause")
    run = await stack.wait_run(iid, states=("paused",), timeout=20)
    assert [(t["task"], t["state"]) for t in run["tasks"]] == [("first", "succeeded")]
    assert (await control(stack, iid, "pause", expect=409))["state"] == "paused"
    await control(stack, iid, "resume")
    run = await stack.wait_run(iid, timeout=30)
    assert run["state"] == "succeeded"
    types = [e["type"] for e in await stack.events(iid)]
    assert types.index("WorkflowPaused") < types.index("WorkflowResumed")


async def test_a_task_failing_once_succeeds_on_its_retry(stack: Stack, tmp_path):
    await stack.apply({"name": "flaky", "tasks": [{
        "name": "flaky", "retries": 1, "retry_interval": 1,
        "command": f"test -f {tmp_path}/seen || {{ touch {tmp_path}/seen; exit 1; }}"}]})
    iid = await start(stack, "flaky")
    run = await stack.wait_run(iid, timeout=30)
    assert run["state"] == "succeeded"
    assert [(t["attempt"], t["state"]) for t in run["tasks"]] == [(1, "failed"),
                                                                 (2, "succeeded")]
    first, second = run["tasks"]
    assert _ts(second["started_at"]) - _ts(first["finished_at"]) >= 0.9  # the retry interval


def _ts(iso: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(iso).timestamp()


async def test_a_task_timeout_with_fail_fails_the_run(stack: Stack):
    await stack.apply({"name": "slow", "tasks": [
        {"name": "slow", "command": "sleep 30", "timeout": 2, "timeout_strategy": "fail"}]})
    t0 = time.monotonic()
    iid = await start(stack, "slow")
    run = await stack.wait_run(iid, timeout=30)
    assert run["state"] == "failed" and time.monotonic() - t0 < 10
    assert "timed out after 2s" in run["failure"]


async def test_recover_reruns_only_the_failed_task(stack: Stack, tmp_path):
    await stack.apply({"name": "recoverable", "tasks": [
        {"name": "a", "command": "echo '${setValue(n=5)}'", "outputs": ["n"]},
        {"name": "b", "command": f"test -f {tmp_path}/ok || {{ touch {tmp_path}/ok; exit 2; }}\n"
                                 "echo got ${n}", "depends_on": ["a"]},
        {"name": "c", "command": "echo c", "depends_on": ["b"]}]})
    iid = await start(stack, "recoverable")
    assert (await stack.wait_run(iid))["state"] == "failed"
    await control(stack, iid, "recover")
    run = await stack.wait_run(iid, timeout=30, attempt=2)
    assert run["state"] == "succeeded" and run["attempt"] == 2
    assert sorted((t["task"], t["attempt"], t["state"]) for t in run["tasks"]) == [
        ("a", 1, "succeeded"), ("b", 1, "failed"), ("b", 2, "succeeded"), ("c", 1, "succeeded")]


TWO_BRANCHES = {"tasks": [
    {"name": "broken", "command": "sleep 0.5; exit 1"},
    {"name": "never", "command": "echo never", "depends_on": ["broken"]},
    {"name": "slow", "command": "sleep 3"},
    {"name": "tail", "command": "echo tail", "depends_on": ["slow"]}]}


@pytest.mark.parametrize("strategy", ["end", "continue"])
async def test_failure_strategies_on_two_branches(stack: Stack, strategy):
    name = f"branches-{strategy}"
    await stack.apply({"name": name, "failure_strategy": strategy, **TWO_BRANCHES})
    run = await stack.wait_run(await start(stack, name), timeout=30)
    assert run["state"] == "failed"
    states = {t["task"]: t["state"] for t in run["tasks"]}
    assert states["broken"] == "failed" and "never" not in states
    if strategy == "end":
        assert states["slow"] == "killed" and "tail" not in states
    else:
        assert states["slow"] == "succeeded" and states["tail"] == "succeeded"


async def test_with_one_slot_the_high_priority_run_goes_first(stack: Stack):
    old = next(p for p in stack.processes if p.name == "worker")
    old.stop()
    stack.start("worker", SHOAL_WORKER_SLOTS="1")
    parallel = [{"name": f"t{i}", "command": "sleep 0.2"} for i in range(3)]
    await stack.apply({"name": "blocker", "tasks": [{"name": "b", "command": "sleep 4"}]})
    await stack.apply({"name": "batch", "tasks": parallel})
    blocker = await start(stack, "blocker")
    await wait_task(stack, blocker, "b", "running", timeout=60)
    low = await start(stack, "batch", priority="lowest")
    high = await start(stack, "batch", priority="highest")
    runs = [await stack.wait_run(i, timeout=60) for i in (low, high)]
    starts = sorted((t["started_at"], run["instance_id"]) for run in runs for t in run["tasks"])
    order = ["high" if iid == high else "low" for _, iid in starts]
    assert order == ["high"] * 3 + ["low"] * 3, order


async def test_dry_run_and_start_from(stack: Stack):
    await stack.apply({"name": "abc", "tasks": [
        {"name": "a", "command": "exit 9"},
        {"name": "b", "command": "echo b", "depends_on": ["a"]},
        {"name": "c", "command": "echo c", "depends_on": ["b"]}]})
    dry = await stack.wait_run(await start(stack, "abc", dry_run=True))
    assert dry["state"] == "succeeded" and {t["state"] for t in dry["tasks"]} == {"succeeded"}
    assert not any(e["type"] == "TaskDispatched" for e in await stack.events(dry["instance_id"]))
    only_b = await stack.wait_run(await start(stack, "abc", start_from=["b"], scope="only"))
    assert [t["task"] for t in only_b["tasks"]] == ["b"] and only_b["state"] == "succeeded"
    down = await stack.wait_run(await start(stack, "abc", start_from=["b"]))
    assert sorted(t["task"] for t in down["tasks"]) == ["b", "c"]
    r = await stack.request("POST", "/api/v1/workflows/abc/runs", json={"start_from": ["zz"]})
    assert r.status_code == 422


async def test_force_success_unblocks_a_failed_task(stack: Stack):
    await stack.apply({"name": "forceable", "tasks": [
        {"name": "a", "command": "exit 1"},
        {"name": "b", "command": "echo b", "depends_on": ["a"]}]})
    iid = await start(stack, "forceable")
    assert (await stack.wait_run(iid))["state"] == "failed"
    r = await stack.request("POST", f"/api/v1/runs/{iid}/tasks/b/force-success")
    assert r.status_code == 409
    r = await stack.request("POST", f"/api/v1/runs/{iid}/tasks/a/force-success")
    assert r.status_code == 202
    await wait_task(stack, iid, "a", "forced_success")
    await control(stack, iid, "recover")
    run = await stack.wait_run(iid, timeout=30, attempt=2)
    assert run["state"] == "succeeded"
    assert {t["task"]: t["state"] for t in run["tasks"]} == {"a": "forced_success",
                                                              "b": "succeeded"}
