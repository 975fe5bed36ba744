"""Workflow definitions: immutable versions, a new version only when the content changes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import yaml
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response

from shoal.core.definition import MAX_TASKS, WorkflowDefinition, parse_definition
from shoal.core.dsexport import to_dolphinscheduler
from shoal.core.errors import DefinitionInvalid, Problem
from shoal.infra import codec
from shoal.infra.catalog import workflow_status
from shoal.infra.codepath import function_warnings
from shoal_api.deps import ADMIN, VIEWER, Res
from shoal_api.models import Published, Release, WorkflowDetail, WorkflowSummary, WorkflowVersion
from shoal_api.problems import ERRORS

router = APIRouter(prefix="/api/v1/workflows", tags=["workflows"], dependencies=[VIEWER],
                   responses=ERRORS)


def parse_body(body: bytes, content_type: str) -> Any:
    """JSON or YAML (YAML is a superset of JSON, so it is the fallback)."""
    if "json" in content_type:
        try:
            return codec.loads(body)
        except ValueError as exc:
            raise HTTPException(422, {"message": f"body is not valid JSON: {exc}"}) from None
    try:
        return yaml.safe_load(body)
    except yaml.YAMLError as exc:
        raise HTTPException(422, {"message": f"body is not valid YAML: {exc}"}) from None


async def _sub_workflow_problems(definition: WorkflowDefinition, res: Res) -> list[Problem]:
    """A sub_workflow must name a published workflow, and must not lead back to this one
    through the latest versions of the workflows it starts (a run would never end)."""
    problems: list[Problem] = []
    for i, t in enumerate(definition.tasks):
        if t.type != "sub_workflow":
            continue
        child = t.spec["workflow"]
        seen, frontier, path = {definition.name}, [child], {child: [definition.name, child]}
        while frontier:
            name = frontier.pop()
            row = await res.pool.fetchrow(
                "SELECT definition::text AS d FROM shoal.workflow_definitions WHERE name = $1 "
                "ORDER BY version DESC LIMIT 1", name)
            if row is None:
                if name == child:
                    problems.append(Problem(f"tasks[{i}].workflow",
                                            f"unknown workflow '{child}' (publish it first)"))
                continue
            seen.add(name)
            for sub in codec.loads(row["d"])["tasks"]:
                nxt = sub.get("workflow") if sub.get("type") == "sub_workflow" else None
                if nxt == definition.name:
                    problems.append(Problem(f"tasks[{i}].workflow", "sub-workflow cycle: "
                                            + " -> ".join([*path[name], nxt])))
                    frontier = []
                    break
                if nxt and nxt not in seen:
                    path[nxt] = [*path[name], nxt]
                    frontier.append(nxt)
    return problems


_DEFINITION_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["name", "tasks"],
    "description": "a workflow definition (CONTRACT §1); YAML bodies have the same structure",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]*$"},
        "description": {"type": "string"},
        "params": {"type": "object", "additionalProperties": {
            "type": ["string", "number", "boolean", "null", "object"],
            "description": "a value, or a typed param {value, type, pattern?, values?}"}},
        "tasks": {"type": "array", "minItems": 1, "maxItems": MAX_TASKS, "items": {
            "type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "type": {"type": "string"},
                "command": {"type": "string"},
                "depends_on": {"type": "array", "items": {"type": "string"}}}}},
    },
}


@router.post("", status_code=201, dependencies=[ADMIN], response_model=Published,
             responses={200: {"model": Published, "description": "unchanged: the same "
                                                                 "content as the latest"}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": _DEFINITION_SCHEMA},
                 "application/yaml": {"schema": _DEFINITION_SCHEMA}}}})
async def create(request: Request, response: Response, res: Res) -> dict[str, Any]:
    raw = parse_body(await request.body(), request.headers.get("content-type", ""))
    try:
        definition = parse_definition(raw)
    except DefinitionInvalid as exc:
        raise HTTPException(422, {"message": str(exc), "type": "invalid-definition",
                                  "problems": [p.as_dict() for p in exc.problems]}) from None
    problems = await _sub_workflow_problems(definition, res)
    known = res.settings.alert_channel_map()
    for i, channel in enumerate((definition.alerts or {}).get("channels", ())):
        if channel not in known:
            problems.append(Problem(f"alerts.channels[{i}]", f"unknown channel '{channel}' "
                                    f"(SHOAL_ALERT_CHANNELS has: {', '.join(known) or 'none'})"))
    sources = res.settings.datasource_names()
    for i, task in enumerate(definition.tasks):
        if task.type == "sql" and task.spec["datasource"] not in sources:
            problems.append(Problem(
                f"tasks[{i}].datasource", f"unknown datasource '{task.spec['datasource']}' "
                f"(SHOAL_DATASOURCES has: {', '.join(sources) or 'none'})"))
    if problems:
        raise HTTPException(422, {"message": "; ".join(str(p) for p in problems),
                                  "type": "invalid-definition",
                                  "problems": [p.as_dict() for p in problems]})
    warnings = [w.as_dict() for w in function_warnings(definition,
                                                        res.settings.code_paths())]
    version, created, changed = await publish(res, definition, (await request.body()).decode(
        "utf-8", "replace"))
    if not created:
        response.status_code = 200
    return {"name": definition.name, "version": version, "changed": changed,
            "warnings": warnings}


async def publish(res: Res, definition: WorkflowDefinition,
                  source: str) -> tuple[int, bool, bool]:
    """Store a validated definition as a new version, unless it has the latest version's
    content (then nothing changes but a deleted workflow coming back): (version, a new
    version, changed)."""
    normalized = definition.to_dict()
    async with res.pool.acquire() as conn, conn.transaction():
        # Serialize publishers of one name so versions are dense and never collide.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", definition.name)
        latest = await conn.fetchrow(
            "SELECT version, definition::text AS d FROM shoal.workflow_definitions "
            "WHERE name = $1 ORDER BY version DESC LIMIT 1", definition.name)
        if latest is not None and codec.loads(latest["d"]) == normalized:
            restored = await conn.fetchval(
                "DELETE FROM shoal.workflow_status WHERE name = $1 AND deleted RETURNING true",
                definition.name)
            return latest["version"], False, bool(restored)
        # Publishing a deleted workflow's name again brings it back, online.
        await conn.execute("DELETE FROM shoal.workflow_status WHERE name = $1 AND deleted",
                           definition.name)
        version = (latest["version"] if latest else 0) + 1
        await conn.execute(
            "INSERT INTO shoal.workflow_definitions (name, version, definition, source) "
            "VALUES ($1, $2, $3::jsonb, $4)", definition.name, version,
            codec.dumps(normalized).decode(), source)
    return version, True, True


@router.get("", response_model=list[WorkflowSummary])
async def list_workflows(res: Res) -> list[dict[str, Any]]:
    rows = await res.pool.fetch(
        "SELECT DISTINCT ON (d.name) d.name, d.version, d.definition->>'description' AS "
        "description, d.created_at, coalesce(s.online, true) AS online FROM "
        "shoal.workflow_definitions d LEFT JOIN shoal.workflow_status s ON s.name = d.name "
        "WHERE NOT coalesce(s.deleted, false) ORDER BY d.name, d.version DESC")
    return [{"name": r["name"], "latest_version": r["version"],
             "description": r["description"], "updated_at": r["created_at"].isoformat(),
             "online": r["online"]}
            for r in rows]


@router.get("/{name}", response_model=WorkflowDetail)
async def get_workflow(name: str, res: Res) -> dict[str, Any]:
    status = await workflow_status(res.pool, name)
    rows = await res.pool.fetch(
        "SELECT version, definition::text AS d, created_at FROM shoal.workflow_definitions "
        "WHERE name = $1 ORDER BY version DESC", name)
    if not rows or status == "deleted":
        raise HTTPException(404, {"message": f"no workflow named '{name}'"})
    return {"name": name, "version": rows[0]["version"], "definition": codec.loads(rows[0]["d"]),
            "online": status == "online",
            "versions": [{"version": r["version"], "created_at": r["created_at"].isoformat()}
                         for r in rows]}


@router.get("/{name}/versions/{version}", response_model=WorkflowVersion)
async def get_version(name: str, version: Annotated[int, Path(ge=1, le=2**31 - 1)],
                      res: Res) -> dict[str, Any]:
    row = await res.pool.fetchrow(
        "SELECT definition::text AS d, created_at FROM shoal.workflow_definitions "
        "WHERE name = $1 AND version = $2", name, version)
    if row is None:
        raise HTTPException(404, {"message": f"workflow '{name}' has no version {version}"})
    return {"name": name, "version": version, "definition": codec.loads(row["d"]),
            "created_at": row["created_at"].isoformat()}


@router.get("/{name}/export", response_class=Response, responses={
    200: {"content": {"application/yaml": {"schema": _DEFINITION_SCHEMA},
                      "application/json": {"schema": {"type": "array", "items": {
                          "type": "object"}}}},
          "description": "the definition as YAML; `shoal apply` takes it back unchanged "
                         "(or, with format=dolphinscheduler, DolphinScheduler's export "
                         "file, JSON)"}})
async def export(name: str, res: Res,
                 version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
                 format: Annotated[Literal["yaml", "dolphinscheduler"], Query(
                     description="yaml (CONTRACT §1) or DolphinScheduler's export file")]
                 = "yaml") -> Response:
    """A version (default: the latest) as YAML, in the definition format of CONTRACT §1,
    or as DolphinScheduler's UI export file (``format=dolphinscheduler``)."""
    status = await workflow_status(res.pool, name)
    found = await res.store.definition(name, version) if status not in (None, "deleted") \
        else None
    if found is None:
        which = f" version {version}" if version else ""
        raise HTTPException(404, {"message": f"no workflow named '{name}'{which}"})
    if format == "dolphinscheduler":
        return await export_dolphinscheduler(res, parse_definition(found[1]).to_dict())
    # The normalized form in its own field order (the stored JSONB has the database's).
    text = yaml.safe_dump(parse_definition(found[1]).to_dict(), sort_keys=False,
                          allow_unicode=True)
    return Response(text, media_type="application/yaml", headers={
        "Content-Disposition": f'attachment; filename="{name}.yaml"'})


