"""Time expressions relative to the run's schedule_time, through real services."""

from __future__ import annotations

import pytest

from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e

DATES = {"name": "dates", "params": {"day": "$[yyyyMMdd-1]"}, "tasks": [{
    "name": "show",
    "command": "echo \"prev=$[yyyyMMdd-1] month_ago=$[add_months(yyyyMMdd,-1)] "
               "last_of_prev=$[month_last_day(yyyyMMdd,-1)] biz=${system.biz.date} "
               "cur=${system.biz.curdate} day=${day} hour_before=$[yyyyMMddHHmmss-1/24]\"",
    "env": {"DAY": "$[yyyy-MM-dd]"}}]}


async def log_of(stack: Stack, iid: str) -> str:
    r = await stack.request("GET", f"/api/v1/runs/{iid}/tasks/show/log")
    assert r.status_code == 200, r.text
    return r.text


async def test_a_run_sees_its_business_dates(stack: Stack):
    await stack.apply(DATES)
    r = await stack.request("POST", "/api/v1/workflows/dates/runs",
                            json={"schedule_time": "2026-03-01T00:00:00+00:00"})
    iid = r.json()["instance_id"]
    assert (await stack.wait_run(iid))["state"] == "succeeded"
    log = await log_of(stack, iid)
    assert ("prev=20260228 month_ago=20260201 last_of_prev=20260228 biz=20260228 "
            "cur=20260301 day=20260228 hour_before=20260228230000") in log
    dispatched = next(e for e in await stack.events(iid) if e["type"] == "TaskDispatched")
    assert dispatched["data"]["env"] == {"DAY": "2026-03-01"}


async def test_backfill_dates_are_local_to_its_time_zone(stack: Stack):
    stack.start("scheduler")
    await stack.apply(DATES)
    r = await stack.request("POST", "/api/v1/workflows/dates/backfill",
                            json={"dates": ["2026-03-01"], "timezone": "Europe/Berlin"})
    assert r.status_code == 202, r.text
    iid = r.json()["instance_ids"][0]
    run = await stack.wait_run(iid, timeout=60)
    assert run["state"] == "succeeded"
    # Midnight in Berlin is 23:00 UTC the day before; the business date is Berlin's.
    assert run["schedule_time"] == "2026-02-28T23:00:00+00:00"
    log = await eventually(lambda: log_of(stack, iid), what="the task log")
    assert "cur=20260301" in log and "prev=20260228" in log


async def test_a_bad_expression_is_refused_naming_its_place(stack: Stack):
    bad = {"name": "bad", "tasks": [{"name": "t", "command": "echo $[yyyyMMdd+1/0]"}]}
    r = await stack.request("POST", "/api/v1/workflows", json=bad)
    assert r.status_code == 422
    assert r.json()["problems"][0]["path"] == "tasks[0].command"
    assert "$[yyyyMMdd+1/0]" in r.json()["problems"][0]["message"]
