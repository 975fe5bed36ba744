"""Tokens and roles, problem+json errors and size limits, from outside over HTTP and Kafka."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import asyncpg
import httpx
import pytest

from tests.e2e.kafka_io import publish_with_librdkafka, read_all
from tests.support import Stack, eventually, start_command

pytestmark = pytest.mark.e2e

SLOW = {"name": "slow", "tasks": [{"name": "nap", "command": "sleep 30"}]}


def is_problem(r: httpx.Response, status: int, kind: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json", r.headers
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert body["type"].startswith("urn:shoal:problem:")
    if kind:
        assert body["type"] == f"urn:shoal:problem:{kind}"
    return body


async def test_roles_decide_what_a_token_may_do(stack: Stack):
    await stack.apply(SLOW)
    # No token, a wrong token, a malformed header: 401, and the health probe stays open.
    is_problem(await stack.request("GET", "/api/v1/workflows", role=None), 401, "unauthorized")
    r = await stack.request("GET", "/api/v1/workflows", role=None,
                            headers={"Authorization": "Bearer not-a-configured-token"})
    assert is_problem(r, 401) and r.headers["www-authenticate"] == "Bearer"
    is_problem(await stack.request("GET", "/api/v1/runs", role=None,
                                   headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401)
    assert (await stack.request("GET", "/healthz", role=None)).status_code == 200

    # A viewer reads everything but changes nothing.
    for path in ("/api/v1/workflows", "/api/v1/workflows/slow", "/api/v1/runs",
                 "/api/v1/schedules", "/api/v1/workers", "/api/v1/stats", "/api/v1/backfills"):
        assert (await stack.request("GET", path, role="viewer")).status_code == 200, path
    is_problem(await stack.request("POST", "/api/v1/workflows", role="viewer", json=SLOW), 403,
               "forbidden")
    is_problem(await stack.request("POST", "/api/v1/workflows/slow/runs", role="viewer",
                                   json={}), 403)

    # An operator starts and stops runs, but cannot publish definitions or schedules.
    r = await stack.request("POST", "/api/v1/workflows/slow/runs", role="operator", json={})
    assert r.status_code == 202, r.text
    iid = r.json()["instance_id"]
    await stack.wait_task_state(iid, "running", task="nap")
    is_problem(await stack.request("POST", f"/api/v1/runs/{iid}/stop", role="viewer"), 403)
    is_problem(await stack.request("GET", f"/api/v1/runs/{iid}/tasks/nap/log", role=None), 401)
    assert (await stack.request("GET", f"/api/v1/runs/{iid}/tasks/nap/log",
                                role="viewer")).status_code == 200
    assert (await stack.request("POST", f"/api/v1/runs/{iid}/stop",
                                role="operator")).status_code == 202
    is_problem(await stack.request("POST", "/api/v1/workflows", role="operator", json=SLOW), 403)
    is_problem(await stack.request("POST", "/api/v1/schedules", role="operator", json={
        "workflow": "slow", "cron": "0 * * * *"}), 403)
    assert (await stack.wait_run(iid, states=("stopped",)))["state"] == "stopped"
    # The refusal of a control by the run's state is a problem too, with the state.
    body = is_problem(await stack.request("POST", f"/api/v1/runs/{iid}/pause",
                                          role="operator"), 409, "state-conflict")
    assert body["state"] == "stopped"
    # An admin may publish; request validation errors keep their problems list.
    body = is_problem(await stack.request("POST", "/api/v1/workflows/slow/runs",
                                          json={"priority": "urgent"}), 422, "invalid-request")
    assert body["problems"][0]["path"] == "body.priority"
    is_problem(await stack.request("GET", f"/api/v1/runs/{uuid.uuid4()}"), 404, "not-found")


async def test_oversized_input_gets_a_clear_status_while_the_api_keeps_serving(
        bare_stack: Stack):
    stack = bare_stack
    stack.start("api")
    await eventually(stack._healthy, timeout=60, what="API up")
    big = {"name": "huge", "tasks": [{"name": f"t{i}", "command": "true"}
                                     for i in range(3000)]}

    async def other_requests() -> list[float]:
        took = []
        for _ in range(20):
            t0 = time.monotonic()
            assert (await stack.request("GET", "/api/v1/workflows")).status_code == 200
            took.append(time.monotonic() - t0)
            await asyncio.sleep(0.05)
        return took

    t0 = time.monotonic()
    huge_def, huge_body, served = await asyncio.gather(
        stack.request("POST", "/api/v1/workflows", json=big),
        stack.request("POST", "/api/v1/workflows", content=b"x" * (20 * 1024 * 1024),
                      headers={"content-type": "application/yaml"}),
        other_requests())
    assert time.monotonic() - t0 < 10
    body = is_problem(huge_def, 422, "invalid-definition")
    assert body["problems"][0]["path"] == "tasks" and "at most 1000" in body["detail"]
    is_problem(huge_body, 413, "too-large")
    assert max(served) < 5

    # Without a declared length the body is counted as it arrives and cut at the limit.
    async def chunks():
        for _ in range(40):
            yield b"y" * (512 * 1024)

    is_problem(await stack.request("POST", "/api/v1/workflows", content=chunks(),
                                   headers={"content-type": "application/yaml"}), 413)
    # Parameters are bounded too.
    await stack.apply({"name": "small", "tasks": [{"name": "a", "command": "true"}]})
    r = await stack.request("POST", "/api/v1/workflows/small/runs",
                            json={"params": {"blob": "z" * (65 * 1024)}})
    assert is_problem(r, 422)["problems"][0]["path"] == "params.blob"


async def test_an_oversized_kafka_command_goes_to_dead_letters(bare_stack: Stack):
    stack = bare_stack
    stack.start("api")
    await eventually(stack._healthy, timeout=60, what="API up")
    stack.start("orchestrator", SHOAL_MAX_COMMAND_BYTES=str(100 * 1024))
    stack.start("projector")
    await stack.apply({"name": "tiny", "tasks": [{"name": "a", "command": "true"}]})
    iid = str(uuid.uuid4())
    cmd = start_command("tiny", iid, params={"pad": "p" * (300 * 1024)})
    publish_with_librdkafka(stack.bootstrap, f"{stack.prefix}.commands",
                            [(iid, json.dumps(cmd).encode())])

    async def dead() -> dict | None:
        for d in await read_all(stack.bootstrap, f"{stack.prefix}.dead-letters"):
            if d.get("key") == iid:
                return d
        return None

    letter = await eventually(dead, what="the oversized command dead-lettered")
    assert "larger than 102400" in letter["reason"] and letter["size"] > 300 * 1024
    assert len(letter["value"]) <= 65536
    # The orchestrator goes on with the next command.
    ok = str(uuid.uuid4())
    publish_with_librdkafka(stack.bootstrap, f"{stack.prefix}.commands",
                            [(ok, json.dumps(start_command("tiny", ok)).encode())])
    assert (await stack.wait_run(ok, states=("running", "submitted")))
    assert (await stack.request("GET", f"/api/v1/runs/{iid}")).status_code == 404


async def test_healthz_says_the_database_is_down_without_its_error_text(bare_stack: Stack):
    stack = bare_stack
    stack.start("api")
    await eventually(stack._healthy, timeout=60, what="API /healthz")
    dbname = stack.database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(stack.database_url.rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false')
        await admin.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                          "datname = $1 AND pid <> pg_backend_pid()", dbname)

        async def down() -> httpx.Response | None:
            r = await stack.request("GET", "/healthz", role=None)
            return r if r.status_code == 503 else None

        r = await eventually(down, timeout=30, what="/healthz to report the outage")
        assert r.json() == {"status": "unhealthy", "database": "unavailable"}
        for leak in (dbname, "postgres", "127.0.0.1", "Error", "connection"):
            assert leak not in r.text, leak
    finally:
        await admin.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')
        await admin.close()
    await eventually(stack._healthy, timeout=30, what="/healthz back to 200")


async def test_the_ninth_stream_of_a_token_gets_429(stack: Stack):
    await stack.apply(SLOW)
    iid = (await stack.request("POST", "/api/v1/workflows/slow/runs", json={})).json()[
        "instance_id"]
    await stack.wait_task_state(iid, "running", task="nap")
    log = f"/api/v1/runs/{iid}/tasks/nap/log?follow=true"
    paths = ["/api/v1/stream"] * 4 + [f"/api/v1/runs/{iid}/stream?follow=true"] * 2 + [log] * 2
    async with contextlib.AsyncExitStack() as streams, httpx.AsyncClient(
            base_url=stack.api, timeout=30) as c:
        viewer = stack.auth("viewer")
        opened = []
        for path in paths:  # the events streams and the log follow share one budget
            r = await streams.enter_async_context(c.stream("GET", path, headers=viewer))
            assert r.status_code == 200, path
            opened.append(r)
        for path in (log, "/api/v1/stream", f"/api/v1/runs/{iid}/stream"):
            is_problem(await c.get(path, headers=viewer), 429)
        # Another token has its own budget; a plain log read is no stream.
        async with c.stream("GET", "/api/v1/stream", headers=stack.auth("operator")) as r:
            assert r.status_code == 200
        assert (await c.get(f"/api/v1/runs/{iid}/tasks/nap/log", headers=viewer)
                ).status_code == 200
        await opened[0].aclose()  # a closed stream frees its place

        async def admitted() -> bool:
            async with c.stream("GET", "/api/v1/stream", headers=viewer) as r:
                return r.status_code == 200

        await eventually(admitted, timeout=15, what="a place after closing a stream")
    await stack.request("POST", f"/api/v1/runs/{iid}/stop")
