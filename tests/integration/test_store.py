"""The event store against the real Postgres: fencing, dedupe, gap-free reading, migrations."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import timedelta

import asyncpg
import pytest

from shoal.core.errors import StreamConflict
from shoal.core.evolve import evolve, fold
from shoal.core.model import TaskSucceeded, WorkflowStarted
from shoal.core.snapshot import snapshot_due
from shoal.infra.db import migrate
from shoal.infra.store import APPEND_LOCK, Append, EventStore, OutboxRow, read_from
from tests.unit.test_workflow import Driver, chain

pytestmark = pytest.mark.integration


def started(n: int = 1) -> list[WorkflowStarted]:
    return [WorkflowStarted(at=f"2026-01-01T00:00:{i:02d}+00:00") for i in range(n)]


def append(iid: str, first: int, n: int = 1, mid: str | None = None) -> Append:
    return Append(iid, first, started(n), mid or str(uuid.uuid4()), 0, "running")


async def test_a_second_writer_of_the_same_seq_is_fenced(pool):
    store = EventStore(pool)
    iid = str(uuid.uuid4())
    await store.commit([append(iid, 1, 2)], [OutboxRow("t", b"k", b"v")])
    with pytest.raises(StreamConflict):
        await store.commit([append(iid, 2)], [OutboxRow("t", b"k", b"lost")])
    # The conflicting batch left nothing behind: no events, no outbox row, no marker.
    assert await pool.fetchval("SELECT count(*) FROM shoal.events") == 2
    assert await pool.fetchval("SELECT count(*) FROM shoal.outbox") == 1


async def test_message_ids_are_remembered(pool):
    store = EventStore(pool)
    mid = str(uuid.uuid4())
    await store.commit([append(str(uuid.uuid4()), 1, mid=mid)], [])
    assert await store.processed([mid, str(uuid.uuid4())]) == {mid}


async def test_migrations_are_idempotent_and_safe_concurrently(database):
    results = await asyncio.gather(*(migrate(database) for _ in range(4)))
    assert all(r == [] for r in results)  # the fixture already applied them


async def test_concurrent_appenders_never_let_a_reader_skip_a_position(pool, database):
    """Race: 6 writers commit small batches with random pauses inside the transaction
    while a reader follows ``global_position > last_seen``. Without serialized appends,
    a later position can commit first and the reader skips the earlier one forever."""
    store = EventStore(pool)
    writers, batches = 6, 25
    done = asyncio.Event()

    async def writer(w: int) -> None:
        rng = random.Random(w)
        for _ in range(batches):
            iid = str(uuid.uuid4())
            await store.commit([append(iid, 1, rng.randint(1, 3))], [])
            await asyncio.sleep(rng.random() / 200)

    async def slow_writer() -> None:
        # Holds its transaction open after inserting, as a slow orchestrator would.
        conn = await asyncpg.connect(database)
        try:
            for _ in range(10):
                async with conn.transaction():
                    await conn.execute("LOCK TABLE shoal.events IN EXCLUSIVE MODE")
                    await conn.execute(
                        "INSERT INTO shoal.events (instance_id, seq, type, data) "
                        "VALUES ($1, 1, 'WorkflowStarted', '{}')", uuid.uuid4())
                    await asyncio.sleep(0.02)
        finally:
            await conn.close()

    seen: list[int] = []

    async def reader() -> None:
        conn = await asyncpg.connect(database)
        last = 0
        try:
            while True:
                finished = done.is_set()
                for e in await read_from(conn, last, 50):
                    seen.append(e.global_position)
                    last = e.global_position
                if finished:
                    rest = await read_from(conn, last, 10_000)
                    seen.extend(e.global_position for e in rest)
                    return
                await asyncio.sleep(0.001)
        finally:
            await conn.close()

    r = asyncio.create_task(reader())
    await asyncio.gather(*(writer(w) for w in range(writers)), slow_writer())
    done.set()
    await r
    everything = [row["global_position"] for row in
                  await pool.fetch("SELECT global_position FROM shoal.events ORDER BY 1")]
    assert seen == everything


async def test_a_snapshot_plus_its_tail_loads_the_same_state_as_the_whole_history(pool):
    """A 60-task chain (≈120 events) committed decision by decision with a snapshot every
    50 events: load_runs gives the full fold; a snapshot of another format is ignored."""
    d = Driver(chain(*[f"t{i}" for i in range(60)]))
    sizes = [len(d.start())]
    for i in range(60):
        sizes.append(len(d.report(TaskSucceeded, f"t{i}", exit_code=0)))
    store = EventStore(pool)
    iid, seq, run = str(uuid.uuid4()), 1, None
    snapshots_taken = 0
    for n in sizes:
        events = d.log[seq - 1:seq - 1 + n]
        for e in events:
            run = evolve(run, e, instance_id=iid)
        due = snapshot_due(seq, seq + n - 1, 50)
        snapshots_taken += due
        await store.commit([Append(iid, seq, events, str(uuid.uuid4()), 0, run.state.value)],
                           [], snapshots=[(iid, run)] if due else [])
        seq += n
    whole = fold(d.log, instance_id=iid)
    assert snapshots_taken == 2
    snap_seq = await pool.fetchval("SELECT seq FROM shoal.snapshots WHERE instance_id = $1",
                                   uuid.UUID(iid))
    assert 0 < whole.seq - snap_seq < 50
    assert (await store.load_runs([iid]))[iid] == whole
    await pool.execute("UPDATE shoal.snapshots SET format = 999")
    assert (await store.load_runs([iid]))[iid] == whole
    assert await store.load_runs([str(uuid.uuid4())]) == {}


async def test_retention_deletes_old_markers_and_successes_recorded_long_ago_in_batches(pool):
    from shoal.infra.store import prune

    old_ids = [uuid.uuid4() for _ in range(7)]
    await pool.executemany(
        "INSERT INTO shoal.processed_messages (message_id, instance_id, processed_at) "
        "VALUES ($1, $1, now() - interval '40 days')", [(i,) for i in old_ids])
    fresh = uuid.uuid4()
    await pool.execute("INSERT INTO shoal.processed_messages (message_id, instance_id) "
                       "VALUES ($1, $1)", fresh)
    await pool.executemany(
        "INSERT INTO shoal.successes (workflow, task, business_time, instance_id, "
        "recorded_at) VALUES ('w', '', (now() - $1::interval)::timestamp, $2, "
        "now() - $3::interval)",
        [(timedelta(days=40), uuid.uuid4(), timedelta(days=40)),
         (timedelta(days=41), uuid.uuid4(), timedelta(days=31)),
         (timedelta(days=1), uuid.uuid4(), timedelta(days=1))])
    # A backfill of a date long past: recorded now, so a dependent task of that date
    # still finds it.
    backfilled = uuid.uuid4()
    await pool.execute(
        "INSERT INTO shoal.successes (workflow, task, business_time, instance_id) VALUES "
        "('w', '', (now() - interval '3 years')::timestamp, $1)", backfilled)
    assert await prune(pool, 30, batch=3) == (7, 2)
    assert [r[0] for r in await pool.fetch(
        "SELECT message_id FROM shoal.processed_messages")] == [fresh]
    assert await pool.fetchval("SELECT count(*) FROM shoal.successes") == 2
    assert await pool.fetchval("SELECT count(*) FROM shoal.successes WHERE instance_id = $1",
                               backfilled) == 1
    assert await prune(pool, 30) == (0, 0)


@pytest.mark.parametrize("statement", [
    "LOCK TABLE shoal.events IN SHARE UPDATE EXCLUSIVE MODE",  # autovacuum, ANALYZE
    "ANALYZE shoal.events",
])
async def test_vacuum_analyze_and_concurrent_index_builds_do_not_hold_appends_up(
        pool, database, statement):
    """What autovacuum, ANALYZE, CREATE INDEX CONCURRENTLY and VALIDATE CONSTRAINT hold
    (SHARE UPDATE EXCLUSIVE on the log) admits appends. Serializing appends with a table
    lock in EXCLUSIVE mode did not: each append waited behind them (autovacuum until it
    was cancelled, so the log was never vacuumed)."""
    store = EventStore(pool, lock_timeout=0.5)
    holder = await asyncpg.connect(database)
    tx = holder.transaction()
    await tx.start()
    await holder.execute(statement)
    try:
        iid = str(uuid.uuid4())
        await asyncio.wait_for(store.commit([append(iid, 1, 3)], []), 10)
        assert [e.seq for e in await store.events_of(iid)] == [1, 2, 3]
    finally:
        await tx.rollback()
        await holder.close()


async def test_appends_wait_for_the_append_lock_only_up_to_the_lock_timeout(pool, database):
    """Another appender stuck in its transaction: the next append fails fast with a
    transient error (the policy retries it), never queues for ever."""
    store = EventStore(pool, lock_timeout=0.3)
    holder = await asyncpg.connect(database)
    tx = holder.transaction()
    await tx.start()
    await holder.execute(f"SELECT pg_advisory_xact_lock({APPEND_LOCK})")
    try:
        with pytest.raises(asyncpg.LockNotAvailableError):
            await asyncio.wait_for(store.commit([append(str(uuid.uuid4()), 1, 1)], []), 10)
    finally:
        await tx.rollback()
        await holder.close()
