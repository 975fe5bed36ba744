"""Live events for server-sent-event streams: one tail of ``<prefix>.events`` per API
process, started with the first subscriber, waking the streams a record concerns.

The topic says *that* something was committed; a woken stream reads *what* from the log by
global position (commit order = position order, see ``shoal.infra.store``), so a stream is
in order and a client resuming after position P (``Last-Event-ID``) misses nothing and
sees nothing twice. A stream also re-reads every few seconds, so it keeps up (more slowly)
while the broker is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from aiokafka.errors import KafkaError

from shoal.infra import kafka
from shoal.infra.settings import Settings

log = logging.getLogger("shoal.api.hub")


@dataclass(eq=False)
class Subscription:
    instance_id: str | None  # None: every instance
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class EventHub:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.subs: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, instance_id: str | None) -> Subscription:
        sub = Subscription(instance_id)
        self.subs.add(sub)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="event-hub")
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subs.discard(sub)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while self.subs:
            try:
                consumer = await kafka.tail(self.settings, self.settings.events_topic)
            except KafkaError as exc:
                log.warning("cannot tail the events topic (%r); streams poll meanwhile", exc)
                await asyncio.sleep(2.0)
                continue
            try:
                while self.subs:
                    batch = await consumer.getmany(timeout_ms=1000)
                    # A key that is not UTF-8 (poison) wakes nobody; it never ends the tail.
                    keys = {m.key.decode("utf-8", "replace") for msgs in batch.values()
                            for m in msgs if m.key}
                    if not keys:
                        continue
                    for sub in self.subs:
                        if sub.instance_id is None or sub.instance_id in keys:
                            sub.wake.set()
            except KafkaError as exc:
                log.warning("events topic tail failed (%r); restarting it", exc)
            finally:
                await consumer.stop()
