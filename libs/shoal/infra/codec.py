"""Bytes <-> typed messages, with JSON-schema validation. The only place that parses wire data."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator

from shoal.core import versions
from shoal.core.definition import Priority
from shoal.core.errors import MessageInvalid
from shoal.core.model import (
    COMMAND_TYPES,
    CONTROL_TYPES,
    Command,
    ExpireLease,
    FireTimer,
    ForceTaskSuccess,
    Scope,
    StartWorkflow,
    TaskFailed,
    TaskKilled,
    TaskReport,
    TaskStarted,
    TaskSucceeded,
    command_actor,
)


def schemas_dir() -> Path:
    """``schemas/`` of the source tree, or ``SHOAL_SCHEMAS_DIR``."""
    env = os.environ.get("SHOAL_SCHEMAS_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "schemas"


@cache
def validator(kind: str, name: str) -> Draft202012Validator:
    path = schemas_dir() / kind / f"{name}.json"
    schema = orjson.loads(path.read_bytes())
    Draft202012Validator.check_schema(schema)
    # The format checker makes ``"format": "uuid"`` binding: the schemas' loose pattern
    # alone admits 36 zeros or dashes, which Postgres then refuses (a poison message).
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def validate(kind: str, name: str, obj: Mapping[str, Any]) -> None:
    """Raise :class:`MessageInvalid` naming the first schema violation."""
    try:
        v = validator(kind, name)
    except FileNotFoundError:
        raise MessageInvalid(f"unknown {kind} type {name!r}") from None
    err = next(iter(v.iter_errors(obj)), None)
    if err is not None:
        where = "/".join(str(p) for p in err.absolute_path) or "(root)"
        raise MessageInvalid(f"{name}: {where}: {err.message}")


def message(name: str, obj: dict[str, Any]) -> bytes:
    """The wire form of a message of type ``name``, stamped with the schema version this
    release writes for it."""
    return dumps(versions.stamp(name, obj))


def accept(kind: str, name: str, obj: Mapping[str, Any], schema: str | None = None,
           ) -> dict[str, Any]:
    """A decoded message of type ``name`` in the shape this release reads: its
    ``schema_version`` checked (a newer one is refused: :class:`FutureVersion`, poison),
    upcast from an earlier one, then validated against ``schemas/<kind>/<schema>.json``."""
    out = versions.upcast(name, versions.version_of(obj), obj, versions.MESSAGES)
    validate(kind, schema or name, out)
    return out


def decode_object(value: bytes | None, what: str) -> dict[str, Any]:
    """One JSON object from wire bytes; :class:`MessageInvalid` for anything else (not
    UTF-8, not JSON, not an object)."""
    try:
        obj = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        raise MessageInvalid(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise MessageInvalid(f"{what} must be a JSON object")
    return obj


def decode_command(value: bytes | None) -> Command:
    """Parse one value of the commands topic into a typed command."""
    if value is None:
        raise MessageInvalid("empty message (tombstone) on the commands topic")
    obj = decode_object(value, "a command")
    kind = obj.get("type")
    if kind not in COMMAND_TYPES:
        raise MessageInvalid(f"unknown command type {kind!r} "
                             f"(one of: {', '.join(COMMAND_TYPES)})")
    obj = accept("commands", kind, obj)
    common: dict[str, Any] = {k: obj[k] for k in ("message_id", "instance_id", "sent_at")}
    common["actor"] = command_actor(kind, obj.get("actor"))
    if kind == "StartWorkflow":
        params = {k: _param(v) for k, v in (obj.get("params") or {}).items()}
        return StartWorkflow(
            **common, workflow=obj["workflow"], version=obj.get("version"), params=params,
            priority=Priority(obj["priority"]) if obj.get("priority") else None,
            schedule_time=obj.get("schedule_time"), parent=obj.get("parent"),
            start_from=tuple(obj["start_from"]) if obj.get("start_from") else None,
            scope=Scope(obj.get("scope") or "downstream"), dry_run=bool(obj.get("dry_run")),
            forked_from=obj.get("forked_from"),
            carried=tuple(obj.get("carried") or ()),
        )
    if kind in CONTROL_TYPES:
        return COMMAND_TYPES[kind](**common)
    if kind == "ForceTaskSuccess":
        return ForceTaskSuccess(**common, task=obj["task"])
    if kind == "FireTimer":
        return FireTimer(**common, timer_id=obj["timer_id"])
    report = {**common, "task": obj["task"], "attempt": obj["attempt"],
              "dispatch_id": obj["dispatch_id"], "worker_id": obj["worker_id"]}
    if kind == "TaskStarted":
        return TaskStarted(**report, claim=bool(obj.get("claim")))
    if kind == "TaskSucceeded":
        return TaskSucceeded(**report, exit_code=obj["exit_code"],
                             outputs=dict(obj.get("outputs") or {}))
    if kind == "TaskKilled":
        return TaskKilled(**report, exit_code=obj.get("exit_code"), error=obj.get("error", ""))
    if kind == "ExpireLease":
        return ExpireLease(**report)
    return TaskFailed(**report, exit_code=obj.get("exit_code"), error=obj.get("error", ""))


def _param(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def encode_command(cmd: Command) -> bytes:
    """The wire form of a command (what the API, CLI, workers and timers publish)."""
    obj: dict[str, Any] = {"type": cmd.type, "message_id": cmd.message_id,
                           "instance_id": cmd.instance_id, "sent_at": cmd.sent_at,
                           versions.FIELD: versions.MESSAGES.of(cmd.type)}
    if cmd.actor is not None:
        obj["actor"] = cmd.actor
    if isinstance(cmd, StartWorkflow):
        obj.update(workflow=cmd.workflow, version=cmd.version, params=dict(cmd.params),
                   priority=cmd.priority.value if cmd.priority else None,
                   schedule_time=cmd.schedule_time, parent=cmd.parent,
                   start_from=list(cmd.start_from) if cmd.start_from else None,
                   scope=cmd.scope.value, dry_run=cmd.dry_run)
        if cmd.forked_from:
            obj.update(forked_from=dict(cmd.forked_from), carried=[dict(c) for c in cmd.carried])
    elif isinstance(cmd, ForceTaskSuccess):
        obj.update(task=cmd.task)
    elif isinstance(cmd, FireTimer):
        obj.update(timer_id=cmd.timer_id)
    elif isinstance(cmd, TaskReport):
        obj.update(task=cmd.task, attempt=cmd.attempt, dispatch_id=cmd.dispatch_id,
                   worker_id=cmd.worker_id)
        if isinstance(cmd, TaskSucceeded):
            obj.update(exit_code=cmd.exit_code, outputs=dict(cmd.outputs))
        elif isinstance(cmd, TaskFailed | TaskKilled):
            obj.update(exit_code=cmd.exit_code, error=cmd.error)
        elif isinstance(cmd, TaskStarted) and cmd.claim:
            obj.update(claim=True)
    return dumps(obj)
