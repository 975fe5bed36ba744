"""Runs: start (a StartWorkflow command on Kafka), read models, history."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from aiokafka.errors import KafkaError
from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from shoal.core.definition import Priority, WorkflowDefinition, parse_definition
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
from shoal.core.paramtypes import definition_param_problems
from shoal.core.replay import carried_tasks, steps, view
from shoal.core.workflow import allowed_controls, rejection, resolved_params
from shoal.infra import codec
from shoal.infra.catalog import workflow_status
from shoal.infra.kafka import TOO_LARGE, send_reliably
from shoal.infra.lifecycle import utcnow_iso
from shoal.infra.store import StoredEvent, imported_events
from shoal_api.deps import OPERATOR, VIEWER, Actor, Res
from shoal_api.models import (
    Accepted,
    BatchResult,
    CommandSent,
    EventOut,
    Replay,
    RunDetail,
    RunPage,
    RunSummary,
    Stats,
)
from shoal_api.problems import ERRORS
from shoal_api.records import string_params

router = APIRouter(prefix="/api/v1", tags=["runs"], dependencies=[VIEWER],
                   responses=ERRORS)


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


@router.post("/workflows/{name}/runs", status_code=202, dependencies=[OPERATOR],
             response_model=Accepted)
async def start_run(name: str, res: Res, actor: Actor,
                    body: RunCreate | None = None) -> dict[str, str]:
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
    if body.instance_id and await _imported(res, body.instance_id):
        raise HTTPException(409, {"message": f"run {body.instance_id} was imported from a "
                                             "bundle; choose another instance_id"})
    instance_id = str(body.instance_id or uuid.uuid4())
    params = string_params(body.params)
    _declared(parse_definition(found[1]), params)
    cmd = StartWorkflow(
        message_id=str(uuid.uuid4()), instance_id=instance_id, sent_at=utcnow_iso(),
        workflow=name, version=body.version,
        params=params,
        priority=Priority(body.priority) if body.priority else None,
        schedule_time=body.schedule_time.isoformat() if body.schedule_time else None,
        start_from=tuple(body.start_from) if body.start_from else None,
        scope=Scope(body.scope), dry_run=body.dry_run, actor=actor,
    )
    await _send(res, cmd)
    return {"instance_id": instance_id}


def _declared(definition: WorkflowDefinition, params: dict[str, str]) -> None:
    """422 naming each param the definition does not declare or whose value is not of
    its declared type (the orchestrator refuses such a start from Kafka too)."""
    problems = definition_param_problems(definition, params)
    if problems:
        raise HTTPException(422, {"message": "; ".join(str(p) for p in problems),
                                  "problems": [p.as_dict() for p in problems]})


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
        "forked_from": {"instance_id": str(r["forked_from_instance_id"]),
                        "seq": r["forked_from_seq"]} if r["forked_from_instance_id"] else None,
        "imported": r["imported"], "last_seq": r["last_seq"], "actor": r["actor"],
        "last_actor": r["last_actor"], "stopped_by": r["stopped_by"],
    }


_RUN_COLS = ("instance_id, workflow, version, state, attempt, priority, params::text AS params, "
             "schedule_time, submitted_at, started_at, finished_at, duration_ms, failure, "
             "parent_instance_id, forked_from_instance_id, forked_from_seq, imported, last_seq, "
             "actor, last_actor, stopped_by")


def _cursor_encode(submitted_at: datetime, instance_id: uuid.UUID) -> str:
    raw = codec.dumps([submitted_at.isoformat(), str(instance_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor_decode(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        at, iid = codec.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(at), uuid.UUID(iid)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise HTTPException(400, {"message": "cursor: not a cursor this API returned"}) from exc


RunStateName = Literal["submitted", "running", "ready_pause", "paused", "ready_stop", "stopped",
                       "failed", "succeeded", "serial_wait"]


@router.get("/runs", response_model=RunPage)
async def list_runs(
        res: Res, workflow: str | None = None,
        state: Annotated[list[RunStateName] | None, Query(description="repeatable")] = None,
        since: Annotated[datetime | None, Query(description="submitted at or after")] = None,
        until: Annotated[datetime | None, Query(description="submitted before")] = None,
        scheduled_since: Annotated[datetime | None,
                                   Query(description="schedule_time at or after")] = None,
        scheduled_until: Annotated[datetime | None,
                                   Query(description="schedule_time before")] = None,
        parent: Annotated[uuid.UUID | None, Query(description="runs started by this run")] = None,
        actor: Annotated[str | None, Query(
            description="runs started by this actor (a token's name, scheduler, kafka)")] = None,
        limit: int = Query(50, ge=1, le=500),
        cursor: Annotated[str | None,
                          Query(description="next_cursor of the previous page")] = None,
) -> RunPage:
    """Runs, newest submission first, from the read model; ``next_cursor`` pages on."""
    after = _cursor_decode(cursor) if cursor else (None, None)
    rows = await res.pool.fetch(
        f"SELECT {_RUN_COLS} FROM shoal_read.workflow_runs WHERE ($1::text IS NULL OR "
        "workflow = $1) AND ($2::text[] IS NULL OR state = ANY($2)) AND "
        "($3::timestamptz IS NULL OR submitted_at >= $3) AND "
        "($4::timestamptz IS NULL OR submitted_at < $4) AND "
        "($5::timestamptz IS NULL OR schedule_time >= $5) AND "
        "($6::timestamptz IS NULL OR schedule_time < $6) AND "
        "($7::uuid IS NULL OR parent_instance_id = $7) AND "
        "($8::timestamptz IS NULL OR (submitted_at, instance_id) < ($8, $9::uuid)) AND "
        "($11::text IS NULL OR actor = $11) "
        "ORDER BY submitted_at DESC, instance_id DESC LIMIT $10",
        workflow, state, since, until, scheduled_since, scheduled_until, parent, *after, limit,
        actor)
    runs = [_run_row(r) for r in rows]
    last = rows[-1] if len(rows) == limit else None
    return RunPage(runs=[RunSummary(**r) for r in runs], next_cursor=_cursor_encode(
        last["submitted_at"], last["instance_id"]) if last else None)


@router.get("/runs/{instance_id}", response_model=RunDetail)
async def get_run(instance_id: uuid.UUID, res: Res) -> dict[str, Any]:
    # The run row and its task rows from one snapshot: read apart, a projector batch
    # committing in between showed tasks ahead of the run's last_seq.
    async with res.pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                            readonly=True):
        row = await conn.fetchrow(
            f"SELECT {_RUN_COLS} FROM shoal_read.workflow_runs WHERE instance_id = $1",
            instance_id)
        if row is None:
            raise HTTPException(404, {"message": f"no run {instance_id} (yet: a run appears "
                                                 "once the orchestrator accepted it)"})
        tasks = await conn.fetch(
            "SELECT task, attempt, state, worker_id, worker_group, started_at, finished_at, "
            "duration_ms, exit_code, outputs::text AS outputs, error, child_instance_id "
            "FROM shoal_read.task_runs WHERE instance_id = $1 "
            "ORDER BY coalesce(started_at, finished_at), task, attempt",
            instance_id)
    live_groups = {r["worker_group"] for r in await res.pool.fetch(
        "SELECT DISTINCT worker_group FROM shoal_read.workers WHERE NOT stopping AND "
        "last_heartbeat > now() - make_interval(secs => $1)", res.settings.lease_timeout)}
    # The business time as the run was submitted with it (its offset matters to $[...]);
    # an imported run has no events here: the read model's times.
    business = await res.pool.fetchval(
        "SELECT coalesce(data->>'schedule_time', data->>'at') FROM shoal.events "
        "WHERE instance_id = $1 AND seq = 1", instance_id) or _iso(
            row["schedule_time"] or row["submitted_at"])
    return {**_run_row(row),
            "resolved_params": resolved_params(
                {k: str(v) for k, v in codec.loads(row["params"]).items()}, business),
            "allowed_actions": [] if row["imported"] else allowed_controls(
                RunState(row["state"])),
            "tasks": [
        {"task": t["task"], "attempt": t["attempt"], "state": t["state"],
         "worker_id": t["worker_id"], "worker_group": t["worker_group"],
         "waiting_for_worker": t["state"] == "dispatched" and t["worker_group"] not in
         live_groups,
         "started_at": _iso(t["started_at"]),
         "finished_at": _iso(t["finished_at"]), "duration_ms": t["duration_ms"],
         "exit_code": t["exit_code"], "outputs": codec.loads(t["outputs"]), "error": t["error"],
         "child_instance_id": str(t["child_instance_id"]) if t["child_instance_id"] else None}
        for t in tasks]}


async def history(res: Res, instance_id: uuid.UUID) -> list[StoredEvent]:
    """The run's events: from the log, or from its bundle for an imported run; 404 if none."""
    events = await res.store.events_of(str(instance_id))
    if not events:
        async with res.pool.acquire() as conn:
            events = await imported_events(conn, str(instance_id))
    if not events:
        raise HTTPException(404, {"message": f"no events for {instance_id}"})
    return events


