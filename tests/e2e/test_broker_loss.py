"""Broker loss: the embedded broker (memory only) SIGKILLed and restarted mid-run, so every
topic, message and group offset is gone; the services reconnect, recreate the topics, and
the orchestrators reconcile from Postgres."""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shoal.infra.processes import OwnedProcess, free_port, start_broker
from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e

CHAIN = {"name": "sleepy", "tasks": [
    {"name": f"s{i}", "command": "sleep 1", **({"depends_on": [f"s{i - 1}"]} if i else {})}
    for i in range(4)]}


@pytest.fixture
async def own_broker() -> AsyncIterator[tuple[int, list[OwnedProcess]]]:
    """A broker only this test uses (it is killed); every incarnation is stopped after."""
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"shoal-test-broker-{port}.log"
    procs = [start_broker(port, log)]
    try:
        yield port, procs
    finally:
        for p in procs:
            p.stop()


async def test_broker_sigkilled_and_restarted_mid_run(
        own_broker: tuple[int, list[OwnedProcess]], database: str, tmp_path: Path):
    """Issue 11, acceptance 3: 10 runs of a chain of `sleep 1` survive the broker's loss."""
    port, brokers = own_broker
    stack = Stack(f"127.0.0.1:{port}", database, tmp_path)
    try:
        await stack.start_all()
        await stack.apply(CHAIN)
        ids = []
        for _ in range(10):
            r = await stack.request("POST", "/api/v1/workflows/sleepy/runs", json={})
            assert r.status_code == 202, r.text
            ids.append(r.json()["instance_id"])

        async def all_running() -> bool:
            runs = [await stack.run_state(i) for i in ids]
            return all(r and any(t["state"] == "running" for t in r["tasks"]) for r in runs)
        await eventually(all_running, timeout=60, what="every run with a task running")

        brokers[0].kill9()
        await asyncio.sleep(2)
        brokers.append(start_broker(port, brokers[0].log_path))
        for iid in ids:
            run = await stack.wait_run(iid, timeout=120)
            assert run["state"] == "succeeded", run
        dead = [p.name for p in stack.processes if not p.alive()]
        assert dead == [], f"services exited while the broker was away: {dead}"
        for iid in ids:
            counts = Counter((e["type"], e["data"].get("task"))
                             for e in await stack.events(iid))
            for t in CHAIN["tasks"]:
                assert counts[("TaskSucceeded", t["name"])] == 1, (iid, counts)
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()
