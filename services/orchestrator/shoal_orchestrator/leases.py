"""Leases on running attempts, kept alive by worker heartbeats (in memory, not events).

Every worker publishes a heartbeat listing the attempts it runs. An attempt of an
instance this orchestrator owns, in state ``running``, holds a lease that each heartbeat
listing it renews for ``SHOAL_LEASE_TIMEOUT`` seconds. Every orchestrator hears every
heartbeat and keeps the deadlines of attempts it does not own too, so an instance that
moves here in a rebalance keeps the lease its worker last renewed: a worker that died
during the failover is noticed one lease after its last heartbeat, not a full lease after
the move. Only an attempt never heard of (this orchestrator started after its worker's
last heartbeat) gets a full lease before it can lapse. When a
lease lapses the monitor publishes ``ExpireLease`` to the instance's partition, where the
ordered handler records the attempt ``lost`` (or ``killed``, if we were killing it) and
retries or fails it by policy. A late report from that attempt is then a superseded one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shoal.core.errors import MessageInvalid
from shoal.core.model import ORCHESTRATOR, ExpireLease, TaskState
from shoal.infra import codec, kafka
from shoal.infra.lifecycle import utcnow_iso
from shoal.infra.settings import Settings
from shoal_orchestrator.handler import Cache

log = logging.getLogger(__name__)
_NS = uuid.UUID("4c0a9f5e-2d3b-4b7e-9f61-8e2a7c5d1b03")


class LeaseMonitor:
    def __init__(self, settings: Settings, cache: Cache, producer: AIOKafkaProducer) -> None:
        self.settings = settings
        self.cache = cache
        self.producer = producer
        self.expiry: dict[str, float] = {}     # dispatch_id -> monotonic deadline
        self.expired: set[str] = set()

    def heard(self, heartbeat: dict[str, object], now: float) -> None:
        running = heartbeat.get("running")
        if not isinstance(running, list):
            return
        for item in running:
            if isinstance(item, dict) and isinstance(item.get("dispatch_id"), str):
                self.expiry[item["dispatch_id"]] = now + self.settings.lease_timeout

    async def check(self, now: float) -> int:
        """Publish ExpireLease for every lapsed lease; forget leases of finished attempts."""
        live: set[str] = set()
        published = 0
        for run in self.cache.runs():
            for t in run.tasks.values():
                if t.state is not TaskState.RUNNING or not t.dispatch_id or \
                        t.worker_id == ORCHESTRATOR:  # held here: no worker, no lease
                    continue
                live.add(t.dispatch_id)
                deadline = self.expiry.setdefault(t.dispatch_id,
                                                  now + self.settings.lease_timeout)
                if now < deadline or t.dispatch_id in self.expired:
                    continue
                cmd = ExpireLease(
                    message_id=str(uuid.uuid5(_NS, t.dispatch_id)), instance_id=run.instance_id,
                    sent_at=utcnow_iso(), task=t.name, attempt=t.attempt,
                    dispatch_id=t.dispatch_id, worker_id=t.worker_id or "unknown")
                log.warning("lease of %s attempt %d (worker %s) lapsed", t.name, t.attempt,
                            t.worker_id, extra={"instance_id": run.instance_id, "task": t.name,
                                                "attempt": t.attempt,
                                                "dispatch_id": t.dispatch_id})
                await kafka.send_reliably(self.producer, self.settings.commands_topic,
                                          codec.encode_command(cmd), run.instance_id.encode(),
                                          give_up_after=10.0)
                self.expired.add(t.dispatch_id)
                published += 1
        # Forget deadlines of attempts not owned here only once they are long past: an
        # instance may still move here and needs the lease its worker last renewed.
        stale = now - 2 * self.settings.lease_timeout
        for gone in set(self.expiry) - live:
            if self.expiry[gone] < stale:
                del self.expiry[gone]
        self.expired &= live
        return published

    async def run(self, stop: asyncio.Event) -> None:
        consumer = await kafka.tail(self.settings, self.settings.topic("worker-heartbeats"))
        try:
            last_check = 0.0
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=250)
                now = time.monotonic()
                for msgs in batch.values():
                    for m in msgs:
                        with contextlib.suppress(MessageInvalid, ValueError):
                            # A heartbeat this release cannot read (malformed, or
                            # of a newer schema version) says nothing it can trust.
                            beat = codec.accept("topics", "Heartbeat", codec.decode_object(
                                m.value, "a heartbeat"))
                            self.heard(beat, now)
                if now - last_check >= 1.0:
                    last_check = now
                    try:
                        await self.check(now)
                    except KafkaError as exc:
                        log.warning("lease check could not publish: %r", exc)
        finally:
            await consumer.stop()
