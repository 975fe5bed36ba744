"""Cron schedules: stored here, published to ``<prefix>.schedules``, fired by schedulers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel, Field

from shoal.core.schedule import (
    Catchup,
    Schedule,
    localize,
    parse_timezone,
    upcoming,
    validate_schedule_fields,
)
from shoal.infra import codec
from shoal.infra.catalog import workflow_status
from shoal_api.deps import ADMIN, VIEWER, Actor, Res
from shoal_api.models import ScheduleOut
from shoal_api.problems import ERRORS
from shoal_api.records import Scalar, check_declared, publish, string_params, versioned

router = APIRouter(prefix="/api/v1/schedules", tags=["schedules"], dependencies=[VIEWER],
                   responses=ERRORS)



class ScheduleCreate(BaseModel):
    """A cron schedule of a workflow (CONTRACT §3)."""

    model_config = {"extra": "forbid"}

    workflow: str
    cron: str = Field(description="5-field cron, or Quartz 6/7-field with seconds first")
    timezone: str = Field(default="UTC", description="IANA name, e.g. Europe/Berlin")
    start: datetime | None = Field(default=None, description="no fire before (naive = local)")
    end: datetime | None = Field(default=None, description="no fire after (naive = local)")
    enabled: bool = True
    params: dict[str, Scalar] = {}
    catchup: str = Field(default="all", description="missed fires: all | latest | none")
    priority: Literal["highest", "high", "medium", "low", "lowest"] | None = None


class ScheduleUpdate(BaseModel):
    """Fields to change; the others keep their values."""

    model_config = {"extra": "forbid"}

    workflow: str | None = None
    cron: str | None = None
    timezone: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    enabled: bool | None = None
    params: dict[str, Scalar] | None = None
    catchup: str | None = None
    priority: Literal["highest", "high", "medium", "low", "lowest"] | None = None


def _problems(fields: dict[str, Any]) -> None:
    problems = validate_schedule_fields(fields)
    if problems:
        raise HTTPException(422, {"message": "invalid schedule: " + "; ".join(
            str(p) for p in problems), "problems": [p.as_dict() for p in problems]})


def _build(sid: str, f: dict[str, Any], *, epoch: datetime, enabled_at: datetime) -> Schedule:
    tz = parse_timezone(f["timezone"] or "UTC")
    return Schedule(
        id=sid, workflow=f["workflow"], cron=f["cron"], timezone=f["timezone"] or "UTC",
        start=localize(f["start"], tz) if f.get("start") else None,
        end=localize(f["end"], tz) if f.get("end") else None,
        enabled=f["enabled"], params=string_params(f.get("params") or {}),
        catchup=Catchup(f.get("catchup") or "all"), priority=f.get("priority"),
        epoch=epoch, enabled_at=enabled_at)


async def _public(res: Res, row: Any, since: datetime | None = None) -> dict[str, Any]:
    """The schedule as the API shows it; ``next_fires`` are the fires after ``since``
    (default now: a create passes its epoch, so a fire due while the request was being
    answered is still listed first, as the scheduler will fire it)."""
    record = codec.loads(row["record"])
    schedule = Schedule.from_dict(record)
    now = since or datetime.now(UTC)
    return {
        "id": schedule.id, "workflow": schedule.workflow, "cron": schedule.cron,
        "timezone": schedule.timezone, "start": record["start"], "end": record["end"],
        "enabled": schedule.enabled, "params": dict(schedule.params),
        "catchup": schedule.catchup.value, "priority": schedule.priority,
        "revision": record["revision"],
        "created_at": row["created_at"].isoformat(), "updated_at": row["updated_at"].isoformat(),
        "created_by": record.get("created_by"), "updated_by": record.get("updated_by"),
        "workflow_status": await workflow_status(res.pool, schedule.workflow) or "missing",
        "next_fires": [t.isoformat() for t in upcoming(schedule, now, 5)],
    }


_COLS = "id, record::text AS record, created_at, updated_at"


@router.post("", status_code=201, dependencies=[ADMIN], response_model=ScheduleOut)
async def create_schedule(body: ScheduleCreate, res: Res, actor: Actor) -> dict[str, Any]:
    fields = body.model_dump()
    _problems(fields)
    if await workflow_status(res.pool, body.workflow) in (None, "deleted"):
        raise HTTPException(422, {"message": f"workflow: no workflow named '{body.workflow}'",
                                  "problems": [{"path": "workflow", "message":
                                                f"no workflow named '{body.workflow}'"}]})
    await check_declared(res, body.workflow, string_params(body.params))
    sid = str(uuid.uuid4())
    now = datetime.now(UTC)
    record = versioned({**_build(sid, fields, epoch=now, enabled_at=now).to_dict(),
                        "revision": 1, "created_by": actor, "updated_by": actor})
    async with res.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            f"INSERT INTO shoal.schedules (id, workflow, record) VALUES ($1, $2, $3::jsonb) "
            f"RETURNING {_COLS}", uuid.UUID(sid), body.workflow, codec.dumps(record).decode())
        await publish(res, sid, record)
    return await _public(res, row, since=now)


@router.get("", response_model=list[ScheduleOut])
async def list_schedules(res: Res, workflow: str | None = None) -> list[dict[str, Any]]:
    rows = await res.pool.fetch(
        f"SELECT {_COLS} FROM shoal.schedules WHERE NOT deleted AND ($1::text IS NULL OR "
        "workflow = $1) ORDER BY created_at", workflow)
    return [await _public(res, r) for r in rows]


@router.get("/{schedule_id}", response_model=ScheduleOut)
async def get_schedule(schedule_id: uuid.UUID, res: Res) -> dict[str, Any]:
    row = await res.pool.fetchrow(
        f"SELECT {_COLS} FROM shoal.schedules WHERE id = $1 AND NOT deleted", schedule_id)
    if row is None:
        raise HTTPException(404, {"message": f"no schedule {schedule_id}"})
    return await _public(res, row)


async def _locked(conn: asyncpg.Connection, schedule_id: uuid.UUID) -> dict[str, Any]:
    """The schedule's record, locked until the transaction ends; 404 when there is none."""
    row = await conn.fetchrow(
        "SELECT record::text AS record FROM shoal.schedules WHERE id = $1 AND NOT deleted "
        "FOR UPDATE", schedule_id)
    if row is None:
        raise HTTPException(404, {"message": f"no schedule {schedule_id}"})
    return dict(codec.loads(row["record"]))


