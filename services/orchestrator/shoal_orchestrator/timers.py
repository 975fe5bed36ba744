"""Fires due durable timers by publishing FireTimer commands.

Any orchestrator may fire any due row: firing only publishes a command to the instance's
partition of ``<prefix>.commands``, where the partition's owner applies it in order (and
ignores it if the timer was cancelled meanwhile). Rows are deleted after they were
published (no lock held across the sends, see ``fire_due``); a crash in between
re-publishes, and the deterministic message_id makes the repeat a no-op. Timers
therefore survive any orchestrator's death, including SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shoal.core.model import FireTimer
from shoal.infra import codec
from shoal.infra.db import DB_ERRORS
from shoal.infra.lifecycle import utcnow_iso
from shoal.infra.settings import Settings

log = logging.getLogger(__name__)
_NS = uuid.UUID("0f7f5d1e-8a7b-4f43-b4c4-1d7e0b8f9a31")
BATCH = 500


async def fire_due(pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings) -> int:
    """Publish the due timers, then delete exactly the rows published (same fire time).

    No row lock is held across the sends: a commit that cancels or re-arms one of these
    timers (holding the append lock) never waits for the broker. A timer cancelled
    meanwhile is ignored by its run; one re-armed meanwhile keeps its new row. Several
    pollers may publish the same due timer: its message id is deterministic, so the
    repeat is a no-op."""
    rows = await pool.fetch(
        "SELECT instance_id, timer_id, fire_at FROM shoal.timers WHERE fire_at <= now() "
        "ORDER BY fire_at LIMIT $1", BATCH)
    if not rows:
        return 0
    futures = []
    for r in rows:
        iid = str(r["instance_id"])
        cmd = FireTimer(
            message_id=str(uuid.uuid5(_NS, f"{iid}/{r['timer_id']}/{r['fire_at']}")),
            instance_id=iid, sent_at=utcnow_iso(), timer_id=r["timer_id"])
        futures.append(await producer.send(settings.commands_topic,
                                           codec.encode_command(cmd), key=iid.encode()))
    await asyncio.gather(*futures)
    await pool.executemany(
        "DELETE FROM shoal.timers WHERE instance_id = $1 AND timer_id = $2 AND fire_at = $3",
        [(r["instance_id"], r["timer_id"], r["fire_at"]) for r in rows])
    return len(rows)


async def run_timers(pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: Settings,
                     stop: asyncio.Event, interval: float = 0.2) -> None:
    while not stop.is_set():
        try:
            n = await fire_due(pool, producer, settings)
        except (*DB_ERRORS, KafkaError) as exc:
            log.warning("timer poller: %r; retrying", exc)
            n = 0
        if n < BATCH:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
