"""The CLI against the running services: apply, run --wait, status, events, replay, rebuild."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from tests.e2e.kafka_io import read_all
from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


async def shoal(stack: Stack, *args: str, check: bool = True,
                **env_over: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: only SHOAL_API_URL and SHOAL_API_TOKEN (no database)."""
    env = {k: v for k, v in stack.env(SHOAL_API_URL=stack.api).items()
           if k != "SHOAL_DATABASE_URL"}
    env.update(env_over)
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "shoal.cli", *args], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


async def test_the_cli_drives_a_run_and_the_operations(stack: Stack):
    out = await shoal(stack, "apply", "examples/diamond.yaml")
    assert out.stdout.strip() == "diamond version 1 (published)"
    again = await shoal(stack, "apply", "examples/diamond.yaml")
    assert again.stdout.strip() == "diamond version 1 (unchanged)"

    run = await shoal(stack, "run", "diamond", "--param", "region=us", "--wait", "--timeout", "60",
                      "--json")
    iid, _, body = run.stdout.partition("\n")
    state = json.loads(body)
    assert state["state"] == "succeeded" and state["params"]["region"] == "us"
    # Readable by default: a header line and one row per task.
    status = (await shoal(stack, "status", iid)).stdout.splitlines()
    assert status[0].startswith(iid) and "succeeded" in status[0]
    rows = [ln.split() for ln in status if ln.split() and ln.split()[0] in "abcd"]
    assert sorted(r[0] for r in rows) == ["a", "b", "c", "d"]
    assert all(r[2] == "succeeded" for r in rows)
    listed = (await shoal(stack, "runs", "--workflow", "diamond", "--state", "succeeded")).stdout
    assert iid in listed and listed.splitlines()[0].split()[:4] == [
        "INSTANCE_ID", "WORKFLOW", "V", "STATE"]
    as_json = json.loads((await shoal(stack, "runs", "--json")).stdout)
    assert [r["instance_id"] for r in as_json["runs"]] == [iid]
    assert "diamond" in (await shoal(stack, "workflows")).stdout

    # export -> apply is a round trip: the same version, unchanged.
    exported = (await shoal(stack, "export", "diamond")).stdout
    path = Path(stack.workdir) / "diamond-exported.yaml"
    path.write_text(exported)
    assert (await shoal(stack, "apply", str(path))).stdout.strip() == \
        "diamond version 1 (unchanged)"

    events = (await shoal(stack, "events", iid)).stdout.splitlines()
    assert events[0].split()[2] == "WorkflowSubmitted" and "WorkflowSucceeded" in events[-1]
    replay = (await shoal(stack, "replay", iid, "--until", "3")).stdout.splitlines()
    assert replay[0].split() == ["seq", "event", "run", "a", "b", "c", "d"]
    assert [ln.split()[1] for ln in replay[1:]] == ["WorkflowSubmitted", "WorkflowStarted",
                                                    "TaskDispatched"]
    assert replay[-1].split()[2:] == ["running", "dispatched", "-", "-", "-"]

    # Committed events also reached <prefix>.events, in order, through the outbox.
    async def published() -> list[dict] | None:
        mine = [e for e in await read_all(stack.bootstrap, f"{stack.prefix}.events")
                if e["instance_id"] == iid]
        return mine if len(mine) == len(events) else None

    on_topic = await eventually(published, what="events on the events topic")
    assert [e["seq"] for e in on_topic] == list(range(1, len(events) + 1))

    # Rebuilding the projections swaps in tables rebuilt from the log.
    rebuilt = await shoal(stack, "projections", "rebuild", SHOAL_DATABASE_URL=stack.database_url)
    assert rebuilt.stdout.startswith("read models rebuilt from "), rebuilt.stdout
    conn = await asyncpg.connect(stack.database_url)
    try:
        n = await conn.fetchval("SELECT count(*) FROM shoal_read.task_runs "
                                "WHERE state = 'succeeded'")
        assert n == 4
    finally:
        await conn.close()
    assert (await stack.run_state(iid))["state"] == "succeeded"

    failing = await shoal(stack, "run", "no-such-workflow", check=False)
    assert failing.returncode != 0 and "no workflow named 'no-such-workflow'" in failing.stderr
    bad = await shoal(stack, "run", "diamond", "--param", "oops", check=False)
    assert bad.returncode != 0 and "k=v" in bad.stderr

    # Expected failures are one line and a non-zero exit, never a traceback.
    for proc in [await shoal(stack, "runs", check=False, SHOAL_API_TOKEN=""),
                 await shoal(stack, "status", iid, check=False,
                             SHOAL_API_TOKEN=stack.tokens["viewer"] + "x"),
                 await shoal(stack, "runs", check=False, SHOAL_API_URL="http://127.0.0.1:9"),
                 await shoal(stack, "stop", iid, check=False,
                             SHOAL_API_TOKEN=stack.tokens["viewer"])]:
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("shoal: "), proc.stderr
    assert "401" in (await shoal(stack, "runs", check=False, SHOAL_API_TOKEN="")).stderr


