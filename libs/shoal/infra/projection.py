"""The runs projection's adapter: a batch of stored events onto ``workflow_runs`` and
``task_runs``, whose rows are computed by the pure fold in ``shoal.core.rows``.

Per batch: one read of the run rows and one of the task rows the events touch, the fold in
memory, one upsert per table of the rows that changed. Shared by the projector (live
tables), ``readmodels.rebuild`` (shadow tables it swaps in) and the API's bundle import
(an imported run's rows).

:func:`apply_guarded` is how the projector and the rebuild apply the log: one event the
fold cannot take never stops them (the error policy). A batch that fails for a reason that
is not transient is applied again one event at a time, each in a savepoint; an event that
fails on its own is left out (with the reason), and an event of a schema version newer
than this release reads ends the pass before it (``held``: never skipped, a release that
reads it carries on from there).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from shoal.core import versions
from shoal.core.rows import RUN_COLUMNS, TASK_COLUMNS, Rows, fold, task_keys
from shoal.infra import codec, policy
from shoal.infra.store import StoredEvent

Also = Callable[[asyncpg.Connection, list[StoredEvent]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Tables:
    """Where the projection writes (qualified names)."""

    runs: str
    tasks: str


LIVE = Tables("shoal_read.workflow_runs", "shoal_read.task_runs")


_JSON = {"params", "outputs"}
# Column types for the ``unnest`` arrays (jsonb goes as text and is cast on insert).
_SQL_TYPES = {"instance_id": "uuid", "workflow": "text", "version": "int", "state": "text",
              "priority": "text", "params": "text", "schedule_time": "timestamptz",
              "submitted_at": "timestamptz", "started_at": "timestamptz",
              "finished_at": "timestamptz", "duration_ms": "bigint", "attempt": "int",
              "parent_instance_id": "uuid", "failure": "text", "last_seq": "int",
              "forked_from_instance_id": "uuid", "forked_from_seq": "int",
              "imported": "boolean", "task": "text", "worker_id": "text", "exit_code": "int",
              "outputs": "text", "error": "text", "worker_group": "text",
              "child_instance_id": "uuid", "actor": "text", "last_actor": "text",
              "stopped_by": "text"}


def _select(columns: tuple[str, ...]) -> str:
    return ", ".join(f"{c}::text AS {c}" if c in _JSON or c.endswith("instance_id") else c
                     for c in columns)


def _upsert(table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> str:
    arrays = ", ".join(f"${i}::{_SQL_TYPES[c]}[]" for i, c in enumerate(columns, 1))
    values = ", ".join(f"{c}::jsonb" if c in _JSON else c for c in columns)
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in key)
    return (f"INSERT INTO {table} ({', '.join(columns)}) SELECT {values} FROM "
            f"unnest({arrays}) AS u({', '.join(columns)}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}")


def _decode(record: asyncpg.Record, columns: tuple[str, ...]) -> dict[str, Any]:
    row = dict(record)
    for c in columns:
        if c in _JSON and row[c] is not None:
            row[c] = codec.loads(row[c])
    return row


async def apply(conn: asyncpg.Connection, events: list[StoredEvent], *,
                imported: bool = False, tables: Tables = LIVE) -> Rows:
    """Project ``events`` (in log order) into ``tables`` (``imported``: a bundle's run)."""
    if not events:
        return Rows()
    rows = Rows()
    iids = list({e.instance_id for e in events})
    for r in await conn.fetch(f"SELECT {_select(RUN_COLUMNS)} FROM {tables.runs} "
                              "WHERE instance_id = ANY($1::uuid[])", iids):
        rows.runs[r["instance_id"]] = _decode(r, RUN_COLUMNS)
    keys = task_keys(events)
    if keys:
        k_i, k_t, k_a = zip(*keys, strict=True)
        for r in await conn.fetch(
                f"SELECT {_select(TASK_COLUMNS)} FROM {tables.tasks} t JOIN unnest("
                "$1::uuid[], $2::text[], $3::int[]) AS k(i, n, a) ON t.instance_id = k.i AND "
                "t.task = k.n AND t.attempt = k.a", list(k_i), list(k_t), list(k_a)):
            rows.tasks[(r["instance_id"], r["task"], r["attempt"])] = _decode(r, TASK_COLUMNS)
    fold(rows, events, imported=imported)
    await _write(conn, tables.runs, RUN_COLUMNS, ("instance_id",), rows.changed_runs())
    await _write(conn, tables.tasks, TASK_COLUMNS, ("instance_id", "task", "attempt"),
                 rows.changed_tasks())
    return rows


async def _write(conn: asyncpg.Connection, table: str, columns: tuple[str, ...],
                 key: tuple[str, ...], changed: list[dict[str, Any]]) -> None:
    if not changed:
        return
    arrays = [[_encode(c, row[c]) for row in changed] for c in columns]
    await conn.execute(_upsert(table, columns, key), *arrays)


def _encode(column: str, value: Any) -> Any:
    if column in _JSON:
        return codec.dumps(value).decode()
    return value


@dataclass(slots=True)
class Guarded:
    """What :func:`apply_guarded` did with a batch, in log order."""

    applied: list[StoredEvent] = field(default_factory=list)
    left_out: list[tuple[StoredEvent, str]] = field(default_factory=list)  # with the reason
    held: tuple[StoredEvent, str] | None = None  # a newer release's event, not passed

    @property
    def passed(self) -> StoredEvent | None:
        """The last event the batch's checkpoint may move to (applied or left out)."""
        last = self.applied[-1:] + [e for e, _ in self.left_out[-1:]]
        return max(last, key=lambda e: e.global_position, default=None)


async def apply_guarded(conn: asyncpg.Connection, events: list[StoredEvent], *,
                        tables: Tables = LIVE, also: Also | None = None) -> Guarded:
    """Apply ``events`` (and ``also``, in the same transaction) inside the caller's
    transaction; a transient failure is raised, anything else is contained (module doc)."""
    if not events:
        return Guarded()
    try:
        async with conn.transaction():  # a savepoint: a failure here undoes the batch only
            await apply(conn, events, tables=tables)
            if also is not None:
                await also(conn, events)
        return Guarded(applied=list(events))
    except Exception as exc:
        if policy.is_transient(exc):
            raise
    out = Guarded()
    for e in events:
        try:
            async with conn.transaction():
                await apply(conn, [e], tables=tables)
                if also is not None:
                    await also(conn, [e])
        except versions.FutureVersion as exc:
            out.held = (e, str(exc))
            break
        except Exception as exc:
            if policy.is_transient(exc):
                raise
            out.left_out.append((e, f"{policy.reason_of(exc)} (event {e.type} seq {e.seq} "
                                    f"of run {e.instance_id}, log position "
                                    f"{e.global_position}; left out of the read models)"))
            continue
        out.applied.append(e)
    return out
