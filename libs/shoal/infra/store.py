"""The event store: append-only events with optimistic concurrency, dedupe, outbox.

Appends are serialized by a transaction advisory lock (``APPEND_LOCK``) taken once per
batch transaction, before the insert. Why: ``global_position`` comes from a sequence at
insert time but becomes visible at commit, so two unserialized writers could commit 101
before 100 and a reader of ``position > last_seen`` would skip 100 forever. With the
lock, commit order is position order. Readers are never blocked; the lock costs one round
trip per batch, not per event (group commit).

Why not ``LOCK TABLE shoal.events IN EXCLUSIVE MODE`` (what release 0.1.0 took): that mode
conflicts with the SHARE UPDATE EXCLUSIVE of autovacuum, ANALYZE, CREATE INDEX
CONCURRENTLY and VALIDATE CONSTRAINT, so each of them stalled appends (autovacuum until
PostgreSQL cancelled it after ``deadlock_timeout``, every time, so the log was never
vacuumed until an anti-wraparound vacuum, which is not cancelled, stalled appends for its
whole run). The advisory lock conflicts with none of them. During a rolling upgrade a
0.1.0 orchestrator's EXCLUSIVE lock and this release's inserts (ROW EXCLUSIVE, taken when
the insert opens the table, before any position is drawn) still exclude each other, so
positions stay in commit order across both releases.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from shoal.core import versions
from shoal.core.errors import StreamConflict
from shoal.core.evolve import evolve
from shoal.core.model import AnyEvent, Run, event_data, event_from_data
from shoal.core.snapshot import FORMAT, from_snapshot, to_snapshot
from shoal.infra import codec


@dataclass(frozen=True, slots=True)
class Append:
    """Events one input caused in one stream, starting at ``first_seq``."""

    instance_id: str
    first_seq: int
    events: Sequence[AnyEvent]
    message_id: str
    partition: int
    state: str


@dataclass(frozen=True, slots=True)
class OutboxRow:
    topic: str
    key: bytes | None
    value: bytes


@dataclass(frozen=True, slots=True)
class SerialOp:
    """Take the slot, queue for it, or release it (promoting and waking the next run)."""

    op: str  # run | wait | release
    workflow: str
    instance_id: str
    mode: str = "serial_wait"
    priority: int = 0


@dataclass(frozen=True, slots=True)
class TimerRow:
    instance_id: str
    timer_id: str
    fire_at: str  # RFC 3339


@dataclass(frozen=True, slots=True)
class WaitRow:
    """A dependent task attempt waiting for an upstream success in a window."""

    dispatch_id: str
    instance_id: str
    task: str
    attempt: int
    workflow: str
    upstream_task: str  # '' = the whole run
    window_start: datetime
    window_end: datetime
    alt: int = 0  # which of the task's alternative windows (any one met is enough)


@dataclass(frozen=True, slots=True)
class SuccessRow:
    workflow: str
    task: str  # '' = the whole run
    business_time: datetime
    instance_id: str


@dataclass(slots=True)
class Dependencies:
    """A batch's dependency bookkeeping; ``met`` turns a satisfied wait into the report
    that tells its run (an outbox row written in the same transaction)."""

    waits: list[WaitRow]
    ended: list[tuple[str, str]]  # (instance_id, task) whose waits end
    successes: list[SuccessRow]
    met: Callable[[WaitRow], OutboxRow]

    def __bool__(self) -> bool:
        return bool(self.waits or self.ended or self.successes)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    global_position: int
    instance_id: str
    seq: int
    type: str
    data: dict[str, Any]
    causation_id: str | None
    recorded_at: str
    schema_version: int  # of ``data`` as written (shoal.core.versions); 1 before versions

    def as_dict(self) -> dict[str, Any]:
        return {"global_position": self.global_position, "instance_id": self.instance_id,
                "seq": self.seq, "type": self.type, "schema_version": self.schema_version,
                "data": self.data, "causation_id": self.causation_id,
                "recorded_at": self.recorded_at}

    def event(self) -> AnyEvent:
        """The typed event, upcast to this release's shape."""
        return event_from_data(self.type, self.data, self.schema_version)


