"""GET /api/v1/cluster: who owns which partitions, and what happens when one dies."""

from __future__ import annotations

import pytest

from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e
PARTITIONS = set(range(4))  # the test stacks' SHOAL_PARTITIONS


async def test_cluster_shows_owners_and_moves_partitions_after_a_kill(stack: Stack):
    second = stack.start("orchestrator")
    stack.start("worker")

    async def view(pred) -> dict | None:
        r = await stack.request("GET", "/api/v1/cluster", role="viewer")
        assert r.status_code == 200, r.text
        body = r.json()
        return body if pred(body) else None

    def split_between_two(body: dict) -> bool:
        owned = [set(o["partitions"]) for o in body["orchestrators"]]
        tasks = [set(w["partitions"]) for w in body["workers"]]
        return (len(owned) == 2 and all(owned) and owned[0].isdisjoint(owned[1])
                and owned[0] | owned[1] == PARTITIONS
                and len(tasks) == 2 and tasks[0] | tasks[1] == PARTITIONS)

    body = await eventually(lambda: view(split_between_two), timeout=60,
                            what="two orchestrators sharing the partitions")
    groups = {g["group"]: g for g in body["groups"]}
    assert groups[f"{stack.prefix}.orchestrator"]["members"] == 2
    assert groups[f"{stack.prefix}.orchestrator"]["partitions"] == len(PARTITIONS)
    assert groups[f"{stack.prefix}.workers.default"]["lag"] == 0

    second.kill9()
    survivor = await eventually(
        lambda: view(lambda b: len(b["orchestrators"]) == 1
                     and set(b["orchestrators"][0]["partitions"]) == PARTITIONS),
        timeout=60, what="the survivor owning every partition")
    assert survivor["orchestrators"][0]["pid"] != second.pid
