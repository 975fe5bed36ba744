"""Server-sent events of committed events: one run's, or every run's (of a workflow)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from shoal.infra import codec
from shoal_api.deps import VIEWER, Res, Who, stream_slot
from shoal_api.hub import EventHub
from shoal_api.limits import StreamSlot
from shoal_api.problems import ERRORS

router = APIRouter(prefix="/api/v1", tags=["streams"], dependencies=[VIEWER],
                   responses=ERRORS)

FINISHED = {"WorkflowSucceeded", "WorkflowFailed", "WorkflowStopped"}
POLL = 5.0        # re-read this often without a wake-up (broker away)
KEEPALIVE = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
_SSE = {"text/event-stream": {"schema": {
    "type": "object", "description": "one event per committed event: `id` its global "
    "position, `data` the event as on GET /runs/{id}/events (JSON); a run's stream ends "
    "with `event: end`",
    "properties": {"event": {"type": "string"}, "data": {"type": "string"},
                   "id": {"type": "string"}}}}}
_COLS = ("e.global_position, e.instance_id, e.seq, e.type, e.data::text AS data, "
         "e.causation_id, e.recorded_at, e.schema_version")


def _position(last_event_id: str | None, after: int | None) -> int | None:
    raw = last_event_id if last_event_id is not None else after
    if raw is None:
        return None
    try:
        pos = int(raw)
    except ValueError:
        raise HTTPException(400, {"message": "Last-Event-ID: a global position (an integer) "
                                             "is expected"}) from None
    if pos < 0:
        raise HTTPException(400, {"message": "Last-Event-ID: must not be negative"})
    return pos


def _sse(row: Any) -> str:
    event = {"global_position": row["global_position"], "instance_id": str(row["instance_id"]),
             "seq": row["seq"], "type": row["type"], "schema_version": row["schema_version"],
             "data": codec.loads(row["data"]),
             "causation_id": str(row["causation_id"]) if row["causation_id"] else None,
             "recorded_at": row["recorded_at"].isoformat()}
    return f"id: {row['global_position']}\ndata: {codec.dumps(event).decode()}\n\n"


async def _stream(res: Res, request: Request, hub: EventHub, *, instance_id: str | None,
                  workflow: str | None, after: int, end_when_finished: bool,
                  slot: StreamSlot) -> AsyncIterator[str]:
    sub = hub.subscribe(instance_id)
    try:
        yield f"retry: 2000\n: from position {after}\n\n"
        quiet = 0.0
        last_type = None
        if instance_id is not None and after:
            last_type = await res.pool.fetchval(
                "SELECT type FROM shoal.events WHERE instance_id = $1 AND global_position <= $2"
                " ORDER BY seq DESC LIMIT 1", uuid.UUID(instance_id), after)
        while not await request.is_disconnected():
            sub.wake.clear()  # before reading: a wake-up during the read is not lost
            if instance_id is not None:
                rows = await res.pool.fetch(
                    f"SELECT {_COLS} FROM shoal.events e WHERE e.instance_id = $1 AND "
                    "e.global_position > $2 ORDER BY e.global_position LIMIT 1000",
                    uuid.UUID(instance_id), after)
            else:
                rows = await res.pool.fetch(
                    f"SELECT {_COLS} FROM shoal.events e WHERE e.global_position > $1 AND "
                    "($2::text IS NULL OR EXISTS (SELECT 1 FROM shoal.events s WHERE "
                    "s.instance_id = e.instance_id AND s.seq = 1 AND s.data->>'workflow' = $2))"
                    " ORDER BY e.global_position LIMIT 1000", after, workflow)
            for row in rows:
                yield _sse(row)
                after, last_type = row["global_position"], row["type"]
            if len(rows) == 1000:
                continue
            if end_when_finished and last_type in FINISHED:
                yield f"id: {after}\nevent: end\ndata: {last_type}\n\n"
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sub.wake.wait(), POLL)
                quiet = 0.0
                continue
            quiet += POLL
            if quiet >= KEEPALIVE:
                quiet = 0.0
                yield ": keepalive\n\n"
    finally:
        hub.unsubscribe(sub)
        slot.release()


def _hub(request: Request) -> EventHub:
    hub: EventHub = request.app.state.hub
    return hub


_TOO_MANY: dict[int | str, dict[str, Any]] = {429: {
    "description": "the token has SHOAL_API_STREAMS_PER_TOKEN streams open",
    "content": {"application/problem+json": {}}}}


@router.get("/runs/{instance_id}/stream", response_class=StreamingResponse,
            responses={200: {"content": _SSE, "description": "server-sent events"},
                       **_TOO_MANY})
async def run_stream(instance_id: uuid.UUID, request: Request, res: Res, who: Who,
                     last_event_id: Annotated[str | None, Header(
                         description="resume after this global position")] = None,
                     after: Annotated[int | None, Query(
                         ge=0, description="as Last-Event-ID, for clients that cannot set "
                                           "headers")] = None,
                     follow: Annotated[bool, Query(
                         description="keep streaming after the run finished (a rerun "
                                     "continues it)")] = False) -> StreamingResponse:
    """The run's events as server-sent events, from the first (or after ``Last-Event-ID``)
    and live as they are committed; each event's ``id`` is its global position. Without
    ``follow`` the stream ends (``event: end``) after the run's final event."""
    exists = await res.pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM shoal.events WHERE instance_id = $1)", instance_id)
    if not exists:
        raise HTTPException(404, {"message": f"no events for {instance_id}"})
    start = _position(last_event_id, after) or 0
    return StreamingResponse(
        _stream(res, request, _hub(request), instance_id=str(instance_id), workflow=None,
                after=start, end_when_finished=not follow, slot=stream_slot(request, who)),
        media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/stream", response_class=StreamingResponse,
            responses={200: {"content": _SSE, "description": "server-sent events"},
                       **_TOO_MANY})
async def stream(request: Request, res: Res, who: Who,
                 workflow: Annotated[str | None, Query(
                     description="only runs of this workflow")] = None,
                 last_event_id: Annotated[str | None, Header(
                     description="resume after this global position")] = None,
                 after: Annotated[int | None, Query(
                     ge=0, description="as Last-Event-ID; default: from now on")] = None
                 ) -> StreamingResponse:
    """Every committed event (of ``workflow``'s runs) as server-sent events, in log order;
    from now on, or after ``Last-Event-ID``."""
    start = _position(last_event_id, after)
    slot = stream_slot(request, who)
    if start is None:
        start = await res.pool.fetchval(
            "SELECT coalesce(max(global_position), 0) FROM shoal.events")
    return StreamingResponse(
        _stream(res, request, _hub(request), instance_id=None, workflow=workflow,
                after=start, end_when_finished=False, slot=slot),
        media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