def _row_event(r: asyncpg.Record) -> StoredEvent:
    return StoredEvent(
        global_position=r["global_position"], instance_id=str(r["instance_id"]), seq=r["seq"],
        type=r["type"], data=codec.loads(r["data"]),
        causation_id=str(r["causation_id"]) if r["causation_id"] else None,
        recorded_at=r["recorded_at"].isoformat(), schema_version=r["schema_version"],
    )


_EVENT_COLS = ("global_position, instance_id, seq, type, data::text AS data, causation_id, "
               "recorded_at, schema_version")


# Held (transaction advisory lock) by each append from before its insert to its commit.
APPEND_LOCK = 0x5E0A7

# Notified by every commit of events or outbox rows (LISTENed by the projector and the
# leading outbox relay).
COMMITTED = "shoal_events"


class EventStore:
    """The orchestrator's port onto Postgres."""

    def __init__(self, pool: asyncpg.Pool, lock_timeout: float = 10.0) -> None:
        self.pool = pool
        # Waiting longer for the append lock raises LockNotAvailableError (transient: the
        # batch is retried) instead of queueing behind a stuck holder for ever.
        self._lock_ms = max(1, int(lock_timeout * 1000))

    async def load_runs(self, instance_ids: Iterable[str],
                        unreadable: dict[str, str] | None = None) -> dict[str, Run]:
        """Each instance's state: its latest snapshot plus the events after it (the whole
        history where there is no usable snapshot). Absent ids have no stream.

        A run whose log holds an event of a schema version newer than this release reads
        (written by a later release) raises :class:`FutureVersion`; given ``unreadable``,
        it is left out and the reason put there instead, so the caller refuses its inputs
        rather than deciding on a state it cannot know. So is a run whose log does not fold
        (an event the fold rejects): one such run never stops a batch or a partition's
        load."""
        ids = list(set(instance_ids))
        out: dict[str, Run] = {}
        if not ids:
            return out
        for r in await self.pool.fetch(
                "SELECT instance_id, state::text AS state FROM shoal.snapshots "
                "WHERE instance_id = ANY($1::uuid[]) AND format = $2", ids, FORMAT):
            run = from_snapshot(codec.loads(r["state"]))
            if run is not None:
                out[str(r["instance_id"])] = run
        rows = await self.pool.fetch(
            "SELECT e.instance_id, e.seq, e.type, e.data::text AS data, e.schema_version "
            "FROM shoal.events e "
            "LEFT JOIN shoal.snapshots s ON s.instance_id = e.instance_id AND s.format = $2 "
            "WHERE e.instance_id = ANY($1::uuid[]) AND e.seq > coalesce(s.seq, 0) "
            "ORDER BY e.instance_id, e.seq", ids, FORMAT)
        bad: dict[str, str] = {}
        for r in rows:
            iid = str(r["instance_id"])
            if iid in bad:
                continue
            try:
                event = event_from_data(r["type"], codec.loads(r["data"]), r["schema_version"])
                state = evolve(out.get(iid), event, instance_id=iid)
            except versions.FutureVersion as exc:
                if unreadable is None:
                    raise
                bad[iid] = f"run {iid}: its log holds {exc}"
                out.pop(iid, None)
                continue
            except Exception as exc:  # pure code: never transient; one run, not the batch
                if unreadable is None:
                    raise
                bad[iid] = (f"run {iid}: its log cannot be folded at {r['type']} seq "
                            f"{r['seq']}: {exc!r}")
                out.pop(iid, None)
                continue
            out[iid] = state
        if unreadable is not None:
            unreadable.update(bad)
        return out

    async def processed(self, message_ids: Iterable[str]) -> set[str]:
        ids = list(set(message_ids))
        if not ids:
            return set()
        rows = await self.pool.fetch(
            "SELECT message_id FROM shoal.processed_messages WHERE message_id = ANY($1::uuid[])",
            ids)
        return {str(r["message_id"]) for r in rows}

    async def serial_holder(self, workflow: str) -> str | None:
        """The run holding a serial workflow's slot, if any."""
        holder = await self.pool.fetchval(
            "SELECT instance_id FROM shoal.serial_slots WHERE workflow = $1 AND "
            "state = 'running'", workflow)
        return str(holder) if holder else None

    async def commit(self, appends: Sequence[Append], outbox: Sequence[OutboxRow],
                     arm: Sequence[TimerRow] = (),
                     cancel: Sequence[tuple[str, str]] = (),
                     serial: Sequence[SerialOp] = (),
                     wake: Callable[[str], OutboxRow] | None = None,
                     deps: Dependencies | None = None,
                     snapshots: Sequence[tuple[str, Run]] = ()) -> None:
        """Append every stream's events, the done-markers, the outbox, the timer changes
        and the runs' new snapshots in one transaction.

        Raises :class:`StreamConflict` when any ``(instance_id, seq)`` already exists:
        another orchestrator wrote that stream, so the caller must reload and re-decide.
        """
        if not appends and not outbox:
            return
        event_rows = [
            (a.instance_id, a.first_seq + i, e.type, codec.dumps(event_data(e)).decode(),
             a.message_id, versions.EVENTS.of(e.type))
            for a in appends for i, e in enumerate(a.events)
        ]
        last: dict[str, Append] = {}
        for a in appends:
            last[a.instance_id] = a
        successes = list(deps.successes) if deps else []
        async with self.pool.acquire() as conn, conn.transaction():
            if event_rows:
                # One round trip for the lock and the notification (delivered at commit;
                # it wakes the projector and the leading outbox relay).
                await conn.execute(f"SET LOCAL lock_timeout = {self._lock_ms}; "
                                   f"SELECT pg_advisory_xact_lock({APPEND_LOCK}); "
                                   f"SELECT pg_notify('{COMMITTED}', '')")
            elif outbox:
                await conn.execute(f"SELECT pg_notify('{COMMITTED}', '')")
            # One statement for the events, their done-markers, the streams index, the
            # successes and the outbox rows; it returns the dependency waits now met.
            try:
                met_rows = await conn.fetch(_COMMIT, *_columns(event_rows, 6), *_columns(
                    [(a.message_id, a.instance_id) for a in appends], 2), *_columns(
                    [(a.instance_id, a.partition, a.first_seq + len(a.events) - 1, a.state)
                     for a in last.values()], 4), *_columns(
                    [(x.workflow, x.task, x.business_time, x.instance_id) for x in successes],
                    4), *_columns([(o.topic, o.key, o.value) for o in outbox], 3))
            except asyncpg.UniqueViolationError as exc:
                raise StreamConflict(str(exc)) from exc
            if snapshots:
                await conn.executemany(
                    "INSERT INTO shoal.snapshots (instance_id, seq, format, state) "
                    "VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (instance_id) DO UPDATE SET "
                    "seq = EXCLUDED.seq, format = EXCLUDED.format, state = EXCLUDED.state, "
                    "taken_at = now()",
                    [(iid, run.seq, FORMAT, codec.dumps(to_snapshot(run)).decode())
                     for iid, run in snapshots])
            more: list[OutboxRow] = []
            if serial:
                woken = await _apply_serial(conn, serial)
                if wake is not None:
                    more += [wake(iid) for iid in woken]
            if deps:
                met = await _apply_dependencies(conn, deps, [_wait(r) for r in met_rows])
                more += [deps.met(w) for w in met]
            if more:
                await conn.executemany(
                    "INSERT INTO shoal.outbox (topic, key, value) VALUES ($1, $2, $3)",
                    [(o.topic, o.key, o.value) for o in more])
            if cancel:
                await conn.executemany(
                    "DELETE FROM shoal.timers WHERE instance_id = $1 AND timer_id = $2", cancel)
            if arm:
                await conn.executemany(
                    "INSERT INTO shoal.timers (instance_id, timer_id, fire_at) "
                    "VALUES ($1, $2, $3) ON CONFLICT (instance_id, timer_id) "
                    "DO UPDATE SET fire_at = EXCLUDED.fire_at",
                    [(t.instance_id, t.timer_id, datetime.fromisoformat(t.fire_at))
                     for t in arm])

    async def events_of(self, instance_id: str) -> list[StoredEvent]:
        rows = await self.pool.fetch(
            f"SELECT {_EVENT_COLS} FROM shoal.events WHERE instance_id = $1 ORDER BY seq",
            instance_id)
        return [_row_event(r) for r in rows]

    async def definition(self, name: str,
                         version: int | None) -> tuple[int, Mapping[str, Any]] | None:
        if version is None:
            row = await self.pool.fetchrow(
                "SELECT version, definition::text AS d FROM shoal.workflow_definitions "
                "WHERE name = $1 ORDER BY version DESC LIMIT 1", name)
        else:
            row = await self.pool.fetchrow(
                "SELECT version, definition::text AS d FROM shoal.workflow_definitions "
                "WHERE name = $1 AND version = $2", name, version)
        if row is None:
            return None
        return row["version"], codec.loads(row["d"])


