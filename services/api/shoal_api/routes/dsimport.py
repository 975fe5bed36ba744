"""Import DolphinScheduler workflows (its REST create-workflow bodies or UI export files)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import ValidationError

from shoal.core.definition import WorkflowDefinition, parse_definition
from shoal.core.dsimport import Conversion, ImportRefused, Known, convert
from shoal.core.errors import DefinitionInvalid
from shoal.core.schedule import validate_schedule_fields
from shoal.infra import codec
from shoal_api.deps import ADMIN, Actor, Res
from shoal_api.problems import ERRORS
from shoal_api.routes.schedules import ScheduleCreate, create_schedule
from shoal_api.routes.workflows import publish

router = APIRouter(prefix="/api/v1/import", tags=["import"], dependencies=[ADMIN],
                   responses=ERRORS)


@router.post("/dolphinscheduler", status_code=201, openapi_extra={"requestBody": {
    "required": True, "content": {"application/json": {"schema": {
        "type": "array", "items": {"type": "object"},
        "description": "DolphinScheduler workflows (one object is also taken): its REST "
                       "create-workflow bodies or its UI export file"}}}}})
async def import_dolphinscheduler(
        request: Request, res: Res, actor: Actor,
        online: Annotated[bool, Query(description="enable the imported schedules")] = False,
        datasource: Annotated[list[str] | None, Query(
            description="ID:NAME, a DolphinScheduler datasource id → a Shoal datasource")]
        = None) -> dict[str, Any]:
    """Convert and publish every workflow of the body, or none: 422 names each task of a
    type Shoal does not run and each reference that does not resolve. A workflow whose
    content did not change keeps its version."""
    try:
        raw = codec.loads(await request.body())
    except ValueError as exc:
        raise HTTPException(422, {"message": f"body is not valid JSON: {exc}"}) from None
    rows = await res.pool.fetch("SELECT code, name, source_name, tasks::text AS tasks "
                                "FROM shoal.ds_workflows")
    known = {r["code"]: Known(name=r["name"], tasks={int(k): v for k, v in
                                                     codec.loads(r["tasks"]).items()})
             for r in rows}
    mapping = dict(d.split(":", 1) for d in datasource or () if ":" in d)
    try:
        conv = convert(raw, known, taken=set(), names={c: k.name for c, k in known.items()},
                       datasources=mapping)
    except ImportRefused as exc:
        raise HTTPException(422, {"message": str(exc), "type": "import-refused",
                                  "problems": exc.problems}) from None
    definitions = _validate(conv)
    await _check_names(conv, res)
    schedules = _schedules(conv, online)
    ours = {k.name for k in known.values()}
    for item in conv.workflows:
        name = item.definition["name"]
        if name not in ours and await res.pool.fetchval(
                "SELECT 1 FROM shoal.workflow_definitions WHERE name = $1 LIMIT 1", name):
            conv.warnings.append(f"{item.source_name}: publishes a new version of the "
                                 f"existing workflow '{name}' (not imported from "
                                 "DolphinScheduler) unless its content is the same")
    out: list[dict[str, Any]] = []
    for item, definition in zip(conv.workflows, definitions, strict=True):
        version, _, _ = await publish(res, definition, codec.dumps(item.definition).decode())
        if item.source_code is not None:
            await res.pool.execute(
                "INSERT INTO shoal.ds_workflows (code, name, source_name, tasks) VALUES "
                "($1, $2, $3, $4::jsonb) ON CONFLICT (code) DO UPDATE SET name = $2, "
                "source_name = $3, tasks = $4::jsonb, imported_at = now()",
                item.source_code, definition.name, item.source_name,
                codec.dumps({str(k): v for k, v in item.task_codes.items()}).decode())
        if definition.name in schedules:
            await _schedule(res, schedules[definition.name], actor)
        out.append({"name": definition.name, "version": version,
                    "source_name": item.source_name, "source_code": item.source_code})
    return {"workflows": out, "warnings": conv.warnings}


def _validate(conv: Conversion) -> list[WorkflowDefinition]:
    """Every converted workflow parsed; all problems at once (nothing is published)."""
    problems: list[dict[str, Any]] = []
    out: list[WorkflowDefinition] = []
    for item in conv.workflows:
        try:
            out.append(parse_definition(item.definition))
        except DefinitionInvalid as exc:
            problems += [{**p.as_dict(), "workflow": item.source_name,
                          "message": f"{item.source_name}: {p}"} for p in exc.problems]
    if problems:
        raise HTTPException(422, {"message": "; ".join(p["message"] for p in problems),
                                  "type": "invalid-definition", "problems": problems})
    return out


async def _check_names(conv: Conversion, res: Res) -> None:
    """A workflow started as a sub-process must be in the request or published."""
    inside = {w.definition["name"] for w in conv.workflows}
    problems = []
    for item in conv.workflows:
        for t in item.definition["tasks"]:
            target = t.get("workflow") if t["type"] == "sub_workflow" else None
            if target and target not in inside and not await res.pool.fetchval(
                    "SELECT 1 FROM shoal.workflow_definitions WHERE name = $1 LIMIT 1", target):
                problems.append({"path": f"{item.source_name}.{t['name']}",
                                 "message": f"{item.source_name}: task '{t['name']}' starts "
                                            f"unknown workflow '{target}'"})
    if problems:
        raise HTTPException(422, {"message": "; ".join(p["message"] for p in problems),
                                  "type": "invalid-definition", "problems": problems})


def _schedules(conv: Conversion, online: bool) -> dict[str, ScheduleCreate]:
    """Each workflow's schedule, checked before anything is published; disabled unless
    the request asks for ``online``."""
    out: dict[str, ScheduleCreate] = {}
    problems: list[dict[str, Any]] = []
    for item in conv.workflows:
        if not item.schedule:
            continue
        name = item.definition["name"]
        try:
            body = ScheduleCreate(workflow=name, enabled=online, **item.schedule)
        except ValidationError as exc:
            problems.append({"path": f"{item.source_name}.schedule",
                             "message": f"{item.source_name}: schedule: {exc.errors()[0]['msg']}"})
            continue
        problems += [{"path": f"{item.source_name}.schedule.{p.path}",
                      "message": f"{item.source_name}: schedule: {p}"}
                     for p in validate_schedule_fields(body.model_dump())]
        out[name] = body
    if problems:
        raise HTTPException(422, {"message": "; ".join(p["message"] for p in problems),
                                  "type": "invalid-schedule", "problems": problems})
    return out


async def _schedule(res: Res, body: ScheduleCreate, actor: str) -> None:
    """The workflow's schedule, once: a re-import does not add another."""
    exists = await res.pool.fetchval(
        "SELECT 1 FROM shoal.schedules WHERE workflow = $1 AND NOT deleted AND "
        "record->>'cron' = $2 LIMIT 1", body.workflow, body.cron)
    if not exists:
        await create_schedule(body, res, actor)


