"""Apply stored events to the read models, one transaction per batch with its checkpoint.

Reading by global position is gap-free because appends are serialized (see
``shoal.infra.store``). A transaction-level advisory lock lets one projector apply at a
time; ``readmodels.rebuild`` takes the same lock, so a running projector never interleaves with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg

from shoal.infra import codec
from shoal.infra.readmodels import CHECKPOINT, PROJECTOR_LOCK
from shoal.infra.store import StoredEvent, read_from


def _ts(v: str | None) -> datetime | None:
    return datetime.fromisoformat(v) if v else None


async def project_once(pool: asyncpg.Pool, limit: int = 1000,
                       also: Callable[[asyncpg.Connection, list[StoredEvent]],
                                      Awaitable[None]] | None = None) -> list[StoredEvent]:
    """Apply the next batch of events; return them. ``also`` runs in the same transaction
    (derived effects such as alerts commit exactly when the projection does)."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PROJECTOR_LOCK):
            return []
        pos = await conn.fetchval(
            "SELECT position FROM shoal_read.checkpoints WHERE name = $1", CHECKPOINT) or 0
        events = await read_from(conn, pos, limit)
        for e in events:
            await apply(conn, e)
        if events and also is not None:
            await also(conn, events)
        if events:
            await conn.execute(
                "INSERT INTO shoal_read.checkpoints (name, position) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
                CHECKPOINT, events[-1].global_position)
        return events


_RUN_STATE = {"WorkflowQueued": "serial_wait", "WorkflowPausing": "ready_pause",
              "WorkflowPaused": "paused",
              "WorkflowResumed": "running", "WorkflowStopping": "ready_stop"}
_FINISHED = {"WorkflowSucceeded": "succeeded", "WorkflowFailed": "failed",
             "WorkflowStopped": "stopped"}
_DURATION = "(extract(epoch FROM ({end} - coalesce({start}, {end}))) * 1000)::bigint"


