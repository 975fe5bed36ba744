"""Scheduler entry point: a faust-streaming app over ``<prefix>.schedules``.

Schedulers form one consumer group over the compacted schedules topic; each owns the
schedules and backfills of its partitions. Two faust tables, both changelogged to Kafka
and co-partitioned with the topic, hold everything a new owner needs after a rebalance:

* ``records``: the latest schedule/backfill record per id (the topic folded by revision);
* ``cursors``: per schedule the last fire handled, per backfill the runs admitted.

Ownership change (faust's rebalance + table recovery): while faust rebalances or
recovers tables nothing fires; afterwards a newly owned partition counts as owned from
that moment, or from the previous owner's last "alive" record in the cursor when that is
recent (a hand-over keeps on-time fires, see ``handed_over_at``); fires before that were
missed and follow the schedule's ``catchup``. Nothing else is kept between passes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from shoal.core import versions
from shoal.core.schedule import BackfillMode, Schedule
from shoal.infra import codec, kafka, metrics, policy
from shoal.infra.db import DB_ERRORS, connect_pool, migrate
from shoal.infra.lifecycle import JsonLines, utcnow_iso
from shoal.infra.settings import Settings
from shoal_scheduler.firing import Firer

log = logging.getLogger("shoal.scheduler")


def partition_of(key: bytes, partitions: int) -> int:
    """The partition the default (murmur2) partitioner gives ``key``: where the API's
    records and this scheduler's cursors for it land."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def _log_handler(settings: Settings) -> logging.Handler:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines("scheduler") if settings.log_format == "json" else
                         logging.Formatter("%(asctime)s scheduler %(levelname)s %(name)s: "
                                           "%(message)s"))
    return handler


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """faust's form of the connection settings every other client takes from
    ``kafka.client_kwargs`` (the same checks, the same TLS context)."""
    kw = kafka.client_kwargs(settings)
    context = kw.get("ssl_context")
    if settings.kafka_security_protocol.startswith("SASL_"):
        return faust.SASLCredentials(username=kw["sasl_plain_username"],
                                     password=kw["sasl_plain_password"],
                                     ssl_context=context, mechanism=kw["sasl_mechanism"])
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def build_app(settings: Settings, replication_factor: int = 1) -> faust.App:
    # faust's rebalances need more slack than a bare consumer's: at least 6 s.
    session = max(settings.kafka_session_timeout_ms, 6_000) / 1000
    app = faust.App(
        f"{settings.topic_prefix}.scheduler",
        broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(",")],
        broker_credentials=broker_credentials(settings),
        store="memory://",
        topic_partitions=settings.partitions,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        # Standbys would double the changelog reads; recovery from the changelog is quick
        # at the sizes a schedule table has.
        table_standby_replicas=0,
        broker_session_timeout=session,
        broker_heartbeat_interval=max(session / 5, 0.1),
        broker_rebalance_timeout=max(session * 2, 10.0),
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        topic_replication_factor=replication_factor,
        loghandlers=[_log_handler(settings)],
        # faust's own files (none with the memory store, but it creates the folder) under
        # SHOAL_DATA_DIR, not as "<app>-data" in whatever directory the service started in.
        datadir=str(settings.data_dir / "scheduler" / "{conf.name}-data"),
    )
    topic = app.topic(settings.schedules_topic, key_type=bytes, value_type=bytes,
                      partitions=settings.partitions)
    records = app.Table("records", partitions=settings.partitions, key_type=bytes,
                        value_type=bytes)
    # Written outside a stream (by the fire loop): the producer's partitioner places each
    # key where the API's record for it is, so both move together on a rebalance.
    cursors = app.Table("cursors", partitions=settings.partitions, key_type=bytes,
                        value_type=bytes, use_partitioner=True)
    changed = asyncio.Event()

    dead_letters = app.topic(settings.dead_letters_topic, key_type=bytes, value_type=bytes)

    @app.agent(topic)
    async def ingest(stream: Any) -> None:
        async for event in stream.events():
            key, value, msg = event.key, event.value, event.message
            if key is None or value is None:
                continue
            try:
                new = codec.decode_object(value, "a schedules record")
                kind = "Backfill" if new.get("kind") == "backfill" else "Schedule"
                new = versions.upcast(kind, versions.version_of(new), new, versions.MESSAGES)
                revision = int(new["revision"])
                check_record(new)
            except Exception as exc:  # noqa: BLE001 - the error policy decides
                # Anything this record raises is about the record: never retried.
                reason = policy.reason_of(exc)
                log.warning("dead letter: schedules record for %r: %s", key, reason)
                metrics.DEAD_LETTERS.labels("scheduler").inc()
                await dead_letters.send(key=key, value=codec.dumps(policy.dead_letter(
                    reason=f"invalid schedules record: {reason}", service="scheduler",
                    topic=msg.topic, partition=msg.partition, offset=msg.offset, key=key,
                    value=value, dead_at=utcnow_iso())))
                continue
            old = records.get(key)
            if old is not None and int(codec.loads(old).get("revision", 0)) >= revision:
                continue  # a stale copy (re-published at an API start)
            records[key] = codec.dumps(new)  # in this release's shape
            changed.set()

    async def fire_loop() -> None:
        await _fire_loop(app, settings, topic.get_topic_name(), records, cursors, changed)

    app.task(fire_loop)

    async def metrics_server() -> None:
        metrics.FIRES.labels("start")  # exposed at 0 before the first fire
        stop = asyncio.Event()
        try:
            await metrics.serve(settings, "scheduler", stop)
        finally:
            stop.set()

    app.task(metrics_server)

    return app


