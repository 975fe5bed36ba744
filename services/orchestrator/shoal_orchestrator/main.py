"""Orchestrator entry point: consumer group on ``<prefix>.commands``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from shoal.infra import codec, kafka, members, metrics, policy
from shoal.infra.db import DB_ERRORS, connect_pool, migrate
from shoal.infra.health import Health
from shoal.infra.lifecycle import run_service, setup_logging, utcnow_iso
from shoal.infra.members import Membership, member_id
from shoal.infra.settings import Settings
from shoal.infra.store import EventStore, prune
from shoal_orchestrator.handler import BatchHandler, BatchResult, Cache, Record
from shoal_orchestrator.leases import LeaseMonitor
from shoal_orchestrator.relay import OutboxRelay
from shoal_orchestrator.timers import run_timers

log = logging.getLogger("shoal.orchestrator")
# Set only by tests (never documented as configuration): see the use below.
_FAULT = os.environ.get("SHOAL_TEST_FAULT")


class Ownership(ConsumerRebalanceListener):  # type: ignore[misc]
    """Rebalance is an ownership change, and the callbacks never wait for a batch.

    On revoke: flag the partitions and give the batch in hand (the handler holds
    ``lock``) at most ``drain_s`` to finish, so its offsets usually commit before the
    hand-over; the rebalance never waits longer (a batch still running is fenced by the
    store, and its redelivery is de-duplicated). The consume loop drops flagged
    partitions' runs from memory between batches (``settle``): the next owner replays
    them from the log. On assign: nothing is trusted from memory for the new
    partitions; their runs are loaded from the log (and conflicting writes are fenced).
    """

    def __init__(self, cache: Cache, lock: asyncio.Lock, me: Membership,
                 drain_s: float = 5.0) -> None:
        self.cache = cache
        self.lock = lock
        self.me = me
        self.drain_s = drain_s
        self.to_load: set[int] = set()
        self.stale: set[int] = set()  # runs to drop from memory before the next batch
        self.reissue_until = 0.0  # after the broker lost data: re-issue after each load

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        parts = {tp.partition for tp in revoked}
        self.me.partitions -= parts
        self.to_load -= parts
        self.stale |= parts
        if self.lock.locked():
            try:
                await asyncio.wait_for(self._batch_done(), self.drain_s)
            except TimeoutError:
                log.info("revoking %d partitions while a batch is still running",
                         len(revoked))
        log.info("revoked %d partitions", len(revoked))

    async def _batch_done(self) -> None:
        async with self.lock:
            pass

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        parts = {tp.partition for tp in assigned}
        self.stale |= parts
        self.to_load |= parts
        self.me.partitions |= parts
        log.info("assigned partitions %s", sorted(parts))

    def settle(self) -> None:
        """Drop the runs of partitions revoked or assigned since the last batch (call
        with ``lock`` held, between batches)."""
        if self.stale:
            self.cache.drop_partitions(self.stale)
            self.stale = set()


async def consume(settings: Settings, store: EventStore, relay: OutboxRelay, cache: Cache,
                  me: Membership, stop: asyncio.Event) -> None:
    handler = BatchHandler(settings, store, cache)
    lock = asyncio.Lock()
    consumer: AIOKafkaConsumer = kafka.consumer(
        settings, group_id=f"{settings.topic_prefix}.orchestrator", max_poll_records=1000)
    ownership = Ownership(cache, lock, me)
    consumer.subscribe([settings.commands_topic], listener=ownership)
    producer = relay.producer
    await consumer.start()
    pacer = kafka.FetchPacer(consumer, settings)
    metrics.DEAD_LETTERS.labels("orchestrator")  # exposed at 0 before the first one
    lag = asyncio.create_task(metrics.sample_lag(consumer, me.group, stop, into=me.lag))
    loss = kafka.LossWatch()
    loop = asyncio.get_running_loop()
    try:
        while not stop.is_set():
            if ownership.stale:
                async with lock:
                    ownership.settle()
            if ownership.to_load:
                parts, ownership.to_load = sorted(ownership.to_load), set()
                async with lock:
                    ownership.settle()
                    try:
                        n = await handler.load_partitions(parts)
                        log.info("loaded %d unfinished instances of partitions %s", n, parts)
                    except DB_ERRORS as exc:
                        log.warning("could not load partitions %s: %r", parts, exc)
                        ownership.to_load |= set(parts)
                if loop.time() < ownership.reissue_until:
                    await _reissue(handler, relay, lock)
            batch = await consumer.getmany(timeout_ms=500, max_records=1000)
            pacer.saw(len(batch))
            lost = loss.lost(batch)
            if lost:
                log.warning("the broker lost partitions %s (records below the committed "
                            "offset): reconciling from the log",
                            sorted(tp.partition for tp in lost))
                # Again after the reloads the group's rejoin brings, for a minute.
                ownership.reissue_until = loop.time() + 60.0
                await _reissue(handler, relay, lock)
            if not batch:
                continue
            async with lock:
                ownership.settle()
                records = [Record(m.topic, m.partition, m.offset, m.key, m.value)
                           for msgs in batch.values() for m in msgs]
                result = await _handle_until_done(handler, records, stop)
                if result is None:
                    return
                if result.appended and _FAULT == "exit-after-commit":
                    # Fault injection for tests only: die with the batch's events and
                    # outbox rows committed but neither published nor the offsets committed.
                    os._exit(137)
                metrics.EVENTS_APPENDED.inc(result.appended)
                metrics.DEAD_LETTERS.labels("orchestrator").inc(len(result.dead_letters))
                for rec, reason in result.dead_letters:
                    log.warning("dead letter %s[%d]@%d: %s", rec.topic, rec.partition,
                                rec.offset, reason, extra={"instance_id": rec.key.decode(
                                    "utf-8", "replace") if rec.key else None})
                    await kafka.send_reliably(producer, settings.dead_letters_topic, codec.dumps(
                        policy.dead_letter(reason=reason, service="orchestrator",
                                           topic=rec.topic, partition=rec.partition,
                                           offset=rec.offset, key=rec.key, value=rec.value,
                                           dead_at=utcnow_iso())), rec.key)
                relay.wake.set()
                offsets = {tp: msgs[-1].offset + 1 for tp, msgs in batch.items()}
                try:
                    await consumer.commit(offsets)
                    loss.committed_up_to(offsets)
                except KafkaError as exc:
                    # The batch is durable; its redelivery is recognised by message_id.
                    log.warning("offset commit failed (%r); the batch will be redelivered "
                                "and de-duplicated", exc)
    finally:
        lag.cancel()
        await kafka.stop_consumer(consumer)  # leaves the group: a hand-over at once


async def _reissue(handler: BatchHandler, relay: OutboxRelay, lock: asyncio.Lock) -> None:
    """Put the dispatches a lost broker may have dropped (see
    ``BatchHandler.unstarted_dispatches``) in the outbox again; the relay publishes them."""
    try:
        async with lock:
            rows = await handler.unstarted_dispatches()
            await handler.store.commit([], rows)
        relay.wake.set()
        log.info("re-issued %d dispatches without a start", len(rows))
    except DB_ERRORS as exc:
        log.warning("re-issuing dispatches failed (%r); retrying after the next load", exc)


async def _handle_until_done(handler: BatchHandler, records: list[Record],
                             stop: asyncio.Event) -> BatchResult | None:
    """Apply a batch under the error policy (``shoal.infra.policy``): a transient failure
    retries the batch with backoff (it is never dead-lettered); any other failure splits
    the batch and applies its inputs one by one, so the input at fault goes to the dead
    letters with the reason and the others are applied. None only when asked to stop."""
    try:
        return await policy.retry_transient(
            f"batch of {len(records)}", lambda: handler.handle(records), stop)
    except Exception as exc:
        if policy.is_transient(exc):
            return None  # stopping
        if len(records) == 1:
            rec = records[0]
            log.exception("could not apply %s[%d]@%d", rec.topic, rec.partition, rec.offset)
            return BatchResult(dead_letters=[(rec, policy.reason_of(exc))])
        log.warning("batch of %d failed (%s); applying its inputs one by one",
                    len(records), policy.reason_of(exc))
    total = BatchResult()
    for rec in records:
        one = await _handle_until_done(handler, [rec], stop)
        if one is None:
            return None
        total.appended += one.appended
        total.duplicates += one.duplicates
        total.dead_letters.extend(one.dead_letters)
    return total


async def main(settings: Settings) -> None:
    setup_logging(settings.log_level, "orchestrator", settings.log_format)
    await migrate(settings.database_url)
    await kafka.ensure_topics(settings, kafka.base_topics(settings))
    pool = await connect_pool(settings.database_url, max_size=5,
                              command_timeout=settings.db_statement_timeout)
    producer = await kafka.start_producer(settings)
    store = EventStore(pool, lock_timeout=settings.db_lock_timeout)
    relay = OutboxRelay(settings, producer)
    cache = Cache()
    leases = LeaseMonitor(settings, cache, producer)
    health = Health()
    me = Membership(member_id("orchestrator"), "orchestrator",
                    f"{settings.topic_prefix}.orchestrator")
    try:
        await run_service("orchestrator", [
            lambda stop: consume(settings, store, relay, cache, me, stop),
            lambda stop: kafka.keep_topics(settings, kafka.base_topics(settings), stop),
            lambda stop: members.report(pool, me, stop),
            leases.run,
            relay.run,
            lambda stop: run_timers(pool, producer, settings, stop),
            lambda stop: metrics.serve(settings, "orchestrator", stop, health),
            lambda stop: health.watch(pool, stop),
            lambda stop: outbox_gauge(pool, stop),
            lambda stop: retention(pool, settings, stop),
        ])
    finally:
        await producer.stop()
        await pool.close()


async def retention(pool: asyncpg.Pool, settings: Settings, stop: asyncio.Event,
                    every: float = 300.0) -> None:
    """Delete done-markers and successes older than SHOAL_RETENTION_DAYS, now and then
    (every orchestrator may: the deletes are idempotent and in small batches)."""
    while not stop.is_set():
        if settings.retention_days > 0:
            try:
                markers, successes = await prune(pool, settings.retention_days)
                if markers or successes:
                    log.info("retention: deleted %d done-markers and %d successes older "
                             "than %g days", markers, successes, settings.retention_days)
            except DB_ERRORS as exc:
                log.warning("retention pass failed (%r); next pass later", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def outbox_gauge(pool: asyncpg.Pool, stop: asyncio.Event) -> None:
    """``shoal_outbox_backlog``: committed effects not yet on Kafka."""
    while not stop.is_set():
        with contextlib.suppress(*DB_ERRORS):
            metrics.OUTBOX_BACKLOG.set(await pool.fetchval("SELECT count(*) FROM shoal.outbox"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 5.0)


def run() -> None:
    asyncio.run(main(Settings()))
