"""Session resources: one real broker, one real Postgres; a fresh database per test."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from shoal.infra.db import migrate
from shoal.infra.processes import OwnedProcess, free_port, start_broker, start_embedded_postgres
from tests.support import CI, Stack

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """Kafka bootstrap: SHOAL_TEST_KAFKA_BOOTSTRAP, else the embedded broker started here."""
    given = os.environ.get("SHOAL_TEST_KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"shoal-test-broker-{port}.log"
    proc: OwnedProcess = start_broker(port, log)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture(scope="session")
async def pg_admin_url() -> AsyncIterator[str]:
    """A Postgres we may create databases in: SHOAL_DATABASE_URL, the local one, or embedded."""
    url = os.environ.get("SHOAL_DATABASE_URL") or LOCAL_PG
    try:
        conn = await asyncpg.connect(url, timeout=5)
        await conn.close()
        yield url
        return
    except (OSError, asyncpg.PostgresError) as exc:
        if CI or os.environ.get("SHOAL_DATABASE_URL"):
            pytest.fail(f"PostgreSQL at {url} is not reachable: {exc!r}")
    data = Path(tempfile.mkdtemp(prefix="shoal-test-pg-"))
    embedded_url, handle = start_embedded_postgres(data)
    try:
        yield embedded_url
    finally:
        handle.cleanup()  # type: ignore[attr-defined]


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
async def database(pg_admin_url: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test, dropped afterwards."""
    async with _fresh_database(pg_admin_url) as url:
        yield url


@pytest.fixture
async def other_stack(broker: str, pg_admin_url: str, tmp_path: Path,
                      request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """A second installation: its own database and topics; the test starts its services."""
    async with _fresh_database(pg_admin_url) as url, \
            _owned_stack(broker, url, tmp_path / "other", request) as s:
        (tmp_path / "other").mkdir()
        yield s


@pytest.fixture
async def empty_database(pg_admin_url: str) -> AsyncIterator[str]:
    """A fresh database nothing migrated yet (the first service to start does), dropped
    afterwards: for services of an earlier release, which apply their own migrations."""
    async with _fresh_database(pg_admin_url, migrated=False) as url:
        yield url


@contextlib.asynccontextmanager
async def _fresh_database(pg_admin_url: str, migrated: bool = True) -> AsyncIterator[str]:
    name = f"shoal_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(pg_admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_db(pg_admin_url, name)
    try:
        if migrated:
            await migrate(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def pool(database: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(database, min_size=1, max_size=10)
    assert p is not None
    yield p
    await p.close()


@contextlib.asynccontextmanager
async def _owned_stack(broker: str, database: str, tmp_path: Path,
                       request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """Stops exactly what the test started; prints the services' logs when it failed."""
    s = Stack(broker, database, tmp_path)
    try:
        yield s
    finally:
        s.stop()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(s.logs())


@pytest.fixture
async def datasource(pg_admin_url: str) -> AsyncIterator[str]:
    """A plain database for sql tasks, separate from Shoal's own (never migrated)."""
    name = f"shoal_ds_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(pg_admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_db(pg_admin_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def stack(broker: str, database: str, datasource: str, tmp_path: Path,
                request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """Every service as its own process, with a fresh topic prefix and database, and a
    separate database as the datasource ``default`` of sql tasks."""
    async with _owned_stack(broker, database, tmp_path, request) as s:
        s.datasource_url = datasource
        await s.start_all()
        yield s


@pytest.fixture
async def bare_stack(broker: str, database: str, tmp_path: Path,
                     request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """A stack whose services the test starts itself (with its own settings)."""
    async with _owned_stack(broker, database, tmp_path, request) as s:
        yield s


@pytest.fixture
async def unmigrated_stack(broker: str, empty_database: str, tmp_path: Path,
                           request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    """A stack on a database nothing migrated yet: the services the test starts (of this
    tree or of an earlier release, see tests/releases.py) apply their own migrations."""
    async with _owned_stack(broker, empty_database, tmp_path, request) as s:
        yield s


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep
