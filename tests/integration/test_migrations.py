"""Online migrations against the real Postgres: a migration waiting for a lock never holds
the appends up for longer than its lock timeout, several runners apply each file once, and
a no-transaction migration (CREATE INDEX CONCURRENTLY) works, even after a failed build."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from shoal.core.model import WorkflowStarted
from shoal.infra.db import migrate, migration_files, statements
from shoal.infra.store import Append, EventStore
from tests.support import eventually

pytestmark = pytest.mark.integration


def _append() -> Append:
    return Append(str(uuid.uuid4()), 1, [WorkflowStarted(at="2026-01-01T00:00:00+00:00")],
                  str(uuid.uuid4()), 0, "running")


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return text in caplog.text
    return probe


@contextlib.asynccontextmanager
async def _held(database: str, sql: str) -> AsyncIterator[asyncpg.Connection]:
    """A transaction that ran ``sql`` and stays open (its locks held) for the block."""
    conn = await asyncpg.connect(database)
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(sql)
        yield conn
    finally:
        await tx.rollback()
        await conn.close()


async def test_a_migration_waiting_for_a_lock_does_not_hold_up_appends(
        pool, database, caplog):
    """A long reader holds ACCESS SHARE on shoal.events; a migration needing ACCESS
    EXCLUSIVE waits for it, and every append (EXCLUSIVE) would queue behind that waiting
    request until the reader ends. With the migration's lock timeout, it gives its place
    up and retries: the appends go through while the reader still holds its lock (here
    the store's own lock timeout, 5 s, turns an append stuck behind the migration into an
    error), and the migration is applied once the reader has gone."""
    caplog.set_level(logging.WARNING, logger="shoal.infra.db")
    files = [*migration_files(),
             (900, "900_test_column.sql", "ALTER TABLE shoal.events ADD COLUMN test_col int;")]
    store = EventStore(pool, lock_timeout=5.0)
    await store.commit([_append()], [])
    async with _held(database, "SELECT count(*) FROM shoal.events") as reader:
        migration = asyncio.create_task(migrate(database, migrations=files, lock_timeout=200))

        async def migration_queued() -> bool:
            waiting = await pool.fetchval(
                "SELECT count(*) FROM pg_locks WHERE relation = 'shoal.events'::regclass "
                "AND mode = 'AccessExclusiveLock' AND NOT granted")
            return bool(waiting) or "900_test_column" in caplog.text

        await eventually(migration_queued, what="the migration waiting for its lock")
        for _ in range(5):
            await store.commit([_append()], [])
        await eventually(_logged(caplog, "rolled back"), what="an attempt given up")
        assert not migration.done()
        assert await reader.fetchval("SELECT count(*) FROM shoal.events") == 6
    assert await asyncio.wait_for(migration, 60) == ["900_test_column.sql"]
    assert await pool.fetchval(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'shoal' "
        "AND table_name = 'events' AND column_name = 'test_col'") == 1
    assert await pool.fetchval(
        "SELECT name FROM shoal_meta.schema_migrations WHERE version = 900") \
        == "900_test_column.sql"


async def test_concurrent_runners_apply_each_migration_once(empty_database):
    """Six services starting together on an empty database: every file is applied by
    exactly one of them, in order, and all of them return."""
    results = await asyncio.gather(*(migrate(empty_database) for _ in range(6)))
    names = [n for r in results for n in r]
    assert sorted(names) == [name for _, name, _ in migration_files()]
    conn = await asyncpg.connect(empty_database)
    try:
        rows = await conn.fetch(
            "SELECT version FROM shoal_meta.schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert [r["version"] for r in rows] == [v for v, _, _ in migration_files()]


INDEX = """-- shoal: no-transaction
-- Built without blocking writers to the table.
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_by_type_test
    ON shoal.events (type);
"""


async def _index_valid(pool: asyncpg.Pool) -> bool | None:
    valid = await pool.fetchval(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = 'events_by_type_test'")
    return bool(valid) if valid is not None else None


async def test_a_no_transaction_migration_builds_an_index_concurrently(pool, database):
    files = [*migration_files(), (901, "901_index.sql", INDEX)]
    assert await migrate(database, migrations=files) == ["901_index.sql"]
    assert await _index_valid(pool) is True
    assert await migrate(database, migrations=files) == []


async def test_a_concurrent_index_build_that_timed_out_is_built_again(pool, database, caplog):
    """CREATE INDEX CONCURRENTLY commits the index's catalog row, then waits for the
    transactions writing to the table; a lock timeout there leaves an INVALID index, which
    IF NOT EXISTS alone would keep for ever. The retry drops it and builds it again."""
    caplog.set_level(logging.WARNING, logger="shoal.infra.db")
    files = [*migration_files(), (901, "901_index.sql", INDEX)]
    async with _held(database, "UPDATE shoal.events SET type = type WHERE false"):
        writer_locked = await pool.fetchval(
            "SELECT count(*) FROM pg_locks WHERE relation = 'shoal.events'::regclass "
            "AND mode = 'RowExclusiveLock' AND granted")
        assert writer_locked == 1
        migration = asyncio.create_task(migrate(database, migrations=files, lock_timeout=200))
        await eventually(_logged(caplog, "attempt 1 rolled back"),
                         what="the first build given up")
        assert await _index_valid(pool) is False
    assert await asyncio.wait_for(migration, 60) == ["901_index.sql"]
    assert await _index_valid(pool) is True


def test_no_transaction_files_are_split_into_statements():
    sql = ("-- shoal: no-transaction\n-- a; comment\nCREATE INDEX CONCURRENTLY a ON t (x);\n"
           "\nDROP INDEX CONCURRENTLY IF EXISTS b; -- old\n-- trailing\n")
    assert [s.strip().splitlines()[-1] for s in statements(sql)] == [
        "CREATE INDEX CONCURRENTLY a ON t (x);", "DROP INDEX CONCURRENTLY IF EXISTS b; -- old"]


async def test_a_connection_cut_while_migrating_is_waited_out_not_fatal(pool, database):
    """The database cuts the migrating connection (a restart, an operator's
    pg_terminate_backend): the service waits and migrates again. Releasing the lock on
    the dead connection raised "connection is closed" over the real error, and a service
    starting during a database cut exited."""
    await pool.execute("CREATE SEQUENCE IF NOT EXISTS public.cut_once")
    cut = ("SELECT CASE WHEN nextval('public.cut_once') = 1 "
           "THEN pg_terminate_backend(pg_backend_pid()) END;")
    applied = await asyncio.wait_for(
        migrate(database, migrations=[(990, "990_cut_once.sql", cut)]), 30)
    assert applied == ["990_cut_once.sql"]
    assert await pool.fetchval("SELECT last_value FROM public.cut_once") == 2