@router.get("/runs/{instance_id}/events", response_model=list[EventOut])
async def get_events(instance_id: uuid.UUID, res: Res) -> list[dict[str, Any]]:
    return [e.as_dict() for e in await history(res, instance_id)]


@router.get("/runs/{instance_id}/replay", response_model=Replay)
async def replay(instance_id: uuid.UUID, res: Res,
                 until: Annotated[int | None, Query(ge=1, le=2**31 - 1,
                                           description="last event (seq) to apply")] = None,
                 at: Annotated[datetime | None, Query(description="apply events recorded up to "
                                                               "this instant")] = None) -> Replay:
    """The state rebuilt from the log after each event: the run's state and every task's
    state, attempt and outputs (the orchestrator's own fold)."""
    events = await history(res, instance_id)
    if at is not None:
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        events = [e for e in events if datetime.fromisoformat(e.recorded_at) <= at]
    recorded = {e.seq: e for e in events}
    out = []
    for seq, event, run in steps(((e.seq, e.event()) for e in events),
                                 instance_id=str(instance_id), until=until):
        out.append({"seq": seq, "type": event.type, "recorded_at": recorded[seq].recorded_at,
                    **view(run)})
    return Replay.model_validate({"instance_id": str(instance_id), "steps": out})


class ForkBody(BaseModel):
    """Body of ``POST /runs/{id}/fork``."""

    model_config = {"extra": "forbid"}

    at: int = Field(ge=1, le=2**31 - 1, description="the event (seq) whose state the fork "
                                                     "starts from")
    params: dict[str, str | int | float | bool | None] = Field(
        default={}, description="override the source run's parameters")
    instance_id: uuid.UUID | None = Field(
        default=None, description="choose the new run's id to make the fork idempotent")


