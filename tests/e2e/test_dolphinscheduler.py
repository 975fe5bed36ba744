"""Workflows from DolphinScheduler imported and run through real services: its Python
SDK's own examples (recorded without a DolphinScheduler server), its api-test fixture, an
export file with a schedule, a sub-process and a dependent task; the export back."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.dsrecorder import Recorder, record_examples
from tests.e2e.test_cli import shoal
from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).parent.parent / "fixtures" / "dolphinscheduler"
# The SDK examples built only from the types Shoal runs (the others are refused below).
RUNNABLE = ["tutorial", "tutorial_decorator", "task_condition_example", "task_switch_example",
            "task_sub_workflow_example", "task_python_example", "tutorial_resource_plugin",
            "task_dependent_example", "bulk_create_example"]
REFUSED = {"task_datax_example": "DATAX", "task_dvc_example": "DVC",
           "task_flink_example": "FLINK", "task_kubernetes_example": "K8S",
           "task_map_reduce_example": "MR", "task_mlflow_example": "MLFLOW",
           "task_openmldb_example": "OPENMLDB", "task_pytorch_example": "PYTORCH",
           "task_sagemaker_example": "SAGEMAKER", "task_spark_example": "SPARK"}


def _examples(monkeypatch: pytest.MonkeyPatch, modules: list[str]) -> Recorder:
    rec, errors = record_examples(monkeypatch, modules)
    assert not errors, errors
    return rec


def _sdk_extra(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Two small workflows written with the SDK as its docs show: typed local params with a
    time expression reaching the shell, and a #{setValue} output read by the next task."""
    from pydolphinscheduler import java_gateway
    from pydolphinscheduler.core.workflow import Workflow
    from pydolphinscheduler.tasks.shell import Shell

    rec = Recorder()
    for m in ("create_or_grant_project", "create_tenant", "create_user",
              "get_code_and_version", "create_or_update_workflow"):
        monkeypatch.setattr(java_gateway.gateway, m, getattr(rec, m))
    with Workflow(name="sdk_local_params") as wf:
        Shell(name="show", command='echo "p1=${param1} p2=${param2} p3=${param3} '
                                   'home=${HOME}"',
              input_params={"param1": "str1", "param2": 123, "param3": "$[yyyy-MM-dd]"})
        wf.submit()
    with Workflow(name="sdk_set_value") as wf:
        out = Shell(name="produce", command='echo "#{setValue(random_value=4242)}"',
                    output_params={"random_value": ""})
        use = Shell(name="consume", command="echo got ${random_value}")
        out >> use
        wf.submit()
    return rec.workflows


async def _run(stack: Stack, workflow: str, **body: Any) -> dict[str, Any]:
    r = await stack.request("POST", f"/api/v1/workflows/{workflow}/runs", json=body)
    assert r.status_code == 202, r.text
    return await stack.wait_run(str(r.json()["instance_id"]), timeout=90)


async def _log(stack: Stack, iid: str, task: str) -> str:
    async def probe() -> str | None:
        r = await stack.request("GET", f"/api/v1/runs/{iid}/tasks/{task}/log")
        return r.text if r.status_code == 200 and r.text.strip() else None
    return await eventually(probe, what=f"log of {task}")


def _states(run: dict[str, Any]) -> dict[str, str]:
    return {t["task"]: t["state"] for t in run["tasks"]}


