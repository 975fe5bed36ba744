"""Postgres connection pool and versioned migrations.

Migrations run at every service start. They are idempotent and safe when several
services start at once: a session advisory lock serializes the runners, and each file
is applied in its own transaction together with its row in ``schema_migrations`` (or,
marked ``-- shoal: no-transaction``, statement by statement, then its row). They are
online: every statement waits at most ``SHOAL_MIGRATION_LOCK_TIMEOUT_MS`` for a lock; an
attempt that waited longer is rolled back and retried with backoff, so a migration never
sits in the lock queue behind a long transaction with the appends queued behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TypeVar

import asyncpg

log = logging.getLogger(__name__)
T = TypeVar("T")

_MIGRATION_LOCK = 0x5E0A1  # arbitrary constant shared by every Shoal process


# Every error a lost or terminated connection can raise: components catch these, retry,
# and go on (InternalClientError: asyncpg found its connection's state broken by a
# backend termination mid-operation).
DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
    asyncpg.exceptions._base.InternalClientError)

# Errors that mean "the database is not reachable now", as opposed to a wrong URL or
# credentials: a service starting meanwhile waits for it instead of exiting.
# InternalClientError: a connection terminated by the server in the middle of an
# operation can leave asyncpg's protocol in a state that refuses the next one (seen when
# every connection is cut while a service migrates at start).
_UNAVAILABLE = (OSError, asyncpg.CannotConnectNowError,
                asyncpg.ObjectNotInPrerequisiteStateError, asyncpg.TooManyConnectionsError,
                asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError,
                asyncpg.exceptions._base.InternalClientError)


async def until_available(what: str, attempt: Callable[[], Awaitable[T]],
                          give_up_after: float = 3600.0) -> T:
    """Run ``attempt`` until the database answers, with backoff (0.5 s doubling to 5 s)."""
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + give_up_after, 0.5
    while True:
        try:
            return await attempt()
        except _UNAVAILABLE as exc:
            if loop.time() + delay > deadline:
                raise
            log.warning("%s: the database is not available (%r); retrying in %.1fs",
                        what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Released connections are not reset on the server. asyncpg's default reset sends
    ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` at every release — a
    round trip per use of the pool. The services keep no session state on pooled
    connections (session locks are released where they are taken; LISTEN uses its own
    connection); an open transaction is still rolled back by asyncpg before this."""