@router.post("/runs/{instance_id}/fork", status_code=202, dependencies=[OPERATOR],
             response_model=Accepted)
async def fork_run(instance_id: uuid.UUID, body: ForkBody, res: Res,
                   actor: Actor) -> dict[str, str]:
    """A new run from the state after event ``at`` of this one: tasks that had succeeded
    by then keep their outcome and outputs and do not run again; everything else runs,
    with ``params`` overriding the source's. The new run links back (``forked_from``)."""
    if await _imported(res, instance_id):
        raise HTTPException(409, {"message": f"run {instance_id} was imported from a bundle: "
                                             "it is read-only and cannot be forked here"})
    events = await res.store.events_of(str(instance_id))
    if not events:
        raise HTTPException(404, {"message": f"no events for {instance_id}"})
    if body.at > events[-1].seq:
        raise HTTPException(422, {"message": f"at: run {instance_id} has {events[-1].seq} "
                                             f"events; at must be 1..{events[-1].seq}"})
    *_, (_, _, source) = steps(((e.seq, e.event()) for e in events),
                               instance_id=str(instance_id), until=body.at)
    status = await workflow_status(res.pool, source.workflow)
    if status in (None, "deleted"):
        raise HTTPException(404, {"message": f"no workflow named '{source.workflow}'"})
    if status == "offline":
        raise HTTPException(409, {"message": f"workflow '{source.workflow}' is offline; put it "
                                             "online to fork its runs"})
    if body.instance_id and await _imported(res, body.instance_id):
        raise HTTPException(409, {"message": f"run {body.instance_id} was imported from a "
                                             "bundle; choose another instance_id"})
    new_id = str(body.instance_id or uuid.uuid4())
    _declared(source.definition, string_params(body.params))
    submitted = events[0].data
    cmd = StartWorkflow(
        message_id=str(uuid.uuid4()), instance_id=new_id, sent_at=utcnow_iso(),
        workflow=source.workflow, version=source.version,
        params={**source.startup, **string_params(body.params)},
        priority=source.priority, schedule_time=source.schedule_time,
        start_from=tuple(submitted["start_from"]) if submitted.get("start_from") else None,
        scope=Scope(submitted.get("scope") or "downstream"), dry_run=source.dry_run,
        forked_from={"instance_id": str(instance_id), "seq": body.at},
        carried=tuple(carried_tasks(source)), actor=actor,
    )
    await _send(res, cmd)
    return {"instance_id": new_id}


