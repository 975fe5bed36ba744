"""Backfills (DolphinScheduler's complement data): a fixed plan of runs, admitted at the
backfill's pace by the scheduler that owns it, tracked and controllable here."""

from __future__ import annotations

import asyncio
import functools
import uuid
from datetime import UTC, date, datetime, time
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, Field

from shoal.core.schedule import (
    BACKFILL_NAMESPACE,
    MAX_BACKFILL_RUNS,
    BackfillInvalid,
    plan_backfill,
    scheduled_instance_id,
)
from shoal.infra import codec
from shoal.infra.catalog import workflow_status
from shoal_api.deps import ADMIN, VIEWER, Actor, Res
from shoal_api.models import (
    BackfillCreated,
    BackfillOut,
    BackfillPlanned,
    BackfillRun,
    BackfillState,
)
from shoal_api.problems import ERRORS
from shoal_api.records import Scalar, check_declared, publish, string_params, versioned

router = APIRouter(prefix="/api/v1", tags=["backfills"], dependencies=[VIEWER],
                   responses=ERRORS)

TERMINAL = ("succeeded", "failed", "stopped")


class BackfillCreate(BaseModel):
    """Body of ``POST /workflows/{name}/backfill``."""

    model_config = {"extra": "forbid"}

    start: datetime | date | None = Field(default=None, description="first time (inclusive)")
    end: datetime | date | None = Field(default=None, description="last time (inclusive)")
    cron: str | None = Field(default=None, description="default: the workflow's schedule, "
                                                       "else daily at midnight")
    timezone: str | None = Field(default=None, description="default: the schedule's, else UTC")
    dates: list[datetime | date] | None = Field(default=None, max_length=MAX_BACKFILL_RUNS)
    mode: Literal["serial", "parallel"] = "serial"
    parallelism: int = Field(default=1, ge=1, le=1000)
    reverse: bool = False
    params: dict[str, Scalar] = {}
    priority: Literal["highest", "high", "medium", "low", "lowest"] | None = None
    backfill_id: uuid.UUID | None = Field(
        default=None, description="default: derived from the workflow, times and params, so "
                                  "submitting the same backfill twice starts nothing new")
    dry_run: bool = Field(default=False, description="answer 200 with the plan (timetable "
                                                     "source, count, first, last) and create "
                                                     "nothing")


def _as_dt(v: datetime | date) -> datetime:
    return v if isinstance(v, datetime) else datetime.combine(v, time())


def _problem(path: str, message: str) -> HTTPException:
    return HTTPException(422, {"message": f"{path}: {message}",
                               "problems": [{"path": path, "message": message}]})


async def _schedule(res: Res, name: str) -> tuple[str, str] | None:
    """(cron, timezone) of the workflow's schedule (the oldest enabled one, else the
    oldest), or None."""
    row = await res.pool.fetchrow(
        "SELECT record->>'cron' AS cron, record->>'timezone' AS tz FROM shoal.schedules "
        "WHERE workflow = $1 AND NOT deleted "
        "ORDER BY (record->>'enabled')::boolean DESC, created_at LIMIT 1", name)
    return (row["cron"], row["tz"]) if row else None


@router.post("/workflows/{name}/backfill", status_code=202, dependencies=[ADMIN],
             response_model=BackfillCreated | BackfillPlanned, responses={200: {
                 "model": BackfillCreated | BackfillPlanned,
                 "description": "already submitted: nothing new; or the plan of a dry run"}})
async def create_backfill(name: str, body: BackfillCreate, res: Res,
                          response: Response, actor: Actor) -> dict[str, Any]:
    status = await workflow_status(res.pool, name)
    if status in (None, "deleted"):
        raise HTTPException(404, {"message": f"no workflow named '{name}'"})
    if status == "offline":
        raise HTTPException(409, {"message": f"workflow '{name}' is offline; put it online "
                                             "before backfilling"})
    schedule = await _schedule(res, name)
    try:
        # Planning walks up to 100,001 cron fires (several seconds for a range that turns
        # out too long): in a thread, so the API keeps serving meanwhile.
        plan = await asyncio.to_thread(functools.partial(
            plan_backfill, cron=body.cron, timezone=body.timezone, schedule=schedule,
            start=_as_dt(body.start) if body.start else None,
            end=_as_dt(body.end) if body.end else None,
            dates=[_as_dt(d) for d in body.dates] if body.dates else None,
            reverse=body.reverse))
    except BackfillInvalid as exc:
        raise _problem(exc.path, exc.message) from None
    times, cron_expr, tz_name = list(plan.times), plan.cron, plan.timezone
    params = string_params(body.params)
    await check_declared(res, name, params)
    bid = str(body.backfill_id or uuid.uuid5(BACKFILL_NAMESPACE, codec.dumps(
        {"workflow": name, "times": sorted(t.isoformat() for t in times),
         "params": params}).decode()))
    if body.dry_run:
        response.status_code = 200
        return {"dry_run": True, "workflow": name, "backfill_id": bid, **plan.summary()}
    ids = [scheduled_instance_id(bid, t) for t in times]
    record = versioned({"kind": "backfill", "id": bid, "workflow": name, "mode": body.mode,
                        "parallelism": body.parallelism if body.mode == "parallel" else 1,
                        "reverse": body.reverse, "total": len(times), "params": params,
                        "priority": body.priority, "cron": cron_expr, "timezone": tz_name,
                        "state": "running", "revision": 1, "actor": actor,
                        "updated_by": actor})
    async with res.pool.acquire() as conn, conn.transaction():
        inserted = await conn.fetchval(
            "INSERT INTO shoal.backfills (id, workflow, record, total) VALUES ($1, $2, "
            "$3::jsonb, $4) ON CONFLICT (id) DO NOTHING RETURNING true", uuid.UUID(bid), name,
            codec.dumps(record).decode(), len(times))
        if not inserted:
            existing = await conn.fetch("SELECT instance_id FROM shoal.backfill_runs WHERE "
                                        "backfill_id = $1 ORDER BY idx", uuid.UUID(bid))
            response.status_code = 200
            return {"backfill_id": bid, "instance_ids": [str(r[0]) for r in existing],
                    "created": False}
        await conn.copy_records_to_table(
            "backfill_runs", schema_name="shoal",
            columns=["backfill_id", "idx", "schedule_time", "instance_id"],
            records=[(uuid.UUID(bid), i, t, uuid.UUID(iid))
                     for i, (t, iid) in enumerate(zip(times, ids, strict=True))])
    # Published once its rows are committed: a scheduler never admits a backfill whose
    # runs are not recorded. A crash in between is covered by the republish at start.
    await publish(res, bid, record)
    return {"backfill_id": bid, "instance_ids": ids, "created": True}


