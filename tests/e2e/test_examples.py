"""The examples as a new user runs them: `shoal dev` (here on the test's broker and
database) on a port other than the default 8460, then every example workflow it loaded."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from shoal.infra.processes import OwnedProcess
from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
# How each example ends (fails.yaml fails on purpose).
EXPECTED = {"diamond": "succeeded", "data-flow": "succeeded", "fails": "failed",
            "python-sdk": "succeeded"}


async def test_every_example_runs_under_shoal_dev_on_another_port(bare_stack: Stack,
                                                                   tmp_path: Path):
    stack = bare_stack
    assert stack.api_port != 8460
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    log = tmp_path / "dev.log"
    dev = OwnedProcess("dev", [sys.executable, "-m", "shoal.cli", "dev", "--examples",
                               str(ROOT / "examples")], stack.env(), log, cwd).start()
    stack.processes.append(dev)

    async def loaded() -> list[str] | None:
        if "Shoal is running." not in (log.read_text(errors="replace") if log.exists() else ""):
            assert dev.alive(), log.read_text(errors="replace")
            return None
        r = await stack.request("GET", "/api/v1/workflows")
        return sorted(w["name"] for w in r.json())
    names = await eventually(loaded, timeout=120, what="shoal dev loading the examples")
    assert set(EXPECTED) <= set(names), names
    started = {}
    for name in EXPECTED:
        r = await stack.request("POST", f"/api/v1/workflows/{name}/runs", json={})
        assert r.status_code == 202, r.text
        started[name] = r.json()["instance_id"]
    for name, iid in started.items():
        run = await stack.wait_run(iid, ("succeeded", "failed", "stopped"), timeout=120)
        assert run["state"] == EXPECTED[name], (name, run)
    # The http task reached this stack's API (not 8460) and the branch after it ran.
    r = await stack.request("GET", f"/api/v1/runs/{started['data-flow']}")
    tasks = {t["task"]: t for t in r.json()["tasks"]}
    assert tasks["count"]["outputs"]["port"] == str(stack.api_port)
    assert tasks["post"]["state"] == "succeeded" and tasks["post"]["outputs"] == {
        "status": "ok"}, tasks["post"]
    assert tasks["celebrate"]["state"] == "succeeded"
    async with httpx.AsyncClient() as c:
        log_text = (await c.get(f"{stack.api}/api/v1/runs/{started['data-flow']}/tasks/post/log",
                                headers=stack.auth())).text
    assert f"GET {stack.api}/healthz?loads=" in log_text, log_text
    # Nothing left in the working directory (the scheduler's data is under SHOAL_DATA_DIR).
    assert list(cwd.iterdir()) == []
