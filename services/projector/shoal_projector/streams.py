"""Task logs and worker heartbeats from Kafka into the read models.

Logs: a consumer group; each poll batch is inserted in one transaction (idempotent by
``(instance, task, attempt, chunk)``) and the offsets are committed after, so no line is
lost and a redelivery adds nothing. Heartbeats: only the newest matters, so every
projector reads them from the end and upserts the worker's row.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError

from shoal.infra import codec, kafka, metrics
from shoal.infra.db import DB_ERRORS
from shoal.infra.settings import Settings

log = logging.getLogger(__name__)


def _chunk_row(v: Any) -> tuple[Any, ...] | None:
    if not isinstance(v, dict):
        return None
    try:
        return (v["instance_id"], v["task"], int(v["attempt"]), int(v["chunk"]),
                codec.dumps(v.get("lines") or []).decode(), bool(v.get("final")))
    except (KeyError, TypeError, ValueError):
        return None


async def follow_logs(settings: Settings, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
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
            rows = []
            for msgs in batch.values():
                for m in msgs:
                    try:
                        row = _chunk_row(codec.loads(m.value or b""))
                    except ValueError:
                        row = None
                    if row is None:
                        log.warning("skipping malformed log chunk at %s@%d", m.partition,
                                    m.offset)
                    else:
                        rows.append(row)
            while True:
                try:
                    await pool.executemany(
                        "INSERT INTO shoal_read.task_logs (instance_id, task, attempt, chunk, "
                        "lines, final) VALUES ($1, $2, $3, $4, $5::jsonb, $6) "
                        "ON CONFLICT DO NOTHING", rows)
                    break
                except DB_ERRORS as exc:
                    if stop.is_set():
                        return
                    log.warning("storing log chunks failed (%r); retrying", exc)
                    await asyncio.sleep(1.0)
            try:
                await consumer.commit({tp: ms[-1].offset + 1 for tp, ms in batch.items()})
            except KafkaError as exc:
                log.warning("log offset commit failed (%r); chunks will be re-read", exc)
    finally:
        lag.cancel()
        await kafka.stop_consumer(consumer)


async def follow_heartbeats(settings: Settings, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
    consumer = await kafka.tail(settings, settings.topic("worker-heartbeats"))
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500)
            latest: dict[str, dict[str, Any]] = {}
            for msgs in batch.values():
                for m in msgs:
                    try:
                        beat = codec.loads(m.value or b"")
                        codec.validate("topics", "Heartbeat", beat)
                    except ValueError as exc:
                        log.warning("skipping malformed heartbeat: %s", exc)
                        continue
                    latest[beat["worker_id"]] = beat
            if not latest:
                continue
            try:
                await pool.executemany(
                    "INSERT INTO shoal_read.workers (worker_id, worker_group, host, pid, slots, "
                    "running, stopping, last_heartbeat, partitions, lag) VALUES "
                    "($1,$2,$3,$4,$5,$6::jsonb,$7,$8,$9::jsonb,$10::jsonb) "
                    "ON CONFLICT (worker_id) DO UPDATE SET worker_group = EXCLUDED.worker_group,"
                    " host = EXCLUDED.host, pid = EXCLUDED.pid, slots = EXCLUDED.slots, "
                    "running = EXCLUDED.running, stopping = EXCLUDED.stopping, "
                    "last_heartbeat = EXCLUDED.last_heartbeat, partitions = EXCLUDED.partitions,"
                    " lag = EXCLUDED.lag",
                    [(b["worker_id"], b["group"], b.get("host"), b.get("pid"), b["slots"],
                      codec.dumps(b["running"]).decode(), bool(b.get("stopping")),
                      datetime.fromisoformat(b["sent_at"]),
                      codec.dumps(b.get("partitions") or []).decode(),
                      codec.dumps(b.get("lag") or {}).decode()) for b in latest.values()])
            except DB_ERRORS as exc:
                log.warning("storing heartbeats failed: %r", exc)
    finally:
        await consumer.stop()
