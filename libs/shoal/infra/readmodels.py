"""Read-model maintenance shared by the projector and the CLI."""

from __future__ import annotations

import asyncpg

CHECKPOINT = "read_models"
PROJECTOR_LOCK = 0x5E0A3  # held by a projector while it applies a batch


async def rebuild(pool: asyncpg.Pool) -> None:
    """Empty the read models and reset the checkpoint; the projector refills them.

    Takes the projector's lock, so it never interleaves with a batch being applied.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PROJECTOR_LOCK)
        # Logs and workers come from Kafka, not from the event log: they are kept.
        await conn.execute("TRUNCATE shoal_read.workflow_runs, shoal_read.task_runs")
        await conn.execute("DELETE FROM shoal_read.checkpoints WHERE name = $1", CHECKPOINT)
