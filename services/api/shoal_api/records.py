"""Schedule and backfill records: stored by the API, published to ``<prefix>.schedules``.

A change is written in a transaction that commits only after the broker acknowledged the
record, so the table never holds a change the schedulers were not told about. Each record
carries a ``revision`` (strictly increasing per key) so a scheduler ignores a stale copy
(for instance one re-published by another API instance at its start).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from fastapi import HTTPException

from shoal.core import versions
from shoal.core.definition import param_problems, parse_definition
from shoal.core.errors import DefinitionInvalid
from shoal.core.paramtypes import definition_param_problems
from shoal.infra import codec
from shoal.infra.kafka import TOO_LARGE, send_reliably
from shoal.infra.settings import Settings
from shoal_api.deps import Resources

log = logging.getLogger(__name__)

# A parameter value as a request may give it (stored as text, see string_params).
Scalar = str | int | float | bool | None

def string_params(params: Mapping[str, str | int | float | bool | None]) -> dict[str, str]:
    """Parameter values as the text a task sees (true/false for booleans, "" for null);
    422 for a bad name, too many entries or too large a value."""
    problems = param_problems(params)
    if problems:
        raise HTTPException(422, {"message": "; ".join(str(p) for p in problems),
                                  "problems": [p.as_dict() for p in problems]})
    return {k: "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in params.items()}


async def check_declared(res: Resources, workflow: str, params: Mapping[str, str],
                         version: int | None = None, where: str = "params") -> None:
    """422 naming each run param the workflow (its latest version, or ``version``) does
    not declare, or whose value is not of its declared type."""
    found = await res.store.definition(workflow, version)
    if found is None:
        return  # the caller reports the missing workflow
    try:
        definition = parse_definition(found[1])
    except DefinitionInvalid:
        return
    problems = definition_param_problems(definition, params, where)
    if problems:
        raise HTTPException(422, {"message": "; ".join(str(p) for p in problems),
                                  "problems": [p.as_dict() for p in problems]})


def versioned(record: dict[str, Any]) -> dict[str, Any]:
    """A schedule or backfill record in this release's shape, stamped with its schema
    version (stored and published so; an older stored one is upcast first)."""
    name = "Backfill" if record.get("kind") == "backfill" else "Schedule"
    current = versions.upcast(name, versions.version_of(record), record, versions.MESSAGES)
    return versions.stamp(name, current)


async def publish(res: Resources, key: str, record: dict[str, Any]) -> None:
    value = codec.dumps(record)
    try:
        await send_reliably(res.producer, res.settings.schedules_topic, value,
                            key.encode(), give_up_after=10.0)
    except TOO_LARGE as exc:  # retrying cannot help: say so, not "try again"
        raise HTTPException(413, {"message": (
            f"the record is {len(value)} bytes, more than one Kafka record may be "
            f"(SHOAL_KAFKA_MAX_MESSAGE_BYTES {res.settings.kafka_max_message_bytes}); "
            "nothing was changed")}) from exc
    except KafkaError as exc:
        raise HTTPException(503, {"message": f"the broker did not accept the change: {exc!r};"
                                             " nothing was changed, try again"}) from exc


async def republish_all(settings: Settings, pool: asyncpg.Pool,
                        producer: AIOKafkaProducer) -> int:
    """Publish every stored record again (at API start): heals a change whose commit
    failed after its publish, and a broker that lost its data. Revisions make it safe."""
    n = 0
    for table in ("schedules", "backfills"):
        rows = await pool.fetch(f"SELECT id, record::text AS r FROM shoal.{table}")
        for row in rows:
            await send_reliably(producer, settings.schedules_topic, row["r"].encode(),
                                str(row["id"]).encode())
            n += 1
    return n