def check_record(record: dict[str, Any]) -> None:
    """Raise ValueError/KeyError/TypeError for a record the fire loop could not use (the
    API only publishes valid ones; anyone with topic access could publish others)."""
    if record.get("deleted"):
        return
    if record.get("kind") == "backfill":
        uuid.UUID(record["id"])
        int(record["total"])
        int(record["parallelism"])
        if record["state"] not in ("running", "paused", "cancelled"):
            raise ValueError(f"unknown backfill state {record['state']!r}")
        BackfillMode(record["mode"])
        return
    schedule = Schedule.from_dict(record)
    uuid.UUID(schedule.id)
    schedule.parsed_cron  # noqa: B018 - raises CronInvalid (a ValueError) when invalid
    schedule.zone  # noqa: B018


async def _fire_loop(app: faust.App, settings: Settings, topic_name: str,
                     records: Any, cursors: Any, changed: asyncio.Event) -> None:
    await migrate(settings.database_url)
    pool = await connect_pool(settings.database_url, max_size=3)
    producer = await kafka.start_producer(settings)
    firer = Firer(settings, pool, producer)
    owned_since: dict[int, datetime] = {}
    try:
        while not app.should_stop:
            if app.rebalancing or app.in_recovery:
                await _sleep(changed, 0.1)
                continue
            now = datetime.now(UTC)
            actives = {tp.partition for tp in app.assignor.assigned_actives()
                       if tp.topic == topic_name}
            for p in actives - owned_since.keys():
                owned_since[p] = now
                log.info("owning schedules partition %d from %s", p, now.isoformat())
            for p in owned_since.keys() - actives:
                del owned_since[p]
            next_due = now + timedelta(seconds=settings.scheduler_tick)
            try:
                due = await _pass(firer, records, cursors, owned_since, now, settings)
            except (*DB_ERRORS, KafkaError) as exc:
                # Database or broker unavailable: nothing moved, the next pass retries.
                log.warning("scheduler pass failed (%r); retrying", exc)
                due = None
            if due is not None:
                next_due = min(next_due, due)
            await _sleep(changed, (next_due - datetime.now(UTC)).total_seconds())
    finally:
        await producer.stop()
        await pool.close()


