"""Workers in production conditions: groups, slots, logs, leases, kill -9, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from datetime import datetime

import httpx
import pytest

from shoal.core.model import TaskSucceeded
from shoal.infra import codec
from shoal.infra.lifecycle import utcnow_iso
from shoal_worker.main import report_id
from tests.e2e.kafka_io import publish_with_librdkafka
from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e


async def start(stack: Stack, workflow: str, **body) -> str:
    r = await stack.request("POST", f"/api/v1/workflows/{workflow}/runs", json=body)
    assert r.status_code == 202, r.text
    return r.json()["instance_id"]


async def running_task(stack: Stack, iid: str, task: str) -> dict | None:
    run = await stack.run_state(iid)
    rows = [t for t in (run or {}).get("tasks", []) if t["task"] == task]
    return rows[-1] if rows and rows[-1]["state"] == "running" else None


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def test_tasks_land_only_on_their_groups_workers(stack: Stack):
    stack.start("worker", SHOAL_WORKER_GROUP="gpu", SHOAL_WORKER_ID=f"{stack.prefix}-gpu")
    await stack.apply({"name": "grouped", "worker_group": "default", "tasks": [
        *({"name": f"cpu{i}", "command": "echo cpu"} for i in range(3)),
        *({"name": f"gpu{i}", "command": "echo gpu", "worker_group": "gpu"} for i in range(3))]})
    run = await stack.wait_run(await start(stack, "grouped"), timeout=60)
    assert run["state"] == "succeeded"
    for t in run["tasks"]:
        expected = f"{stack.prefix}-gpu" if t["task"].startswith("gpu") else \
            f"{stack.prefix}-worker-0"
        assert t["worker_id"] == expected, t

    async def both_listed() -> list | None:
        ws = (await stack.request("GET", "/api/v1/workers")).json()
        return ws if {w["group"] for w in ws} == {"default", "gpu"} else None

    workers = await eventually(both_listed, what="both workers in /api/v1/workers")
    assert all(w["live"] and w["slots"] == 32 for w in workers)  # the default (CONTRACT §6)


async def test_two_slots_never_run_more_than_two_and_lose_nothing(stack: Stack):
    next(p for p in stack.processes if p.name == "worker").stop()
    stack.start("worker", SHOAL_WORKER_SLOTS="2", SHOAL_WORKER_PREFETCH="0")
    await stack.apply({"name": "ten", "tasks": [
        {"name": f"t{i}", "command": "sleep 1"} for i in range(10)]})
    run = await stack.wait_run(await start(stack, "ten"), timeout=90)
    assert run["state"] == "succeeded"
    assert len(run["tasks"]) == 10 and all(t["attempt"] == 1 for t in run["tasks"])
    edges = sorted([(ts(t["started_at"]), 1) for t in run["tasks"]]
                   + [(ts(t["finished_at"]), -1) for t in run["tasks"]])
    level = peak = 0
    for _, step in edges:
        level += step
        peak = max(peak, level)
    assert peak == 2


async def test_a_200000_line_log_is_complete_in_order_and_followable(stack: Stack):
    await stack.apply({"name": "chatty", "tasks": [{
        "name": "talk", "command": "for i in $(seq 1 100000); do echo \"line $i\"; done\n"
                                   "sleep 2\n"
                                   "for i in $(seq 100001 200000); do echo \"line $i\"; done"}]})
    iid = await start(stack, "chatty")
    await eventually(lambda: running_task(stack, iid, "talk"), what="talk running")
    seen: list[str] = []
    url = f"{stack.api}/api/v1/runs/{iid}/tasks/talk/log"
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=60),
                                 headers=stack.auth("viewer")) as c, c.stream(
            "GET", url, params={"follow": "true"}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: ") and not seen:
                # The first line arrives while the task still runs.
                assert (await stack.run_state(iid))["state"] == "running"
            if line.startswith("event: end"):
                break
            if line.startswith("data: "):
                seen.append(line[6:])
    expected = [f"line {i}" for i in range(1, 200_001)]
    assert seen == expected
    assert (await stack.wait_run(iid))["state"] == "succeeded"
    text = (await stack.request("GET", f"/api/v1/runs/{iid}/tasks/talk/log")).text
    assert text.splitlines() == expected


async def test_a_sigkilled_worker_loses_its_attempt_and_another_worker_retries_it(stack: Stack):
    stack.start("worker")
    await asyncio.sleep(0)
    await stack.apply({"name": "survivor", "tasks": [
        {"name": "long", "command": "sleep 20", "retries": 1, "retry_interval": 0}]})
    iid = await start(stack, "survivor")
    first = await eventually(lambda: running_task(stack, iid, "long"), timeout=60,
                             what="attempt 1 running")
    victim = next(p for p in stack.processes if p.name == "worker"
                  and p.env["SHOAL_WORKER_ID"] == first["worker_id"])
    dispatch = next(e["data"]["dispatch_id"] for e in await stack.events(iid)
                    if e["type"] == "TaskDispatched")
    victim.kill9()
    t_kill = time.monotonic()

    async def lost() -> bool:
        return any(e["type"] == "TaskLost" for e in await stack.events(iid))

    await eventually(lost, timeout=30, what="attempt 1 lost")
    assert time.monotonic() - t_kill < 5 + 3, "lost later than the lease timeout allows"
    run = await stack.wait_run(iid, timeout=90)
    assert run["state"] == "succeeded"
    attempts = {t["attempt"]: t for t in run["tasks"]}
    assert attempts[1]["state"] == "lost" and attempts[2]["state"] == "succeeded"
    assert attempts[2]["worker_id"] != first["worker_id"]
    # A late report from attempt 1 (its worker "comes back") changes nothing.
    before = await stack.run_state(iid)
    late = {"type": "TaskSucceeded", "message_id": str(uuid.uuid4()), "instance_id": iid,
            "sent_at": "2026-11-22T00:00:00+00:00", "task": "long", "attempt": 1,
            "dispatch_id": dispatch, "worker_id": first["worker_id"], "exit_code": 0}
    publish_with_librdkafka(stack.bootstrap, f"{stack.prefix}.commands",
                            [(iid, json.dumps(late).encode())])

    async def recorded() -> list | None:
        evs = await stack.events(iid)
        return evs if evs[-1]["type"] in ("InputRejected", "TaskKillRequested") else None

    events = await eventually(recorded, what="the late report recorded")
    assert any(e["type"] == "InputRejected" and "superseded" in e["data"]["reason"]
               for e in events)
    after = await stack.run_state(iid)
    assert after["state"] == before["state"] and after["tasks"] == before["tasks"]


async def test_sigterm_lets_the_running_task_finish_and_report(stack: Stack):
    await stack.apply({"name": "graceful", "tasks": [
        {"name": "work", "command": "sleep 3; echo done"}]})
    iid = await start(stack, "graceful")
    await eventually(lambda: running_task(stack, iid, "work"), what="work running")
    worker = next(p for p in stack.processes if p.name == "worker")
    worker.signal(signal.SIGTERM)
    run = await stack.wait_run(iid, timeout=30)
    assert run["state"] == "succeeded"
    assert await asyncio.to_thread(worker.proc.wait, 30) == 0
    assert [(t["attempt"], t["state"]) for t in run["tasks"]] == [(1, "succeeded")]


async def test_a_group_without_workers_waits_and_loses_nothing(stack: Stack):
    await stack.apply({"name": "patient", "tasks": [
        {"name": "later", "command": "echo finally", "worker_group": "night"}]})
    iid = await start(stack, "patient")

    async def waiting() -> dict | None:
        run = await stack.run_state(iid)
        tasks = (run or {}).get("tasks", [])
        return run if tasks and tasks[0]["waiting_for_worker"] else None

    run = await eventually(waiting, what="the task shown as waiting for a worker")
    assert run["state"] == "running" and run["tasks"][0]["state"] == "dispatched"
    assert run["tasks"][0]["worker_group"] == "night"
    stack.start("worker", SHOAL_WORKER_GROUP="night")
    run = await stack.wait_run(iid, timeout=60)
    assert run["state"] == "succeeded" and run["tasks"][0]["waiting_for_worker"] is False


async def test_a_worker_started_before_anything_else_comes_up(broker: str, database: str,
                                                             tmp_path):
    """Services start in any order: a worker first must create what it reads, not crash."""
    fresh = Stack(broker, database, tmp_path)
    try:
        worker = fresh.start("worker")

        async def serving() -> bool:
            return "serving group" in worker.log_path.read_text()

        await eventually(serving, timeout=60, what="the worker serving")
        await asyncio.sleep(1)  # the control and heartbeat readers start alongside
        assert worker.alive(), worker.log_path.read_text()[-3000:]
        await fresh.start_all()
        await fresh.apply({"name": "late", "tasks": [{"name": "x", "command": "true"}]})
        assert (await fresh.wait_run(await start(fresh, "late"), timeout=60))["state"] == \
            "succeeded"
    finally:
        fresh.stop()


async def test_a_successor_sends_the_end_report_a_killed_worker_journaled(bare_stack: Stack,
                                                                          tmp_path):
    """A worker SIGKILLed after its task's process ended but before the broker had the end
    report leaves the report journaled in its task-groups file (written as the process
    ends: tests/unit/test_worker_dispatches.py). The next worker starting on the machine
    sends it as the dead worker's: the attempt succeeds once, it is not declared lost and
    run again. (The long lease gives the successor all the time it needs; without the
    journal the run would wait for the lease and retry.)"""
    stack = bare_stack
    stack.start("api")
    await eventually(stack._healthy, timeout=60, what="API up")
    stack.start("orchestrator", SHOAL_LEASE_TIMEOUT="90")
    stack.start("projector")
    first = stack.start("worker")
    effects = tmp_path / "effects.txt"
    await stack.apply({"name": "journaled", "tasks": [{
        "name": "only", "retries": 2, "retry_interval": 1,
        "command": f'echo "$SHOAL_ATTEMPT" >> {effects}; exec sleep 600'}]})
    iid = await start(stack, "journaled")

    async def ran() -> bool:
        return effects.exists() and await running_task(stack, iid, "only") is not None
    await eventually(ran, timeout=60, what="the first worker running the task")
    first.kill9()
    d = next(e["data"] for e in await stack.events(iid) if e["type"] == "TaskDispatched")
    worker_id = first.env["SHOAL_WORKER_ID"]
    end = TaskSucceeded(message_id=report_id(d["dispatch_id"], "finished", worker_id),
                        instance_id=iid, sent_at=utcnow_iso(), task="only",
                        attempt=d["attempt"], dispatch_id=d["dispatch_id"],
                        worker_id=worker_id, exit_code=0)
    journal = stack.workdir / "data" / "task-groups" / f"{first.pid}.json"
    data = json.loads(journal.read_text())
    data["pending"] = [[end.message_id, iid, codec.encode_command(end).decode()]]
    journal.write_text(json.dumps(data))
    stack.start("worker")
    run = await stack.wait_run(iid, timeout=60)
    assert run["state"] == "succeeded" and run["tasks"][-1]["attempt"] == 1
    events = await stack.events(iid)
    assert [e["data"]["worker_id"] for e in events if e["type"] == "TaskSucceeded"] == [
        worker_id]
    assert "TaskLost" not in {e["type"] for e in events}
    assert effects.read_text().split() == ["1"]


@pytest.mark.parametrize("who", ["successor", "sibling"])
async def test_the_end_of_a_task_its_worker_never_saw_is_reported_by_the_next(
        bare_stack: Stack, tmp_path, who: str):
    """The task ends while its worker is stopped (SIGSTOP: it cannot see the end), then
    the worker is SIGKILLed: the task's shell wrote its exit status on its way out, and
    another worker on the machine (one starting after, or one already running) reports
    the end as the dead worker's. The attempt succeeds once; it is not declared lost and
    run again."""
    stack = bare_stack
    stack.start("api")
    await eventually(stack._healthy, timeout=60, what="API up")
    stack.start("orchestrator", SHOAL_LEASE_TIMEOUT="90")
    stack.start("projector")
    first = stack.start("worker")
    effects, began = tmp_path / "effects.txt", tmp_path / "began.txt"
    await stack.apply({"name": "unseen-end", "tasks": [{
        "name": "only", "retries": 2, "retry_interval": 1,
        "command": f'echo x >> {began}; sleep 2; echo "$SHOAL_ATTEMPT" >> {effects}'}]})
    iid = await start(stack, "unseen-end")
    await eventually(lambda: running_task(stack, iid, "only"), timeout=60,
                     what="the task running")
    # "running" is the claim, sent before the process starts: wait for the process itself
    # before freezing its worker (frozen before the spawn, the task would never run).
    await eventually(lambda: asyncio.sleep(0, began.exists()), timeout=30,
                     what="the task's process started")
    if who == "sibling":
        stack.start("worker", SHOAL_WORKER_GROUP="elsewhere")  # gets none of the tasks
        await asyncio.sleep(3)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        await eventually(lambda: asyncio.sleep(0, effects.exists()), timeout=30,
                         what="the task's side effect")
        await asyncio.sleep(0.5)  # its shell has exited
    finally:
        first.kill9()
    if who == "successor":
        stack.start("worker")
    run = await stack.wait_run(iid, timeout=60)
    assert run["state"] == "succeeded" and run["tasks"][-1]["attempt"] == 1
    events = await stack.events(iid)
    assert [e["data"]["worker_id"] for e in events if e["type"] == "TaskSucceeded"] == [
        first.env["SHOAL_WORKER_ID"]]
    assert "TaskLost" not in {e["type"] for e in events}
    assert effects.read_text().split() == ["1"]