async def export_dolphinscheduler(res: Res, definition: dict[str, Any]) -> Response:
    """The definition as DolphinScheduler's UI export file (a one-item array), with the
    codes it was imported with and its first schedule."""
    rows = await res.pool.fetch("SELECT code, name, tasks::text AS tasks FROM "
                                "shoal.ds_workflows ORDER BY imported_at")
    codes = {r["name"]: r["code"] for r in rows}
    tasks = {r["name"]: {v: int(k) for k, v in codec.loads(r["tasks"]).items()} for r in rows}
    name = definition["name"]
    sched = await res.pool.fetchval(
        "SELECT record::text FROM shoal.schedules WHERE workflow = $1 AND NOT deleted "
        "ORDER BY created_at LIMIT 1", name)
    item = to_dolphinscheduler(definition, code=codes.get(name), task_codes=tasks.get(name),
                               workflow_codes=codes, foreign_tasks=tasks,
                               schedule=codec.loads(sched) if sched else None)
    return Response(codec.dumps([item]), media_type="application/json", headers={
        "Content-Disposition": f'attachment; filename="{name}.json"'})


@router.post("/{name}/online", dependencies=[ADMIN], response_model=Release)
async def put_online(name: str, res: Res) -> dict[str, Any]:
    """Put a workflow online (DolphinScheduler's release state; the default)."""
    return await _release(name, "online", res)