async def _pass(firer: Firer, records: Any, cursors: Any, owned_since: dict[int, datetime],
                now: datetime, settings: Settings) -> datetime | None:
    earliest: datetime | None = None
    for key, value in list(records.items()):
        part = partition_of(key, settings.partitions)
        if part not in owned_since:
            continue
        try:
            due = await _record_pass(firer, key, value, cursors, owned_since[part], now,
                                     settings)
        except Exception as exc:
            if policy.is_transient(exc):
                raise  # nothing moved: the next pass retries
            # One record that cannot be served must not stop the others.
            log.exception("schedules record %r failed; serving the others", key)
            continue
        if due is not None and (earliest is None or due < earliest):
            earliest = due
    return earliest


async def _record_pass(firer: Firer, key: bytes, value: bytes, cursors: Any,
                       owned_since: datetime, now: datetime,
                       settings: Settings) -> datetime | None:
    """Fire one schedule or admit one backfill's runs; when to look again."""
    record = codec.loads(value)
    if record.get("deleted"):
        return None
    raw = cursors.get(key)
    cursor = codec.loads(raw) if raw is not None else {}
    if record.get("kind") == "backfill":
        admitted = int(cursor.get("admitted", 0))
        new = await firer.backfill_pass(record, admitted)
        if new != admitted:
            cursors[key] = codec.dumps({"admitted": new})
        if record["state"] == "running" and new < int(record["total"]):
            # Waiting for runs to finish: look again soon, not at the next tick.
            return now + timedelta(seconds=settings.scheduler_backfill_poll)
        return None
    schedule = Schedule.from_dict(record)
    last = datetime.fromisoformat(cursor["last"]) if cursor.get("last") else None
    alive = datetime.fromisoformat(cursor["alive_at"]) if cursor.get("alive_at") else None
    new_last, due = await firer.schedule_pass(
        schedule, last, handed_over_at(owned_since, alive), now)
    if (new_last is not None and new_last != last) or alive is None or \
            now - alive >= ALIVE_EVERY:
        kept = new_last or last
        cursors[key] = codec.dumps({"last": kept.isoformat() if kept else None,
                                    "alive_at": now.isoformat()})
    return due


# The owner records in each schedule's cursor that it is alive, this often; a new owner
# treats fires after the previous owner's last record as on time (a hand-over: failover,
# rebalance, rolling deploy), as long as that record is at most HAND_OVER old when it
# takes over. Longer than that, nobody owned the schedule: the gap follows ``catchup``.
ALIVE_EVERY = timedelta(seconds=5)
HAND_OVER = timedelta(seconds=120)


def handed_over_at(owned_since: datetime, alive_at: datetime | None) -> datetime:
    """Since when fires count as on time for the schedule's current owner."""
    if alive_at is not None and owned_since - HAND_OVER <= alive_at < owned_since:
        return alive_at
    return owned_since


async def _sleep(changed: asyncio.Event, seconds: float) -> None:
    if seconds <= 0:
        return
    try:
        await asyncio.wait_for(changed.wait(), timeout=seconds)
    except TimeoutError:
        return
    changed.clear()


def run() -> None:
    from faust import Worker

    settings = Settings()
    # The API creates the topic (compacted); here too in case the scheduler starts first.
    asyncio.run(kafka.ensure_topics(settings, [settings.schedules_topic]))
    spec = asyncio.run(kafka.topic_spec(settings, settings.schedules_topic))
    asyncio.set_event_loop(asyncio.new_event_loop())
    (settings.data_dir / "scheduler").mkdir(parents=True, exist_ok=True)  # faust's datadir's
    app = build_app(settings, spec.replication_factor)
    # One log format: the root logger gets only our handler (the app's loghandlers), not
    # faust's coloured default handler as well, which printed every line twice.
    only_ours = {"version": 1, "disable_existing_loggers": False,
                 "root": {"level": settings.log_level.upper(), "handlers": []}}
    Worker(app, loglevel=settings.log_level.lower(), quiet=True,
           logging_config=only_ours).execute_from_commandline()
