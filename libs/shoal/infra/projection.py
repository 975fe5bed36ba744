"""The runs projection: one stored event applied to ``workflow_runs`` and ``task_runs``.

Shared by the projector (live tables), ``readmodels.rebuild`` (shadow tables it swaps in)
and the API's bundle import (an imported run's rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from shoal.infra import codec
from shoal.infra.store import StoredEvent


@dataclass(frozen=True, slots=True)
class Tables:
    """Where the projection writes (qualified names)."""

    runs: str
    tasks: str


LIVE = Tables("shoal_read.workflow_runs", "shoal_read.task_runs")


def _ts(v: str | None) -> datetime | None:
    return datetime.fromisoformat(v) if v else None


_RUN_STATE = {"WorkflowQueued": "serial_wait", "WorkflowPausing": "ready_pause",
              "WorkflowPaused": "paused",
              "WorkflowResumed": "running", "WorkflowStopping": "ready_stop"}
_FINISHED = {"WorkflowSucceeded": "succeeded", "WorkflowFailed": "failed",
             "WorkflowStopped": "stopped"}
_DURATION = "(extract(epoch FROM ({end} - coalesce({start}, {end}))) * 1000)::bigint"


async def apply(conn: asyncpg.Connection, e: StoredEvent, *, imported: bool = False,
                tables: Tables = LIVE) -> None:
    """Project one event into ``tables`` (``imported``: of a run imported from a bundle)."""
    runs_t, tasks_t = tables.runs, tables.tasks
    d: dict[str, Any] = e.data
    iid, at = e.instance_id, _ts(d.get("reported_at") or d.get("at"))
    match e.type:
        case "WorkflowSubmitted":
            parent = (d.get("parent") or {}).get("instance_id")
            forked = d.get("forked_from") or {}
            await conn.execute(
                f"INSERT INTO {runs_t} (instance_id, workflow, version, state, "
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
                    f"INSERT INTO {tasks_t} (instance_id, task, attempt, state, "
                    "worker_id, started_at, finished_at, duration_ms, exit_code, outputs) "
                    "VALUES ($1,$2,$3,$4,$5,$6::timestamptz,$7::timestamptz,"
                    + _DURATION.format(end="$7::timestamptz", start="$6::timestamptz")
                    + ",$8,$9::jsonb) ON CONFLICT (instance_id, task, attempt) DO NOTHING",
                    iid, c["task"], c["attempt"], c["state"], c.get("worker_id"),
                    _ts(c.get("started_at")), _ts(c.get("finished_at")), c.get("exit_code"),
                    codec.dumps(c.get("outputs") or {}).decode())
        case "WorkflowStarted":
            await _run(conn, tables, e, "state = 'running', started_at = $3", at)
        case "WorkflowRestarted":
            await _run(conn, tables, e, "state = 'running', attempt = $3, started_at = $4, "
                       "finished_at = NULL, duration_ms = NULL, failure = NULL",
                       d["attempt"], at)
        case "WorkflowStopping":
            await _run(conn, tables, e, "state = 'ready_stop', failure = $3", d.get("reason"))
        case _ if e.type in _RUN_STATE:
            await _run(conn, tables, e, "state = $3", _RUN_STATE[e.type])
        case _ if e.type in _FINISHED:
            # A stop keeps the reason WorkflowStopping gave; success clears any.
            await _run(conn, tables, e, "state = $3, finished_at = $4, failure = CASE WHEN "
                       "$3 = 'succeeded' THEN NULL ELSE coalesce($5, failure) END, duration_ms = "
                       + _DURATION.format(end="$4", start="started_at"),
                       _FINISHED[e.type], at, d.get("reason"))
        case "TaskDispatched" | "TaskDelayed" | "TaskRetryScheduled":
            state = {"TaskDispatched": "dispatched", "TaskDelayed": "submitted",
                     "TaskRetryScheduled": "retry_wait"}[e.type]
            await _task_row(conn, tables, e, state)
            if e.type == "TaskDispatched":
                child = (d.get("spec") or {}).get("child_instance_id")
                await _task(conn, tables, e, "worker_group = $4, child_instance_id = $5",
                            d.get("worker_group"), child)
        case "TaskDecided":
            await _task_row(conn, tables, e, "failed" if d.get("error") else "succeeded")
            await _task(conn, tables, e, "started_at = $4, finished_at = $4, duration_ms = 0, "
                        "exit_code = $5, error = $6", at,
                        None if d.get("error") else 0, d.get("error") or None)
        case "TaskSkipped" | "TaskDryRun":
            state = "skipped" if e.type == "TaskSkipped" else "succeeded"
            await _task_row(conn, tables, e, state)
            await _task(conn, tables, e, "started_at = $4, finished_at = $4, duration_ms = 0, "
                        "exit_code = $5, error = $6", at,
                        0 if e.type == "TaskDryRun" else None,
                        "dry run" if e.type == "TaskDryRun" else d.get("reason"))
        case "TaskStarted":
            await _task(conn, tables, e, "state = 'running', worker_id = $4, started_at = $5",
                        d.get("worker_id"), at)
        case "TaskSucceeded" | "TaskFailed":
            state = "succeeded" if e.type == "TaskSucceeded" else "failed"
            await _task(conn, tables, e,
                        "state = $4, worker_id = coalesce($5, worker_id), exit_code = $6, "
                        "outputs = $7::jsonb, error = $8, started_at = coalesce(started_at, $9),"
                        " finished_at = $9, duration_ms = "
                        + _DURATION.format(end="$9", start="started_at"),
                        state, d.get("worker_id"), d.get("exit_code"),
                        codec.dumps(d.get("outputs") or {}).decode(), d.get("error") or None, at)
        case "TaskKilled":
            await _task(conn, tables, e, "state = 'killed', exit_code = $4, error = $5, "
                        "finished_at = $6, duration_ms = "
                        + _DURATION.format(end="$6", start="started_at"),
                        d.get("exit_code"), f"killed ({d.get('reason')})", at)
        case "TaskLost":
            await _task(conn, tables, e, "state = 'lost', error = 'lease lapsed', "
                        "finished_at = $4, duration_ms = "
                        + _DURATION.format(end="$4", start="started_at"), at)
        case "TaskPaused":
            await _task(conn, tables, e, "state = 'paused'")
        case "TaskForcedSuccess":
            await _task(conn, tables, e, "state = 'forced_success'")
        case _:
            await _touch(conn, tables, e)  # timers, kill requests, rejections: history only


async def _task_row(conn: asyncpg.Connection, tables: Tables, e: StoredEvent,
                    state: str) -> None:
    await conn.execute(
        f"INSERT INTO {tables.tasks} (instance_id, task, attempt, state) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (instance_id, task, attempt) "
        "DO UPDATE SET state = EXCLUDED.state",
        e.instance_id, e.data["task"], e.data["attempt"], state)
    await _touch(conn, tables, e)


async def _run(conn: asyncpg.Connection, tables: Tables, e: StoredEvent, sets: str,
               *args: Any) -> None:
    await conn.execute(
        f"UPDATE {tables.runs} SET {sets}, last_seq = $2 WHERE instance_id = $1",
        e.instance_id, e.seq, *args)


async def _touch(conn: asyncpg.Connection, tables: Tables, e: StoredEvent) -> None:
    await conn.execute(f"UPDATE {tables.runs} SET last_seq = $2 WHERE instance_id = $1",
                       e.instance_id, e.seq)


async def _task(conn: asyncpg.Connection, tables: Tables, e: StoredEvent, sets: str,
                *args: Any) -> None:
    await conn.execute(
        f"UPDATE {tables.tasks} SET {sets} WHERE instance_id = $1 AND task = $2 "
        "AND attempt = $3", e.instance_id, e.data["task"], e.data["attempt"], *args)
    await _touch(conn, tables, e)
