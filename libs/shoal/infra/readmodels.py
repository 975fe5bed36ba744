"""Read-model maintenance shared by the projector, the API and the CLI."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from shoal.infra.projection import LIVE, Tables, apply
from shoal.infra.store import StoredEvent, imported_events, read_from

CHECKPOINT = "read_models"
PROJECTOR_LOCK = 0x5E0A3  # held by a projector while it applies a batch
REBUILD_LOCK = 0x5E0A4    # one rebuild at a time
SHADOW = Tables("shoal_read.workflow_runs_rebuild", "shoal_read.task_runs_rebuild")


class RebuildBusy(Exception):
    """Another rebuild holds the lock."""


@dataclass(frozen=True, slots=True)
class Rebuilt:
    events: int
    runs: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def rebuild(pool: asyncpg.Pool, batch: int = 2000,
                  progress: Callable[[int], None] | None = None) -> Rebuilt:
    """Rebuild ``workflow_runs`` and ``task_runs`` from the whole event log, online.

    The log is projected into shadow tables while the live ones keep serving (and the
    projector keeps them current). Then, holding the projector's lock, the shadow tables
    catch up the last events and the imported runs, and replace the live ones in one
    transaction: a reader sees the old tables or the new, never an empty or half-built one.
    """
    t0 = time.monotonic()
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", REBUILD_LOCK):
            raise RebuildBusy("another rebuild of the read models is running")
        try:
            await conn.execute(
                f"DROP TABLE IF EXISTS {SHADOW.runs}, {SHADOW.tasks};"
                f"CREATE TABLE {SHADOW.runs} (LIKE {LIVE.runs} INCLUDING ALL);"
                f"CREATE TABLE {SHADOW.tasks} (LIKE {LIVE.tasks} INCLUDING ALL)")
            pos = n = 0
            while True:  # the bulk, without blocking the projector
                async with conn.transaction():
                    applied = await _apply_from(conn, pos, batch)
                if not applied:
                    break
                pos, n = applied[-1].global_position, n + len(applied)
                if progress:
                    progress(n)
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", PROJECTOR_LOCK)
                while applied := await _apply_from(conn, pos, batch):
                    pos, n = applied[-1].global_position, n + len(applied)
                await apply(conn, await imported_events(conn), imported=True, tables=SHADOW)
                runs = await conn.fetchval(f"SELECT count(*) FROM {SHADOW.runs}")
                await conn.execute(
                    f"ALTER TABLE {LIVE.runs} RENAME TO workflow_runs_old;"
                    f"ALTER TABLE {LIVE.tasks} RENAME TO task_runs_old;"
                    f"ALTER TABLE {SHADOW.runs} RENAME TO workflow_runs;"
                    f"ALTER TABLE {SHADOW.tasks} RENAME TO task_runs;"
                    "DROP TABLE shoal_read.workflow_runs_old, shoal_read.task_runs_old")
                await conn.execute(
                    "INSERT INTO shoal_read.checkpoints (name, position) VALUES ($1, $2) "
                    "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
                    CHECKPOINT, pos)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", REBUILD_LOCK)
    return Rebuilt(events=n, runs=runs, seconds=time.monotonic() - t0)


async def _apply_from(conn: asyncpg.Connection, pos: int, batch: int) -> list[StoredEvent]:
    events = await read_from(conn, pos, batch)
    await apply(conn, events, tables=SHADOW)
    return events