async def connect_pool(url: str, *, min_size: int = 1, max_size: int = 10,
                       command_timeout: float | None = 60.0) -> asyncpg.Pool:
    """A pool whose statements give up after ``command_timeout`` seconds (a TimeoutError:
    transient under the error policy), so a stuck statement never holds a batch for ever."""
    async def create() -> asyncpg.Pool:
        pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size,
                                         reset=_keep_session, command_timeout=command_timeout)
        assert pool is not None
        return pool

    return await until_available("connecting", create)


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration, in order."""
    out = []
    for entry in resources.files("shoal.infra").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            out.append((version, entry.name, entry.read_text()))
    return sorted(out)


# A migration file whose first line is this runs outside a transaction (CREATE INDEX
# CONCURRENTLY, DROP INDEX CONCURRENTLY, ...): each of its statements commits on its own
# and its schema_migrations row is written after the last one, so every statement must
# be idempotent (IF NOT EXISTS / IF EXISTS): a crash in between runs them again.
NO_TRANSACTION = "-- shoal: no-transaction"

# application_name of the migrating connection (visible in pg_stat_activity, pg_locks).
APPLICATION_NAME = "shoal migrate"

_INDEX_CONCURRENTLY = re.compile(
    r"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"(?P<name>[A-Za-z_][\w$]*)\s+ON\s+(?:ONLY\s+)?(?P<table>[\w$.\"]+)", re.I)


def lock_timeout_ms() -> int:
    """How long one migration statement may wait for a lock before its attempt is given up
    and retried (``SHOAL_MIGRATION_LOCK_TIMEOUT_MS``, default 500). While it waits, every
    statement needing a conflicting lock queues behind it (appends included), so this bounds
    how long a migration can stall the service behind someone else's long transaction; the
    default keeps that well under the second an append may be held up."""
    return max(1, int(os.environ.get("SHOAL_MIGRATION_LOCK_TIMEOUT_MS", "500")))


def no_transaction(sql: str) -> bool:
    return sql.lstrip().startswith(NO_TRANSACTION)


def statements(sql: str) -> list[str]:
    """A no-transaction file's statements: split at each ``;`` that ends a line (outside
    ``--`` comments). Such files hold plain DDL only, no function bodies."""
    out, current = [], []
    for line in sql.splitlines():
        current.append(line)
        if line.split("--", 1)[0].rstrip().endswith(";"):
            out.append("\n".join(current))
            current = []
    out.append("\n".join(current))
    return [s for s in out if any(ln.split("--", 1)[0].strip() for ln in s.splitlines())]


@dataclass(frozen=True, slots=True)
class Applied:
    """One migration applied: how many attempts it took (an attempt is given up when a lock
    is not granted within the lock timeout), the seconds from the first attempt to the
    last commit, and the seconds of the successful attempt (for a migration run in one
    transaction, an upper bound on how long it held any lock)."""

    name: str
    attempts: int
    seconds: float
    last_attempt_seconds: float
    transactional: bool


async def migrate(url: str, *, migrations: Sequence[tuple[int, str, str]] | None = None,
                  lock_timeout: int | None = None) -> list[str]:
    """Apply missing migrations (``migrations``: default every file of this release); return
    the names applied by this call. Waits for a database that is not reachable yet."""
    return [a.name for a in await migrate_report(url, migrations=migrations,
                                                 lock_timeout=lock_timeout)]


async def migrate_report(url: str, *, migrations: Sequence[tuple[int, str, str]] | None = None,
                         lock_timeout: int | None = None) -> list[Applied]:
    """:func:`migrate`, returning what each applied migration took."""
    files = list(migrations) if migrations is not None else migration_files()
    timeout = lock_timeout if lock_timeout is not None else lock_timeout_ms()
    return await until_available("migrating", lambda: _migrate(url, files, timeout))


async def _migrate(url: str, files: list[tuple[int, str, str]],
                   timeout_ms: int) -> list[Applied]:
    conn = await asyncpg.connect(url, server_settings={"application_name": APPLICATION_NAME})
    applied: list[Applied] = []
    try:
        # Several services starting at once: the first takes the lock and applies, the
        # others wait here and then find nothing left to do. They poll rather than block
        # in pg_advisory_lock: a waiter blocked inside a statement is a transaction that
        # CREATE INDEX CONCURRENTLY (run by the holder) must wait out — a deadlock.
        while True:
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", _MIGRATION_LOCK):
                break
            await asyncio.sleep(0.2)  # the lock is another session's: nothing to await
        try:
            await conn.execute(
                "CREATE SCHEMA IF NOT EXISTS shoal_meta;"
                "CREATE TABLE IF NOT EXISTS shoal_meta.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in
                    await conn.fetch("SELECT version FROM shoal_meta.schema_migrations")}
            pending = [f for f in files if f[0] not in done]
            if pending:
                await conn.execute(f"SET lock_timeout = {int(timeout_ms)}")
            for version, name, sql in pending:
                applied.append(await _apply(conn, version, name, sql))
                log.info("applied migration %s", name)
        finally:
            # A connection cut meanwhile took the lock with it: the error that cut it (the
            # database unavailable, waited out by the caller) must not be replaced by
            # "connection is closed" from the clean-up.
            if not conn.is_closed():
                with contextlib.suppress(*_UNAVAILABLE, asyncpg.InterfaceError):
                    await conn.execute("RESET lock_timeout; "
                                       f"SELECT pg_advisory_unlock({_MIGRATION_LOCK})")
    except asyncpg.InterfaceError as exc:
        if not conn.is_closed():
            raise
        # asyncpg's "connection is closed" (a transaction's exit, say) over a cut: the
        # database went away, which the caller waits out.
        raise asyncpg.ConnectionDoesNotExistError(
            f"the migrating connection was closed ({exc})") from exc
    finally:
        await conn.close()
    return applied


async def _apply(conn: asyncpg.Connection, version: int, name: str, sql: str) -> Applied:
    """Run one migration until an attempt gets all its locks in time. An attempt that waits
    longer than lock_timeout for a lock is rolled back (so nothing queues behind it any
    longer) and retried after a backoff: 0.1 s doubling to 5 s, with jitter."""
    loop = asyncio.get_running_loop()
    transactional = not no_transaction(sql)
    first, delay, attempts = loop.time(), 0.1, 0
    while True:
        attempts += 1
        began = loop.time()
        try:
            if transactional:
                async with conn.transaction():
                    await conn.execute(sql)
                    await _record(conn, version, name)
            else:
                for statement in statements(sql):
                    await _drop_invalid_index(conn, statement)
                    await conn.execute(statement)
                await _record(conn, version, name)
        except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError) as exc:
            wait = delay * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not a secret)
            log.warning("migration %s: a lock was not granted (%s); attempt %d rolled back, "
                        "retrying in %.2fs", name, exc, attempts, wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, 5.0)
            continue
        now = loop.time()
        return Applied(name, attempts, now - first, now - began, transactional)


async def _record(conn: asyncpg.Connection, version: int, name: str) -> None:
    await conn.execute("INSERT INTO shoal_meta.schema_migrations (version, name) "
                       "VALUES ($1, $2)", version, name)


async def _drop_invalid_index(conn: asyncpg.Connection, statement: str) -> None:
    """A CREATE INDEX CONCURRENTLY that failed (a lock timeout while it waited for older
    transactions) leaves an INVALID index behind, which IF NOT EXISTS would then keep for
    ever: drop it first so the retry builds it again."""
    m = _INDEX_CONCURRENTLY.match("\n".join(
        ln for ln in statement.splitlines() if not ln.lstrip().startswith("--")))
    if m is None:
        return
    invalid = await conn.fetchval(
        "SELECT i.indexrelid::regclass::text FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE NOT i.indisvalid AND c.relname = $1 AND c.relnamespace = "
        "(SELECT relnamespace FROM pg_class WHERE oid = to_regclass($2))",
        m["name"], m["table"])
    if invalid is not None:
        log.warning("dropping the invalid index %s left by an earlier attempt", invalid)
        await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {invalid}")
