"""Backfills (complement data) with the scheduler as a process: serial order, parallelism,
cancel, idempotent re-submission, schedule_time reaching the task."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime
from typing import Any

import pytest

from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e


def daily(sleep: float) -> dict[str, Any]:
    return {"name": "daily", "tasks": [
        {"name": "load", "command": f"echo day=$SHOAL_SCHEDULE_TIME; sleep {sleep}"}]}


async def backfill(stack: Stack, **body: Any) -> dict[str, Any]:
    r = await stack.request("POST", "/api/v1/workflows/daily/backfill", json=body)
    assert r.status_code in (200, 202), r.text
    return dict(r.json())


async def progress(stack: Stack, bid: str) -> dict[str, Any]:
    r = await stack.request("GET", f"/api/v1/backfills/{bid}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def wait_finished(stack: Stack, bid: str, timeout: float = 120) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        p = await progress(stack, bid)
        return p if p["state"] == "finished" else None
    return await eventually(done, timeout=timeout, interval=0.5, what=f"backfill {bid}")


async def runs(stack: Stack, ids: list[str]) -> list[dict[str, Any]]:
    out = []
    for iid in ids:
        run = await stack.run_state(iid)
        assert run is not None, iid
        out.append(run)
    return out


def peak_concurrency(rs: list[dict[str, Any]]) -> int:
    edges = []
    for r in rs:
        edges += [(datetime.fromisoformat(r["started_at"]), 1),
                  (datetime.fromisoformat(r["finished_at"]), -1)]
    active = peak = 0
    for _, d in sorted(edges, key=lambda e: (e[0], e[1])):
        active += d
        peak = max(peak, active)
    return peak


async def test_serial_backfill_runs_one_after_another_in_date_order(stack: Stack):
    stack.start("scheduler")
    await stack.apply(daily(0.3))
    out = await backfill(stack, start="2026-01-01", end="2026-01-05", mode="serial")
    assert len(out["instance_ids"]) == 5
    p = await wait_finished(stack, out["backfill_id"])
    assert (p["planned"], p["started"], p["finished"], p["succeeded"]) == (5, 5, 5, 5)
    rs = await runs(stack, out["instance_ids"])
    assert [r["schedule_time"][:10] for r in rs] == [f"2026-01-0{d}" for d in range(1, 6)]
    for prev, nxt in itertools.pairwise(rs):
        assert nxt["submitted_at"] >= prev["finished_at"], "overlapping serial runs"
    log = await stack.request("GET", f"/api/v1/runs/{out['instance_ids'][2]}/tasks/load/log")
    assert "day=2026-01-03T00:00:00+00:00" in log.text
    # Submitting the same backfill again starts nothing new.
    again = await backfill(stack, start="2026-01-01", end="2026-01-05", mode="serial")
    assert again["backfill_id"] == out["backfill_id"]
    assert again["instance_ids"] == out["instance_ids"] and again["created"] is False


async def test_reverse_serial_backfill_runs_latest_first(stack: Stack):
    stack.start("scheduler")
    await stack.apply(daily(0))
    out = await backfill(stack, dates=["2026-02-01", "2026-02-03", "2026-02-02"],
                         mode="serial", reverse=True)
    await wait_finished(stack, out["backfill_id"])
    rs = sorted(await runs(stack, out["instance_ids"]), key=lambda r: r["submitted_at"])
    assert [r["schedule_time"][:10] for r in rs] == ["2026-02-03", "2026-02-02", "2026-02-01"]


async def test_parallel_backfill_keeps_its_parallelism(stack: Stack):
    stack.start("scheduler")
    await stack.apply(daily(1))
    out = await backfill(stack, start="2026-03-01", end="2026-03-06", mode="parallel",
                         parallelism=2)
    await wait_finished(stack, out["backfill_id"])
    rs = await runs(stack, out["instance_ids"])
    assert all(r["state"] == "succeeded" for r in rs)
    assert peak_concurrency(rs) == 2


async def test_cancel_stops_admitting_new_runs(stack: Stack):
    stack.start("scheduler")
    await stack.apply(daily(1))
    out = await backfill(stack, start="2026-04-01", end="2026-04-10", mode="serial")
    bid = out["backfill_id"]

    async def two_started() -> bool:
        return (await progress(stack, bid))["started"] >= 2
    await eventually(two_started, timeout=60, what="two runs started")
    r = await stack.request("POST", f"/api/v1/backfills/{bid}/cancel")
    assert r.status_code == 202 and r.json()["state"] == "cancelled"
    at_cancel = (await progress(stack, bid))["started"]
    await asyncio.sleep(5)  # several runs' worth of time
    p = await progress(stack, bid)
    assert p["state"] == "cancelled"
    assert p["started"] <= at_cancel + 1  # at most the one admitted as the cancel arrived
    assert (await stack.request("POST", f"/api/v1/backfills/{bid}/resume")).status_code == 409


async def test_pause_holds_and_resume_continues(stack: Stack):
    stack.start("scheduler")
    await stack.apply(daily(0.5))
    out = await backfill(stack, start="2026-05-01", end="2026-05-04", mode="serial")
    bid = out["backfill_id"]
    await eventually(lambda: _started(stack, bid, 1), timeout=60, what="first run")
    assert (await stack.request("POST", f"/api/v1/backfills/{bid}/pause")).status_code == 202
    held = (await progress(stack, bid))["started"]
    await asyncio.sleep(4)
    assert (await progress(stack, bid))["started"] <= held + 1
    assert (await stack.request("POST", f"/api/v1/backfills/{bid}/resume")).status_code == 202
    p = await wait_finished(stack, bid)
    assert p["succeeded"] == 4


async def _started(stack: Stack, bid: str, n: int) -> bool:
    return (await progress(stack, bid))["started"] >= n


async def test_backfill_validation(stack: Stack):
    await stack.apply(daily(0))
    r = await stack.request("POST", "/api/v1/workflows/daily/backfill",
                            json={"start": "2026-01-01", "end": "2026-01-02", "cron": "nope"})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "cron"
    r = await stack.request("POST", "/api/v1/workflows/daily/backfill", json={"mode": "serial"})
    assert r.status_code == 422
    r = await stack.request("POST", "/api/v1/workflows/daily/backfill",
                            json={"start": "2026-01-01", "end": "2030-01-01",
                                  "cron": "* * * * *"})
    assert r.status_code == 422 and "more than" in r.text
    r = await stack.request("POST", "/api/v1/workflows/missing/backfill",
                            json={"start": "2026-01-01", "end": "2026-01-02"})
    assert r.status_code == 404
    # The calendar's first day (a 500 before: the planner stepped out of it).
    r = await stack.request("POST", "/api/v1/workflows/daily/backfill",
                            json={"start": "0001-01-01", "end": "0357-09-19"})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "start", r.text


async def test_the_api_serves_others_while_a_long_range_is_planned(stack: Stack):
    """Planning a range that turns out too long walks 100,001 cron fires (seconds): other
    requests are answered meanwhile, not after it (the planner ran on the event loop)."""
    await stack.apply(daily(0))
    finished: list[str] = []

    async def plan() -> None:
        r = await stack.request("POST", "/api/v1/workflows/daily/backfill",
                                json={"start": "2000-01-01", "end": "2400-01-01"})
        assert r.status_code == 422 and "more than" in r.text, r.text
        finished.append("plan")

    async def others() -> None:
        await asyncio.sleep(0.5)  # the plan under way
        for _ in range(3):
            r = await stack.request("GET", "/api/v1/workflows/daily")
            assert r.status_code == 200
        finished.append("others")

    await asyncio.gather(plan(), others())
    assert finished == ["others", "plan"]


async def test_default_timetable_is_the_enabled_schedules(stack: Stack):
    await stack.apply(daily(0))
    for cron, enabled in (("0/2 * * * * ?", False), ("0 6 * * *", True)):
        r = await stack.request("POST", "/api/v1/schedules", json={
            "workflow": "daily", "cron": cron, "enabled": enabled, "timezone": "Europe/Berlin"})
        assert r.status_code == 201, r.text
    out = await backfill(stack, start="2026-01-01", end="2026-01-03T23:00:00")
    p = await progress(stack, out["backfill_id"])
    assert (p["cron"], p["timezone"], p["planned"]) == ("0 6 * * *", "Europe/Berlin", 3)
    assert p["first_schedule_time"] == "2026-01-01T05:00:00+00:00"  # 06:00 CET


async def test_dry_run_says_what_would_happen_and_creates_nothing(stack: Stack):
    """A schedule firing every 5 s makes the default timetable plan 34,561 runs over two
    days: the dry run says so (source, count, first, last) and nothing is created."""
    await stack.apply(daily(0))
    r = await stack.request("POST", "/api/v1/schedules", json={
        "workflow": "daily", "cron": "*/5 * * * * ?", "timezone": "UTC"})
    assert r.status_code == 201, r.text
    r = await stack.request("POST", "/api/v1/workflows/daily/backfill", json={
        "start": "2026-01-01", "end": "2026-01-03", "dry_run": True})
    assert r.status_code == 200, r.text
    plan = r.json()
    assert plan["dry_run"] is True
    assert (plan["source"], plan["cron"], plan["count"]) == ("schedule", "*/5 * * * * ?", 34_561)
    assert (plan["first"], plan["last"]) == ("2026-01-01T00:00:00+00:00",
                                             "2026-01-03T00:00:00+00:00")
    assert plan["needs_confirmation"] is True and plan["confirm_above"] == 1_000
    assert "34,561 runs" in plan["description"]
    assert (await stack.request("GET", "/api/v1/backfills")).json() == []
    # The real one is the same plan, created (202) under the id the dry run announced.
    r = await stack.request("POST", "/api/v1/workflows/daily/backfill", json={
        "start": "2026-01-01", "end": "2026-01-03", "cron": "0 0 * * *"})
    assert r.status_code == 202, r.text
    dry = (await stack.request("POST", "/api/v1/workflows/daily/backfill", json={
        "start": "2026-01-01", "end": "2026-01-03", "cron": "0 0 * * *",
        "dry_run": True})).json()
    assert (dry["source"], dry["count"]) == ("cron", 3)
    assert dry["backfill_id"] == r.json()["backfill_id"]
