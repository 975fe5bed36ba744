"""Rebalances while tasks run: workers join and one leaves while a wide fan-out of short
tasks runs. Each task's side effect (a line in a file outside the system) happens once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e

WIDTH = 150


async def test_rebalances_while_tasks_run_execute_each_task_once(stack: Stack, tmp_path: Path):
    effects = tmp_path / "effects.txt"
    mark = f'echo "$SHOAL_INSTANCE_ID/$SHOAL_TASK $SHOAL_ATTEMPT" >> {effects}'
    await stack.apply({"name": "wide", "tasks": [
        {"name": f"t{i}", "command": f"sleep 0.05 && {mark}", "retries": 2,
         "retry_interval": 1} for i in range(WIDTH)]})
    iids = [(await stack.request("POST", "/api/v1/workflows/wide/runs", json={})).json()[
        "instance_id"] for _ in range(2)]

    async def some_done() -> bool:
        return effects.exists() and len(effects.read_text().splitlines()) >= 20
    await eventually(some_done, timeout=60, what="the fan-out under way")
    joined = stack.start("worker")                  # a rebalance while tasks run
    await asyncio.sleep(1.5)
    stack.start("worker")                           # another
    await asyncio.sleep(1.5)
    joined.stop()                                   # and one leaves (SIGTERM, drained)
    for iid in iids:
        assert (await stack.wait_run(iid, timeout=180))["state"] == "succeeded"
    lines = effects.read_text().splitlines()
    per_task = Counter(ln.split()[0] for ln in lines)
    twice = {k: n for k, n in per_task.items() if n > 1}
    assert len(per_task) == 2 * WIDTH and not twice, (len(lines), sorted(twice.items())[:5])
