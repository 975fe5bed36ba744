"""Postgres outages: backends terminated mid-run, and the database refusing connections
for a while. Runs finish; nothing is lost or doubled."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest

from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e

CHAIN = {"name": "chain4", "tasks": [
    {"name": f"s{i}", "command": "sleep 0.2", **({"depends_on": [f"s{i - 1}"]} if i else {})}
    for i in range(4)]}


async def _terminate_all(admin: asyncpg.Connection, dbname: str) -> int:
    return len(await admin.fetch(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 "
        "AND pid <> pg_backend_pid()", dbname))


async def _assert_all_once(stack: Stack, ids: list[str]) -> None:
    for iid in ids:
        assert (await stack.wait_run(iid, timeout=180))["state"] == "succeeded"
    conn = await asyncpg.connect(stack.database_url)
    try:
        twice = await conn.fetch(
            "SELECT instance_id, type, data->>'task' AS task, count(*) FROM shoal.events "
            "WHERE type IN ('TaskSucceeded', 'TaskDispatched', 'WorkflowSubmitted') "
            "GROUP BY 1, 2, 3 HAVING count(*) > 1")
        assert twice == []
        n = await conn.fetchval("SELECT count(*) FROM shoal.events WHERE type = "
                                "'TaskSucceeded' AND instance_id = ANY($1::uuid[])", ids)
        assert n == 4 * len(ids)
    finally:
        await conn.close()


async def test_backends_terminated_repeatedly_mid_run(stack: Stack):
    await stack.apply(CHAIN)
    ids = [(await stack.request("POST", "/api/v1/workflows/chain4/runs", json={})).json()[
        "instance_id"] for _ in range(20)]
    dbname = stack.database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(stack.database_url.rsplit("/", 1)[0] + "/postgres")
    try:
        killed = 0
        for _ in range(12):
            killed += await _terminate_all(admin, dbname)
            await asyncio.sleep(0.7)
        assert killed > 0
    finally:
        await admin.close()
    await _assert_all_once(stack, ids)


async def test_a_database_outage_of_several_seconds(stack: Stack):
    await stack.apply(CHAIN)
    ids = [(await stack.request("POST", "/api/v1/workflows/chain4/runs", json={})).json()[
        "instance_id"] for _ in range(10)]
    dbname = stack.database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(stack.database_url.rsplit("/", 1)[0] + "/postgres")
    try:
        orchestrator = f"http://127.0.0.1:{stack.metrics_ports[('orchestrator', 0)]}/healthz"
        projector = f"http://127.0.0.1:{stack.metrics_ports[('projector', 0)]}/healthz"

        async def codes() -> list[int]:
            async with httpx.AsyncClient(timeout=5) as c:
                try:
                    return [(await c.get(u)).status_code
                            for u in (f"{stack.api}/healthz", orchestrator, projector)]
                except httpx.HTTPError:
                    return []

        async def healthy() -> bool:
            return await codes() == [200, 200, 200]

        async def unhealthy() -> bool:
            return await codes() == [503, 503, 503]

        await eventually(healthy, timeout=30, what="every service up and healthy")
        await admin.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false')
        await _terminate_all(admin, dbname)
        # Meanwhile the services say so on /healthz (and none exits).

        await eventually(unhealthy, timeout=15, what="every /healthz reporting the outage")
        await asyncio.sleep(3)
        await admin.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')
    finally:
        await admin.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')
        await admin.close()
    await _assert_all_once(stack, ids)
    for p in stack.processes:
        assert p.alive(), f"{p.name} exited during the outage"
    async with httpx.AsyncClient(timeout=5) as c:
        assert (await c.get(orchestrator)).status_code == 200


async def test_a_database_cut_during_a_burst_of_starts_dead_letters_nothing(stack: Stack):
    """Starts published straight to the commands topic (large batches, definition look-ups
    in flight) while every connection of the database is cut again and again: every start
    succeeds and none is dead-lettered (a lost connection is transient, never poison)."""
    from tests.e2e.kafka_io import publish_with_librdkafka, read_all, start_json
    from tests.support import start_command

    await stack.apply(CHAIN)
    dbname = stack.database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(stack.database_url.rsplit("/", 1)[0] + "/postgres")
    starts = [start_command("chain4") for _ in range(60)]
    cutting = True

    async def cut() -> int:
        n = 0
        while cutting:  # every 20 ms: some cut lands inside a batch's definition look-up
            n += await _terminate_all(admin, dbname)
            await asyncio.sleep(0.02)
        return n

    try:
        cutter = asyncio.create_task(cut())
        for i in range(0, len(starts), 5):
            publish_with_librdkafka(stack.bootstrap, f"{stack.prefix}.commands",
                                    [start_json(c) for c in starts[i:i + 5]])
            await asyncio.sleep(0.25)
        await asyncio.sleep(2)
        cutting = False
        assert await cutter > 0
    finally:
        cutting = False
        await admin.close()
    await _assert_all_once(stack, [c["instance_id"] for c in starts])
    letters = await read_all(stack.bootstrap, f"{stack.prefix}.dead-letters")
    assert letters == [], letters
    for p in stack.processes:
        assert p.alive(), f"{p.name} exited during the cuts"
