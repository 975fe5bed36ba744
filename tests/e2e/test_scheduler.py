"""The scheduler service as processes: every fire once across SIGKILLs, disable/enable with
catch-up, offline workflows, validation."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from shoal.infra.processes import OwnedProcess, service_argv
from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e

TICK = {"name": "tick", "tasks": [{"name": "a", "command": "echo fired for $SHOAL_SCHEDULE_TIME"}]}
EVERY_2S = "0/2 * * * * ?"


async def scheduled_runs(stack: Stack, workflow: str = "tick") -> list[dict[str, Any]]:
    r = await stack.request("GET", f"/api/v1/runs?workflow={workflow}&limit=500")
    assert r.status_code == 200, r.text
    return sorted(r.json()["runs"], key=lambda x: x["schedule_time"] or "")


def times(runs: list[dict[str, Any]]) -> list[datetime]:
    return [datetime.fromisoformat(r["schedule_time"]) for r in runs]


async def create_schedule(stack: Stack, **fields: Any) -> dict[str, Any]:
    r = await stack.request("POST", "/api/v1/schedules",
                            json={"workflow": "tick", "cron": EVERY_2S, **fields})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def update(stack: Stack, sid: str, **fields: Any) -> dict[str, Any]:
    r = await stack.request("PUT", f"/api/v1/schedules/{sid}", json=fields)
    assert r.status_code == 200, r.text
    return dict(r.json())


def owner(stack: Stack, sid: str) -> OwnedProcess:
    """The live scheduler that fired ``sid`` most recently (by its log)."""
    best: tuple[str, OwnedProcess] | None = None
    for p in stack.processes:
        if p.name != "scheduler" or not p.alive() or p.log_path is None:
            continue
        fired = [json.loads(ln)["ts"] for ln in
                 p.log_path.read_text(errors="replace").splitlines()
                 if f"schedule {sid} fired" in ln]
        if fired and (best is None or fired[-1] > best[0]):
            best = (fired[-1], p)
    assert best is not None, "no live scheduler has fired the schedule"
    return best[1]


async def fires_after(stack: Stack, t: datetime) -> list[dict[str, Any]]:
    return [r for r in await scheduled_runs(stack)
            if datetime.fromisoformat(r["submitted_at"]) > t]


async def test_every_fire_once_across_scheduler_sigkills(stack: Stack):
    """Acceptance 2: two schedulers, each SIGKILLed in turn (the first restarted in
    between); the runs' schedule times are exactly every 2 s, none missing, none twice."""
    stack.start("scheduler")
    stack.start("scheduler")
    await stack.apply(TICK)
    s = await create_schedule(stack)
    sid = s["id"]
    await eventually(lambda: _count_at_least(stack, 3), timeout=60, what="first fires")
    t_end = time.monotonic() + 40
    takeovers = []
    for _ in range(2):
        await asyncio.sleep(6)
        victim = owner(stack, sid)
        killed_at = datetime.now(UTC)
        victim.kill9()
        caught_up = await eventually(lambda k=killed_at: fires_after(stack, k), timeout=60,
                                     what="a fire after the SIGKILL")
        first = min(datetime.fromisoformat(r["submitted_at"]) for r in caught_up)
        takeovers.append((first - killed_at).total_seconds())
        if len([p for p in stack.processes if p.name == "scheduler" and p.alive()]) < 2:
            stack.start("scheduler")  # the killed one comes back
    await asyncio.sleep(max(0.0, t_end - time.monotonic()))
    await update(stack, sid, enabled=False)
    runs = await scheduled_runs(stack)
    fired = times(runs)
    print(f"\nSIGKILL -> first caught-up fire submitted: {takeovers} s; {len(fired)} fires")
    assert len(fired) >= 20
    assert len({r["instance_id"] for r in runs}) == len(runs)
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(fired)}
    assert gaps == {2.0}, f"schedule times not exactly every 2 s: {fired}"
    assert fired[0] == datetime.fromisoformat(s["next_fires"][0])
    for r in runs:
        done = await stack.wait_run(r["instance_id"], timeout=60)
        assert done["state"] == "succeeded", done


async def _count_at_least(stack: Stack, n: int) -> bool:
    return len(await scheduled_runs(stack)) >= n


