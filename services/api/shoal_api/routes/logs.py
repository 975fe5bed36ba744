"""Task logs (shipped by workers, stored by the projector) and live workers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse, StreamingResponse

from shoal.infra import codec
from shoal_api.deps import VIEWER, Res, Who, stream_slot
from shoal_api.limits import StreamSlot
from shoal_api.models import WorkerOut
from shoal_api.problems import ERRORS

router = APIRouter(prefix="/api/v1", tags=["logs", "workers"], dependencies=[VIEWER],
                   responses=ERRORS)

_FINISHED = ("succeeded", "failed", "killed", "lost", "skipped", "forced_success")


async def _attempt(res: Res, instance_id: uuid.UUID, task: str, attempt: int | None) -> int:
    if attempt is not None:
        return attempt
    latest = await res.pool.fetchval(
        "SELECT max(attempt) FROM shoal_read.task_runs WHERE instance_id = $1 AND task = $2",
        instance_id, task)
    if latest is None:
        raise HTTPException(404, {"message": f"task '{task}' has not run in {instance_id}"})
    return int(latest)


async def _chunks(res: Res, instance_id: uuid.UUID, task: str, attempt: int,
                  after: int) -> list[Any]:
    return list(await res.pool.fetch(
        "SELECT chunk, lines::text AS lines, final FROM shoal_read.task_logs "
        "WHERE instance_id = $1 AND task = $2 AND attempt = $3 AND chunk > $4 ORDER BY chunk",
        instance_id, task, attempt, after))


def _render(line: list[str], timestamps: bool) -> str:
    return f"{line[0]} {line[1]}" if timestamps else line[1]


@router.get("/runs/{instance_id}/tasks/{task}/log", response_model=None, responses={200: {
    "description": "the log as text, or with follow=true a stream of server-sent events",
    "content": {"text/plain": {"schema": {"type": "string"}},
                "text/event-stream": {"schema": {
                    "type": "object", "description": "one event per log line; `end` last",
                    "properties": {"event": {"type": "string"}, "data": {"type": "string"},
                                   "id": {"type": "string"}}}}}},
    429: {"description": "follow: the token has SHOAL_API_STREAMS_PER_TOKEN streams open",
          "content": {"application/problem+json": {}}}})
async def task_log(instance_id: uuid.UUID, task: str, request: Request, res: Res, who: Who,
                   attempt: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
                   follow: bool = False,
                   timestamps: bool = False) -> PlainTextResponse | StreamingResponse:
    """The attempt's output (latest attempt by default).

    ``follow=true`` streams it as server-sent events — one ``data:`` event per line — while
    the attempt runs, and ends with an ``end`` event after its last line.
    """
    n = await _attempt(res, instance_id, task, attempt)
    if not follow:
        rows = await _chunks(res, instance_id, task, n, -1)
        text = "\n".join(_render(line, timestamps) for r in rows
                         for line in codec.loads(r["lines"]))
        return PlainTextResponse(text + ("\n" if text else ""))
    slot = stream_slot(request, who)
    return StreamingResponse(_follow(res, request, instance_id, task, n, timestamps, slot),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def _follow(res: Res, request: Request, instance_id: uuid.UUID, task: str, attempt: int,
                  timestamps: bool, slot: StreamSlot) -> AsyncIterator[str]:
    try:
        async for part in _follow_lines(res, request, instance_id, task, attempt, timestamps):
            yield part
    finally:
        slot.release()


async def _follow_lines(res: Res, request: Request, instance_id: uuid.UUID, task: str,
                        attempt: int, timestamps: bool) -> AsyncIterator[str]:
    last, quiet = -1, 0.0
    while not await request.is_disconnected():
        rows = await _chunks(res, instance_id, task, attempt, last)
        for r in rows:
            for line in codec.loads(r["lines"]):
                yield f"data: {_render(line, timestamps)}\n\n"
            last = r["chunk"]
            if r["final"]:
                yield "event: end\ndata: \n\n"
                return
        if rows:
            quiet = 0.0
            continue
        state = await res.pool.fetchval(
            "SELECT state FROM shoal_read.task_runs WHERE instance_id = $1 AND task = $2 "
            "AND attempt = $3", instance_id, task, attempt)
        quiet += 0.25
        # A finished attempt whose worker died never sends its final chunk.
        if state in _FINISHED and quiet >= 5.0:
            yield "event: end\ndata: \n\n"
            return
        await asyncio.sleep(0.25)


@router.get("/workers", response_model=list[WorkerOut])
async def workers(res: Res, include_stale: bool = Query(False, alias="all")
                  ) -> list[dict[str, Any]]:
    """Workers whose last heartbeat is recent (``all=true``: every worker ever seen)."""
    live_within = res.settings.lease_timeout
    rows = await res.pool.fetch(
        "SELECT worker_id, worker_group, host, pid, slots, running::text AS running, stopping,"
        " last_heartbeat, extract(epoch FROM now() - last_heartbeat) AS age "
        "FROM shoal_read.workers WHERE $1 OR last_heartbeat > now() - make_interval(secs => $2)"
        " ORDER BY worker_group, worker_id", include_stale, live_within)
    return [{"worker_id": r["worker_id"], "group": r["worker_group"], "host": r["host"],
             "pid": r["pid"], "slots": r["slots"], "running": codec.loads(r["running"]),
             "stopping": r["stopping"], "last_heartbeat": r["last_heartbeat"].isoformat(),
             "live": float(r["age"]) <= live_within} for r in rows]
