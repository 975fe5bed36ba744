"""Task logs and worker heartbeats from Kafka into the read models.

Logs: a consumer group; each poll batch is inserted in one transaction (idempotent by
``(instance, task, attempt, chunk)``) and the offsets are committed after, so no line is
lost and a redelivery adds nothing; a malformed chunk goes to the dead letters and the
others are stored (``shoal.infra.policy``). Heartbeats: only the newest matters, so every
projector reads them from the end and upserts the worker's row.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from shoal.core.errors import MessageInvalid
from shoal.infra import codec, kafka, metrics, policy
from shoal.infra.settings import Settings

log = logging.getLogger(__name__)


def _chunk_row(value: bytes | None) -> tuple[Any, ...]:
    """A task-log chunk's row; :class:`MessageInvalid` for a malformed chunk."""
    v = codec.accept("topics", "TaskLogChunk", codec.decode_object(value, "a task-log chunk"))
    return (v["instance_id"], v["task"], int(v["attempt"]), int(v["chunk"]),
            codec.dumps(v.get("lines") or []).decode(), bool(v.get("final")))


_INSERT_CHUNKS = ("INSERT INTO shoal_read.task_logs (instance_id, task, attempt, chunk, lines, "
                  "final) VALUES ($1, $2, $3, $4, $5::jsonb, $6) ON CONFLICT DO NOTHING")


async def follow_logs(settings: Settings, pool: asyncpg.Pool, dead: policy.DeadLetters,
                      stop: asyncio.Event) -> None:
    consumer = kafka.consumer(settings, settings.topic("task-logs"),
                              group_id=f"{settings.topic_prefix}.projector.logs",
                              max_poll_records=500)
    await consumer.start()
    pacer = kafka.FetchPacer(consumer, settings)  # followed logs arrive while they are written
    lag = asyncio.create_task(metrics.sample_lag(
        consumer, f"{settings.topic_prefix}.projector.logs", stop))
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            pacer.saw(len(batch))
            if not batch:
                continue
            rows: list[tuple[ConsumerRecord[Any, Any], tuple[Any, ...]]] = []
            for msgs in batch.values():
                for m in msgs:
                    try:
                        rows.append((m, _chunk_row(m.value)))
                    except Exception as exc:  # noqa: BLE001 - the policy decides
                        await _dead(dead, m, exc)
            if not await _store_chunks(pool, rows, dead, stop):
                return
            try:
                await consumer.commit({tp: ms[-1].offset + 1 for tp, ms in batch.items()})
            except KafkaError as exc:
                log.warning("log offset commit failed (%r); chunks will be re-read", exc)
    finally:
        lag.cancel()
        await kafka.stop_consumer(consumer)


async def _dead(dead: policy.DeadLetters, m: ConsumerRecord[Any, Any],
                exc: BaseException) -> None:
    await dead.send(policy.reason_of(exc), topic=m.topic, partition=m.partition,
                    offset=m.offset, key=m.key, value=m.value)


async def _store_chunks(pool: asyncpg.Pool,
                        rows: list[tuple[ConsumerRecord[Any, Any], tuple[Any, ...]]],
                        dead: policy.DeadLetters, stop: asyncio.Event) -> bool:
    """Insert the batch's chunks under the error policy: transient failures retry, any
    other failure inserts them one by one and dead-letters the ones at fault. False when
    asked to stop meanwhile."""
    async def insert(part: list[tuple[Any, ...]]) -> None:
        await pool.executemany(_INSERT_CHUNKS, part)

    try:
        await policy.retry_transient("storing log chunks",
                                     lambda: insert([r for _, r in rows]), stop)
    except Exception as exc:  # noqa: BLE001 - the error policy decides
        if policy.is_transient(exc):
            return False
        log.warning("storing %d log chunks failed (%s); one by one", len(rows),
                    policy.reason_of(exc))
    else:
        return True
    for m, row in rows:
        try:
            await policy.retry_transient("storing a log chunk",
                                         functools.partial(insert, [row]), stop)
        except Exception as exc:  # noqa: BLE001 - the error policy decides
            if policy.is_transient(exc):
                return False
            await _dead(dead, m, exc)
    return True


def _heartbeat_row(value: bytes | None) -> tuple[Any, ...]:
    """A heartbeat's row of shoal_read.workers; :class:`MessageInvalid` when malformed."""
    b = codec.accept("topics", "Heartbeat", codec.decode_object(value, "a heartbeat"))
    try:
        sent_at = datetime.fromisoformat(b["sent_at"])
    except ValueError:
        raise MessageInvalid(f"Heartbeat: sent_at: {b['sent_at']!r} is not a timestamp"
                             ) from None
    return (b["worker_id"], b["group"], b.get("host"), b.get("pid"), b["slots"],
            codec.dumps(b["running"]).decode(), bool(b.get("stopping")), sent_at,
            codec.dumps(b.get("partitions") or []).decode(),
            codec.dumps(b.get("lag") or {}).decode())


_UPSERT_WORKER = (
    "INSERT INTO shoal_read.workers (worker_id, worker_group, host, pid, slots, "
    "running, stopping, last_heartbeat, partitions, lag) VALUES "
    "($1,$2,$3,$4,$5,$6::jsonb,$7,$8,$9::jsonb,$10::jsonb) "
    "ON CONFLICT (worker_id) DO UPDATE SET worker_group = EXCLUDED.worker_group,"
    " host = EXCLUDED.host, pid = EXCLUDED.pid, slots = EXCLUDED.slots, "
    "running = EXCLUDED.running, stopping = EXCLUDED.stopping, "
    "last_heartbeat = EXCLUDED.last_heartbeat, partitions = EXCLUDED.partitions,"
    " lag = EXCLUDED.lag")


async def follow_heartbeats(settings: Settings, pool: asyncpg.Pool, dead: policy.DeadLetters,
                            stop: asyncio.Event) -> None:
    """Only the newest heartbeat of each worker matters; one that fails is retried with
    the next (transient) or dead-lettered (anything else)."""
    consumer = await kafka.tail(settings, settings.topic("worker-heartbeats"))
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500)
            latest: dict[str, tuple[ConsumerRecord[Any, Any], tuple[Any, ...]]] = {}
            for msgs in batch.values():
                for m in msgs:
                    try:
                        row = _heartbeat_row(m.value)
                    except Exception as exc:  # noqa: BLE001 - the policy decides
                        await _dead(dead, m, exc)
                        continue
                    latest[row[0]] = (m, row)
            for m, row in latest.values():
                try:
                    await pool.execute(_UPSERT_WORKER, *row)
                except Exception as exc:  # noqa: BLE001 - the policy decides
                    if policy.is_transient(exc):
                        log.warning("storing heartbeats failed: %r", exc)
                        break  # the next heartbeat brings the news again
                    await _dead(dead, m, exc)
    finally:
        await consumer.stop()
