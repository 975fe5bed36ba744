"""A clean stop hands a member's partitions over at once: every consumer leaves its group
on SIGTERM, so the survivor does not wait out the dead member's session timeout."""

from __future__ import annotations

import signal
import time

import pytest

from shoal.infra.settings import Settings
from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e


async def test_sigterm_hands_an_orchestrators_partitions_over_before_its_session_ends(
        bare_stack: Stack) -> None:
    stack = bare_stack
    session_s = 10.0  # longer than any rebalance here: a member that did not leave is seen
    slow = {"SHOAL_KAFKA_SESSION_TIMEOUT_MS": str(int(session_s * 1000))}
    stack.start("api")
    await eventually(stack._healthy, timeout=60, what="API up")
    leaving = stack.start("orchestrator", **slow)
    staying = stack.start("orchestrator", **slow)

    async def owners() -> dict[int, list[int]]:
        body = (await stack.request("GET", "/api/v1/cluster")).json()
        return {o["pid"]: o["partitions"] for o in body["orchestrators"]}

    async def both_own() -> bool:
        own = await owners()
        return len(own) == 2 and all(own.values())
    await eventually(both_own, timeout=60, what="two orchestrators owning partitions")

    t0 = time.monotonic()
    leaving.signal(signal.SIGTERM)

    async def survivor_owns_all() -> bool:
        own = await owners()
        return sorted(own.get(staying.pid, [])) == list(range(4)) and leaving.pid not in own
    await eventually(survivor_owns_all, timeout=30, what="the survivor owning every partition")
    took = time.monotonic() - t0
    print(f"SIGTERM to the survivor owning every partition: {took:.1f} s "
          f"(session {session_s:.0f} s)")
    assert took < session_s
    assert Settings().kafka_session_timeout_ms >= 6000