async def _imported(res: Res, instance_id: uuid.UUID) -> bool:
    return bool(await res.pool.fetchval(
        "SELECT imported FROM shoal_read.workflow_runs WHERE instance_id = $1", instance_id))


_CONTROL: dict[str, type[PauseWorkflow | ResumeWorkflow | StopWorkflow | RerunWorkflow
                         | RecoverWorkflow]] = {
    "pause": PauseWorkflow, "resume": ResumeWorkflow, "stop": StopWorkflow,
    "rerun": RerunWorkflow, "recover": RecoverWorkflow,
}


async def _current_state(res: Res, instance_id: uuid.UUID) -> RunState:
    row = await res.pool.fetchrow(
        "SELECT state, imported FROM shoal_read.workflow_runs WHERE instance_id = $1",
        instance_id)
    if row is None:
        raise HTTPException(404, {"message": f"no run {instance_id}"})
    if row["imported"]:
        raise HTTPException(409, {"message": f"run {instance_id} was imported from a bundle: "
                                             "it is read-only and never executed here",
                                  "state": row["state"]})
    return RunState(row["state"])


async def _send(res: Res, cmd: Command) -> None:
    value = codec.encode_command(cmd)
    try:
        await send_reliably(res.producer, res.settings.commands_topic, value,
                            cmd.instance_id.encode(), give_up_after=10.0)
    except TOO_LARGE as exc:  # retrying cannot help: say so, not "try again"
        raise HTTPException(413, {"message": (
            f"the {cmd.type} command is {len(value)} bytes, more than one Kafka record "
            f"may be (SHOAL_KAFKA_MAX_MESSAGE_BYTES {res.settings.kafka_max_message_bytes}"
            "); nothing was started: pass less (large data belongs in a file or a "
            "resource)")}) from exc
    except KafkaError as exc:
        raise HTTPException(503, {"message": f"the broker did not accept the command: {exc!r};"
                                             " nothing was started, try again"}) from exc


async def _publish(res: Res, cmd: Command) -> dict[str, str]:
    await _send(res, cmd)
    return {"instance_id": cmd.instance_id, "message_id": cmd.message_id,
            "command": cmd.type}


class BatchBody(BaseModel):
    model_config = {"extra": "forbid"}

    instance_ids: list[uuid.UUID] = Field(min_length=1, max_length=1000)


@router.post("/runs/batch/{action}", status_code=200, dependencies=[OPERATOR],
             response_model=BatchResult)
