"""The outbox relay and the timer poller against a real database and broker, with the
broker made slow on purpose (a wrapper that holds each send until the test lets it go)."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from shoal.infra import kafka
from shoal.infra.settings import Settings
from shoal_orchestrator.relay import OutboxRelay
from shoal_orchestrator.timers import fire_due

pytestmark = pytest.mark.integration


class Held:
    """A real producer whose first send runs ``meanwhile`` before it goes out."""

    def __init__(self, real: Any, meanwhile: Callable[[], Awaitable[None]]) -> None:
        self.real = real
        self.meanwhile: Callable[[], Awaitable[None]] | None = meanwhile

    async def send(self, *args: Any, **kw: Any) -> Any:
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            await meanwhile()
        return await self.real.send(*args, **kw)


async def _settings(broker: str, database: str) -> Settings:
    s = Settings(kafka_bootstrap=broker, database_url=database,
                 topic_prefix=f"t{secrets.token_hex(4)}", partitions=1)
    await kafka.ensure_topics(s, kafka.base_topics(s))
    return s


async def test_the_relay_deletes_exactly_the_rows_it_sent(broker: str, database: str, pool):
    """A commit of outbox rows only (no table lock) with a lower id becomes visible while
    the relay publishes: it must stay in the outbox for the next pass."""
    s = await _settings(broker, database)
    late = await asyncpg.connect(database)
    tx = late.transaction()
    await tx.start()
    await late.execute("INSERT INTO shoal.outbox (topic, key, value) VALUES ($1, 'k', 'late')",
                       s.commands_topic)                      # takes the lower id
    await pool.execute("INSERT INTO shoal.outbox (topic, key, value) VALUES ($1, 'k', 'early')",
                       s.commands_topic)
    producer = kafka.producer(s)
    await producer.start()
    relay = OutboxRelay(s, Held(producer, tx.commit))  # type: ignore[arg-type]
    try:
        assert await relay.relay_once() == 1                  # 'early' only
        left = [r["value"] for r in await pool.fetch("SELECT value FROM shoal.outbox")]
        assert left == [b"late"], "a row committed during the pass was deleted unsent"
        assert await relay.relay_once() == 1
        assert await pool.fetchval("SELECT count(*) FROM shoal.outbox") == 0
    finally:
        await relay.close()
        await producer.stop()
        await late.close()


async def test_the_timer_poller_holds_no_row_lock_while_it_publishes(broker: str,
                                                                    database: str, pool):
    """A commit that cancels a due timer (holding the append lock) must not wait for the
    poller's Kafka sends."""
    s = await _settings(broker, database)
    iid = str(uuid.uuid4())
    await pool.execute("INSERT INTO shoal.timers (instance_id, timer_id, fire_at) "
                       "VALUES ($1, 'retry/a/1', now() - interval '1 second')", iid)
    cancelled = asyncio.Event()

    async def cancel_meanwhile() -> None:
        conn = await asyncpg.connect(database)
        try:
            await conn.execute("SET statement_timeout = '3s'")
            await conn.execute("DELETE FROM shoal.timers WHERE instance_id = $1", iid)
            cancelled.set()
        finally:
            await conn.close()

    producer = kafka.producer(s)
    await producer.start()
    try:
        assert await fire_due(pool, Held(producer, cancel_meanwhile), s) == 1  # type: ignore[arg-type]
        assert cancelled.is_set()
        assert await pool.fetchval("SELECT count(*) FROM shoal.timers") == 0
    finally:
        await producer.stop()