async def test_disable_stops_fires_and_enable_follows_catchup(stack: Stack):
    """Acceptance 3."""
    stack.start("scheduler")
    await stack.apply(TICK)
    sid = (await create_schedule(stack))["id"]
    await eventually(lambda: _count_at_least(stack, 2), timeout=60, what="first fires")

    off_at = datetime.now(UTC)
    await update(stack, sid, enabled=False)
    await asyncio.sleep(7)
    late = [t for t in times(await scheduled_runs(stack)) if t > off_at + timedelta(seconds=2)]
    assert late == [], "fires more than one period after disabling"

    # catchup none: the fires missed while off never run.
    last_before = max(times(await scheduled_runs(stack)))
    on_at = datetime.now(UTC)
    await update(stack, sid, enabled=True, catchup="none")
    await eventually(lambda: fires_after(stack, on_at), timeout=30, what="fires after enable")
    gap = [t for t in times(await scheduled_runs(stack)) if last_before < t < on_at]
    assert gap == [], f"catchup=none fired missed times {gap}"

    # catchup all: off for a while, then every missed fire runs.
    off_at = datetime.now(UTC)
    await update(stack, sid, enabled=False)
    await asyncio.sleep(6)
    last_before = max(times(await scheduled_runs(stack)))
    on_at = datetime.now(UTC)
    await update(stack, sid, enabled=True, catchup="all")

    async def caught_up() -> bool:
        fired = times(await scheduled_runs(stack))
        return max(fired) > on_at

    await eventually(caught_up, timeout=30, what="catch-up after enable")
    await update(stack, sid, enabled=False)
    fired = [t for t in times(await scheduled_runs(stack)) if t >= last_before]
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(fired)}
    assert gaps == {2.0}, f"catchup=all left a hole: {fired}"
    assert any(last_before < t < on_at for t in fired), "no missed fire was caught up"


async def test_offline_or_deleted_workflow_does_not_fire(stack: Stack):
    stack.start("scheduler")
    await stack.apply(TICK)
    await create_schedule(stack)
    await eventually(lambda: _count_at_least(stack, 1), timeout=60, what="first fire")
    r = await stack.request("POST", "/api/v1/workflows/tick/offline")
    assert r.status_code == 200, r.text
    off_at = datetime.now(UTC)
    assert (await stack.request("POST", "/api/v1/workflows/tick/runs", json={})
            ).status_code == 409
    await asyncio.sleep(6)
    assert [t for t in times(await scheduled_runs(stack))
            if t > off_at + timedelta(seconds=2)] == []
    assert (await stack.request("POST", "/api/v1/workflows/tick/online")).status_code == 200
    on_at = datetime.now(UTC)
    await eventually(lambda: fires_after(stack, on_at), timeout=30, what="fires when online")
    async def deleted() -> bool:
        # Refused (409) while a fire's run is unfinished; fires are short, so soon accepted.
        r = await stack.request("DELETE", "/api/v1/workflows/tick")
        assert r.status_code in (204, 409), r.text
        return r.status_code == 204

    await eventually(deleted, interval=0.05, what="workflow deleted between fires")
    gone_at = datetime.now(UTC)
    assert (await stack.request("GET", "/api/v1/workflows/tick")).status_code == 404
    await asyncio.sleep(6)
    assert [t for t in times(await scheduled_runs(stack))
            if t > gone_at + timedelta(seconds=2)] == []


