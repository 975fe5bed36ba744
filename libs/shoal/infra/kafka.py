"""aiokafka wiring: producers, consumers, topic creation. Standard Kafka protocol only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from shoal.infra.settings import Settings

log = logging.getLogger(__name__)

INSTANCE_TOPICS = ("commands", "events", "task-logs", "dead-letters", "worker-control",
                   "worker-heartbeats")
# Tables rather than streams: only the latest record per key matters.
COMPACTED_TOPICS = ("schedules",)


def producer(settings: Settings) -> AIOKafkaProducer:
    """acks=all; idempotence only where the broker supports it (real Kafka)."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
        linger_ms=settings.kafka_linger_ms,
        max_request_size=4 * 1024 * 1024,
    )


def consumer(settings: Settings, *topics: str, group_id: str | None,
             **kwargs: object) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # The broker may hold a fetch for this long when no data is waiting; consumers on
        # the path of a hop shorten it while busy (FetchPacer).
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=max(settings.kafka_session_timeout_ms // 5, 100),
        **kwargs,
    )


def paced_wait(quiet_s: float, hot_ms: int, max_ms: int) -> int:
    """The fetch wait after ``quiet_s`` seconds without records: a twentieth of the quiet
    time, never below ``hot_ms`` nor above ``max_ms``."""
    return int(min(max_ms, max(hot_ms, quiet_s * 1000 * FetchPacer.QUIET_SHARE)))


class FetchPacer:
    """Adapts how long the broker may hold a consumer's fetch to the consumer's traffic.

    Real Kafka answers a waiting fetch the moment data arrives, so a long wait costs
    nothing there. The embedded broker (Tansu) instead looks again after half the
    remaining wait, then a quarter, ...: a record produced during a held fetch waits up
    to half of it. A short wait is fast but costs a fetch round trip every few
    milliseconds even when nothing happens. So the wait follows the quiet time: the
    short ``hot_ms`` while records keep coming, then a twentieth of the time since the
    last record, up to ``max_ms`` (SHOAL_KAFKA_FETCH_MAX_WAIT_MS) — a record after a
    quiet spell is delayed by at most ~2.5 % of that spell, and an idle consumer fetches
    twice a second. aiokafka reads the wait when it builds each fetch request, from an
    attribute it does not document (checked at start; without it the wait stays fixed).
    """

    QUIET_SHARE = 0.05

    def __init__(self, consumer: AIOKafkaConsumer, settings: Settings) -> None:
        self.hot_ms = settings.kafka_fetch_hot_wait_ms
        self.max_ms = max(settings.kafka_fetch_max_wait_ms, self.hot_ms)
        self._fetcher = getattr(consumer, "_fetcher", None)
        if not hasattr(self._fetcher, "_fetch_max_wait_ms"):
            log.warning("this aiokafka has no adjustable fetch wait; it stays %d ms",
                        settings.kafka_fetch_max_wait_ms)
            self._fetcher = None
        self._last = asyncio.get_running_loop().time()
        self.wait_ms = -1
        self.saw(0)

    def saw(self, records: int) -> None:
        """Call after every poll with the number of records it returned."""
        now = asyncio.get_running_loop().time()
        if records:
            self._last = now
        wait = paced_wait(now - self._last, self.hot_ms, self.max_ms)
        if wait != self.wait_ms and self._fetcher is not None:
            self._fetcher._fetch_max_wait_ms = wait  # private: see the class doc
        self.wait_ms = wait