async def apply(conn: asyncpg.Connection, e: StoredEvent, *, imported: bool = False) -> None:
    """Project one event (``imported``: of a run imported from a bundle)."""
    d: dict[str, Any] = e.data
    iid, at = e.instance_id, _ts(d.get("reported_at") or d.get("at"))
    match e.type:
        case "WorkflowSubmitted":
            parent = (d.get("parent") or {}).get("instance_id")
            forked = d.get("forked_from") or {}
            await conn.execute(
                "INSERT INTO shoal_read.workflow_runs (instance_id, workflow, version, state, "
                "priority, params, schedule_time, submitted_at, attempt, parent_instance_id, "
                "last_seq, forked_from_instance_id, forked_from_seq, imported) "
                "VALUES ($1,$2,$3,'submitted',$4,$5::jsonb,$6,$7,$8,$9,$10,$11,$12,$13) "
                "ON CONFLICT (instance_id) DO NOTHING",
                iid, d["workflow"], d["version"], d["priority"],
                codec.dumps(d.get("params", {})).decode(), _ts(d.get("schedule_time")), at,
                d.get("attempt", 1), parent, e.seq, forked.get("instance_id"),
                forked.get("seq"), imported)
            for c in d.get("carried") or ():  # a fork's tasks, finished in its source
                await conn.execute(
                    "INSERT INTO shoal_read.task_runs (instance_id, task, attempt, state, "
                    "worker_id, started_at, finished_at, duration_ms, exit_code, outputs) "
                    "VALUES ($1,$2,$3,$4,$5,$6::timestamptz,$7::timestamptz,"
                    + _DURATION.format(end="$7::timestamptz", start="$6::timestamptz")
                    + ",$8,$9::jsonb) ON CONFLICT (instance_id, task, attempt) DO NOTHING",
                    iid, c["task"], c["attempt"], c["state"], c.get("worker_id"),
                    _ts(c.get("started_at")), _ts(c.get("finished_at")), c.get("exit_code"),
                    codec.dumps(c.get("outputs") or {}).decode())
        case "WorkflowStarted":
            await _run(conn, e, "state = 'running', started_at = $3", at)
        case "WorkflowRestarted":
            await _run(conn, e, "state = 'running', attempt = $3, started_at = $4, "
                       "finished_at = NULL, duration_ms = NULL, failure = NULL",
                       d["attempt"], at)
        case "WorkflowStopping":
            await _run(conn, e, "state = 'ready_stop', failure = $3", d.get("reason"))
        case _ if e.type in _RUN_STATE:
            await _run(conn, e, "state = $3", _RUN_STATE[e.type])
        case _ if e.type in _FINISHED:
            # A stop keeps the reason WorkflowStopping gave; success clears any.
            await _run(conn, e, "state = $3, finished_at = $4, failure = CASE WHEN "
                       "$3 = 'succeeded' THEN NULL ELSE coalesce($5, failure) END, duration_ms = "
                       + _DURATION.format(end="$4", start="started_at"),
                       _FINISHED[e.type], at, d.get("reason"))
        case "TaskDispatched" | "TaskDelayed" | "TaskRetryScheduled":
            state = {"TaskDispatched": "dispatched", "TaskDelayed": "submitted",
                     "TaskRetryScheduled": "retry_wait"}[e.type]
            await _task_row(conn, e, state)
            if e.type == "TaskDispatched":
                child = (d.get("spec") or {}).get("child_instance_id")
                await _task(conn, e, "worker_group = $4, child_instance_id = $5",
                            d.get("worker_group"), child)
        case "TaskDecided":
            await _task_row(conn, e, "failed" if d.get("error") else "succeeded")
            await _task(conn, e, "started_at = $4, finished_at = $4, duration_ms = 0, "
                        "exit_code = $5, error = $6", at,
                        None if d.get("error") else 0, d.get("error") or None)
        case "TaskSkipped" | "TaskDryRun":
            state = "skipped" if e.type == "TaskSkipped" else "succeeded"
            await _task_row(conn, e, state)
            await _task(conn, e, "started_at = $4, finished_at = $4, duration_ms = 0, "
                        "exit_code = $5, error = $6", at,
                        0 if e.type == "TaskDryRun" else None,
                        "dry run" if e.type == "TaskDryRun" else d.get("reason"))
        case "TaskStarted":
            await _task(conn, e, "state = 'running', worker_id = $4, started_at = $5",
                        d.get("worker_id"), at)
        case "TaskSucceeded" | "TaskFailed":
            state = "succeeded" if e.type == "TaskSucceeded" else "failed"
            await _task(conn, e,
                        "state = $4, worker_id = coalesce($5, worker_id), exit_code = $6, "
                        "outputs = $7::jsonb, error = $8, started_at = coalesce(started_at, $9),"
                        " finished_at = $9, duration_ms = "
                        + _DURATION.format(end="$9", start="started_at"),
                        state, d.get("worker_id"), d.get("exit_code"),
                        codec.dumps(d.get("outputs") or {}).decode(), d.get("error") or None, at)
        case "TaskKilled":
            await _task(conn, e, "state = 'killed', exit_code = $4, error = $5, "
                        "finished_at = $6, duration_ms = "
                        + _DURATION.format(end="$6", start="started_at"),
                        d.get("exit_code"), f"killed ({d.get('reason')})", at)
        case "TaskLost":
            await _task(conn, e, "state = 'lost', error = 'lease lapsed', finished_at = $4, "
                        "duration_ms = " + _DURATION.format(end="$4", start="started_at"), at)
        case "TaskPaused":
            await _task(conn, e, "state = 'paused'")
        case "TaskForcedSuccess":
            await _task(conn, e, "state = 'forced_success'")
        case _:
            await _touch(conn, e)  # timers, kill requests, rejections: history only


async def _task_row(conn: asyncpg.Connection, e: StoredEvent, state: str) -> None:
    await conn.execute(
        "INSERT INTO shoal_read.task_runs (instance_id, task, attempt, state) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (instance_id, task, attempt) "
        "DO UPDATE SET state = EXCLUDED.state",
        e.instance_id, e.data["task"], e.data["attempt"], state)
    await _touch(conn, e)


async def _run(conn: asyncpg.Connection, e: StoredEvent, sets: str, *args: Any) -> None:
    await conn.execute(
        f"UPDATE shoal_read.workflow_runs SET {sets}, last_seq = $2 WHERE instance_id = $1",
        e.instance_id, e.seq, *args)


async def _touch(conn: asyncpg.Connection, e: StoredEvent) -> None:
    await conn.execute("UPDATE shoal_read.workflow_runs SET last_seq = $2 WHERE instance_id = $1",
                       e.instance_id, e.seq)


async def _task(conn: asyncpg.Connection, e: StoredEvent, sets: str, *args: Any) -> None:
    await conn.execute(
        f"UPDATE shoal_read.task_runs SET {sets} WHERE instance_id = $1 AND task = $2 "
        "AND attempt = $3", e.instance_id, e.data["task"], e.data["attempt"], *args)
    await _touch(conn, e)
