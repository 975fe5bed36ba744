"""Foundation acceptance: the real services as processes, real broker, real Postgres."""

from __future__ import annotations

import uuid
from collections import Counter

import asyncpg
import pytest

from shoal.core.model import event_from_data
from shoal.core.workflow import fold
from tests.e2e.kafka_io import publish_with_librdkafka, read_all, start_json
from tests.support import Stack, eventually, start_command

pytestmark = pytest.mark.e2e

DIAMOND = {"name": "diamond", "params": {"region": "eu"}, "tasks": [
    {"name": "a", "command": "echo start ${region}\necho '${setValue(rows=42)}'",
     "outputs": ["rows"]},
    {"name": "b", "command": "echo b got ${rows}", "depends_on": ["a"]},
    {"name": "c", "type": "python", "script": "print(int('${rows}') * 2)", "depends_on": ["a"]},
    {"name": "d", "command": "echo d", "depends_on": ["b", "c"]}]}

FAILS = {"name": "fails", "tasks": [
    {"name": "ok", "command": "echo fine"},
    {"name": "broken", "command": "echo about to fail; exit 3", "depends_on": ["ok"]},
    {"name": "never", "command": "echo unreachable", "depends_on": ["broken"]}]}


async def test_diamond_started_by_a_librdkafka_producer_succeeds(stack: Stack):
    assert (await stack.apply(DIAMOND))["version"] == 1
    cmd = start_command("diamond")
    publish_with_librdkafka(stack.bootstrap, f"{stack.prefix}.commands", [start_json(cmd)])
    iid = cmd["instance_id"]

    run = await stack.wait_run(iid)
    assert run["state"] == "succeeded", run
    assert sorted((t["task"], t["state"]) for t in run["tasks"]) == [
        ("a", "succeeded"), ("b", "succeeded"), ("c", "succeeded"), ("d", "succeeded")]
    assert next(t for t in run["tasks"] if t["task"] == "a")["outputs"] == {"rows": "42"}

    events = await stack.events(iid)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "WorkflowSubmitted" and events[-1]["type"] == "WorkflowSucceeded"
    positions = [e["global_position"] for e in events]
    assert positions == sorted(positions)
    order = [(e["type"], e["data"].get("task")) for e in events]
    done_at = {t: order.index(("TaskSucceeded", t)) for t in "abcd"}
    sent_at = {t: order.index(("TaskDispatched", t)) for t in "abcd"}
    assert done_at["a"] < sent_at["b"] and done_at["a"] < sent_at["c"]
    assert max(done_at["b"], done_at["c"]) < sent_at["d"]
    b = next(e for e in events if e["type"] == "TaskDispatched" and e["data"]["task"] == "b")
    assert b["data"]["command"] == "echo b got '42'"  # the var pool reached b, as data

    # The read models agree with the log and with REST.
    conn = await asyncpg.connect(stack.database_url)
    try:
        wr = await conn.fetchrow("SELECT * FROM shoal_read.workflow_runs WHERE instance_id=$1",
                                 uuid.UUID(iid))
        trs = await conn.fetch("SELECT * FROM shoal_read.task_runs WHERE instance_id=$1",
                               uuid.UUID(iid))
    finally:
        await conn.close()
    state = fold([event_from_data(e["type"], e["data"], e["schema_version"]) for e in events],
                 instance_id=iid)
    assert wr["state"] == state.state.value == "succeeded"
    assert wr["last_seq"] == len(events)
    assert wr["duration_ms"] is not None and wr["duration_ms"] >= 0
    assert {(r["task"], r["attempt"], r["state"], r["exit_code"]) for r in trs} == {
        (t.name, t.attempt, t.state.value, t.exit_code) for t in state.tasks.values()}
    assert all(r["worker_id"] == f"{stack.prefix}-worker-0" for r in trs)


