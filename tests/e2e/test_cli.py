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


async def shoal(stack: Stack, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = stack.env(SHOAL_API_URL=stack.api)
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

    run = await shoal(stack, "run", "diamond", "--param", "region=us", "--wait", "--timeout", "60")
    iid, _, body = run.stdout.partition("\n")
    state = json.loads(body)
    assert state["state"] == "succeeded" and state["params"]["region"] == "us"

    events = (await shoal(stack, "events", iid)).stdout.splitlines()
    assert events[0].split()[2] == "WorkflowSubmitted" and "WorkflowSucceeded" in events[-1]
    replay = (await shoal(stack, "replay", iid, "--until", "3")).stdout.splitlines()
    assert [ln.split()[1] for ln in replay] == ["WorkflowSubmitted", "WorkflowStarted",
                                                "TaskDispatched"]
    assert "a=dispatched" in replay[-1]

    # Committed events also reached <prefix>.events, in order, through the outbox.
    async def published() -> list[dict] | None:
        mine = [e for e in await read_all(stack.bootstrap, f"{stack.prefix}.events")
                if e["instance_id"] == iid]
        return mine if len(mine) == len(events) else None

    on_topic = await eventually(published, what="events on the events topic")
    assert [e["seq"] for e in on_topic] == list(range(1, len(events) + 1))

    # Rebuilding the projections empties them; the running projector refills them.
    await shoal(stack, "projections", "rebuild")
    conn = await asyncpg.connect(stack.database_url)
    try:
        async def refilled() -> bool:
            n = await conn.fetchval("SELECT count(*) FROM shoal_read.task_runs "
                                    "WHERE state = 'succeeded'")
            return n == 4
        await eventually(refilled, what="read models refilled")
    finally:
        await conn.close()
    assert (await stack.run_state(iid))["state"] == "succeeded"

    failing = await shoal(stack, "run", "no-such-workflow", check=False)
    assert failing.returncode != 0 and "no workflow named 'no-such-workflow'" in failing.stderr
    bad = await shoal(stack, "run", "diamond", "--param", "oops", check=False)
    assert bad.returncode != 0 and "k=v" in bad.stderr