async def _apply_serial(conn: asyncpg.Connection, ops: Sequence[SerialOp]) -> list[str]:
    """Apply slot operations in order; return the runs promoted to the slot (to wake).

    After the operations, every touched workflow whose slot is free and which has waiting
    runs promotes the next one (first come, or most urgent for serial_priority), whatever
    order the batch's releases and queueings came in: a waiting run is never stranded.
    """
    woken: list[str] = []
    touched = list(dict.fromkeys(op.workflow for op in ops))
    for op in ops:
        try:
            if op.op == "run":
                await conn.execute(
                    "INSERT INTO shoal.serial_slots (workflow, instance_id, state, mode, "
                    "priority) VALUES ($1, $2, 'running', $3, $4) ON CONFLICT "
                    "(workflow, instance_id) DO UPDATE SET state = 'running'",
                    op.workflow, op.instance_id, op.mode, op.priority)
            elif op.op == "wait":
                await conn.execute(
                    "INSERT INTO shoal.serial_slots (workflow, instance_id, state, mode, "
                    "priority) VALUES ($1, $2, 'waiting', $3, $4) ON CONFLICT DO NOTHING",
                    op.workflow, op.instance_id, op.mode, op.priority)
        except asyncpg.UniqueViolationError as exc:
            raise StreamConflict(f"serial slot of {op.workflow} taken meanwhile") from exc
        if op.op == "release":
            await conn.execute(
                "DELETE FROM shoal.serial_slots WHERE workflow = $1 AND instance_id = $2",
                op.workflow, op.instance_id)
    for workflow in touched:
        if await conn.fetchval("SELECT 1 FROM shoal.serial_slots WHERE workflow = $1 AND "
                               "state = 'running'", workflow):
            continue
        nxt = await conn.fetchval(
            "UPDATE shoal.serial_slots SET state = 'running' WHERE (workflow, instance_id) = "
            "(SELECT workflow, instance_id FROM shoal.serial_slots WHERE workflow = $1 AND "
            "state = 'waiting' ORDER BY CASE WHEN mode = 'serial_priority' THEN priority "
            "ELSE 0 END, seq LIMIT 1 FOR UPDATE) RETURNING instance_id", workflow)
        if nxt is not None:
            woken.append(str(nxt))
    return woken