async def test_a_task_exiting_3_fails_the_run_and_its_successor_never_runs(stack: Stack):
    await stack.apply(FAILS)
    r = await stack.request("POST", "/api/v1/workflows/fails/runs", json={})
    assert r.status_code == 202
    iid = r.json()["instance_id"]
    run = await stack.wait_run(iid)
    assert run["state"] == "failed"
    assert "broken" in run["failure"] and "exit code 3" in run["failure"]
    tasks = {t["task"]: t for t in run["tasks"]}
    assert tasks["broken"]["state"] == "failed" and tasks["broken"]["exit_code"] == 3
    assert tasks["ok"]["state"] == "succeeded"
    assert "never" not in tasks
    assert not any(e["data"].get("task") == "never" for e in await stack.events(iid))


async def test_the_same_start_published_twice_runs_each_task_once(stack: Stack):
    await stack.apply(DIAMOND)
    cmd = start_command("diamond")
    again_other_message = {**cmd, "message_id": str(uuid.uuid4())}
    publish_with_librdkafka(stack.bootstrap, f"{stack.prefix}.commands",
                            [start_json(cmd), start_json(cmd), start_json(again_other_message)])
    iid = cmd["instance_id"]
    assert (await stack.wait_run(iid))["state"] == "succeeded"
    # A late duplicate, after the run finished, is harmless too.
    publish_with_librdkafka(stack.bootstrap, f"{stack.prefix}.commands", [start_json(cmd)])

    async def rejected() -> list[dict] | None:
        evs = await stack.events(iid)
        rej = [e for e in evs if e["type"] == "InputRejected"]
        return evs if rej else None

    events = await eventually(rejected, what="the second start to be recorded as rejected")
    counts = Counter((e["type"], e["data"].get("task")) for e in events)
    for t in "abcd":
        assert counts[("TaskDispatched", t)] == 1
        assert counts[("TaskSucceeded", t)] == 1
    assert counts[("WorkflowSubmitted", None)] == 1
    # The redelivery of the same message_id left no trace; the other message_id one rejection.
    assert counts[("InputRejected", None)] == 1


async def test_malformed_messages_go_to_dead_letters_and_the_next_command_runs(stack: Stack):
    await stack.apply(DIAMOND)
    good = start_command("diamond")
    bad_key = str(uuid.uuid4())
    publish_with_librdkafka(stack.bootstrap, f"{stack.prefix}.commands", [
        (bad_key, b"this is not json"),
        (bad_key, b'{"type": "LaunchRocket", "message_id": "x"}'),
        start_json(start_command("no-such-workflow")),
        start_json({**start_command("diamond"), "instance_id": "not-a-uuid"}),
        start_json(good),
    ])
    assert (await stack.wait_run(good["instance_id"]))["state"] == "succeeded"

    async def dead() -> list[dict] | None:
        got = await read_all(stack.bootstrap, f"{stack.prefix}.dead-letters")
        return got if len(got) >= 4 else None

    letters = await eventually(dead, what="four dead letters")
    reasons = sorted(d["reason"] for d in letters)
    assert any("not JSON" in r for r in reasons)
    assert any("unknown command type 'LaunchRocket'" in r for r in reasons)
    assert any("unknown workflow 'no-such-workflow'" in r for r in reasons)
    assert any("instance_id" in r for r in reasons)
    assert any(d["value"] == "this is not json" for d in letters)


async def test_a_cyclic_definition_is_refused_with_422_naming_the_cycle(stack: Stack):
    cyclic = {"name": "loop", "tasks": [
        {"name": "extract", "command": "true", "depends_on": ["load"]},
        {"name": "transform", "command": "true", "depends_on": ["extract"]},
        {"name": "load", "command": "true", "depends_on": ["transform"]}]}
    r = await stack.request("POST", "/api/v1/workflows", json=cyclic)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == "urn:shoal:problem:invalid-definition" and body["status"] == 422
    assert "cycle" in body["detail"]
    for name in ("extract", "transform", "load"):
        assert name in body["detail"]
    assert (await stack.request("GET", "/api/v1/workflows/loop")).status_code == 404
    yaml_body = b"name: y\ntasks:\n  - name: a\n    command: echo\n    depends_on: [zz]\n"
    r = await stack.request("POST", "/api/v1/workflows", content=yaml_body,
                            headers={"content-type": "application/yaml"})
    assert r.status_code == 422
    assert r.json()["problems"] == [
        {"path": "tasks[0].depends_on[0]", "message": "unknown task 'zz'"}]
