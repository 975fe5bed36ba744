"""sql, http, conditions, switch, sub_workflow and dependent tasks through real services
(CONTRACT §1; issue acceptance 1-5 and 7)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any, ClassVar

import asyncpg
import pytest

from tests.support import JsonHandler, Stack, eventually, free_port, serving

pytestmark = pytest.mark.e2e


class _Hook(JsonHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append({"body": body, "auth": self.headers.get("X-Token")})
        self.reply(201, {"ticket": {"id": f"T-{body['rows']}"}, "ok": True})


@pytest.fixture
def hook() -> Iterator[str]:
    _Hook.received = []
    with serving(_Hook) as base:
        yield base


async def task_log(stack: Stack, iid: str, task: str) -> str:
    r = await stack.request("GET", f"/api/v1/runs/{iid}/tasks/{task}/log")
    return r.text if r.status_code == 200 else ""


async def run(stack: Stack, workflow: str, **body: Any) -> str:
    r = await stack.request("POST", f"/api/v1/workflows/{workflow}/runs", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["instance_id"])


def tasks_by_name(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["task"]: t for t in run["tasks"]}


async def test_data_flows_from_shell_through_sql_and_http_to_python(stack: Stack, hook: str):
    conn = await asyncpg.connect(stack.datasource_url)
    await conn.execute("CREATE TABLE loads (day text, n int)")
    await stack.apply({"name": "flow", "params": {"bizdate": "$[yyyyMMdd-1]"}, "tasks": [
        {"name": "extract", "command": "echo extracting\necho '${setValue(rows=42)}'",
         "outputs": ["rows"]},
        {"name": "load", "type": "sql", "depends_on": ["extract"],
         "sql": "insert into loads(day, n) values ('${bizdate}', ${rows});\n"
                "select count(*) as loaded, sum(n) as total from loads where day = '${bizdate}'",
         "outputs": ["loaded", "total"]},
        {"name": "notify", "type": "http", "method": "POST", "url": f"{hook}/loaded",
         "headers": {"Content-Type": "application/json", "X-Token": "${bizdate}"},
         "body": '{"day": "${bizdate}", "rows": ${rows}}', "expected_status": [200, 201],
         "outputs": {"ticket": "$.ticket.id"}, "depends_on": ["load"]},
        {"name": "combine", "type": "python", "depends_on": ["notify"],
         "script": "print('${setValue(summary=%s/%s/%s)}' % ('${total}', '${ticket}', "
                   "'${bizdate}'))", "outputs": ["summary"]}]})
    iid = await run(stack, "flow", schedule_time="2026-03-01T06:00:00+00:00")
    result = await stack.wait_run(iid)
    assert result["state"] == "succeeded", json.dumps(result)
    tasks = tasks_by_name(result)
    assert tasks["load"]["outputs"] == {"loaded": "1", "total": "42"}
    assert tasks["notify"]["outputs"] == {"ticket": "T-42"}
    assert tasks["combine"]["outputs"] == {"summary": "42/T-42/20260228"}
    assert await conn.fetch("SELECT day, n FROM loads") == [("20260228", 42)]
    assert _Hook.received == [{"body": {"day": "20260228", "rows": 42}, "auth": "20260228"}]
    await conn.close()
    sql_log = await eventually(lambda: task_log(stack, iid, "load"), what="sql log")
    assert "INSERT 0 1" in sql_log
    http_log = await eventually(lambda: task_log(stack, iid, "notify"), what="http log")
    assert "-> 201 Created" in http_log


async def test_failures_name_their_cause_in_events_and_log(stack: Stack):
    await stack.apply({"name": "broken", "failure_strategy": "continue", "tasks": [
        {"name": "bad-sql", "type": "sql", "sql": "select 1; select * from no_such_table"},
        {"name": "bad-url", "type": "http", "url": f"http://127.0.0.1:{free_port()}/x"}]})
    iid = await run(stack, "broken")
    result = await stack.wait_run(iid)
    assert result["state"] == "failed"
    failed = {e["data"]["task"]: e["data"]["error"] for e in await stack.events(iid)
              if e["type"] == "TaskFailed"}
    assert 'statement 2 failed: UndefinedTableError: relation "no_such_table" does not exist' \
        in failed["bad-sql"]
    assert failed["bad-url"].startswith("request failed: ConnectError")
    log = await eventually(lambda: task_log(stack, iid, "bad-sql"), what="sql log")
    assert "no_such_table" in log and "ERROR:" in log
    log = await eventually(lambda: task_log(stack, iid, "bad-url"), what="http log")
    assert "request failed: ConnectError" in log
    r = await stack.request("POST", "/api/v1/workflows", json={"name": "undeclared", "tasks": [
        {"name": "q", "type": "sql", "sql": "select '${nobody}'"}]})
    assert r.status_code == 422
    assert r.json()["problems"] == [{
        "path": "tasks[0].sql", "message": "${nobody} is not a declared parameter (declare it "
        "in params, a task's params or a task's outputs)"}]


ROUTED = {"name": "routed", "params": {"code": "0"}, "tasks": [
    {"name": "check", "command": "exit ${code}"},
    {"name": "route", "type": "conditions", "depends_on": ["check"],
     "on_success": ["report"], "on_failure": ["alert"]},
    {"name": "report", "command": "echo report"},
    {"name": "publish", "command": "echo publish", "depends_on": ["report"]},
    {"name": "alert", "command": "echo alert"}]}


async def test_conditions_branch_both_ways_and_skips_propagate(stack: Stack):
    await stack.apply(ROUTED)
    ok, bad = await run(stack, "routed"), await run(stack, "routed", params={"code": "3"})
    ok_run, bad_run = await stack.wait_run(ok), await stack.wait_run(bad)
    states = {n: t["state"] for n, t in tasks_by_name(ok_run).items()}
    assert ok_run["state"] == "succeeded"
    assert states == {"check": "succeeded", "route": "succeeded", "report": "succeeded",
                      "publish": "succeeded", "alert": "skipped"}
    states = {n: t["state"] for n, t in tasks_by_name(bad_run).items()}
    assert bad_run["state"] == "succeeded", "the failure was handled by its conditions task"
    assert states == {"check": "failed", "route": "succeeded", "report": "skipped",
                      "publish": "skipped", "alert": "succeeded"}


async def test_switch_picks_one_of_three_branches_by_a_parameter(stack: Stack):
    await stack.apply({"name": "switched", "params": {"region": "eu"}, "tasks": [
        {"name": "pick", "type": "switch", "cases": [
            {"when": "${region} == 'eu'", "then": ["eu-load"]},
            {"when": "${region} in ['us', 'ca']", "then": ["us-load"]}],
         "default": ["other-load"]},
        {"name": "eu-load", "command": "echo eu"}, {"name": "us-load", "command": "echo us"},
        {"name": "other-load", "command": "echo other"}]})
    ids = {region: await run(stack, "switched", params={"region": region})
           for region in ("eu", "ca", "jp")}
    for region, ran in (("eu", "eu-load"), ("ca", "us-load"), ("jp", "other-load")):
        result = await stack.wait_run(ids[region])
        assert result["state"] == "succeeded"
        states = {n: t["state"] for n, t in tasks_by_name(result).items() if n != "pick"}
        assert states == {n: ("succeeded" if n == ran else "skipped")
                          for n in ("eu-load", "us-load", "other-load")}, region


async def test_sub_workflow_outcome_outputs_and_stop_cascade(stack: Stack):
    await stack.apply({"name": "child", "params": {"day": "x", "mode": "ok"}, "tasks": [
        {"name": "work", "command": "if [ ${mode} = slow ]; then sleep 60; fi\n"
                                    "[ ${mode} != fail ] && echo '${setValue(total=7-${day})}'",
         "outputs": ["total"]}]})
    await stack.apply({"name": "parent", "params": {"bizdate": "20260301", "mode": "ok"},
                       "tasks": [
        {"name": "sub", "type": "sub_workflow", "workflow": "child",
         "params": {"day": "${bizdate}", "mode": "${mode}"}, "outputs": ["total"]},
        {"name": "after", "command": "echo '${setValue(seen=${total})}'", "outputs": ["seen"],
         "depends_on": ["sub"]}]})
    ok = await run(stack, "parent")
    result = await stack.wait_run(ok)
    assert result["state"] == "succeeded"
    tasks = tasks_by_name(result)
    assert tasks["sub"]["outputs"] == {"total": "7-20260301"}
    assert tasks["after"]["outputs"] == {"seen": "7-20260301"}
    child = tasks["sub"]["child_instance_id"]
    child_run = await stack.run_state(child)
    assert child_run is not None and child_run["parent_instance_id"] == ok
    assert child_run["state"] == "succeeded"

    failing = await run(stack, "parent", params={"mode": "fail"})
    result = await stack.wait_run(failing)
    assert result["state"] == "failed"
    assert "sub-workflow run" in tasks_by_name(result)["sub"]["error"]

    slow = await run(stack, "parent", params={"mode": "slow"})
    await stack.wait_task_state(slow, "running", task="sub")

    async def child_running() -> str | None:
        r = await stack.run_state(slow)
        cid = tasks_by_name(r)["sub"]["child_instance_id"] if r else None
        c = await stack.run_state(cid) if cid else None
        return cid if c and any(t["state"] == "running" for t in c["tasks"]) else None
    cid = await eventually(child_running, what="the child's task running")
    r = await stack.request("POST", f"/api/v1/runs/{slow}/stop")
    assert r.status_code == 202
    assert (await stack.wait_run(slow, states=("stopped",)))["state"] == "stopped"
    assert (await stack.wait_run(cid, states=("stopped",)))["state"] == "stopped"
    assert tasks_by_name(await stack.run_state(slow))["sub"]["state"] == "killed"


async def test_dependent_waits_proceeds_on_upstream_success_and_times_out(stack: Stack):
    await stack.apply({"name": "upstream", "tasks": [{"name": "u", "command": "true"}]})
    await stack.apply({"name": "downstream", "tasks": [
        {"name": "wait", "type": "dependent", "timeout": 120,
         "depends_on_workflow": {"workflow": "upstream", "task": None,
                                 "date": "$[yyyyMMdd-1]"}},
        {"name": "go", "command": "echo go", "depends_on": ["wait"]}]})
    down = await run(stack, "downstream", schedule_time="2026-03-02T01:00:00+00:00")
    await stack.wait_task_state(down, "running", task="wait")
    # An upstream run for another day does not count.
    other = await run(stack, "upstream", schedule_time="2026-03-02T05:00:00+00:00")
    assert (await stack.wait_run(other))["state"] == "succeeded"
    await asyncio.sleep(1.0)
    assert tasks_by_name(await stack.run_state(down))["wait"]["state"] == "running"
    up = await run(stack, "upstream", schedule_time="2026-03-01T05:00:00+00:00")
    await stack.wait_run(up)
    up_done = max(e["recorded_at"] for e in await stack.events(up)
                  if e["type"] == "WorkflowSucceeded")
    assert (await stack.wait_run(down))["state"] == "succeeded"
    met = next(e["recorded_at"] for e in await stack.events(down)
               if e["type"] == "TaskSucceeded" and e["data"]["task"] == "wait")
    lag = (datetime.fromisoformat(met) - datetime.fromisoformat(up_done)).total_seconds()
    assert lag < 1.0, f"proceeded {lag:.2f}s after the upstream succeeded"

    await stack.apply({"name": "impatient", "tasks": [
        {"name": "wait", "type": "dependent", "timeout": 2,
         "depends_on_workflow": {"workflow": "upstream", "task": "u", "date": "$[yyyyMMdd]"}}]})
    late = await run(stack, "impatient", schedule_time="2027-01-01T00:00:00+00:00")
    result = await stack.wait_run(late)
    assert result["state"] == "failed"
    assert tasks_by_name(result)["wait"]["error"].startswith(
        "timed out after 2s: waiting for a successful run of task 'u' of upstream for 20270101")


async def test_pausing_the_parent_pauses_the_child_and_resuming_resumes_it(stack: Stack):
    await stack.apply({"name": "steps", "tasks": [
        {"name": "first", "command": "sleep 3"},
        {"name": "second", "command": "echo second", "depends_on": ["first"]}]})
    await stack.apply({"name": "holder", "tasks": [
        {"name": "sub", "type": "sub_workflow", "workflow": "steps"}]})
    parent = await run(stack, "holder")

    async def child_id() -> str | None:
        r = await stack.run_state(parent)
        cid = tasks_by_name(r).get("sub", {}).get("child_instance_id") if r else None
        c = await stack.run_state(cid) if cid else None
        return cid if c and any(t["state"] == "running" for t in c["tasks"]) else None
    cid = await eventually(child_id, what="the child's first task running")
    assert (await stack.request("POST", f"/api/v1/runs/{parent}/pause")).status_code == 202
    await stack.wait_state(parent, "paused")
    await stack.wait_state(cid, "paused")  # after its running task finished
    child = await stack.run_state(cid)
    assert child is not None and "second" not in tasks_by_name(child)
    assert (await stack.request("POST", f"/api/v1/runs/{parent}/resume")).status_code == 202
    assert (await stack.wait_run(cid))["state"] == "succeeded"
    assert (await stack.wait_run(parent))["state"] == "succeeded"
