"""Chaos: many runs of mixed shapes while orchestrators and workers are SIGKILLed at random.

The short form runs in CI (`make test`); `make chaos` runs the long form (SHOAL_CHAOS=long:
1,000 runs, a kill every 5-10 s for 3 minutes) and prints the same figures:
runs finished / lost / stuck, duplicate succeeded attempts, and the time from each kill to
progress on what the killed process held (p50 / p99).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import pytest

from shoal.infra.settings import Settings
from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e

LONG = os.environ.get("SHOAL_CHAOS") == "long"
RUNS, DURATION, SETTLE = (1000, 180, 300) if LONG else (80, 30, 120)
RETRIES = {"retries": 3, "retry_interval": 1}

SHAPES = [
    {"name": "c-chain", "tasks": [
        {"name": f"s{i}", "command": "sleep 0.2", **RETRIES,
         **({"depends_on": [f"s{i - 1}"]} if i else {})} for i in range(6)]},
    {"name": "c-fanout", "tasks": [
        {"name": "root", "command": "true", **RETRIES},
        *[{"name": f"f{i}", "command": "true", "depends_on": ["root"], **RETRIES}
          for i in range(50)],
        {"name": "join", "command": "true", "depends_on": [f"f{i}" for i in range(50)],
         **RETRIES}]},
    {"name": "c-diamond", "tasks": [
        {"name": "a", "command": "echo '${setValue(n=1)}'", "outputs": ["n"], **RETRIES},
        {"name": "b", "command": "sleep 0.1", "depends_on": ["a"], **RETRIES},
        {"name": "c", "command": "sleep 0.1", "depends_on": ["a"], **RETRIES},
        {"name": "d", "command": "test ${n} = 1", "depends_on": ["b", "c"], **RETRIES}]},
    # Fails its first attempt on purpose, succeeds on the retry.
    {"name": "c-flaky", "tasks": [
        {"name": "first", "command": '[ "$SHOAL_ATTEMPT" -ge 2 ]', **RETRIES},
        {"name": "then", "command": "true", "depends_on": ["first"], **RETRIES}]},
]
WEIGHTS = [4, 1, 4, 3]


@dataclass
class Kill:
    at: datetime
    kind: str
    affected: list[uuid.UUID]


def _percentiles(values: list[float]) -> dict[str, float | int | None]:
    p = sorted(values)
    if not p:
        return {"n": 0}
    return {"p50": round(statistics.median(p), 2),
            "p99": round(p[min(len(p) - 1, int(len(p) * 0.99))], 2),
            "max": round(p[-1], 2), "n": len(p)}


async def _affected(conn: asyncpg.Connection, stack: Stack, victim) -> list[uuid.UUID]:
    """The unfinished runs the victim holds: an orchestrator's partitions, a worker's
    running attempts."""
    if victim.name == "orchestrator":
        parts = await conn.fetchval(
            "SELECT partitions FROM shoal.members WHERE service = 'orchestrator' AND pid = $1",
            victim.pid)
        rows = await conn.fetch(
            "SELECT instance_id FROM shoal.streams WHERE partition = ANY($1::int[]) AND "
            "state NOT IN ('succeeded', 'failed', 'stopped')", parts or [])
    else:
        worker_id = victim.env["SHOAL_WORKER_ID"]
        rows = await conn.fetch(
            "SELECT DISTINCT instance_id FROM shoal_read.task_runs WHERE worker_id = $1 AND "
            "state = 'running'", worker_id)
    return [r["instance_id"] for r in rows]


# The production defaults (the suite's other tests use a longer session timeout), so the
# kill-to-progress figures are what an operator gets.
DEFAULTS = {"SHOAL_KAFKA_SESSION_TIMEOUT_MS": str(Settings().kafka_session_timeout_ms),
            "SHOAL_LEASE_TIMEOUT": str(Settings().lease_timeout),
            "SHOAL_WORKER_HEARTBEAT_INTERVAL": str(Settings().worker_heartbeat_interval)}


@pytest.mark.timeout(1500)
async def test_chaos_kills_lose_nothing_double_nothing_strand_nothing(bare_stack: Stack):
    stack = bare_stack
    rng = random.Random(7)
    stack.start("api", **DEFAULTS)
    await eventually(stack._healthy, timeout=60, what="API up")
    for name in ("orchestrator", "orchestrator", "projector", "worker", "worker"):
        stack.start(name, **DEFAULTS)
    for shape in SHAPES:
        await stack.apply(shape)
    conn = await asyncpg.connect(stack.database_url)
    ids: list[str] = []
    kills: list[Kill] = []
    try:
        t_end = time.monotonic() + DURATION

        async def submit() -> None:
            per_second = RUNS / DURATION
            while len(ids) < RUNS:
                n = min(RUNS - len(ids), max(1, round(per_second)))
                for _ in range(n):
                    shape = rng.choices(SHAPES, WEIGHTS)[0]["name"]
                    r = await stack.request("POST", f"/api/v1/workflows/{shape}/runs",
                                            json={})
                    assert r.status_code == 202, r.text
                    ids.append(r.json()["instance_id"])
                await asyncio.sleep(1.0)

        async def killer() -> None:
            await asyncio.sleep(5)
            while time.monotonic() < t_end:
                kind = rng.choice(["orchestrator", "worker"])
                victim = rng.choice([p for p in stack.processes
                                     if p.name == kind and p.alive()])
                affected = await _affected(conn, stack, victim)
                at = datetime.now(UTC)
                victim.kill9()
                kills.append(Kill(at, kind, affected))
                stack.start(kind, **DEFAULTS)  # a replacement, as a supervisor would
                await asyncio.sleep(rng.uniform(5, 10))

        await asyncio.gather(submit(), killer())

        async def settled() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM shoal_read.workflow_runs WHERE instance_id = ANY($1) "
                "AND state IN ('succeeded', 'failed', 'stopped')", [uuid.UUID(i) for i in ids])
            return n == len(ids)
        with contextlib.suppress(AssertionError):  # what did not finish counts as stuck
            await eventually(settled, timeout=SETTLE, interval=1, what="every run finished")

        rows = {r["instance_id"]: r["state"] for r in await conn.fetch(
            "SELECT instance_id, state FROM shoal_read.workflow_runs WHERE instance_id = ANY($1)",
            [uuid.UUID(i) for i in ids])}
        lost = [i for i in ids if uuid.UUID(i) not in rows]
        stuck = [str(k) for k, s in rows.items() if s not in ("succeeded", "failed", "stopped")]
        failed = [str(k) for k, s in rows.items() if s in ("failed", "stopped")]
        dup = await conn.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM shoal.events WHERE type = 'TaskSucceeded' "
            "GROUP BY instance_id, data->>'task', data->>'attempt' HAVING count(*) > 1) d")
        twice = await conn.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM shoal.events WHERE type = 'TaskSucceeded' "
            "GROUP BY instance_id, data->>'task' HAVING count(*) > 1) d")
        progress: dict[str, list[float]] = {"orchestrator": [], "worker": []}
        for k in kills:
            if k.affected:
                first = await conn.fetchval(
                    "SELECT min(recorded_at) FROM shoal.events WHERE instance_id = ANY($1) "
                    "AND recorded_at > $2", k.affected, k.at)
                if first:
                    progress[k.kind].append((first - k.at).total_seconds())
        figures = {
            "runs": len(ids), "succeeded": len(rows) - len(failed) - len(stuck),
            "failed": len(failed), "lost": len(lost), "stuck": len(stuck),
            "duplicate_succeeded_attempts": dup, "tasks_succeeded_twice": twice,
            "kills": {"orchestrator": sum(k.kind == "orchestrator" for k in kills),
                      "worker": sum(k.kind == "worker" for k in kills)},
            "kill_to_progress_s": {kind: _percentiles(v) for kind, v in progress.items()},
        }
        print(f"\nchaos ({'long' if LONG else 'short'}): {figures}")
        for iid in stuck[:8]:  # what a stuck run is waiting for
            tasks = await conn.fetch(
                "SELECT task, attempt, state, worker_id FROM shoal_read.task_runs WHERE "
                "instance_id = $1 AND state NOT IN ('succeeded', 'skipped') ORDER BY task, "
                "attempt", uuid.UUID(iid))
            tail = await conn.fetch(
                "SELECT seq, type, data->>'task' AS task, recorded_at FROM shoal.events "
                "WHERE instance_id = $1 ORDER BY seq DESC LIMIT 6", uuid.UUID(iid))
            stream_row = await conn.fetchrow(
                "SELECT partition, state, last_seq FROM shoal.streams WHERE instance_id = $1",
                uuid.UUID(iid))
            last = [(r["seq"], r["type"], r["task"], r["recorded_at"].isoformat()) for r in tail]
            print(f"stuck {iid} ({rows[uuid.UUID(iid)]}, stream {dict(stream_row or {})}): "
                  f"{[dict(t) for t in tasks]} last events {last}")
        assert len(kills) >= 3
        assert lost == [] and stuck == [], figures
        assert failed == [], figures
        assert dup == 0 and twice == 0, figures
    finally:
        await conn.close()
