"""aiokafka wiring: producers, consumers, topic creation. Standard Kafka protocol only.

Every client (producer, consumer, admin, and faust's through ``ssl_context``) is built from
``client_kwargs``: the bootstrap servers plus the connection security settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import (
    InvalidSessionTimeoutError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.transaction import InitProducerIdRequest

from shoal.infra.settings import Settings

log = logging.getLogger(__name__)

INSTANCE_TOPICS = ("commands", "events", "task-logs", "dead-letters", "worker-control",
                   "worker-heartbeats")
# Tables rather than streams: only the latest record per key matters.
COMPACTED_TOPICS = ("schedules",)

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
# How long each topic keeps its records (retention.ms, set when Shoal creates the topic).
# Postgres holds the event log; Kafka only carries records until their readers took them,
# so each topic keeps what its readers could still need after an outage of that length.
RETENTION_MS = {
    "commands": 7 * DAY_MS,           # the orchestrators' input, until consumed
    "events": DAY_MS,                 # the API's live feed only; the log is in Postgres
    "task-logs": 7 * DAY_MS,          # until the projector stored them
    "dead-letters": 30 * DAY_MS,      # kept for inspection
    "worker-control": HOUR_MS,        # kills: read from the end, only "from now on" counts
    "worker-heartbeats": HOUR_MS,     # read from the end
    "tasks": 7 * DAY_MS,              # dispatches (tasks.<group>), until a worker took them
}


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of SSL and SASL_SSL connections (None for plaintext ones): trusts
    SHOAL_KAFKA_SSL_CAFILE (else the system's CAs), presents the client certificate when
    one is configured, and checks the broker's host name."""
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    if (settings.kafka_ssl_certfile is None) != (settings.kafka_ssl_keyfile is None):
        raise ValueError("SHOAL_KAFKA_SSL_CERTFILE and SHOAL_KAFKA_SSL_KEYFILE go together")
    context: ssl.SSLContext = create_ssl_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
        certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
        keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None)
    return context


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Where and how every aiokafka client connects (the one place that reads the
    connection settings). A SASL protocol without a user name or password is refused
    here, at start, rather than by the broker later."""
    kw: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap,
                          "security_protocol": settings.kafka_security_protocol}
    context = ssl_context(settings)
    if context is not None:
        kw["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL_"):
        if not settings.kafka_sasl_username or settings.kafka_sasl_password is None:
            raise ValueError(f"SHOAL_KAFKA_SECURITY_PROTOCOL="
                             f"{settings.kafka_security_protocol} needs "
                             "SHOAL_KAFKA_SASL_USERNAME and SHOAL_KAFKA_SASL_PASSWORD")
        kw.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                  sasl_plain_username=settings.kafka_sasl_username,
                  sasl_plain_password=settings.kafka_sasl_password.get_secret_value())
    return kw


@dataclass(frozen=True)
class ClusterFacts:
    """What Shoal adapts to: the number of brokers and whether they grant producer ids."""

    brokers: int
    idempotence: bool


_facts: dict[str, ClusterFacts] = {}


async def cluster_facts(settings: Settings) -> ClusterFacts:
    """Asked of the cluster once per process (and bootstrap servers). Idempotence is
    probed with the request an idempotent producer starts with (InitProducerId): a broker
    may list that request among its APIs and still refuse it (the embedded one does)."""
    key = settings.kafka_bootstrap
    if key in _facts:
        return _facts[key]
    client = AIOKafkaClient(**client_kwargs(settings))
    await client.bootstrap()
    try:
        brokers = max(len(client.cluster.brokers()), 1)
        idempotence = await _grants_producer_ids(client)
    finally:
        await client.close()
    _facts[key] = ClusterFacts(brokers, idempotence)
    return _facts[key]


async def _grants_producer_ids(client: AIOKafkaClient, within: float = 10.0) -> bool:
    """Ask for a producer id; a retriable refusal (a broker that just started and has no
    producer id block yet) is asked again for up to ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            resp = await asyncio.wait_for(client.send(
                client.get_random_node(),
                InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=60_000)),
                10)
        except (KafkaError, TimeoutError, OSError) as exc:
            log.info("the broker does not grant producer ids (%r): producers run without "
                     "idempotence", exc)
            return False
        if resp.error_code == 0:
            return True
        error = for_code(resp.error_code)
        if not error.retriable or loop.time() > deadline:
            log.info("the broker refuses producer ids (%s): producers run without "
                     "idempotence", error.__name__)
            return False
        await asyncio.sleep(0.5)


def producer(settings: Settings, *, idempotent: bool = False) -> AIOKafkaProducer:
    """acks=all (a record counts once every in-sync replica has it); idempotent when the
    broker supports it (``start_producer`` finds out)."""
    return AIOKafkaProducer(
        **client_kwargs(settings),
        acks="all",
        enable_idempotence=idempotent,
        linger_ms=settings.kafka_linger_ms,
        max_request_size=settings.kafka_max_message_bytes,
    )


async def start_producer(settings: Settings) -> AIOKafkaProducer:
    """A started producer, idempotent unless SHOAL_KAFKA_IDEMPOTENCE=false or the broker
    cannot grant producer ids."""
    idempotent = settings.kafka_idempotence
    if idempotent is None:
        idempotent = (await cluster_facts(settings)).idempotence
    p = producer(settings, idempotent=idempotent)
    await p.start()
    return p


