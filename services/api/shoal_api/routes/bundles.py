"""Incident bundles: a run's definition, whole history and log pointers as one JSON file,
exported from one installation and imported, read-only, into another."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Request

from shoal.core import versions
from shoal.core.errors import MessageInvalid
from shoal.core.evolve import fold
from shoal.core.model import EVENT_TYPES
from shoal.infra import codec
from shoal.infra.lifecycle import utcnow_iso
from shoal.infra.projection import apply
from shoal.infra.readmodels import PROJECTOR_LOCK
from shoal.infra.store import StoredEvent
from shoal_api.deps import ADMIN, VIEWER, Res
from shoal_api.models import Imported, RunBundle
from shoal_api.problems import ERRORS
from shoal_api.routes.runs import get_run, history

router = APIRouter(prefix="/api/v1", tags=["runs"], responses=ERRORS)

BUNDLE_SCHEMA = "shoal.run-bundle/1"
MAX_EVENTS = 100_000


@router.get("/runs/{instance_id}/bundle", dependencies=[VIEWER], response_model=RunBundle)
async def export_run(instance_id: uuid.UUID, request: Request, res: Res) -> dict[str, Any]:
    """The run as an incident bundle: its definition version, every event in order, the
    read model's view and where each attempt's log is (``shoal export-run``)."""
    events = await history(res, instance_id)
    run = await get_run(instance_id, res)
    first = events[0].data
    logs = await res.pool.fetch(
        "SELECT task, attempt, count(*) AS chunks, sum(jsonb_array_length(lines)) AS lines, "
        "bool_or(final) AS final FROM shoal_read.task_logs WHERE instance_id = $1 "
        "GROUP BY task, attempt ORDER BY task, attempt", instance_id)
    return {
        "schema": BUNDLE_SCHEMA, "exported_at": utcnow_iso(),
        "source": {"api": str(request.base_url).rstrip("/"),
                   "topic_prefix": res.settings.topic_prefix},
        "instance_id": str(instance_id),
        "definition": {"workflow": first["workflow"], "version": first["version"],
                       "definition": first["definition"]},
        "run": run,
        "events": [e.as_dict() for e in events],
        "logs": [{"task": r["task"], "attempt": r["attempt"], "chunks": r["chunks"],
                  "lines": r["lines"], "complete": r["final"],
                  "path": f"/api/v1/runs/{instance_id}/tasks/{r['task']}/log"
                          f"?attempt={r['attempt']}"} for r in logs],
    }


def _problems(bundle: dict[str, Any]) -> tuple[str, list[StoredEvent]]:
    """The instance id and events of a bundle, or 422 naming what is wrong with it."""
    def bad(msg: str) -> HTTPException:
        return HTTPException(422, {"message": f"not a run bundle this installation can "
                                              f"import: {msg}"})
    if bundle.get("schema") != BUNDLE_SCHEMA:
        raise bad(f"schema is {bundle.get('schema')!r}, expected {BUNDLE_SCHEMA!r}")
    try:
        iid = str(uuid.UUID(str(bundle.get("instance_id"))))
    except ValueError:
        raise bad("instance_id is not a UUID") from None
    raw = bundle.get("events")
    if not isinstance(raw, list) or not raw:
        raise bad("events: a non-empty list is required")
    if len(raw) > MAX_EVENTS:
        raise bad(f"events: more than {MAX_EVENTS}")
    events: list[StoredEvent] = []
    for i, e in enumerate(raw, start=1):
        if not isinstance(e, dict) or not isinstance(e.get("data"), dict):
            raise bad(f"events[{i - 1}]: an object with data is required")
        if e.get("seq") != i:
            raise bad(f"events[{i - 1}]: seq {e.get('seq')!r}, expected {i} (in order, no gaps)")
        if e.get("instance_id") != iid:
            raise bad(f"events[{i - 1}]: instance_id is not the bundle's")
        if e.get("type") not in EVENT_TYPES:
            raise bad(f"events[{i - 1}]: unknown event type {e.get('type')!r}")
        try:
            version = versions.version_of(e)
            codec.validate("events", e["type"],
                           versions.upcast(e["type"], version, e["data"], versions.EVENTS))
            recorded = datetime.fromisoformat(str(e.get("recorded_at"))).isoformat()
            position = int(e.get("global_position") or 0)
        except (MessageInvalid, ValueError, TypeError) as exc:
            raise bad(f"events[{i - 1}]: {exc}") from None
        events.append(StoredEvent(global_position=position, instance_id=iid, seq=i,
                                  type=e["type"], data=e["data"],
                                  causation_id=e.get("causation_id"), recorded_at=recorded,
                                  schema_version=version))
    try:
        fold((e.event() for e in events), instance_id=iid)
    except Exception as exc:  # noqa: BLE001 - any failure to fold makes it unimportable
        raise bad(f"its events do not replay: {exc!r}") from None
    return iid, events


@router.post("/runs/import", status_code=201, dependencies=[ADMIN], response_model=Imported)
async def import_run(res: Res, bundle: Annotated[dict[str, Any], Body(
        description="a bundle as GET /runs/{id}/bundle returns it")]) -> dict[str, Any]:
    """Import a bundle read-only (``shoal import-run``): its run is listed, inspectable and
    replayable, marked ``imported``, and never executed — no command reaches it."""
    iid, events = _problems(bundle)
    definition = bundle.get("definition") or {}
    async with res.pool.acquire() as conn, conn.transaction():
        # The projector's lock: a rebuild swapping the read models in waits for this.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PROJECTOR_LOCK)
        clash = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM shoal.events WHERE instance_id = $1) OR EXISTS "
            "(SELECT 1 FROM shoal.imported_runs WHERE instance_id = $1) OR EXISTS "
            "(SELECT 1 FROM shoal_read.workflow_runs WHERE instance_id = $1)", uuid.UUID(iid))
        if clash:
            raise HTTPException(409, {"message": f"run {iid} already exists here"})
        exported = bundle.get("exported_at")
        await conn.execute(
            "INSERT INTO shoal.imported_runs (instance_id, bundle_schema, exported_at, source, "
            "definition, logs) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6::jsonb)",
            uuid.UUID(iid), BUNDLE_SCHEMA,
            datetime.fromisoformat(exported) if isinstance(exported, str) else None,
            codec.dumps(bundle.get("source") or {}).decode(),
            codec.dumps(definition).decode(), codec.dumps(bundle.get("logs") or []).decode())
        await conn.executemany(
            "INSERT INTO shoal.imported_events (instance_id, seq, global_position, type, data, "
            "causation_id, recorded_at, schema_version) "
            "VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)",
            [(uuid.UUID(iid), e.seq, e.global_position, e.type, codec.dumps(e.data).decode(),
              e.causation_id, datetime.fromisoformat(e.recorded_at), e.schema_version)
             for e in events])
        await apply(conn, list(events), imported=True)
    first = events[0].data
    return {"instance_id": iid, "workflow": first["workflow"], "version": first["version"],
            "events": len(events), "imported": True}
