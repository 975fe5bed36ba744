"""Chaos: many runs of mixed shapes while orchestrators and workers are SIGKILLed at random,
every database connection is cut now and then, and poison messages land on the commands
topic.

The short form runs in CI (`make test`); `make chaos` runs the long form (SHOAL_CHAOS=long:
1,000 runs, a kill every 5-10 s for 3 minutes) and prints the same figures:
runs finished / lost / stuck, duplicate succeeded attempts, side effects (every task
appends a line to a file outside the system) against succeeded tasks, poison messages
dead-lettered, database cuts, and the time from each kill to progress on what the killed
process held (p50 / p99).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import random
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer

from shoal.infra.settings import Settings
from shoal.infra.shadow import Filter, database_histories
from shoal_worker.main import report_id
from tests.e2e.kafka_io import read_all
from tests.e2e.test_poison import _commands as poison_commands
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


def with_side_effects(shape: dict, effects: Path) -> dict:
    """Each task that succeeds appends one line to ``effects``: a task run twice (say by
    an orphan of a killed worker and by the retry) shows as two lines, whatever the log."""
    mark = (f'echo "$SHOAL_INSTANCE_ID $SHOAL_TASK $SHOAL_ATTEMPT $TEST_WORKER_ID '
            f'$SHOAL_DISPATCH_ID $(date +%s.%N)" >> {effects}')
    return {**shape, "tasks": [{**t, "command": f"{t['command']} && {mark}"}
                               for t in shape["tasks"]]}


WEIGHTS = [4, 1, 4, 3]


@dataclass
class Kill:
    at: datetime
    kind: str
    affected: list[uuid.UUID]
    victim: str = ""  # a worker's id, an orchestrator's pid


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


async def _attribute(conn: asyncpg.Connection, lines: list[list[str]],
                     kills: list[Kill]) -> dict[str, int]:
    """Why each duplicate side effect happened: every pair of consecutive lines of one task
    (by time), classified by whether it is the same attempt, who ran each copy, whether the
    first copy's worker was killed in between, and what the orchestrator recorded of the
    first copy."""
    by_task: dict[tuple[str, str], list[list[str]]] = {}
    for ln in lines:
        if len(ln) >= 6:
            by_task.setdefault((ln[0], ln[1]), []).append(ln)
    pairs = [(a, b) for copies in by_task.values() if len(copies) > 1
             for a, b in itertools.pairwise(sorted(copies, key=lambda ln: float(ln[5])))]
    if not pairs:
        return {}
    rows = await conn.fetch(
        "SELECT instance_id::text AS iid, data->>'task' AS task, data->>'attempt' AS attempt, "
        "type, data->>'worker_id' AS worker FROM shoal.events WHERE instance_id = ANY($1) "
        "AND type IN ('TaskStarted', 'TaskSucceeded', 'TaskLost', 'TaskFailed', "
        "'TaskKilled')", list({uuid.UUID(a[0]) for a, _ in pairs}))
    seen: dict[tuple[str, str, str], list[tuple[str, str | None]]] = {}
    for r in rows:
        seen.setdefault((r["iid"], r["task"], r["attempt"]), []).append(
            (r["type"], r["worker"]))
    # The first copy's end report, if it reached the orchestrator only after the attempt
    # was superseded (say sent by the next worker from the dead one's journal, too late).
    ends = {report_id(a[4], "finished", a[3]): a for a, _ in pairs}
    late = {r["mid"] for r in await conn.fetch(
        "SELECT data->>'input_message_id' AS mid FROM shoal.events WHERE instance_id = "
        "ANY($1) AND type = 'InputRejected' AND data->>'input_message_id' = ANY($2)",
        list({uuid.UUID(a[0]) for a, _ in pairs}), list(ends))}
    out: collections.Counter[str] = collections.Counter()
    for a, b in pairs:
        t1, t2 = float(a[5]), float(b[5])
        kill = next((k for k in kills if k.kind == "worker" and k.victim == a[3] and
                     t1 - 0.5 <= k.at.timestamp() <= t2), None)
        killed, killed_at = kill is not None, ""
        if kill is not None:
            gap = kill.at.timestamp() - t1
            when = ("<0.1 s" if gap < 0.1 else "<1 s" if gap < 1 else ">=1 s")
            killed_at = f"killed {when} after the side effect"
        late_end = report_id(a[4], "finished", a[3]) in late
        orch = any(k.kind == "orchestrator" and t1 - 10 <= k.at.timestamp() <= t2
                   for k in kills)
        recorded = seen.get((a[0], a[1], a[2]), [])
        by_first = sorted({t for t, w in recorded if w == a[3]})
        if a[2] == b[2]:
            who = "same worker" if a[3] == b[3] else "another worker"
        else:
            who = f"retry ({', '.join(sorted({t for t, _ in recorded}))})"
        out[f"{'same attempt' if a[2] == b[2] else 'retried after success'}, {who}, "
            f"first worker {killed_at if killed else 'alive'}"
            f"{', its end report came too late' if late_end else ''}"
            f"{', orchestrator killed' if orch else ''}, recorded of the first copy: "
            f"{by_first or 'nothing'}"] += 1
    for a, b in pairs[:6]:  # the story of a few, in full
        rows = await conn.fetch(
            "SELECT seq, type, data->>'attempt' AS attempt, data->>'worker_id' AS worker, "
            "data->>'input_message_id' AS input, data->>'reason' AS reason, recorded_at "
            "FROM shoal.events WHERE instance_id = $1 AND (data->>'task' = $2 OR "
            "type = 'InputRejected') ORDER BY seq", uuid.UUID(a[0]), a[1])
        near = [(k.victim, k.at.isoformat()) for k in kills if k.kind == "worker"
                and float(a[5]) - 20 < k.at.timestamp() < float(b[5])]
        print(f"  {a[0]} {a[1]}: copies {a[2:6]} / {b[2:6]}; first copy's end report "
              f"{report_id(a[4], 'finished', a[3])}; worker kills {near}")
        for r in rows:
            print(f"    {r['seq']} {r['type']} a{r['attempt']} {r['worker']} "
                  f"{r['input'] or ''} {(r['reason'] or '')[:80]} {r['recorded_at'].isoformat()}")
    return dict(out.most_common())


# The production defaults (the suite's other tests use a longer session timeout), so the
# kill-to-progress figures are what an operator gets.
DEFAULTS = {"SHOAL_KAFKA_SESSION_TIMEOUT_MS": str(Settings().kafka_session_timeout_ms),
            "SHOAL_LEASE_TIMEOUT": str(Settings().lease_timeout),
            "SHOAL_WORKER_HEARTBEAT_INTERVAL": str(Settings().worker_heartbeat_interval)}


@pytest.mark.timeout(1500)
async def test_chaos_kills_lose_nothing_double_nothing_strand_nothing(bare_stack: Stack,
                                                                     tmp_path: Path):
    stack = bare_stack
    effects = tmp_path / "side-effects.txt"
    rng = random.Random(7)
    stack.start("api", **DEFAULTS)
    await eventually(stack._healthy, timeout=60, what="API up")
    for name in ("orchestrator", "orchestrator", "projector", "worker", "worker"):
        stack.start(name, **DEFAULTS)
    for shape in SHAPES:
        await stack.apply(with_side_effects(shape, effects))
    conn = await asyncpg.connect(stack.database_url)
    dbname = stack.database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(stack.database_url.rsplit("/", 1)[0] + "/postgres")
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    ids: list[str] = []
    kills: list[Kill] = []
    cuts: list[int] = []
    poison: list[tuple[int, int]] = []  # (partition, offset)
    try:
        t_end = time.monotonic() + DURATION

        async def submit() -> None:
            per_second = RUNS / DURATION
            while len(ids) < RUNS:
                n = min(RUNS - len(ids), max(1, round(per_second)))
                for _ in range(n):
                    shape = rng.choices(SHAPES, WEIGHTS)[0]["name"]
                    for _ in range(20):  # the API answers 5xx while the database is cut
                        with contextlib.suppress(httpx.HTTPError):
                            r = await stack.request("POST", f"/api/v1/workflows/{shape}/runs",
                                                    json={})
                            if r.status_code < 500:
                                break
                        await asyncio.sleep(0.5)
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
                kills.append(Kill(at, kind, affected, victim.env.get("SHOAL_WORKER_ID")
                                  or str(victim.pid)))
                stack.start(kind, **DEFAULTS)  # a replacement, as a supervisor would
                await asyncio.sleep(rng.uniform(5, 10))

        async def cutter() -> None:
            """Every database connection of the services cut, every 6-12 s."""
            await asyncio.sleep(3)
            while time.monotonic() < t_end:
                cuts.append(len(await admin.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                    "datname = $1 AND pid <> pg_backend_pid() AND pid <> $2", dbname,
                    conn.get_server_pid())))
                await asyncio.sleep(rng.uniform(6, 12))

        async def poisoner() -> None:
            """Poison on every partition of the commands topic, every 4-8 s."""
            topic = f"{stack.prefix}.commands"
            while time.monotonic() < t_end:
                for p in sorted(await producer.partitions_for(topic)):
                    key, value = rng.choice(poison_commands(p))
                    md = await producer.send_and_wait(topic, value, key=key, partition=p)
                    poison.append((p, md.offset))
                await asyncio.sleep(rng.uniform(4, 8))

        await asyncio.gather(submit(), killer(), cutter(), poisoner())

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
        succeeded_tasks = {(str(r["instance_id"]), r["task"]) for r in await conn.fetch(
            "SELECT DISTINCT instance_id, data->>'task' AS task FROM shoal.events WHERE "
            "type = 'TaskSucceeded' AND instance_id = ANY($1)", [uuid.UUID(i) for i in ids])}
        lines = [ln.split() for ln in effects.read_text().splitlines()] \
            if effects.exists() else []
        tracked = set(ids)  # a POST retried after a 5xx may have started an extra run
        done = [(ln[0], ln[1]) for ln in lines if ln[0] in tracked]
        side = {
            "side_effects": len(done), "succeeded_tasks": len(succeeded_tasks),
            "duplicate_side_effects": len(done) - len(set(done)),
            "side_effects_of_no_success": len(set(done) - succeeded_tasks),
            "successes_without_side_effect": len(succeeded_tasks - set(done))}
        letters = {(d["partition"], d["offset"]) for d in await read_all(
            stack.bootstrap, f"{stack.prefix}.dead-letters")
            if d.get("topic") == f"{stack.prefix}.commands"}
        why = await _attribute(conn, [ln for ln in lines if ln[0] in tracked], kills)
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
            **side,
            "poison": len(poison), "poison_dead_lettered": len(set(poison) & letters),
            "db_cuts": len(cuts), "db_connections_cut": sum(cuts),
            "kills": {"orchestrator": sum(k.kind == "orchestrator" for k in kills),
                      "worker": sum(k.kind == "worker" for k in kills)},
            "kill_to_progress_s": {kind: _percentiles(v) for kind, v in progress.items()},
        }
        # This build's decide over the whole log the chaos wrote: the same decisions.
        shadow = await database_histories(stack.database_url, Filter())
        figures["shadow_replay"] = {
            "runs": len(shadow.runs), "compared": sum(r.compared for r in shadow.runs),
            "differences": shadow.differences,
            "not_rebuilt": dict(Counter(u.reason for r in shadow.runs
                                        for u in r.unreconstructed))}
        print(f"\nchaos ({'long' if LONG else 'short'}): {figures}")
        for reason, n in why.items():
            print(f"  duplicate side effects: {n:4d}  {reason}")
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
        assert shadow.differences == 0, shadow.as_dict()["differences"][:3]
        # Not asserted (printed above with why each happened, see README "Chaos"): a
        # SIGKILL can still make a side effect happen twice — a task killed after its
        # side effect but before its shell exited, and one whose end the next worker on
        # the machine reported only after its lease had lapsed, are retried. Claims and
        # end reports that survive the worker took the long form from ≈ 20-140 to ≈ 1.
        assert side["successes_without_side_effect"] == 0, figures
        assert side["side_effects_of_no_success"] == 0, figures
        assert len(cuts) >= 2 and poison and set(poison) <= letters, figures
        for p in stack.processes:
            assert p.alive() or p.name in ("orchestrator", "worker"), f"{p.name} exited"
    finally:
        await producer.stop()
        await admin.close()
        await conn.close()