@router.put("/{schedule_id}", dependencies=[ADMIN], response_model=ScheduleOut)
async def update_schedule(schedule_id: uuid.UUID, body: ScheduleUpdate,
                          res: Res, actor: Actor) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    async with res.pool.acquire() as conn, conn.transaction():
        old = await _locked(conn, schedule_id)
        fields = {k: old[k] for k in ("workflow", "cron", "timezone", "enabled", "params",
                                      "catchup", "priority")}
        fields["start"] = datetime.fromisoformat(old["start"]) if old["start"] else None
        fields["end"] = datetime.fromisoformat(old["end"]) if old["end"] else None
        fields.update(changes)
        _problems(fields)
        if "workflow" in changes and await workflow_status(conn, fields["workflow"]) in (
                None, "deleted"):
            raise HTTPException(422, {"message": f"workflow: no workflow named "
                                                 f"'{fields['workflow']}'"})
        if "workflow" in changes or "params" in changes:
            await check_declared(res, fields["workflow"], string_params(fields["params"] or {}))
        now = datetime.now(UTC)
        # A new timetable never fires the old one's past; switching on starts the count of
        # fires missed while off (they follow catchup).
        retimed = any(changes.get(k, old[k]) != old[k] for k in ("cron", "timezone"))
        epoch = now if retimed else datetime.fromisoformat(old["epoch"])
        switched_on = fields["enabled"] and not old["enabled"]
        enabled_at = now if switched_on else datetime.fromisoformat(old["enabled_at"])
        record = versioned({**_build(str(schedule_id), fields, epoch=epoch,
                                     enabled_at=enabled_at).to_dict(),
                            "revision": old["revision"] + 1,
                            "created_by": old.get("created_by"), "updated_by": actor})
        row = await conn.fetchrow(
            f"UPDATE shoal.schedules SET record = $2::jsonb, workflow = $3, updated_at = now() "
            f"WHERE id = $1 RETURNING {_COLS}", schedule_id, codec.dumps(record).decode(),
            fields["workflow"])
        await publish(res, str(schedule_id), record)
    return await _public(res, row)


@router.delete("/{schedule_id}", status_code=204, dependencies=[ADMIN])
async def delete_schedule(schedule_id: uuid.UUID, res: Res, actor: Actor) -> Response:
    async with res.pool.acquire() as conn, conn.transaction():
        old = await _locked(conn, schedule_id)
        record = versioned({"kind": "schedule", "id": str(schedule_id), "deleted": True,
                            "revision": old["revision"] + 1,
                            "created_by": old.get("created_by"), "updated_by": actor})
        await conn.execute("UPDATE shoal.schedules SET deleted = true, record = $2::jsonb, "
                           "updated_at = now() WHERE id = $1", schedule_id,
                           codec.dumps(record).decode())
        await publish(res, str(schedule_id), record)
    return Response(status_code=204)