async def test_schedule_api_validation_and_next_fires(stack: Stack):
    await stack.apply({**TICK, "params": {"region": "us"}})  # schedules set declared params
    r = await stack.request("POST", "/api/v1/schedules",
                            json={"workflow": "tick", "cron": "0 0 2 ? * 9",
                                  "timezone": "Europe/Nowhere"})
    assert r.status_code == 422
    paths = {p["path"] for p in r.json()["problems"]}
    assert paths == {"cron", "timezone"}
    r = await stack.request("POST", "/api/v1/schedules",
                            json={"workflow": "nope", "cron": "0 0 2 * * ?"})
    assert r.status_code == 422 and r.json()["problems"][0]["path"] == "workflow"
    s = await create_schedule(stack, cron="0 30 2 * * ?", timezone="Europe/Berlin",
                              start="2027-03-26T00:00:00", catchup="latest",
                              params={"region": "eu"})
    assert s["next_fires"] == ["2027-03-26T01:30:00+00:00", "2027-03-27T01:30:00+00:00",
                               "2027-03-28T01:30:00+00:00",  # 02:30 skipped: 03:30 CEST
                               "2027-03-29T00:30:00+00:00", "2027-03-30T00:30:00+00:00"]
    got = (await stack.request("GET", f"/api/v1/schedules/{s['id']}")).json()
    assert got["params"] == {"region": "eu"} and got["catchup"] == "latest"
    listed = (await stack.request("GET", "/api/v1/schedules?workflow=tick")).json()
    assert [x["id"] for x in listed] == [s["id"]]
    r = await stack.request("PUT", f"/api/v1/schedules/{s['id']}", json={"cron": "bad"})
    assert r.status_code == 422
    assert (await stack.request("DELETE", f"/api/v1/schedules/{s['id']}")).status_code == 204
    assert (await stack.request("GET", f"/api/v1/schedules/{s['id']}")).status_code == 404


async def test_a_stale_record_does_not_undo_a_newer_change(stack: Stack):
    """A copy of an older revision (an API re-publishing at its start while another API
    changed the schedule) reaches the topic after the change: the scheduler keeps the
    newer one, so the disabled schedule stays off."""
    import asyncpg

    from tests.e2e.kafka_io import publish_with_librdkafka

    stack.start("scheduler")
    await stack.apply(TICK)
    sid = (await create_schedule(stack))["id"]
    await eventually(lambda: _count_at_least(stack, 1), timeout=60, what="first fire")
    conn = await asyncpg.connect(stack.database_url)
    try:
        enabled_record = await conn.fetchval(
            "SELECT record::text FROM shoal.schedules WHERE id = $1::uuid", sid)
    finally:
        await conn.close()
    off_at = datetime.now(UTC)
    await update(stack, sid, enabled=False)
    publish_with_librdkafka(stack.bootstrap, f"{stack.prefix}.schedules",
                            [(sid, enabled_record.encode())])
    await asyncio.sleep(6)
    assert [t for t in times(await scheduled_runs(stack))
            if t > off_at + timedelta(seconds=2)] == []


async def test_publishing_a_deleted_workflow_again_restores_it(stack: Stack):
    await stack.apply(TICK)
    assert (await stack.request("DELETE", "/api/v1/workflows/tick")).status_code == 204
    listed = (await stack.request("GET", "/api/v1/workflows")).json()
    assert "tick" not in [w["name"] for w in listed]
    assert (await stack.request("POST", "/api/v1/workflows/tick/runs", json={})
            ).status_code == 404
    again = await stack.apply(TICK)
    assert again["changed"] is True
    got = (await stack.request("GET", "/api/v1/workflows/tick")).json()
    assert got["online"] is True
    assert (await stack.request("POST", "/api/v1/workflows/tick/runs", json={})
            ).status_code == 202


async def test_one_log_format_and_faust_data_under_the_data_dir(bare_stack: Stack,
                                                                 tmp_path: Path):
    """Started in a fresh working directory: every line of its output is one JSON object
    (not also faust's own format), and faust leaves no "<app>-data" folder there."""
    stack = bare_stack
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    log = tmp_path / "scheduler-cwd.log"
    stack.processes.append(OwnedProcess("scheduler", service_argv("scheduler"),
                                        stack.env(SHOAL_LOG_LEVEL="INFO"), log, cwd).start())

    async def owns_all() -> bool:
        text = log.read_text(errors="replace") if log.exists() else ""
        return all(f"owning schedules partition {p} " in text for p in range(4))
    await eventually(owns_all, timeout=90, what="the scheduler owning its partitions")
    stack.stop()
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines]  # each line is JSON: one format
    assert all(r["service"] == "scheduler" for r in records)
    owning = Counter(r["message"].split(" from ")[0] for r in records
                     if r["message"].startswith("owning schedules partition"))
    assert owning == {f"owning schedules partition {p}": 1 for p in range(4)}, owning
    assert list(cwd.iterdir()) == []
    assert (stack.workdir / "data" / "scheduler").is_dir()
