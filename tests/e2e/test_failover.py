"""Failover: an orchestrator killed with SIGKILL mid-run; the survivor replays and finishes."""

from __future__ import annotations

from collections import Counter

import pytest

from shoal.infra.settings import Settings
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


CHAIN6 = {"name": "chain6", "tasks": [
    {"name": f"s{i}", "command": "sleep 0.3", "retries": 2,
     **({"depends_on": [f"s{i - 1}"]} if i else {})} for i in range(6)]}


async def test_forty_chains_survive_an_orchestrator_and_a_worker_sigkill(bare_stack: Stack):
    """Issue 11 acceptance 1: 2 orchestrators + 2 workers, 40 runs of a 6-task chain;
    SIGKILL one orchestrator and then one worker mid-flight: all 40 succeed, no attempt
    succeeds twice, and all finish within 15 s of the kills."""
    import asyncio
    import time

    import asyncpg

    stack = bare_stack
    # The product's own failover settings (other tests run with a calmer 6 s session).
    fast = {"SHOAL_KAFKA_SESSION_TIMEOUT_MS": str(Settings().kafka_session_timeout_ms),
            "SHOAL_LEASE_TIMEOUT": str(Settings().lease_timeout),
            "SHOAL_WORKER_HEARTBEAT_INTERVAL": str(Settings().worker_heartbeat_interval)}
    stack.start("api")
    await eventually(stack._healthy, timeout=60, what="API up")
    orchestrators = [stack.start("orchestrator", **fast), stack.start("orchestrator", **fast)]
    stack.start("projector")
    workers = [stack.start("worker", **fast), stack.start("worker", **fast)]
    await stack.apply(CHAIN6)
    # Both orchestrators and both workers own partitions before the load starts.
    async def settled() -> bool:
        r = await stack.request("GET", "/api/v1/cluster")
        body = r.json()
        return (len(body["orchestrators"]) == 2 and all(o["partitions"]
                                                        for o in body["orchestrators"])
                and len(body["workers"]) == 2 and all(w["partitions"]
                                                      for w in body["workers"]))
    await eventually(settled, timeout=60, what="two orchestrators and two workers joined")
    ids = [(await stack.request("POST", "/api/v1/workflows/chain6/runs", json={})).json()[
        "instance_id"] for _ in range(40)]

    conn = await asyncpg.connect(stack.database_url)
    try:
        async def progressed() -> bool:
            n = await conn.fetchval("SELECT count(*) FROM shoal.events WHERE type = "
                                    "'TaskSucceeded'")
            return n >= 40
        await eventually(progressed, timeout=60, what="the runs under way")
        body = (await stack.request("GET", "/api/v1/cluster")).json()
        dead_partitions = next(o["partitions"] for o in body["orchestrators"]
                               if o["pid"] == orchestrators[0].pid)
        kills = time.time()
        orchestrators[0].kill9()
        await asyncio.sleep(1.0)
        workers[0].kill9()
        for iid in ids:
            assert (await stack.wait_run(iid, timeout=120))["state"] == "succeeded"
        last = await conn.fetchval(
            "SELECT extract(epoch FROM max(recorded_at)) FROM shoal.events WHERE type = "
            "'WorkflowSucceeded'")
        twice = await conn.fetch(
            "SELECT instance_id, data->>'task' AS task, count(*) FROM shoal.events WHERE "
            "type = 'TaskSucceeded' GROUP BY 1, 2 HAVING count(*) > 1")
        assert twice == []
        # When did the survivor first append an event for a run the dead one owned?
        moved = await conn.fetchval(
            "SELECT extract(epoch FROM min(recorded_at)) FROM shoal.events e JOIN "
            "shoal.streams s USING (instance_id) WHERE e.recorded_at > to_timestamp($1) "
            "AND s.partition = ANY($2)", kills, list(dead_partitions))
        print(f"all 40 finished {float(last) - kills:.1f} s after the first kill; the "
              f"survivor appended for a moved run {float(moved) - kills:.1f} s after it")
        assert float(last) - kills <= 15.0
    finally:
        await conn.close()


async def test_effects_committed_but_not_published_go_out_once_after_a_crash(
        bare_stack: Stack, tmp_path):
    """Issue 11 acceptance 2: an orchestrator dies right after appending events and
    writing their outbox rows, before publishing them or committing its offsets."""
    from tests.e2e.kafka_io import read_all

    stack = bare_stack
    stack.start("api")
    await eventually(stack._healthy, timeout=60, what="API up")
    doomed = stack.start("orchestrator", SHOAL_TEST_FAULT="exit-after-commit")
    stack.start("projector")
    stack.start("worker")
    marks = tmp_path / "marks"
    await stack.apply({"name": "once", "tasks": [
        {"name": "a", "command": f"echo a >> {marks}"},
        {"name": "b", "command": f"echo b >> {marks}", "depends_on": ["a"]}]})
    iid = (await stack.request("POST", "/api/v1/workflows/once/runs", json={})).json()[
        "instance_id"]

    async def died() -> bool:
        return not doomed.alive()

    await eventually(died, timeout=60, what="the orchestrator's injected crash")
    stack.start("orchestrator")  # recovery: no fault
    assert (await stack.wait_run(iid, timeout=90))["state"] == "succeeded"
    assert marks.read_text().split() == ["a", "b"]  # each task's effect exactly once
    counts = Counter((e["type"], e["data"].get("task")) for e in await stack.events(iid))
    assert counts[("WorkflowSubmitted", None)] == 1
    for t in ("a", "b"):
        assert counts[("TaskDispatched", t)] == 1 and counts[("TaskSucceeded", t)] == 1
    # The dispatches reached the workers' topic from the outbox after recovery.
    dispatched = [d for d in await read_all(stack.bootstrap, f"{stack.prefix}.tasks.default")
                  if d.get("instance_id") == iid]
    assert sorted({d["task"] for d in dispatched}) == ["a", "b"]