@router.post("/{name}/offline", dependencies=[ADMIN], response_model=Release)
async def put_offline(name: str, res: Res) -> dict[str, Any]:
    """Put a workflow offline: it cannot be started, and its schedules do not fire."""
    return await _release(name, "offline", res)


async def _release(name: str, action: Literal["online", "offline"], res: Res) -> dict[str, Any]:
    if await workflow_status(res.pool, name) in (None, "deleted"):
        raise HTTPException(404, {"message": f"no workflow named '{name}'"})
    await res.pool.execute(
        "INSERT INTO shoal.workflow_status (name, online) VALUES ($1, $2) ON CONFLICT (name) "
        "DO UPDATE SET online = $2, updated_at = now()", name, action == "online")
    return {"name": name, "online": action == "online"}


@router.delete("/{name}", status_code=204, dependencies=[ADMIN])
async def delete_workflow(name: str, res: Res) -> Response:
    """Delete a workflow: it disappears from listings, cannot be started and its schedules
    do not fire. Refused (409) while any of its runs is unfinished: stop them or let them
    end first. Its versions and finished runs stay (they refer to them); publishing it
    again restores it."""
    if await workflow_status(res.pool, name) in (None, "deleted"):
        raise HTTPException(404, {"message": f"no workflow named '{name}'"})
    active = await res.pool.fetchval(
        "SELECT count(*) FROM shoal_read.workflow_runs WHERE workflow = $1 AND state NOT IN "
        "('succeeded', 'failed', 'stopped')", name)
    if active:
        raise HTTPException(409, {"message": f"workflow '{name}' has {active} unfinished "
                                             "run(s); stop them or let them end, then delete",
                                  "type": "workflow-busy", "unfinished_runs": active})
    await res.pool.execute(
        "INSERT INTO shoal.workflow_status (name, online, deleted) VALUES ($1, false, true) "
        "ON CONFLICT (name) DO UPDATE SET deleted = true, online = false, updated_at = now()",
        name)
    return Response(status_code=204)