async def control_runs(action: Literal["stop", "rerun", "recover", "pause", "resume"],
                       body: BatchBody, res: Res, actor: Actor) -> BatchResult:
    """The same control for many runs; each is judged on its own (202 sent, 404 unknown,
    409 refused by its state), and one refusal does not stop the others."""
    cls = _CONTROL[action]
    rows = await res.pool.fetch(
        "SELECT instance_id, state FROM shoal_read.workflow_runs WHERE instance_id = ANY($1) "
        "AND NOT imported", list(dict.fromkeys(body.instance_ids)))
    states = {r["instance_id"]: RunState(r["state"]) for r in rows}
    results: list[dict[str, Any]] = []
    for iid in dict.fromkeys(body.instance_ids):
        state = states.get(iid)
        reason = rejection(state, cls.type) if state else f"no run {iid}"
        if reason:
            results.append({"instance_id": str(iid), "status": 409 if state else 404,
                            "detail": reason})
            continue
        cmd = cls(message_id=str(uuid.uuid4()), instance_id=str(iid), sent_at=utcnow_iso(),
                  actor=actor)
        await _send(res, cmd)
        results.append({"instance_id": str(iid), "status": 202, "detail": f"{cmd.type} sent",
                        "message_id": cmd.message_id})
    sent = sum(1 for r in results if r["status"] == 202)
    return BatchResult.model_validate({"action": action, "sent": sent,
                                       "refused": len(results) - sent, "results": results})


@router.post("/runs/{instance_id}/{action}", status_code=202, dependencies=[OPERATOR],
             response_model=CommandSent)
async def control_run(instance_id: uuid.UUID, action: Literal[
        "pause", "resume", "stop", "rerun", "recover"], res: Res,
                      actor: Actor) -> dict[str, str]:
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
                                   sent_at=utcnow_iso(), actor=actor))


@router.post("/runs/{instance_id}/tasks/{task}/force-success", status_code=202,
             dependencies=[OPERATOR], response_model=CommandSent)
async def force_success(instance_id: uuid.UUID, task: str, res: Res,
                        actor: Actor) -> dict[str, str]:
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
                                                sent_at=utcnow_iso(), task=task,
                                                actor=actor))


@router.get("/stats", response_model=Stats)
async def stats(
        res: Res, workflow: str | None = None,
        since: Annotated[datetime | None, Query(description="default: 7 days ago")] = None,
        until: Annotated[datetime | None, Query(description="default: now")] = None,
) -> Stats:
    """Runs submitted in [since, until): counts by state, by workflow and day (UTC), and
    the duration percentiles of finished runs per workflow."""
    until = until or datetime.now(UTC)
    since = since or until - timedelta(days=7)
    where = ("submitted_at >= $1 AND submitted_at < $2 AND ($3::text IS NULL OR "
             "workflow = $3)")
    by_day = await res.pool.fetch(
        f"SELECT workflow, to_char(date_trunc('day', submitted_at AT TIME ZONE 'UTC'), "
        f"'YYYY-MM-DD') AS day, state, count(*) AS runs FROM shoal_read.workflow_runs "
        f"WHERE {where} GROUP BY 1, 2, 3 ORDER BY 2, 1, 3", since, until, workflow)
    durations = await res.pool.fetch(
        f"SELECT workflow, count(*) AS runs, "
        f"percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) AS p50, "
        f"percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) AS p95 "
        f"FROM shoal_read.workflow_runs WHERE {where} AND duration_ms IS NOT NULL "
        f"AND state IN ('succeeded', 'failed', 'stopped') GROUP BY 1 ORDER BY 1",
        since, until, workflow)
    by_state: dict[str, int] = {}
    for r in by_day:
        by_state[r["state"]] = by_state.get(r["state"], 0) + r["runs"]
    return Stats.model_validate({
        "since": since.isoformat(), "until": until.isoformat(), "by_state": by_state,
        "by_day": [dict(r) for r in by_day],
        "durations": [{"workflow": r["workflow"], "runs": r["runs"], "p50_ms": r["p50"],
                       "p95_ms": r["p95"]} for r in durations]})