async def test_the_sdk_examples_import_in_one_request_and_run_as_in_dolphinscheduler(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    body = _examples(monkeypatch, RUNNABLE).workflows + _sdk_extra(monkeypatch)
    r = await stack.request("POST", "/api/v1/import/dolphinscheduler", json=body)
    assert r.status_code == 201, r.text
    names = {w["source_name"]: w["name"] for w in r.json()["workflows"]}
    assert set(names) >= {"tutorial", "task_switch_example", "sub_workflow_downstream"}
    assert any("cpuQuota" in w for w in r.json()["warnings"])

    # switch: the default branch with var=1 (the example's value), the first with var=2
    one = await _run(stack, names["task_switch_example"])
    assert one["state"] == "succeeded"
    assert (_states(one)["switch_child_2"], _states(one)["switch_child_1"]) == (
        "succeeded", "skipped")
    two = await _run(stack, names["task_switch_example"], params={"var": "2"})
    assert (_states(two)["switch_child_1"], _states(two)["switch_child_2"]) == (
        "succeeded", "skipped")

    # conditions: SUCCESS(pre_task_1, pre_task_2) and FAILURE(pre_task_3) does not hold
    cond = await _run(stack, names["task_condition_example"])
    assert cond["state"] == "succeeded"
    assert (_states(cond)["fail_branch"], _states(cond)["success_branch"]) == (
        "succeeded", "skipped")

    # the sub-process starts the other workflow of the same request
    sub = await _run(stack, names["task_sub_workflow_example"])
    assert sub["state"] == "succeeded" and _states(sub)["sub_workflow"] == "succeeded"

    # dependent: And(Or(task_1, task_2 of task_dependent_external)) for today: one task
    # waiting for either; it waits until the upstream workflow has run today
    started = await stack.request(
        "POST", f"/api/v1/workflows/{names['task_dependent_example']}/runs", json={})
    waiting = str(started.json()["instance_id"])
    await stack.wait_task_state(waiting, "running")
    assert (await _run(stack, names["task_dependent_external"]))["state"] == "succeeded"
    dep = await stack.wait_run(waiting, timeout=60)
    assert dep["state"] == "succeeded" and _states(dep) == {"task_dependent": "succeeded"}

    # names outside Shoal's rules are mapped, and the response says how
    assert names["workflow:3"] == "workflow-3"
    assert any("'task:0-workflow:3' -> 'task-0-workflow-3'" in w for w in r.json()["warnings"])
    bulk = await _run(stack, "workflow-3")
    assert bulk["state"] == "succeeded" and len(bulk["tasks"]) == 5

    for example in ("tutorial", "tutorial_decorator", "task_python_example"):
        assert (await _run(stack, names[example]))["state"] == "succeeded", example

    # typed local params and $[yyyy-MM-dd] reach the shell; an unknown ${name} is the
    # shell's (the tutorial's `params=` is not a local param in SDK 4.1: empty, as in DS)
    local = await _run(stack, "sdk_local_params", schedule_time="2026-03-01T06:00:00+00:00")
    text = await _log(stack, local["instance_id"], "show")
    assert re.search(r"p1=str1 p2=123 p3=2026-03-01 home=/\S*", text), text
    tut = await _run(stack, names["tutorial"])
    assert re.search(r"parameter str type\s*$", await _log(stack, tut["instance_id"],
                                                           "task_child_one"), re.M)

    # a #{setValue} output reaches the next task
    sv = await _run(stack, "sdk_set_value")
    assert {t["task"]: t["outputs"] for t in sv["tasks"]}["produce"] == {"random_value": "4242"}
    assert "got 4242" in await _log(stack, sv["instance_id"], "consume")

    # the same content again: no new version
    again = await stack.request("POST", "/api/v1/import/dolphinscheduler", json=body)
    assert again.status_code == 201
    assert {(w["name"], w["version"]) for w in again.json()["workflows"]} == {
        (w["name"], w["version"]) for w in r.json()["workflows"]}


async def test_examples_of_other_types_are_refused_naming_each_task_and_type(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _examples(monkeypatch, [*RUNNABLE, *REFUSED])
    for role, status in (("operator", 403), (None, 401)):
        denied = await stack.request("POST", "/api/v1/import/dolphinscheduler", role=role,
                                     json=rec.workflows)
        assert denied.status_code == status, "importing definitions is for admins"
    r = await stack.request("POST", "/api/v1/import/dolphinscheduler", json=rec.workflows)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problems = r.json()["problems"]
    assert {p.get("type") for p in problems} >= set(REFUSED.values())
    assert any(p.get("task") == "task_spark" for p in problems)
    listed = await stack.request("GET", "/api/v1/workflows")
    assert listed.json() == [], "nothing is half-imported"
    # a schedule that cannot be: refused before anything is published
    export = json.loads((FIXTURES / "export-with-schedule.json").read_text())
    export[1]["schedule"]["crontab"] = "every day at two"
    bad_cron = await stack.request("POST", "/api/v1/import/dolphinscheduler", json=export)
    assert bad_cron.status_code == 422 and "DS Daily: schedule" in bad_cron.json()["detail"]
    assert (await stack.request("GET", "/api/v1/workflows")).json() == []
    # a body that is not JSON, and JSON that is no workflow: 422 naming it, nothing stored
    for content in (b"{not json", b"42", b'[{"name": "x"}]', b'{"taskDefinitionJson": "[oops"}'):
        bad = await stack.request("POST", "/api/v1/import/dolphinscheduler", content=content,
                                  headers={"content-type": "application/json"})
        assert bad.status_code == 422, (content, bad.text)
        assert bad.json()["detail"]


async def test_fixtures_import_run_and_round_trip(stack: Stack) -> None:
    api_test = json.loads((FIXTURES / "api-test-workflow.json").read_text())
    r = await stack.request("POST", "/api/v1/import/dolphinscheduler", json=api_test)
    assert r.status_code == 201, r.text
    assert r.json()["workflows"][0]["source_code"] == 9752686452032
    run = await _run(stack, "test")
    assert run["state"] == "succeeded"
    assert "hello world" in await _log(stack, run["instance_id"], "test")

    # the export file, through the CLI: a schedule (offline), a sub-process, a dependent task
    out = await shoal(stack, "import-ds", str(FIXTURES / "export-with-schedule.json"))
    assert "DS Daily (code 8100000000002) -> ds-daily version 1" in out.stdout
    scheds = (await stack.request("GET", "/api/v1/schedules?workflow=ds-daily")).json()
    assert [(s["cron"], s["enabled"]) for s in scheds] == [("0 0 2 * * ? *", False)]
    daily = await _run(stack, "ds-daily")
    assert daily["state"] == "succeeded", json.dumps(daily)
    assert _states(daily) == {"run-child": "succeeded", "wait-child": "succeeded",
                              "report": "succeeded"}

    # ${system.biz.date} inside the child's local param: the day before its business time
    children = (await stack.request("GET", "/api/v1/runs", params={"workflow": "ds_child"})
                ).json()
    child = children["runs"][0] if isinstance(children, dict) else children[0]
    business = datetime.fromisoformat(child["submitted_at"])
    expected = (business - timedelta(days=1)).strftime("%Y%m%d")
    assert f"child {expected}" in await _log(stack, child["instance_id"], "child-echo")

    # round trip: export in DolphinScheduler's form, import again: same definition
    before = (await stack.request("GET", "/api/v1/workflows/ds-daily")).json()
    exported = await stack.request("GET", "/api/v1/workflows/ds-daily/export",
                                   params={"format": "dolphinscheduler"})
    assert exported.status_code == 200
    item = exported.json()[0]
    assert item["workflowDefinition"]["code"] == 8100000000002
    assert {t["taskType"] for t in item["taskDefinitionList"]} == {
        "DEPENDENT", "SUB_WORKFLOW", "SHELL"}
    assert item["schedule"]["crontab"] == "0 0 2 * * ? *"
    again = await stack.request("POST", "/api/v1/import/dolphinscheduler",
                                json=exported.json())
    assert again.status_code == 201, again.text
    assert again.json()["workflows"] == [{"name": "ds-daily", "version": before["version"],
                                          "source_name": "ds-daily",
                                          "source_code": 8100000000002}]
    after = (await stack.request("GET", "/api/v1/workflows/ds-daily")).json()
    assert after["definition"] == before["definition"]
    assert len((await stack.request("GET", "/api/v1/schedules?workflow=ds-daily")).json()) == 1
