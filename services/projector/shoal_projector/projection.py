"""Apply stored events to the read models, one transaction per batch with its checkpoint.

Reading by global position is gap-free because appends are serialized (see
``shoal.infra.store``). A transaction-level advisory lock lets one projector apply at a
time; ``readmodels.rebuild`` takes the same lock for its swap, so a running projector never
interleaves with it.

One event the projection cannot apply never stops it (``apply_guarded``, the error
policy): it is handed to ``poison`` (the projector dead-letters it) before the checkpoint
passes it, and left out of the read models; the consistency checker names its run, and
``shoal projections rebuild`` applies it once a release can. At an event of a schema
version newer than this release reads, the read models wait (``held``) until a projector
of a release that reads it takes over.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg

from shoal.infra.projection import Also, apply_guarded
from shoal.infra.readmodels import CHECKPOINT, PROJECTOR_LOCK
from shoal.infra.store import StoredEvent, read_from

log = logging.getLogger("shoal.projector")

Poison = Callable[[StoredEvent, str], Awaitable[None]]
Held = Callable[[StoredEvent, str], None]


async def project_once(pool: asyncpg.Pool, limit: int = 1000, also: Also | None = None, *,
                       poison: Poison | None = None, held: Held | None = None,
                       ) -> list[StoredEvent]:
    """Apply the next batch of events; return those applied. ``also`` runs in the same
    transaction (derived effects such as alerts commit exactly when the projection does).
    ``poison`` receives each event left out (with the reason) before the checkpoint moves
    past it; ``held`` the event of a future schema version the pass stopped at."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PROJECTOR_LOCK):
            return []
        pos = await conn.fetchval(
            "SELECT position FROM shoal_read.checkpoints WHERE name = $1", CHECKPOINT) or 0
        done = await apply_guarded(conn, await read_from(conn, pos, limit), also=also)
        for e, reason in done.left_out:
            log.error("projection: %s", reason)
            if poison is not None:
                await poison(e, reason)
        if done.held is not None and held is not None:
            held(*done.held)
        if done.passed is not None:
            await conn.execute(
                "INSERT INTO shoal_read.checkpoints (name, position) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
                CHECKPOINT, done.passed.global_position)
        return done.applied