_WAIT_COLS = ("dispatch_id, instance_id, task, attempt, workflow, upstream_task, window_start, "
              "window_end, alt")


async def _apply_dependencies(conn: asyncpg.Connection, deps: Dependencies,
                              met_by_successes: Sequence[WaitRow]) -> list[WaitRow]:
    """Record waits; return (and remove) the waits now satisfied: ``met_by_successes``
    (found by the commit statement, which also recorded the batch's successes) and the
    new waits whose success is already recorded.

    Runs after the event-table lock, so every other committing batch is serialized with
    this one: a success and a wait committed by different orchestrators always meet."""
    if deps.ended:
        await conn.executemany(
            "DELETE FROM shoal.dependent_waits WHERE instance_id = $1 AND task = $2",
            deps.ended)
    ended = set(deps.ended)
    met: dict[str, WaitRow] = {w.dispatch_id: w for w in met_by_successes
                               if (w.instance_id, w.task) not in ended}
    for w in deps.waits:
        found = await conn.fetchval(
            "SELECT 1 FROM shoal.successes WHERE workflow = $1 AND task = $2 AND "
            "business_time >= $3 AND business_time < $4 LIMIT 1",
            w.workflow, w.upstream_task, w.window_start, w.window_end)
        if found:
            met[w.dispatch_id] = w
        else:
            await conn.execute(
                f"INSERT INTO shoal.dependent_waits ({_WAIT_COLS}) VALUES ($1, $2, $3, $4, $5, "
                "$6, $7, $8, $9) ON CONFLICT DO NOTHING", w.dispatch_id, w.instance_id, w.task,
                w.attempt, w.workflow, w.upstream_task, w.window_start, w.window_end, w.alt)
    if met:
        await conn.execute("DELETE FROM shoal.dependent_waits WHERE dispatch_id = ANY($1::uuid[])",
                           list(met))
    return list(met.values())


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as one array per column (for ``unnest``)."""
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


_COMMIT = f"""
WITH ev AS (
    INSERT INTO shoal.events (instance_id, seq, type, data, causation_id, schema_version)
    SELECT i, s, t, d::jsonb, c, v FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[],
                                               $5::uuid[], $6::smallint[]) AS u(i, s, t, d, c, v)),
