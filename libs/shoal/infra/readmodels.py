"""Read-model maintenance shared by the projector, the API and the CLI."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from shoal.infra.projection import LIVE, Tables, apply, apply_guarded
from shoal.infra.store import StoredEvent, imported_events, read_from

CHECKPOINT = "read_models"
PROJECTOR_LOCK = 0x5E0A3  # held by a projector while it applies a batch
REBUILD_LOCK = 0x5E0A4    # one rebuild at a time
SHADOW = Tables("shoal_read.workflow_runs_rebuild", "shoal_read.task_runs_rebuild")


class RebuildBusy(Exception):
    """Another rebuild holds the lock."""


class RebuildHeld(Exception):
    """The log holds an event of a schema version newer than this release reads: the
    read models cannot be rebuilt past it by this release (the live ones are untouched)."""


@dataclass(frozen=True, slots=True)
class Rebuilt:
    events: int
    runs: int
    seconds: float
    # Events the fold could not take, left out of the rebuilt rows: (position, reason).
    left_out: list[tuple[int, str]] = field(default_factory=list)

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
            left_out: list[tuple[int, str]] = []
            while True:  # the bulk, without blocking the projector
                async with conn.transaction():
                    applied = await _apply_from(conn, pos, batch, left_out)
                if not applied:
                    break
                pos, n = applied[-1].global_position, n + len(applied)
                if progress:
                    progress(n)
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", PROJECTOR_LOCK)
                while applied := await _apply_from(conn, pos, batch, left_out):
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
    return Rebuilt(events=n - len(left_out), runs=runs, seconds=time.monotonic() - t0,
                   left_out=left_out)


async def _apply_from(conn: asyncpg.Connection, pos: int, batch: int,
                      left_out: list[tuple[int, str]]) -> list[StoredEvent]:
    """The next batch from ``pos`` into the shadow tables: the events passed (applied or
    left out, the latter added to ``left_out``, which the caller reports)."""
    events = await read_from(conn, pos, batch)
    done = await apply_guarded(conn, events, tables=SHADOW)
    if done.held is not None:
        e, reason = done.held
        raise RebuildHeld(f"the log holds an event this release cannot read at position "
                          f"{e.global_position} (run {e.instance_id} seq {e.seq}): {reason}")
    left_out.extend((e.global_position, reason) for e, reason in done.left_out)
    return events
