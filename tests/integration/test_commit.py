"""The orchestrator's one-statement commit and the outbox relay's lead, against the real
Postgres and broker: dependency waits met by a batch's successes (and not when the same
batch ends the waiting task), and a relay that takes over when the leader's connection
goes."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import datetime

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from shoal.infra.settings import Settings
from shoal.infra.store import Dependencies, EventStore, OutboxRow, SuccessRow, WaitRow
from shoal_orchestrator.relay import OutboxRelay

pytestmark = pytest.mark.integration
DAY = datetime(2026, 1, 1)


def wait_row(task: str = "dep") -> WaitRow:
    return WaitRow(dispatch_id=str(uuid.uuid4()), instance_id=str(uuid.uuid4()), task=task,
                   attempt=1, workflow="upstream", upstream_task="", window_start=DAY,
                   window_end=datetime(2026, 1, 2))


def deps(**kw) -> Dependencies:  # type: ignore[no-untyped-def]
    return Dependencies(kw.get("waits", []), kw.get("ended", []), kw.get("successes", []),
                        lambda w: OutboxRow("met", w.instance_id.encode(), w.dispatch_id.encode()))


async def outbox(pool, topic: str) -> list[bytes]:  # type: ignore[no-untyped-def]
    return [bytes(r["value"]) for r in await pool.fetch(
        "SELECT value FROM shoal.outbox WHERE topic = $1 ORDER BY id", topic)]


async def test_a_success_meets_the_waits_of_its_window_unless_the_waiter_ended(pool):
    store = EventStore(pool)
    kept, ended = wait_row(), wait_row()
    await store.commit([], [OutboxRow("x", None, b"-")], deps=deps(waits=[kept, ended]))
    assert await pool.fetchval("SELECT count(*) FROM shoal.dependent_waits") == 2
    success = SuccessRow("upstream", "", datetime(2026, 1, 1, 12), str(uuid.uuid4()))
    await store.commit([], [OutboxRow("x", None, b"-")], deps=deps(
        successes=[success], ended=[(ended.instance_id, ended.task)]))
    assert await outbox(pool, "met") == [kept.dispatch_id.encode()]
    assert await pool.fetchval("SELECT count(*) FROM shoal.dependent_waits") == 0
    assert await pool.fetchval("SELECT count(*) FROM shoal.successes") == 1


async def test_a_wait_for_any_of_several_windows_is_met_once_by_any(pool):
    """A dependent task waiting for either of two upstream tasks (DolphinScheduler's OR):
    one row per alternative; a success of the second meets it once and removes both."""
    store = EventStore(pool)
    first = wait_row()
    second = WaitRow(**{**{k: getattr(first, k) for k in WaitRow.__slots__},
                        "upstream_task": "t2", "alt": 1})
    await store.commit([], [OutboxRow("x", None, b"-")], deps=deps(waits=[first, second]))
    assert await pool.fetchval("SELECT count(*) FROM shoal.dependent_waits") == 2
    success = SuccessRow("upstream", "t2", datetime(2026, 1, 1, 12), str(uuid.uuid4()))
    await store.commit([], [OutboxRow("x", None, b"-")], deps=deps(successes=[success]))
    assert await outbox(pool, "met") == [first.dispatch_id.encode()]
    assert await pool.fetchval("SELECT count(*) FROM shoal.dependent_waits") == 0
    # already met when registered: a success recorded before, for one of the two
    again = wait_row()
    other = WaitRow(**{**{k: getattr(again, k) for k in WaitRow.__slots__},
                       "upstream_task": "t2", "alt": 1})
    await store.commit([], [OutboxRow("x", None, b"-")], deps=deps(waits=[again, other]))
    assert (await outbox(pool, "met"))[-1] == again.dispatch_id.encode()
    assert await pool.fetchval("SELECT count(*) FROM shoal.dependent_waits") == 0


async def test_a_relay_takes_the_lead_when_the_leaders_connection_goes(pool, database, broker):
    topic = f"relay{secrets.token_hex(3)}"
    settings = Settings(database_url=database, kafka_bootstrap=broker, topic_prefix=topic)
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
    await producer.start()
    first, second = OutboxRelay(settings, producer), OutboxRelay(settings, producer)
    try:
        await pool.execute("INSERT INTO shoal.outbox (topic, key, value) VALUES ($1, 'k', 'one')",
                           topic)
        assert await first.relay_once() == 1 and first.leading
        await pool.execute("INSERT INTO shoal.outbox (topic, key, value) VALUES ($1, 'k', 'two')",
                           topic)
        assert await second.relay_once() == 0 and not second.leading, "two leaders"
        await first.close()  # as when the leading orchestrator dies
        assert await second.relay_once() == 1 and second.leading
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            got: list[bytes] = []
            async with asyncio.timeout(30):
                while len(got) < 2:
                    got += [m.value for ms in (await consumer.getmany(timeout_ms=500)).values()
                            for m in ms]
        finally:
            await consumer.stop()
        assert sorted(got) == [b"one", b"two"]
        assert await pool.fetchval("SELECT count(*) FROM shoal.outbox") == 0
    finally:
        await first.close()
        await second.close()
        await producer.stop()


async def test_the_leader_publishes_what_another_orchestrator_commits_at_once(
        pool, database, broker):
    """Only the leader publishes, so it must hear other orchestrators' commits: with a
    60 s interval, a row committed through another store goes out well before it."""
    topic = f"relay{secrets.token_hex(3)}"
    settings = Settings(database_url=database, kafka_bootstrap=broker, topic_prefix=topic,
                        outbox_relay_interval=60.0)
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all")
    await producer.start()
    leader, stop = OutboxRelay(settings, producer), asyncio.Event()
    running = asyncio.create_task(leader.run(stop))
    try:
        async with asyncio.timeout(20):
            while not leader.leading:  # its first pass takes the lead
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # now waiting for a wake or its 60 s interval
            await EventStore(pool).commit([], [OutboxRow(topic, b"k", b"from another")])
            while leader.published < 1:
                await asyncio.sleep(0.05)
        assert await pool.fetchval("SELECT count(*) FROM shoal.outbox") == 0
    finally:
        stop.set()
        leader.wake.set()
        await running
        await producer.stop()