async def _progress(res: Res, bid: uuid.UUID) -> dict[str, Any]:
    row = await res.pool.fetchrow(
        "SELECT record::text AS record, total, created_at, updated_at FROM shoal.backfills "
        "WHERE id = $1", bid)
    if row is None:
        raise HTTPException(404, {"message": f"no backfill {bid}"})
    record = codec.loads(row["record"])
    by_state = {r["state"]: r["n"] for r in await res.pool.fetch(
        "SELECT r.state, count(*) AS n FROM shoal.backfill_runs b JOIN shoal_read.workflow_runs"
        " r USING (instance_id) WHERE b.backfill_id = $1 GROUP BY r.state", bid)}
    span = await res.pool.fetchrow(
        "SELECT min(schedule_time) AS first, max(schedule_time) AS last FROM "
        "shoal.backfill_runs WHERE backfill_id = $1", bid)
    started = sum(by_state.values())
    finished = sum(n for s, n in by_state.items() if s in TERMINAL)
    state = record["state"]
    if state == "running" and finished == row["total"]:
        state = "finished"
    return {"backfill_id": str(bid), "workflow": record["workflow"], "mode": record["mode"],
            "parallelism": record["parallelism"], "reverse": record["reverse"],
            "cron": record["cron"], "timezone": record["timezone"], "params": record["params"],
            "state": state, "planned": row["total"], "started": started, "finished": finished,
            "succeeded": by_state.get("succeeded", 0), "failed": by_state.get("failed", 0),
            "active": started - finished, "by_state": by_state,
            "first_schedule_time": span["first"].astimezone(UTC).isoformat(),
            "last_schedule_time": span["last"].astimezone(UTC).isoformat(),
            "created_at": row["created_at"].isoformat(),
            "updated_at": row["updated_at"].isoformat(),
            "actor": record.get("actor"), "updated_by": record.get("updated_by")}


@router.get("/backfills", response_model=list[BackfillOut])
async def list_backfills(res: Res, workflow: str | None = None,
                         limit: int = Query(50, ge=1, le=500)) -> list[dict[str, Any]]:
    rows = await res.pool.fetch(
        "SELECT id FROM shoal.backfills WHERE ($1::text IS NULL OR workflow = $1) "
        "ORDER BY created_at DESC LIMIT $2", workflow, max(1, min(limit, 500)))
    return [await _progress(res, r["id"]) for r in rows]


@router.get("/backfills/{backfill_id}", response_model=BackfillOut)
async def get_backfill(backfill_id: uuid.UUID, res: Res) -> dict[str, Any]:
    return await _progress(res, backfill_id)


@router.get("/backfills/{backfill_id}/runs", response_model=list[BackfillRun])
async def backfill_runs(backfill_id: uuid.UUID, res: Res,
                        offset: int = Query(0, ge=0, le=MAX_BACKFILL_RUNS),
                        limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    rows = await res.pool.fetch(
        "SELECT b.idx, b.schedule_time, b.instance_id, r.state FROM shoal.backfill_runs b "
        "LEFT JOIN shoal_read.workflow_runs r USING (instance_id) WHERE b.backfill_id = $1 "
        "ORDER BY b.idx OFFSET $2 LIMIT $3", backfill_id, max(0, offset),
        max(1, min(limit, 1000)))
    return [{"index": r["idx"], "schedule_time": r["schedule_time"].astimezone(UTC).isoformat(),
             "instance_id": str(r["instance_id"]), "state": r["state"] or "planned"}
            for r in rows]


_NEXT = {"pause": "paused", "resume": "running", "cancel": "cancelled"}


@router.post("/backfills/{backfill_id}/{action}", status_code=202, dependencies=[ADMIN],
             response_model=BackfillState)
async def control_backfill(backfill_id: uuid.UUID, action: Literal["pause", "resume", "cancel"],
                           res: Res, actor: Actor) -> dict[str, Any]:
    async with res.pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow("SELECT record::text AS record FROM shoal.backfills "
                                  "WHERE id = $1 FOR UPDATE", backfill_id)
        if row is None:
            raise HTTPException(404, {"message": f"no backfill {backfill_id}"})
        record = codec.loads(row["record"])
        if record["state"] == "cancelled":
            raise HTTPException(409, {"message": "the backfill was cancelled",
                                      "state": "cancelled"})
        record = {**versioned(record), "state": _NEXT[action],
                  "revision": record["revision"] + 1, "updated_by": actor}
        await conn.execute("UPDATE shoal.backfills SET record = $2::jsonb, updated_at = now() "
                           "WHERE id = $1", backfill_id, codec.dumps(record).decode())
    # After the commit (the scheduler keeps the highest revision, whatever the order).
    await publish(res, str(backfill_id), record)
    return {"backfill_id": str(backfill_id), "state": record["state"]}