def consumer(settings: Settings, *topics: str, group_id: str | None,
             auto_offset_reset: str = "earliest", **kwargs: object) -> AIOKafkaConsumer:
    """A consumer with Shoal's group timing. ``auto_offset_reset`` applies where the group
    has no committed offset (a new group, or offsets the broker expired)."""
    return AIOKafkaConsumer(
        *topics,
        **client_kwargs(settings),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset=auto_offset_reset,
        # The broker may hold a fetch for this long when no data is waiting; consumers on
        # the path of a hop shorten it while busy (FetchPacer).
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=min(settings.kafka_heartbeat_interval_ms,
                                  max(settings.kafka_session_timeout_ms // 3, 100)),
        rebalance_timeout_ms=settings.kafka_rebalance_timeout_ms,
        max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
        **kwargs,
    )


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop a group member so that it leaves its group: the others take its partitions at
    once instead of after its session timeout. aiokafka sends LeaveGroup only from a
    generation above 0 (it reads 0 as "never joined"); Apache Kafka numbers generations
    from 1, but the embedded broker gives a new group's first generation the number 0,
    so a member that joined with the group would hold its partitions for a whole session
    after a clean stop. Such a member is marked as joined (a private attribute of
    aiokafka's coordinator; without it the stop is aiokafka's own)."""
    coordinator = getattr(consumer, "_coordinator", None)
    if (coordinator is not None and getattr(coordinator, "generation", None) == 0
            and getattr(coordinator, "member_id", "")):
        coordinator.generation = 1
    await consumer.stop()


def explain(exc: BaseException) -> str | None:
    """What an operator should change when a service stops on ``exc`` (None: no advice)."""
    if isinstance(exc, InvalidSessionTimeoutError):
        now = os.environ.get("SHOAL_KAFKA_SESSION_TIMEOUT_MS",
                             str(Settings.model_fields["kafka_session_timeout_ms"].default))
        return ("the broker refused the consumer group session timeout "
                f"SHOAL_KAFKA_SESSION_TIMEOUT_MS={now}: set SHOAL_KAFKA_SESSION_TIMEOUT_MS "
                "between the broker's group.min.session.timeout.ms and "
                "group.max.session.timeout.ms (Apache Kafka's defaults: 6000 and 1800000)")
    return None


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
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        await _create_missing(admin, settings, names)
    finally:
        await admin.close()


def retention_ms(settings: Settings, name: str) -> int | None:
    """The retention Shoal sets on topic ``name`` (None: compacted, kept by key)."""
    short = name.removeprefix(f"{settings.topic_prefix}.")
    if short in COMPACTED_TOPICS:
        return None
    return RETENTION_MS.get(short.split(".")[0], RETENTION_MS["commands"])


async def topic_spec(settings: Settings, name: str) -> NewTopic:
    """How Shoal creates ``name``: replication factor min(3, brokers) unless set,
    min.insync.replicas min(2, rf) unless set, and the topic's retention."""
    rf = settings.kafka_replication_factor or min(3, (await cluster_facts(settings)).brokers)
    isr = settings.kafka_min_insync_replicas or min(2, rf)
    keep = retention_ms(settings, name)
    configs = {"min.insync.replicas": str(isr)}
    configs.update({"cleanup.policy": "compact"} if keep is None
                   else {"cleanup.policy": "delete", "retention.ms": str(keep)})
    return NewTopic(name, settings.partitions, rf, topic_configs=configs)


async def _create_missing(admin: AIOKafkaAdminClient, settings: Settings,
                          names: Iterable[str]) -> None:
    existing = set(await admin.list_topics())
    missing = [n for n in dict.fromkeys(names) if n not in existing]
    if missing:
        specs = [await topic_spec(settings, n) for n in missing]
        # Created concurrently by another service: what we wanted.
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(specs)
        log.info("created topics %s (replication factor %d)", missing,
                 specs[0].replication_factor)


async def partitions_of(admin: AIOKafkaAdminClient, topic: str) -> set[int]:
    """The partitions of ``topic`` as the cluster reports them now: a metadata request
    that names the topic. (A consumer's own metadata is no source: aiokafka bootstraps it
    with a request for no topics, which Apache Kafka answers with none.)"""
    for t in await admin.describe_topics([topic]):
        if t["topic"] == topic and t["error_code"] == 0:
            return {p["partition"] for p in t["partitions"]}
    return set()


async def wait_partitions(settings: Settings, topic: str, within: float = 10.0) -> set[int]:
    """Create ``topic`` if needed and wait until the cluster reports its partitions."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        await _create_missing(admin, settings, [topic])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            parts = await partitions_of(admin, topic)
            if parts:
                return parts
            if loop.time() > deadline:
                raise KafkaError(f"topic {topic} has no partitions after {within:.0f} s")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


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
                    admin = AIOKafkaAdminClient(**client_kwargs(settings))
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


# A record refused for its size (by the producer above SHOAL_KAFKA_MAX_MESSAGE_BYTES, or
# by the broker): refused again however often it is sent.
TOO_LARGE: tuple[type[KafkaError], ...] = (
    MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)


async def send_reliably(producer: AIOKafkaProducer, topic: str, value: bytes,
                        key: bytes | None = None, *, give_up_after: float = 120.0) -> None:
    """send_and_wait, retrying transient broker errors (a leader not elected yet for a
    topic just created, a broker restarting) with backoff; raise after ``give_up_after``.
    A record refused for its size (:data:`TOO_LARGE`) is raised at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_after
    delay = 0.1
    while True:
        try:
            await producer.send_and_wait(topic, value, key=key)
        except TOO_LARGE:
            raise
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
    partitions are asked of the cluster until it reports them.
    """
    parts = await wait_partitions(settings, topic)
    c = consumer(settings, group_id=None)
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        await c.seek_to_end(*tps)
    except BaseException:
        await c.stop()
        raise
    return c