async def ensure_topics(settings: Settings, names: Iterable[str]) -> None:
    """Create the topics that do not exist yet (same partition count for all)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await _create_missing(admin, settings, names)
    finally:
        await admin.close()


async def _create_missing(admin: AIOKafkaAdminClient, settings: Settings,
                          names: Iterable[str]) -> None:
    existing = set(await admin.list_topics())
    missing = [n for n in dict.fromkeys(names) if n not in existing]
    if missing:
        # Created concurrently by another service: what we wanted.
        compacted = {settings.topic(t) for t in COMPACTED_TOPICS}
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([
                NewTopic(n, settings.partitions, settings.kafka_replication_factor,
                         topic_configs={"cleanup.policy": "compact"} if n in compacted
                         else {})
                for n in missing])
        log.info("created topics %s", missing)


async def keep_topics(settings: Settings, names: Iterable[str], stop: asyncio.Event,
                      every: float = 2.0) -> None:
    """Recreate any of ``names`` that disappears: a memory-only broker that restarted has
    none of them, and its clients would otherwise fail on unknown topics forever. One
    admin connection is kept (and opened again after a failure)."""
    wanted = list(dict.fromkeys(names))
    admin: AIOKafkaAdminClient | None = None
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if stop.is_set():
                return
            try:
                if admin is None:
                    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
                    await admin.start()
                await asyncio.wait_for(_create_missing(admin, settings, wanted), 10)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.debug("topics not checked (%r); the broker may be away", exc)
                if admin is not None:
                    with contextlib.suppress(Exception):
                        await admin.close()
                    admin = None
    finally:
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()


class LossWatch:
    """Notices that the broker lost data: a fetch returns records of a partition below an
    offset this member had committed there. The group's committed offset of a partition
    only grows, and a consumer never reads below it, unless the partition's log and the
    group's offsets were lost (a memory-only broker restarted, and the group rejoined at
    the earliest offset of the recreated topic). A real Kafka cluster keeps both, so this
    never fires there. (End offsets would be the obvious probe, but the embedded broker
    reports a partition's end as the start of its last batch plus one.)"""

    def __init__(self) -> None:
        self.committed: dict[TopicPartition, int] = {}

    def committed_up_to(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, n in offsets.items():
            self.committed[tp] = max(self.committed.get(tp, 0), n)

    def lost(self, batch: dict[TopicPartition, list[Any]]) -> list[TopicPartition]:
        """The partitions whose records in ``batch`` start below what was committed."""
        gone = [tp for tp, msgs in batch.items()
                if msgs and msgs[0].offset < self.committed.get(tp, 0)]
        for tp in gone:
            self.committed[tp] = 0  # a new numbering from here
        return gone


def base_topics(settings: Settings) -> list[str]:
    return ([settings.topic(t) for t in (*INSTANCE_TOPICS, *COMPACTED_TOPICS)]
            + [settings.tasks_topic("default")])


async def send_reliably(producer: AIOKafkaProducer, topic: str, value: bytes,
                        key: bytes | None = None, *, give_up_after: float = 120.0) -> None:
    """send_and_wait, retrying transient broker errors (a leader not elected yet for a
    topic just created, a broker restarting) with backoff; raise after ``give_up_after``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_after
    delay = 0.1
    while True:
        try:
            await producer.send_and_wait(topic, value, key=key)
        except KafkaError as exc:
            if loop.time() + delay > deadline:
                raise
            log.warning("publish to %s failed (%r); retrying in %.1fs", topic, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        else:
            return


async def tail(settings: Settings, topic: str) -> AIOKafkaConsumer:
    """A started consumer reading every partition of ``topic`` from its current end.

    For broadcast topics where only what happens from now on matters (kills, heartbeats):
    no consumer group, so every reader sees every message and nothing waits for a join.
    Services start in any order, so the topic is created here if needed, and its
    partitions are waited for until the broker's metadata shows them.
    """
    await ensure_topics(settings, [topic])
    c = consumer(settings, group_id=None)
    await c.start()
    try:
        parts: set[int] = set()
        for _ in range(100):
            await c.topics()  # refreshes metadata
            parts = c.partitions_for_topic(topic) or set()
            if parts:
                break
            await asyncio.sleep(0.1)
        if not parts:
            raise KafkaError(f"topic {topic} has no partitions after 10 s")
        tps = [TopicPartition(topic, p) for p in parts]
        c.assign(tps)
        await c.seek_to_end(*tps)
    except BaseException:
        await c.stop()
        raise
    return c
