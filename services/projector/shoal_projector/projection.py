"""Apply stored events to the read models, one transaction per batch with its checkpoint.

Reading by global position is gap-free because appends are serialized (see
``shoal.infra.store``). A transaction-level advisory lock lets one projector apply at a
time; ``readmodels.rebuild`` takes the same lock for its swap, so a running projector never
interleaves with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg

from shoal.infra.projection import apply
from shoal.infra.readmodels import CHECKPOINT, PROJECTOR_LOCK
from shoal.infra.store import StoredEvent, read_from


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
        await apply(conn, events)
        if events and also is not None:
            await also(conn, events)
        if events:
            await conn.execute(
                "INSERT INTO shoal_read.checkpoints (name, position) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
                CHECKPOINT, events[-1].global_position)
        return events
