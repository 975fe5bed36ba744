"""Postgres connection pool and versioned migrations.

Migrations run at every service start. They are idempotent and safe when several
services start at once: a session advisory lock serializes the runners, and each file
is applied in its own transaction together with its row in ``schema_migrations``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
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


async def migrate(url: str) -> list[str]:
    """Apply missing migrations; return the names applied by this call. Waits for a
    database that is not reachable yet."""
    return await until_available("migrating", lambda: _migrate(url))


async def _migrate(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE SCHEMA IF NOT EXISTS shoal_meta;"
                "CREATE TABLE IF NOT EXISTS shoal_meta.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in
                    await conn.fetch("SELECT version FROM shoal_meta.schema_migrations")}
            for version, name, sql in migration_files():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO shoal_meta.schema_migrations (version, name) "
                        "VALUES ($1, $2)", version, name)
                log.info("applied migration %s", name)
                applied.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    finally:
        await conn.close()
    return applied
