"""Failover: an orchestrator killed with SIGKILL mid-run; the survivor replays and finishes."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e

SLOW = {"name": "slow-chain", "tasks": [
    {"name": "first", "command": "sleep 3; echo first"},
    {"name": "second", "command": "echo second", "depends_on": ["first"]},
    {"name": "third", "command": "echo third", "depends_on": ["second"]}]}


async def test_orchestrator_killed_mid_run_is_replaced_by_replay(stack: Stack):
    await stack.apply(SLOW)
    iid = (await stack.request("POST", "/api/v1/workflows/slow-chain/runs", json={})).json()[
        "instance_id"]

    async def first_running() -> bool:
        run = await stack.run_state(iid)
        return bool(run and any(t["task"] == "first" and t["state"] == "running"
                                for t in run["tasks"]))

    await eventually(first_running, what="task 'first' running")
    orchestrator = next(p for p in stack.processes if p.name == "orchestrator")
    orchestrator.kill9()
    assert not orchestrator.alive()
    # The report of 'first' arrives while no orchestrator runs; the replacement joins the
    # group, replays the instance from Postgres and carries on.
    stack.start("orchestrator")
    run = await stack.wait_run(iid, timeout=90)
    assert run["state"] == "succeeded"
    counts = Counter((e["type"], e["data"].get("task")) for e in await stack.events(iid))
    for t in ("first", "second", "third"):
        assert counts[("TaskDispatched", t)] == 1, counts
        assert counts[("TaskSucceeded", t)] == 1, counts


async def test_two_orchestrators_share_the_partitions_and_runs_complete(stack: Stack):
    stack.start("orchestrator")
    await stack.apply(SLOW | {"name": "quick", "tasks": [
        {"name": "only", "command": "echo hi"}]})
    ids = []
    for _ in range(8):
        r = await stack.request("POST", "/api/v1/workflows/quick/runs", json={})
        ids.append(r.json()["instance_id"])
    for iid in ids:
        assert (await stack.wait_run(iid, timeout=90))["state"] == "succeeded"
    # Both orchestrators ended up owning some partitions (the group split the work).
    owners = [p for p in stack.processes if p.name == "orchestrator"]
    for p in owners:
        lines = [ln for ln in p.log_path.read_text().splitlines() if "assigned partitions" in ln]
        assert lines and not lines[-1].endswith("[]"), (p.log_path.name, lines)


async def test_a_retry_timer_fires_after_the_orchestrator_is_sigkilled(stack: Stack, tmp_path):
    await stack.apply({"name": "retry-later", "tasks": [{
        "name": "flaky", "retries": 1, "retry_interval": 6,
        "command": f"test -f {tmp_path}/seen || {{ touch {tmp_path}/seen; exit 1; }}"}]})
    iid = (await stack.request("POST", "/api/v1/workflows/retry-later/runs", json={})).json()[
        "instance_id"]

    await stack.wait_task_state(iid, "retry_wait")
    next(p for p in stack.processes if p.name == "orchestrator").kill9()
    stack.start("orchestrator")
    run = await stack.wait_run(iid, timeout=90)
    assert run["state"] == "succeeded"
    assert [(t["attempt"], t["state"]) for t in run["tasks"]] == [(1, "failed"), (2, "succeeded")]


async def test_a_workflow_timeout_fires_after_the_orchestrator_is_sigkilled(stack: Stack):
    await stack.apply({"name": "bounded", "timeout": 6, "timeout_strategy": "fail",
                       "tasks": [{"name": "long", "command": "sleep 60"}]})
    iid = (await stack.request("POST", "/api/v1/workflows/bounded/runs", json={})).json()[
        "instance_id"]

    await stack.wait_task_state(iid, "running")
    next(p for p in stack.processes if p.name == "orchestrator").kill9()
    stack.start("orchestrator")
    run = await stack.wait_run(iid, timeout=90)
    assert run["state"] == "failed" and "workflow timed out after 6s" in run["failure"]
    assert [(t["task"], t["state"]) for t in run["tasks"]] == [("long", "killed")]
