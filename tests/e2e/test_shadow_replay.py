"""``shoal shadow-replay`` against the log of a running installation, runs in flight."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from tests.support import Stack


async def _shadow(stack: Stack, *args: str) -> tuple[int, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shoal.cli", "shadow-replay", "--json", *args,
        env=stack.env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode in (0, 1), err.decode()
    return proc.returncode, json.loads(out)


async def test_shadow_replay_of_a_live_log_while_runs_go_on(stack: Stack):
    await stack.apply({"name": "busy", "tasks": [
        {"name": "a", "command": "sleep 1"},
        {"name": "b", "command": "exit ${code}", "depends_on": ["a"], "retries": 1,
         "retry_interval": 1},
        {"name": "c", "command": "echo c", "depends_on": ["a"]}],
        "params": {"code": "0"}})
    ids = []
    for i in range(8):
        r = await stack.request("POST", "/api/v1/workflows/busy/runs",
                                json={"params": {"code": str(i % 2)}})
        assert r.status_code == 202, r.text
        ids.append(r.json()["instance_id"])
    await stack.wait_task_state(ids[-1], "running", task="a")
    # In flight: histories cut anywhere replay as far as they go.
    code, during = await _shadow(stack)
    assert code == 0 and during["differences"] == [], during["differences"]
    assert during["runs"] == len(ids) and during["compared"] >= 2 * len(ids)
    for iid in ids:
        await stack.wait_run(iid)
    code, after = await _shadow(stack, "--workflow", "busy")
    assert code == 0 and after["differences"] == []
    history = [e for iid in ids for e in await stack.events(iid)]
    decisions = {(e["instance_id"], e["causation_id"]) for e in history}
    assert after["compared"] + len(after["unreconstructed"]) == len(decisions) < len(history)
    code, none = await _shadow(stack, "--workflow", "nothing-by-this-name")
    assert code == 0 and none["runs"] == 0
