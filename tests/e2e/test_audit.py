"""API tokens minted at run time and the audit trail, from outside: two API processes on
one database, commands over HTTP, straight to Kafka and from the scheduler."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import pytest

from shoal.infra.processes import free_port
from tests.e2e.kafka_io import publish_with_librdkafka
from tests.e2e.test_cli import shoal
from tests.support import Stack, eventually, start_command

pytestmark = pytest.mark.e2e

SLOW = {"name": "slow", "tasks": [{"name": "nap", "command": "sleep 30"}]}
QUICK = {"name": "quick", "tasks": [{"name": "a", "command": "true"}]}


def bootstrap_name(stack: Stack, role: str) -> str:
    """The audit name of a SHOAL_API_TOKENS token: role and a short hash of it."""
    return f"{role}-{hashlib.sha256(stack.tokens[role].encode()).hexdigest()[:8]}"


async def call(base: str, method: str, path: str, token: str | None, **kw: Any
               ) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        return await c.request(method, path, headers=headers, **kw)


async def actors_of(stack: Stack, iid: str) -> list[tuple[str, str | None]]:
    return [(e["type"], e["data"].get("actor")) for e in await stack.events(iid)]


async def test_a_minted_token_is_used_listed_revoked_on_every_api_and_expires(stack: Stack):
    # A second API process on the same database: a revocation must hold there at once.
    second = f"http://127.0.0.1:{free_port()}"
    stack.start("api", SHOAL_API_PORT=second.rsplit(":", 1)[1])

    async def second_up() -> bool:
        try:
            return (await call(second, "GET", "/healthz", None)).status_code == 200
        except httpx.HTTPError:
            return False

    await eventually(second_up, timeout=60, what="the second API")
    await stack.apply(SLOW)

    # Only an admin mints; names and lifetimes are checked.
    r = await stack.request("POST", "/api/v1/tokens", role="operator",
                            json={"name": "x", "role": "viewer"})
    assert r.status_code == 403, r.text
    for bad in ({"name": "Bad Name", "role": "viewer"}, {"name": "scheduler", "role": "viewer"},
                {"name": "ok", "role": "root"}, {"name": "ok", "role": "viewer",
                                                 "expires_in": 0},
                {"name": "ok", "role": "viewer", "expires_in": 10**9}):
        r = await stack.request("POST", "/api/v1/tokens", json=bad)
        assert r.status_code == 422, (bad, r.text)
    r = await stack.request("POST", "/api/v1/tokens",
                            json={"name": "ci-bot", "role": "operator", "expires_in": 3600})
    assert r.status_code == 201, r.text
    minted = r.json()
    ci_token, ci_id = minted["token"], minted["id"]
    assert minted["name"] == "ci-bot" and minted["role"] == "operator" and minted["expires_at"]
    r = await stack.request("POST", "/api/v1/tokens", json={"name": "ci-bot", "role": "viewer"})
    assert r.status_code == 409, r.text
    oncall = (await stack.request("POST", "/api/v1/tokens",
                                  json={"name": "oncall", "role": "operator"})).json()["token"]

    # Listed without its value (nor its hash), on either API.
    for base in (stack.api, second):
        r = await call(base, "GET", "/api/v1/tokens", stack.tokens["admin"])
        assert r.status_code == 200, r.text
        assert ci_token not in r.text and hashlib.sha256(ci_token.encode()).hexdigest() \
            not in r.text
        listed = {t["name"]: t for t in r.json()}
        assert listed["ci-bot"]["state"] == "active" and "token" not in listed["ci-bot"]
        assert listed["ci-bot"]["created_by"] == bootstrap_name(stack, "admin")

    # Used: it starts a run, which records it as its actor in its events and its row.
    r = await call(stack.api, "POST", "/api/v1/workflows/slow/runs", ci_token, json={})
    assert r.status_code == 202, r.text
    iid = r.json()["instance_id"]
    await stack.wait_task_state(iid, "running", task="nap")
    assert ("WorkflowSubmitted", "ci-bot") in await actors_of(stack, iid)
    run = await stack.run_state(iid)
    assert run is not None and run["actor"] == "ci-bot" and run["stopped_by"] is None
    # A viewer may not mint, and the minted operator may not either.
    r = await call(second, "POST", "/api/v1/tokens", ci_token, json={"name": "y",
                                                                     "role": "admin"})
    assert r.status_code == 403, r.text

    # ?actor= filters the runs; another run by the bootstrap admin is not among ci-bot's.
    other = (await stack.request("POST", "/api/v1/workflows/slow/runs", json={})).json()
    r = await stack.request("GET", "/api/v1/runs", role="viewer", params={"actor": "ci-bot"})
    assert [x["instance_id"] for x in r.json()["runs"]] == [iid]
    await stack.wait_state(other["instance_id"], "running")
    r = await stack.request("GET", "/api/v1/runs", params={
        "actor": bootstrap_name(stack, "admin")})
    assert [x["instance_id"] for x in r.json()["runs"]] == [other["instance_id"]]

    # Stopped by another token: that token is the stopper, in the events and the row.
    r = await call(second, "POST", f"/api/v1/runs/{iid}/stop", oncall)
    assert r.status_code == 202, r.text
    run = await stack.wait_run(iid, states=("stopped",))
    assert (run["actor"], run["stopped_by"], run["last_actor"]) == ("ci-bot", "oncall",
                                                                   "oncall")
    assert ("WorkflowStopping", "oncall") in await actors_of(stack, iid)
    await stack.request("POST", f"/api/v1/runs/{other['instance_id']}/stop")
    # A fork is a start by whoever forked.
    r = await call(stack.api, "POST", f"/api/v1/runs/{iid}/fork", oncall, json={"at": 1})
    assert r.status_code == 202, r.text
    fork = r.json()["instance_id"]
    await stack.wait_state(fork, "running")
    assert (await stack.run_state(fork) or {})["actor"] == "oncall"
    await stack.request("POST", f"/api/v1/runs/{fork}/stop")

    # Revoked on the first API: the very next call is refused on both.
    r = await stack.request("DELETE", f"/api/v1/tokens/{ci_id}")
    assert r.status_code == 200 and r.json()["state"] == "revoked", r.text
    assert r.json()["revoked_by"] == bootstrap_name(stack, "admin")
    for base in (second, stack.api):
        r = await call(base, "GET", "/api/v1/runs", ci_token)
        assert r.status_code == 401, (base, r.text)
    assert (await stack.request("DELETE", f"/api/v1/tokens/{ci_id}")).status_code == 200
    r = await stack.request("DELETE", "/api/v1/tokens/00000000-0000-4000-8000-000000000000")
    assert r.status_code == 404

    # A short-lived token works, then expires on its own.
    r = await stack.request("POST", "/api/v1/tokens",
                            json={"name": "brief", "role": "viewer", "expires_in": 3})
    brief = r.json()["token"]
    assert (await call(second, "GET", "/api/v1/workflows", brief)).status_code == 200

    async def expired() -> bool:
        return (await call(second, "GET", "/api/v1/workflows", brief)).status_code == 401

    await eventually(expired, timeout=20, what="the token to expire")
    listed = {t["name"]: t for t in (await stack.request("GET", "/api/v1/tokens")).json()}
    assert listed["brief"]["state"] == "expired" and listed["ci-bot"]["state"] == "revoked"


async def test_kafka_commands_and_scheduler_fires_record_their_actor(stack: Stack):
    await stack.apply(QUICK)
    named = start_command("quick", actor="etl-bot")
    anonymous = start_command("quick")
    publish_with_librdkafka(stack.bootstrap, f"{stack.prefix}.commands", [
        (c["instance_id"], httpx.Request("POST", "/", json=c).content)
        for c in (named, anonymous)])
    for cmd, actor in ((named, "etl-bot"), (anonymous, "kafka")):
        run = await stack.wait_run(cmd["instance_id"])
        assert run["actor"] == actor
        assert ("WorkflowSubmitted", actor) in await actors_of(stack, cmd["instance_id"])
    r = await stack.request("GET", "/api/v1/runs", params={"actor": "kafka"})
    assert [x["instance_id"] for x in r.json()["runs"]] == [anonymous["instance_id"]]

    # A schedule records who made it; its fires record `scheduler`.
    stack.start("scheduler")
    r = await stack.request("POST", "/api/v1/schedules", json={
        "workflow": "quick", "cron": "* * * * * ?", "catchup": "none"})
    assert r.status_code == 201, r.text
    schedule = r.json()
    assert schedule["created_by"] == schedule["updated_by"] == bootstrap_name(stack, "admin")

    async def fired() -> list[dict[str, Any]]:
        r = await stack.request("GET", "/api/v1/runs", params={"actor": "scheduler"})
        return list(r.json()["runs"])

    run = (await eventually(fired, timeout=60, what="a scheduler fire"))[0]
    await stack.request("DELETE", f"/api/v1/schedules/{schedule['id']}")
    assert run["workflow"] == "quick" and run["schedule_time"]
    assert ("WorkflowSubmitted", "scheduler") in await actors_of(stack, run["instance_id"])

    # A backfill records who asked for it; its runs are started by the scheduler.
    r = await stack.request("POST", "/api/v1/workflows/quick/backfill",
                            json={"dates": ["2026-01-01"], "cron": "0 0 * * *"})
    assert r.status_code == 202, r.text
    backfill, (bf_run,) = r.json()["backfill_id"], r.json()["instance_ids"]
    b = (await stack.request("GET", f"/api/v1/backfills/{backfill}")).json()
    assert b["actor"] == b["updated_by"] == bootstrap_name(stack, "admin")
    assert (await stack.wait_run(bf_run))["actor"] == "scheduler"


async def test_shoal_tokens_create_list_revoke(bare_stack: Stack):
    stack = bare_stack
    stack.start("api")
    await eventually(stack._healthy, timeout=60, what="API /healthz")
    made = await shoal(stack, "tokens", "create", "cli-bot", "--role", "viewer",
                       "--expires-in", "2h")
    token = made.stdout.strip()  # the value alone on stdout, the notes on stderr
    assert token.startswith("shoal_") and "not shown again" in made.stderr
    listed = (await shoal(stack, "tokens", "list")).stdout
    assert "cli-bot" in listed and "active" in listed and token not in listed
    tid = json.loads((await shoal(stack, "tokens", "list", "--json")).stdout)[0]["id"]
    # The new token drives the CLI; as a viewer it may not mint.
    assert (await shoal(stack, "runs", "--actor", "cli-bot", SHOAL_API_TOKEN=token)).stdout
    denied = await shoal(stack, "tokens", "list", check=False, SHOAL_API_TOKEN=token)
    assert denied.returncode != 0 and "403" in denied.stderr
    assert "revoked" in (await shoal(stack, "tokens", "revoke", tid)).stdout
    refused = await shoal(stack, "runs", check=False, SHOAL_API_TOKEN=token)
    assert refused.returncode != 0 and "401" in refused.stderr
    bad = await shoal(stack, "tokens", "create", "x", "--role", "viewer", "--expires-in",
                      "soon", check=False)
    assert bad.returncode != 0 and "expires-in" in bad.stderr
