"""Serial execution across runs of one workflow, coordinated through Postgres."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e


async def start(stack: Stack, workflow: str, **body) -> str:
    r = await stack.request("POST", f"/api/v1/workflows/{workflow}/runs", json=body)
    assert r.status_code == 202, r.text
    return r.json()["instance_id"]


def span(run: dict) -> tuple[float, float]:
    t = run["tasks"][0]
    return (datetime.fromisoformat(t["started_at"]).timestamp(),
            datetime.fromisoformat(t["finished_at"]).timestamp())


async def test_serial_wait_runs_one_at_a_time_in_queue_order(stack: Stack):
    await stack.apply({"name": "exclusive", "execution": "serial_wait",
                       "tasks": [{"name": "hold", "command": "sleep 2"}]})
    ids = [await start(stack, "exclusive") for _ in range(3)]

    async def one_runs_two_wait() -> bool:
        states = sorted([(await stack.run_state(i) or {}).get("state") or "" for i in ids])
        return states == ["running", "serial_wait", "serial_wait"]

    await eventually(one_runs_two_wait, what="one run running, two in serial_wait")
    runs = [await stack.wait_run(i, timeout=60) for i in ids]
    assert [r["state"] for r in runs] == ["succeeded"] * 3
    spans = sorted(span(r) for r in runs)
    assert spans[0][1] <= spans[1][0] and spans[1][1] <= spans[2][0], spans
    # The two that waited started in the order they were queued (first come, first served).
    queued_at = {}
    for i in ids:
        for e in await stack.events(i):
            if e["type"] == "WorkflowQueued":
                queued_at[i] = e["global_position"]
    assert len(queued_at) == 2
    by_queue = sorted(queued_at, key=queued_at.get)
    by_start = sorted(queued_at, key=lambda i: span(runs[ids.index(i)])[0])
    assert by_queue == by_start


async def test_serial_discard_stops_a_run_while_another_runs(stack: Stack):
    await stack.apply({"name": "single", "execution": "serial_discard",
                       "tasks": [{"name": "hold", "command": "sleep 2"}]})
    first = await start(stack, "single")
    await stack.wait_state(first, "running")
    second = await stack.wait_run(await start(stack, "single"), states=("stopped",))
    assert "serial_discard" in second["failure"] and second["tasks"] == []
    assert (await stack.wait_run(first))["state"] == "succeeded"
    third = await stack.wait_run(await start(stack, "single"))
    assert third["state"] == "succeeded"  # the slot was released


async def test_serial_priority_wakes_the_most_urgent_waiting_run(stack: Stack):
    await stack.apply({"name": "ranked", "execution": "serial_priority",
                       "tasks": [{"name": "hold", "command": "sleep 1"}]})
    blocker = await start(stack, "ranked")
    await stack.wait_state(blocker, "running")
    low = await start(stack, "ranked", priority="lowest")
    high = await start(stack, "ranked", priority="highest")
    runs = {name: await stack.wait_run(i, timeout=60)
            for name, i in (("low", low), ("high", high))}
    assert span(runs["high"])[1] <= span(runs["low"])[0]