pm AS (
    INSERT INTO shoal.processed_messages (message_id, instance_id)
    SELECT * FROM unnest($7::uuid[], $8::uuid[]) ON CONFLICT DO NOTHING),
st AS (
    INSERT INTO shoal.streams (instance_id, partition, last_seq, state)
    SELECT * FROM unnest($9::uuid[], $10::int[], $11::int[], $12::text[])
    ON CONFLICT (instance_id) DO UPDATE SET partition = EXCLUDED.partition,
        last_seq = EXCLUDED.last_seq, state = EXCLUDED.state, updated_at = now()),
su AS (
    INSERT INTO shoal.successes (workflow, task, business_time, instance_id)
    SELECT * FROM unnest($13::text[], $14::text[], $15::timestamp[], $16::uuid[])
    ON CONFLICT DO NOTHING),
ob AS (
    INSERT INTO shoal.outbox (topic, key, value)
    SELECT * FROM unnest($17::text[], $18::bytea[], $19::bytea[]))
SELECT {', '.join('w.' + c for c in _WAIT_COLS.split(', '))}
FROM shoal.dependent_waits w JOIN unnest($13::text[], $14::text[], $15::timestamp[])
    AS s(workflow, task, bt) ON w.workflow = s.workflow AND w.upstream_task = s.task
    AND s.bt >= w.window_start AND s.bt < w.window_end
"""


def _wait(r: asyncpg.Record) -> WaitRow:
    return WaitRow(dispatch_id=str(r["dispatch_id"]), instance_id=str(r["instance_id"]),
                   task=r["task"], attempt=r["attempt"], workflow=r["workflow"],
                   upstream_task=r["upstream_task"], window_start=r["window_start"],
                   window_end=r["window_end"], alt=r["alt"])


async def imported_events(conn: asyncpg.Connection,
                          instance_id: str | None = None) -> list[StoredEvent]:
    """The events of runs imported from bundles (all, or one run's), in order; their
    global positions are the exporting installation's."""
    rows = await conn.fetch(
        f"SELECT {_EVENT_COLS} FROM shoal.imported_events WHERE $1::uuid IS NULL OR "
        "instance_id = $1 ORDER BY instance_id, seq", instance_id)
    return [_row_event(r) for r in rows]


async def read_from(conn: asyncpg.Connection, after: int, limit: int) -> list[StoredEvent]:
    """Events with ``global_position > after`` in order (gap-free; see module docstring)."""
    rows = await conn.fetch(
        f"SELECT {_EVENT_COLS} FROM shoal.events WHERE global_position > $1 "
        "ORDER BY global_position LIMIT $2", after, limit)
    return [_row_event(r) for r in rows]


async def prune(pool: asyncpg.Pool, older_than_days: float, batch: int = 1000,
                ) -> tuple[int, int]:
    """Delete done-markers processed, and successes recorded, more than
    ``older_than_days`` ago (a success's business time may be years back: a backfill),
    ``batch`` rows per statement (short transactions that never hold up commits); the
    rows deleted from each table."""
    horizon = timedelta(days=older_than_days)
    out = []
    for sql in (
            "DELETE FROM shoal.processed_messages WHERE message_id = ANY(ARRAY("
            "SELECT message_id FROM shoal.processed_messages WHERE processed_at < "
            "now() - $1::interval LIMIT $2))",
            "DELETE FROM shoal.successes WHERE (workflow, task, business_time, instance_id) "
            "IN (SELECT workflow, task, business_time, instance_id FROM shoal.successes "
            "WHERE recorded_at < now() - $1::interval LIMIT $2)"):
        total = 0
        while True:
            status = await pool.execute(sql, horizon, batch)
            n = int(status.split()[-1])
            total += n
            if n < batch:
                break
        out.append(total)
    return out[0], out[1]
