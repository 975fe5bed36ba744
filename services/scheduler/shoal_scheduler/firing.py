"""One pass of the scheduler over the schedules and backfills it owns.

Guarantees, per schedule: a fire is published (acknowledged by the broker) before the
cursor moves past it, so no fire is lost to a crash; a fire published twice — after a
crash between the two steps, or by a zombie owner during a rebalance — carries the same
instance id (UUIDv5 of schedule id + fire time), which the orchestrator starts once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shoal.core.definition import Priority
from shoal.core.model import SCHEDULER_ACTOR, StartWorkflow
from shoal.core.schedule import (
    BackfillMode,
    Schedule,
    backfill_admissions,
    following_fire,
    next_fires,
    parse_timezone,
    scheduled_instance_id,
)
from shoal.infra import codec, metrics
from shoal.infra.catalog import workflow_status
from shoal.infra.kafka import send_reliably
from shoal.infra.settings import Settings

log = logging.getLogger("shoal.scheduler")

TERMINAL = ("succeeded", "failed", "stopped")


@dataclass(frozen=True, slots=True)
class Start:
    """One run to start: a fire of a schedule or a date of a backfill."""

    owner_id: str
    workflow: str
    schedule_time: datetime
    params: Mapping[str, str]
    priority: str | None
    timezone: str = "UTC"

    def command(self, now: datetime) -> StartWorkflow:
        iid = scheduled_instance_id(self.owner_id, self.schedule_time)
        return StartWorkflow(
            message_id=str(uuid.uuid5(uuid.UUID(iid), "start")), instance_id=iid,
            sent_at=now.isoformat(), workflow=self.workflow, version=None,
            params=dict(self.params),
            priority=Priority(self.priority) if self.priority else None,
            # In the schedule's own offset: time expressions ($[yyyyMMdd]) and
            # SHOAL_SCHEDULE_TIME then speak of the local business date.
            schedule_time=self.schedule_time.astimezone(parse_timezone(self.timezone))
            .isoformat(), actor=SCHEDULER_ACTOR)


class Firer:
    """Publishes the runs that are due; returns the cursors to store."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool,
                 producer: AIOKafkaProducer) -> None:
        self.settings = settings
        self.pool = pool
        self.producer = producer

    async def publish(self, starts: Sequence[Start]) -> None:
        """Publish every start and wait for the broker's acknowledgement of each."""
        now = datetime.now(UTC)
        topic = self.settings.commands_topic
        cmds = [s.command(now) for s in starts]
        try:
            futures = [await self.producer.send(topic, codec.encode_command(c),
                                                key=c.instance_id.encode()) for c in cmds]
            await asyncio.gather(*futures)
        except KafkaError as exc:
            log.warning("batch publish failed (%r); publishing one by one", exc)
            for c in cmds:  # repeats are harmless: the instance ids are deterministic
                await send_reliably(self.producer, topic, codec.encode_command(c),
                                    c.instance_id.encode())
        metrics.FIRES.labels("start").inc(len(cmds))

    async def schedule_pass(self, schedule: Schedule, cursor: datetime | None,
                            owned_since: datetime, now: datetime
                            ) -> tuple[datetime | None, datetime | None]:
        """Fire what is due; return (new cursor, when this schedule is next due)."""
        plan = next_fires(schedule, after=cursor, until=now, owned_since=owned_since)
        if plan.skipped:
            log.info("schedule %s: missed fires before %s not caught up (catchup=%s)",
                     schedule.id, plan.cursor, schedule.catchup.value)
        if plan.fire:
            status = await workflow_status(self.pool, schedule.workflow)
            if status == "online":
                await self.publish([Start(schedule.id, schedule.workflow, t, schedule.params,
                                          schedule.priority, schedule.timezone)
                                    for t in plan.fire])
                log.info("schedule %s fired %s x%d (%s .. %s)", schedule.id,
                         schedule.workflow, len(plan.fire), plan.fire[0].isoformat(),
                         plan.fire[-1].isoformat())
            else:
                log.warning("schedule %s: workflow %s is %s; %d fire(s) passed over",
                            schedule.id, schedule.workflow, status or "missing",
                            len(plan.fire))
        due = now if plan.more else following_fire(schedule, plan.cursor)
        return plan.cursor, due

    async def backfill_pass(self, record: Mapping[str, Any], admitted: int) -> int:
        """Admit the runs the backfill's pace allows; return the new admitted count."""
        total = int(record["total"])
        if record["state"] != "running" or admitted >= total:
            return admitted
        bid = uuid.UUID(record["id"])
        row = await self.pool.fetchrow(
            "SELECT count(*) FILTER (WHERE r.state = ANY($3::text[])) AS finished, "
            "bool_or(b.idx = $2 - 1 AND r.state = 'succeeded') AS prev_ok "
            "FROM shoal.backfill_runs b JOIN shoal_read.workflow_runs r USING (instance_id) "
            "WHERE b.backfill_id = $1 AND b.idx < $2", bid, admitted, list(TERMINAL))
        n = backfill_admissions(
            mode=BackfillMode(record["mode"]), parallelism=int(record["parallelism"]),
            admitted=admitted, total=total, finished=int(row["finished"] or 0),
            previous_succeeded=bool(row["prev_ok"]))
        if n <= 0:
            return admitted
        if await workflow_status(self.pool, record["workflow"]) != "online":
            return admitted  # held, not skipped: it goes on once the workflow is online
        rows = await self.pool.fetch(
            "SELECT schedule_time FROM shoal.backfill_runs WHERE backfill_id = $1 AND "
            "idx >= $2 ORDER BY idx LIMIT $3", bid, admitted, n)
        await self.publish([Start(str(bid), record["workflow"], r["schedule_time"],
                                  record.get("params") or {}, record.get("priority"),
                                  record.get("timezone") or "UTC")
                            for r in rows])
        log.info("backfill %s admitted runs %d..%d of %d", bid, admitted + 1,
                 admitted + len(rows), total)
        return admitted + len(rows)