async def test_events_into_a_closed_pipe_exit_cleanly(stack: Stack):
    # Enough history (> a pipe buffer) that the reader really closes before the writer ends.
    await stack.apply({"name": "wide", "tasks": [{"name": f"t{i}", "command": "true"}
                                                 for i in range(150)]})
    r = await stack.request("POST", "/api/v1/workflows/wide/runs", json={})
    iid = r.json()["instance_id"]
    await stack.wait_run(iid)
    env = {k: v for k, v in stack.env(SHOAL_API_URL=stack.api).items()
           if k != "SHOAL_DATABASE_URL"}
    proc = await asyncio.to_thread(
        subprocess.run, ["bash", "-c", f"set -o pipefail; {sys.executable} -m shoal.cli "
                         f"events {iid} | head -1"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len((await stack.request("GET", f"/api/v1/runs/{iid}/events")).content) > 65536
    assert proc.stderr == "" and "WorkflowSubmitted" in proc.stdout
    assert len(proc.stdout.splitlines()) == 1


async def test_backfill_says_its_plan_and_asks_for_yes_above_a_thousand_runs(stack: Stack):
    """The issue's surprise: with a schedule firing every 5 s, `shoal backfill` over two
    days would plan 34,561 runs; it says so and refuses without --yes, creating nothing."""
    await stack.apply({"name": "often", "tasks": [{"name": "t", "command": "true"}]})
    r = await stack.request("POST", "/api/v1/schedules", json={
        "workflow": "often", "cron": "*/5 * * * * ?", "timezone": "UTC", "enabled": False})
    assert r.status_code == 201, r.text
    args = ("backfill", "often", "--start", "2026-01-01", "--end", "2026-01-03")
    refused = await shoal(stack, *args, check=False)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
    assert "34,561 runs: the fires of the workflow's schedule '*/5 * * * * ?'" in refused.stdout
    assert "2026-01-01 00:00:00 to 2026-01-03 00:00:00" in refused.stdout
    assert refused.stderr.startswith("shoal: not started: 34,561 runs is more than 1,000")
    assert "--yes" in refused.stderr
    assert (await stack.request("GET", "/api/v1/backfills")).json() == []
    dry = await shoal(stack, *args, "--dry-run", "--json")
    assert json.loads(dry.stdout)["count"] == 34_561
    # Its own cron: three runs, said and done without --yes.
    done = await shoal(stack, *args, "--cron", "0 0 * * *")
    assert "plan: 3 runs: the fires of '0 0 * * *' (UTC)" in done.stdout, done.stdout
    assert ": 3 run(s)" in done.stdout
    # Above the threshold, --yes goes ahead.
    yes = await shoal(stack, *args, "--cron", "0 * * * * ?", "--yes")
    assert "plan: 2,881 runs" in yes.stdout and ": 2881 run(s)" in yes.stdout, yes.stdout
    assert [b["planned"] for b in (await stack.request("GET", "/api/v1/backfills")).json()
            ] == [2881, 3]
