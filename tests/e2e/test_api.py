"""The API beyond single runs: listing with filters and cursors, batch control, stats,
replay, export and the delete rule."""

from __future__ import annotations

import uuid

import pytest
import yaml

from tests.support import Stack

pytestmark = pytest.mark.e2e


async def start(stack: Stack, workflow: str, **body) -> str:
    r = await stack.request("POST", f"/api/v1/workflows/{workflow}/runs", json=body)
    assert r.status_code == 202, r.text
    return r.json()["instance_id"]


async def test_listing_batch_control_stats_replay_export_and_delete(stack: Stack):
    await stack.apply({"name": "quick", "tasks": [{"name": "a", "command": "true"}]})
    await stack.apply({"name": "slow", "tasks": [{"name": "nap", "command": "sleep 30"}]})
    quick = [await start(stack, "quick", schedule_time=f"2026-01-0{i}T00:00:00Z")
             for i in range(1, 6)]
    for iid in quick:
        await stack.wait_run(iid)
    slow = [await start(stack, "slow") for _ in range(2)]
    for iid in slow:
        await stack.wait_task_state(iid, "running", task="nap")

    # Pages of two, newest first, until the cursor runs out; no run twice or missing.
    # (Runs accepted in one orchestrator batch share a submission time; the id breaks ties.)
    seen, cursor, pages = [], None, 0
    while True:
        r = await stack.request("GET", "/api/v1/runs", role="viewer", params={
            "workflow": "quick", "limit": 2, **({"cursor": cursor} if cursor else {})})
        page = r.json()
        seen += [(run["submitted_at"], run["instance_id"]) for run in page["runs"]]
        cursor, pages = page["next_cursor"], pages + 1
        if not cursor:
            break
    assert pages == 3 and sorted(iid for _, iid in seen) == sorted(quick)
    assert seen == sorted(seen, reverse=True)
    r = await stack.request("GET", "/api/v1/runs", params={
        "scheduled_since": "2026-01-02T00:00:00Z", "scheduled_until": "2026-01-04T00:00:00Z"})
    assert {run["instance_id"] for run in r.json()["runs"]} == set(quick[1:3])
    r = await stack.request("GET", "/api/v1/runs", params=[("state", "running"),
                                                           ("state", "failed")])
    assert {run["instance_id"] for run in r.json()["runs"]} == set(slow)
    assert (await stack.request("GET", "/api/v1/runs", params={"cursor": "nonsense"})
            ).json()["type"] == "urn:shoal:problem:bad-request"

    # A workflow with unfinished runs cannot be deleted.
    r = await stack.request("DELETE", "/api/v1/workflows/slow")
    assert r.status_code == 409 and r.json()["type"] == "urn:shoal:problem:workflow-busy"

    # Batch: each run judged alone.
    ghost = str(uuid.uuid4())
    r = await stack.request("POST", "/api/v1/runs/batch/stop", role="operator",
                            json={"instance_ids": [*slow, quick[0], ghost]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["sent"] == 2 and out["refused"] == 2
    assert {x["instance_id"]: x["status"] for x in out["results"]} == {
        slow[0]: 202, slow[1]: 202, quick[0]: 409, ghost: 404}
    assert (await stack.request("POST", "/api/v1/runs/batch/stop", role="viewer",
                                json={"instance_ids": slow})).status_code == 403
    for iid in slow:
        await stack.wait_run(iid, states=("stopped",))
    assert (await stack.request("DELETE", "/api/v1/workflows/slow")).status_code == 204

    stats = (await stack.request("GET", "/api/v1/stats", role="viewer")).json()
    assert stats["by_state"] == {"succeeded": 5, "stopped": 2}
    durations = {d["workflow"]: d for d in stats["durations"]}
    assert durations["quick"]["runs"] == 5 and durations["quick"]["p95_ms"] >= \
        durations["quick"]["p50_ms"] > 0

    # Replay: the state after each event, up to a sequence number.
    steps = (await stack.request("GET", f"/api/v1/runs/{quick[0]}/replay",
                                 params={"until": 3})).json()["steps"]
    assert [s["type"] for s in steps] == ["WorkflowSubmitted", "WorkflowStarted",
                                          "TaskDispatched"]
    assert steps[0]["tasks"] == [{"task": "a", "state": None, "attempt": None,
                                  "exit_code": None, "worker_id": None, "outputs": {}}]
    assert steps[-1]["tasks"][0]["state"] == "dispatched"
    full = (await stack.request("GET", f"/api/v1/runs/{quick[0]}/replay")).json()["steps"]
    assert full[-1]["state"] == "succeeded" and full[-1]["tasks"][0]["exit_code"] == 0

    # Export is the definition as YAML, and publishing it again changes nothing.
    r = await stack.request("GET", "/api/v1/workflows/quick/export", role="viewer")
    assert r.headers["content-type"].startswith("application/yaml")
    assert yaml.safe_load(r.text)["tasks"][0]["command"] == "true"
    again = await stack.request("POST", "/api/v1/workflows", content=r.content,
                                headers={"content-type": "application/yaml"})
    assert again.status_code == 200 and again.json() == {"name": "quick", "version": 1,
                                                         "changed": False, "warnings": []}
