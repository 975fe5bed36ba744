"""Broker loss: the embedded broker (memory only) SIGKILLed and restarted mid-run, so every
topic, message and group offset is gone; the services reconnect, recreate the topics, and
the orchestrators reconcile from Postgres."""

from __future__ import annotations

import asyncio
import os
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
    if os.environ.get("SHOAL_TEST_KAFKA_BOOTSTRAP"):
        pytest.skip("needs a memory-only broker it can SIGKILL and restart empty; with "
                    "SHOAL_TEST_KAFKA_BOOTSTRAP the suite runs against an external broker, "
                    "which keeps its data (README, Running on Apache Kafka)")
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
    """Issue 11, acceptance 3: 10 runs of a chain of `sleep 1` survive the broker's loss,
    including the dispatches that were waiting on the lost tasks topic."""
    port, brokers = own_broker
    stack = Stack(f"127.0.0.1:{port}", database, tmp_path)
    try:
        stack.start("api")
        await eventually(stack._healthy, timeout=60, what="API up")
        stack.start("orchestrator")
        stack.start("projector")
        # Two slots, nothing fetched ahead: eight dispatches wait on the tasks topic when
        # the broker dies, and only the orchestrator's reconciliation brings them back.
        stack.start("worker", SHOAL_WORKER_SLOTS="2", SHOAL_WORKER_PREFETCH="0")
        await stack.apply(CHAIN)
        ids = []
        for _ in range(10):
            r = await stack.request("POST", "/api/v1/workflows/sleepy/runs", json={})
            assert r.status_code == 202, r.text
            ids.append(r.json()["instance_id"])

        async def all_dispatched() -> bool:
            # Every run under way, the slots busy and at least six dispatches waiting on
            # the tasks topic (a 1 s window of exactly 2 running + 8 waiting is easily
            # missed by ten sequential reads on a loaded machine).
            runs = [await stack.run_state(i) for i in ids]
            states = [t["state"] for r in runs if r for t in r["tasks"]]
            started = sum(1 for r in runs if r and r["tasks"])
            return (started == 10 and states.count("running") >= 1
                    and states.count("dispatched") >= 6)
        await eventually(all_dispatched, timeout=60, what="tasks running, 6+ waiting")

        brokers[0].kill9()
        await asyncio.sleep(2)
        brokers.append(start_broker(port, brokers[0].log_path))
        for iid in ids:
            run = await stack.wait_run(iid, timeout=120)
            assert run["state"] == "succeeded", run
        dead = [p.name for p in stack.processes if not p.alive()]
        assert dead == [], f"services exited while the broker was away: {dead}"
        log = (tmp_path / "orchestrator-0.log").read_text()
        assert "the broker lost partitions" in log and "re-issued" in log
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
