"""A wake that arrives while the relay is in a pass must cause another pass."""

from __future__ import annotations

import asyncio

from shoal.infra.settings import Settings
from shoal_orchestrator.relay import OutboxRelay


class Probe(OutboxRelay):
    def __init__(self) -> None:
        super().__init__(Settings(outbox_relay_interval=60.0), None)  # type: ignore[arg-type]
        self.passes = 0
        self.second = asyncio.Event()

    async def relay_once(self) -> int:
        self.passes += 1
        if self.passes == 1:
            self.wake.set()  # a batch commits while this pass is publishing
        else:
            self.second.set()
        return 0


async def run_until_second_pass(relay: Probe) -> asyncio.Task[None]:
    """Run the relay loop until it makes a second pass (the interval is 60 s), then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        await asyncio.wait_for(relay.second.wait(), 10)
    finally:
        stop.set()
        relay.wake.set()
        await asyncio.wait_for(task, 5)
    return task


async def test_a_wake_during_a_pass_is_not_lost():
    relay = Probe()
    # With the wake lost, the second pass would come only after the 60 s interval.
    await run_until_second_pass(relay)
    assert relay.passes >= 2


class Flaky(Probe):
    async def relay_once(self) -> int:
        from aiokafka.errors import NotLeaderForPartitionError

        self.passes += 1
        if self.passes == 1:
            raise NotLeaderForPartitionError()  # a topic created a moment ago
        self.second.set()
        return 0


async def test_a_broker_error_does_not_stop_the_relay():
    relay = Flaky()
    task = await run_until_second_pass(relay)
    assert relay.passes >= 2 and not task.cancelled() and task.exception() is None
