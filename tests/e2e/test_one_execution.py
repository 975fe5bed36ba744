"""One execution per attempt, end to end: a second worker that gets the dispatch of an
attempt another worker holds (a redelivery) asks the orchestrator before running it, is
refused and never runs it; its reports are not accepted; the holder's run is the one
that counts."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.e2e.kafka_io import publish_with_librdkafka
from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e


async def test_a_second_workers_start_of_a_held_attempt_is_killed(stack: Stack, tmp_path):
    effects = tmp_path / "effects.txt"
    await stack.apply({"name": "held", "tasks": [{
        "name": "t", "command": f'echo "start $TEST_WORKER_ID" >> {effects}; sleep 8; '
                                f'echo "end $TEST_WORKER_ID" >> {effects}'}]})
    holder = next(p for p in stack.processes if p.name == "worker")
    # The intruder reads another group's topic, where the test re-delivers the dispatch.
    intruder = stack.start("worker", SHOAL_WORKER_GROUP="intruder")
    iid = (await stack.request("POST", "/api/v1/workflows/held/runs", json={})).json()[
        "instance_id"]

    async def running() -> bool:
        run = await stack.run_state(iid)
        return bool(run) and run["tasks"] and run["tasks"][0]["state"] == "running"
    await eventually(running, timeout=60, what="the holder running the task")
    dispatched = next(e for e in await stack.events(iid) if e["type"] == "TaskDispatched")
    d = dispatched["data"]
    # As a redelivery: on the broker before the intruder owned its partition.
    sent = datetime.now(UTC) - timedelta(seconds=120)
    copy = {"type": "DispatchTask", "message_id": d["dispatch_id"], "instance_id": iid,
            "sent_at": sent.isoformat(), "workflow": "held", "task": "t",
            "attempt": d["attempt"], "dispatch_id": d["dispatch_id"], "task_type": "shell",
            "worker_group": "intruder", "command": d["command"], "env": d.get("env") or {},
            "outputs": [], "priority": 0, "answers_claims": True}
    publish_with_librdkafka(stack.bootstrap, f"{stack.prefix}.tasks.intruder",
                            [(iid, json.dumps(copy).encode())])
    intruder_id = intruder.env["SHOAL_WORKER_ID"]

    async def killed() -> list[dict] | None:
        evs = await stack.events(iid)
        kills = [e for e in evs if e["type"] == "TaskKillRequested"
                 and e["data"]["worker_id"] == intruder_id]
        return evs if kills else None
    try:
        await eventually(killed, timeout=30, what="a kill addressed to the intruder")
    except AssertionError:
        print("events:", [(e["type"], e["data"].get("worker_id"))
                          for e in await stack.events(iid)])
        print("effects:", effects.read_text())
        raise
    # The intruder's success (say its process had finished) is not accepted either.
    forged = {"type": "TaskSucceeded", "message_id": str(uuid.uuid4()), "instance_id": iid,
              "sent_at": "2026-12-03T00:00:00+00:00", "task": "t", "attempt": d["attempt"],
              "dispatch_id": d["dispatch_id"], "worker_id": intruder_id, "exit_code": 0}
    publish_with_librdkafka(stack.bootstrap, f"{stack.prefix}.commands",
                            [(iid, json.dumps(forged).encode())])
    run = await stack.wait_run(iid, timeout=60)
    assert run["state"] == "succeeded"
    assert run["tasks"][0]["worker_id"] == holder.env["SHOAL_WORKER_ID"]
    events = await stack.events(iid)
    succeeded = [e for e in events if e["type"] == "TaskSucceeded"]
    assert [e["data"]["worker_id"] for e in succeeded] == [holder.env["SHOAL_WORKER_ID"]]
    lines = effects.read_text().splitlines()
    # The intruder asked before running it, was refused, and never ran it.
    assert lines == [f"start {holder.env['SHOAL_WORKER_ID']}",
                     f"end {holder.env['SHOAL_WORKER_ID']}"], lines
