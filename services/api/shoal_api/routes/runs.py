"""Runs: start (a StartWorkflow command on Kafka), read models, history."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from aiokafka.errors import KafkaError
from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from shoal.core.definition import Priority
from shoal.core.model import (
    Command,
    ForceTaskSuccess,
    PauseWorkflow,
    RecoverWorkflow,
    RerunWorkflow,
    ResumeWorkflow,
    RunState,
    Scope,
    StartWorkflow,
    StopWorkflow,
)
from shoal.core.workflow import rejection
from shoal.infra import codec
from shoal.infra.catalog import workflow_status
from shoal.infra.kafka import send_reliably
from shoal.infra.lifecycle import utcnow_iso
from shoal_api.deps import Res
from shoal_api.records import string_params

router = APIRouter(prefix="/api/v1", tags=["runs"])


class RunCreate(BaseModel):
    """Body of ``POST /workflows/{name}/runs`` (the StartWorkflow fields)."""

    model_config = {"extra": "forbid"}

    instance_id: uuid.UUID | None = Field(
        default=None, description="choose the id to make the start idempotent across retries")
    version: int | None = Field(default=None, ge=1)
    params: dict[str, str | int | float | bool | None] = {}
    priority: Literal["highest", "high", "medium", "low", "lowest"] | None = None
    schedule_time: datetime | None = None
    start_from: list[str] | None = Field(
        default=None, description="start from these tasks instead of the DAG's roots")
    scope: Literal["downstream", "upstream", "only"] = "downstream"
    dry_run: bool = Field(default=False, description="every task succeeds without executing")


@router.post("/workflows/{name}/runs", status_code=202)
async def start_run(name: str, res: Res, body: RunCreate | None = None) -> dict[str, str]:
    body = body or RunCreate()
    found = await res.store.definition(name, body.version)
    if found is None:
        which = f" version {body.version}" if body.version else ""
        raise HTTPException(404, {"message": f"no workflow named '{name}'{which}"})
    status = await workflow_status(res.pool, name)
    if status == "deleted":
        raise HTTPException(404, {"message": f"no workflow named '{name}'"})
    if status == "offline":
        raise HTTPException(409, {"message": f"workflow '{name}' is offline; put it online "
                                             "to start it"})
    known = {t["name"] for t in found[1]["tasks"]}
    unknown = [t for t in body.start_from or [] if t not in known]
    if unknown:
        raise HTTPException(422, {"message": f"start_from: unknown task(s) {', '.join(unknown)}"
                                             f" of '{name}'"})
    instance_id = str(body.instance_id or uuid.uuid4())
    cmd = StartWorkflow(
        message_id=str(uuid.uuid4()), instance_id=instance_id, sent_at=utcnow_iso(),
        workflow=name, version=body.version,
        params=string_params(body.params),
        priority=Priority(body.priority) if body.priority else None,
        schedule_time=body.schedule_time.isoformat() if body.schedule_time else None,
        start_from=tuple(body.start_from) if body.start_from else None,
        scope=Scope(body.scope), dry_run=body.dry_run,
    )
    await _send(res, cmd)
    return {"instance_id": instance_id}


def _iso(v: datetime | None) -> str | None:
    return v.isoformat() if v else None


def _run_row(r: Any) -> dict[str, Any]:
    return {
        "instance_id": str(r["instance_id"]), "workflow": r["workflow"],
        "version": r["version"], "state": r["state"], "attempt": r["attempt"],
        "priority": r["priority"], "params": codec.loads(r["params"]),
        "schedule_time": _iso(r["schedule_time"]), "submitted_at": _iso(r["submitted_at"]),
        "started_at": _iso(r["started_at"]), "finished_at": _iso(r["finished_at"]),
        "duration_ms": r["duration_ms"], "failure": r["failure"],
        "parent_instance_id": str(r["parent_instance_id"]) if r["parent_instance_id"] else None,
    }


_RUN_COLS = ("instance_id, workflow, version, state, attempt, priority, params::text AS params, "
             "schedule_time, submitted_at, started_at, finished_at, duration_ms, failure, "
             "parent_instance_id")


@router.get("/runs")
async def list_runs(res: Res, workflow: str | None = None, state: str | None = None,
                    since: datetime | None = None, limit: int = Query(50, ge=1, le=500),
                    cursor: datetime | None = None) -> dict[str, Any]:
    rows = await res.pool.fetch(
        f"SELECT {_RUN_COLS} FROM shoal_read.workflow_runs WHERE ($1::text IS NULL OR "
        "workflow = $1) AND ($2::text IS NULL OR state = $2) AND ($3::timestamptz IS NULL OR "
        "submitted_at >= $3) AND ($4::timestamptz IS NULL OR submitted_at < $4) "
        "ORDER BY submitted_at DESC LIMIT $5", workflow, state, since, cursor, limit)
    runs = [_run_row(r) for r in rows]
    return {"runs": runs,
            "next_cursor": runs[-1]["submitted_at"] if len(runs) == limit else None}


@router.get("/runs/{instance_id}")
async def get_run(instance_id: uuid.UUID, res: Res) -> dict[str, Any]:
    row = await res.pool.fetchrow(
        f"SELECT {_RUN_COLS} FROM shoal_read.workflow_runs WHERE instance_id = $1", instance_id)
    if row is None:
        raise HTTPException(404, {"message": f"no run {instance_id} (yet: a run appears once "
                                             "the orchestrator accepted it)"})
    tasks = await res.pool.fetch(
        "SELECT task, attempt, state, worker_id, worker_group, started_at, finished_at, "
        "duration_ms, exit_code, outputs::text AS outputs, error, child_instance_id "
        "FROM shoal_read.task_runs WHERE instance_id = $1 "
        "ORDER BY coalesce(started_at, finished_at), task, attempt",
        instance_id)
    live_groups = {r["worker_group"] for r in await res.pool.fetch(
        "SELECT DISTINCT worker_group FROM shoal_read.workers WHERE NOT stopping AND "
        "last_heartbeat > now() - make_interval(secs => $1)", res.settings.lease_timeout)}
    return {**_run_row(row), "tasks": [
        {"task": t["task"], "attempt": t["attempt"], "state": t["state"],
         "worker_id": t["worker_id"], "worker_group": t["worker_group"],
         "waiting_for_worker": t["state"] == "dispatched" and t["worker_group"] not in
         live_groups,
         "started_at": _iso(t["started_at"]),
         "finished_at": _iso(t["finished_at"]), "duration_ms": t["duration_ms"],
         "exit_code": t["exit_code"], "outputs": codec.loads(t["outputs"]), "error": t["error"],
         "child_instance_id": str(t["child_instance_id"]) if t["child_instance_id"] else None}
        for t in tasks]}


@router.get("/runs/{instance_id}/events")
async def get_events(instance_id: uuid.UUID, res: Res) -> list[dict[str, Any]]:
    events = await res.store.events_of(str(instance_id))
    if not events:
        raise HTTPException(404, {"message": f"no events for {instance_id}"})
    return [e.as_dict() for e in events]


_CONTROL: dict[str, type[PauseWorkflow | ResumeWorkflow | StopWorkflow | RerunWorkflow
                         | RecoverWorkflow]] = {
    "pause": PauseWorkflow, "resume": ResumeWorkflow, "stop": StopWorkflow,
    "rerun": RerunWorkflow, "recover": RecoverWorkflow,
}


async def _current_state(res: Res, instance_id: uuid.UUID) -> RunState:
    state = await res.pool.fetchval(
        "SELECT state FROM shoal_read.workflow_runs WHERE instance_id = $1", instance_id)
    if state is None:
        raise HTTPException(404, {"message": f"no run {instance_id}"})
    return RunState(state)


async def _send(res: Res, cmd: Command) -> None:
    try:
        await send_reliably(res.producer, res.settings.commands_topic,
                            codec.encode_command(cmd), cmd.instance_id.encode(),
                            give_up_after=10.0)
    except KafkaError as exc:
        raise HTTPException(503, {"message": f"the broker did not accept the command: {exc!r};"
                                             " nothing was started, try again"}) from exc


async def _publish(res: Res, cmd: Command) -> dict[str, str]:
    await _send(res, cmd)
    return {"instance_id": cmd.instance_id, "message_id": cmd.message_id,
            "command": cmd.type}


@router.post("/runs/{instance_id}/{action}", status_code=202)
async def control_run(instance_id: uuid.UUID, action: Literal[
        "pause", "resume", "stop", "rerun", "recover"], res: Res) -> dict[str, str]:
    """Pause, resume, stop, rerun or recover a run.

    409 when the run's current state does not allow it (the same table the orchestrator
    decides with). The read model may lag the log by a moment; the orchestrator stays
    authoritative and records a late refusal as an InputRejected event.
    """
    cls = _CONTROL[action]
    state = await _current_state(res, instance_id)
    reason = rejection(state, cls.type)
    if reason:
        raise HTTPException(409, {"message": reason, "state": state.value})
    return await _publish(res, cls(message_id=str(uuid.uuid4()), instance_id=str(instance_id),
                                   sent_at=utcnow_iso()))


@router.post("/runs/{instance_id}/tasks/{task}/force-success", status_code=202)
async def force_success(instance_id: uuid.UUID, task: str, res: Res) -> dict[str, str]:
    state = await _current_state(res, instance_id)
    reason = rejection(state, "ForceTaskSuccess")
    if reason:
        raise HTTPException(409, {"message": reason, "state": state.value})
    current = await res.pool.fetchval(
        "SELECT state FROM shoal_read.task_runs WHERE instance_id = $1 AND task = $2 "
        "ORDER BY attempt DESC LIMIT 1", instance_id, task)
    if current not in ("failed", "killed"):
        raise HTTPException(409, {"message": f"task '{task}' is {current or 'not run'}; only "
                                             "failed or killed tasks can be forced to success",
                                  "state": state.value, "task_state": current})
    return await _publish(res, ForceTaskSuccess(message_id=str(uuid.uuid4()),
                                                instance_id=str(instance_id),
                                                sent_at=utcnow_iso(), task=task))
