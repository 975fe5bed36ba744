"""The performance issue's workloads (group ``workloads``, ``sustained`` and ``scale``).

Every figure comes from the runs' own timestamps in the read model (started_at to
finished_at), never from the client's clock, except where the issue asks for process
figures (CPU, RSS) which come from ``/proc``.

* ``chain50`` (50 ``true`` tasks in a line: total, hop p50/p99 = a task's end to the next
  one's start), ``fanout200`` (1 → 200 → 1), ``many_runs`` (100 runs of a 3-task chain
  published at once: first start to last end, tasks/s), ``sleep_fanout`` (20 x ``sleep 1``
  at the default slots). Each 3 times: median, min, max.
* ``idle``: CPU of every process of the stack (each service's process group, the broker)
  over 30 s with nothing running, in three 10 s windows.
* ``sustained``: 10,000 one-task runs submitted through the REST API as fast as it
  accepts them (8 clients): submissions/s, completions/s and the orchestrator's lag on
  ``<prefix>.commands`` sampled every second.
* ``scale``: 10,000 active runs, each holding a dispatched task nobody takes (a worker
  group without workers): the orchestrator's RSS, then SIGKILL and the time until a new
  orchestrator has loaded them all again.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.procfs import group_ticks, rss_mb
from bench.python_bench import summary
from shoal.infra import codec
from shoal.infra.kafka import partitions_of

Wait = Callable[..., Awaitable[Any]]


def _line(name: str, n: int) -> dict[str, Any]:
    return {"name": name, "tasks": [
        {"name": f"t{i:03d}", "command": "true", **({"depends_on": [f"t{i - 1:03d}"]} if i else {})}
        for i in range(n)]}


WORKLOADS = {
    "chain50": _line("bench-chain50", 50),
    "fanout200": {"name": "bench-fanout200", "tasks": [
        {"name": "head", "command": "true"},
        *({"name": f"f{i:03d}", "command": "true", "depends_on": ["head"]} for i in range(200)),
        {"name": "tail", "command": "true", "depends_on": [f"f{i:03d}" for i in range(200)]}]},
    "many_runs": _line("bench-chain3", 3),
    "sleep_fanout": {"name": "bench-sleep20", "tasks": [
        {"name": f"s{i:02d}", "command": "sleep 1"} for i in range(20)]},
}
PARKED = {"name": "bench-parked", "tasks": [
    {"name": "long", "command": "sleep 3600", "worker_group": "bench-nobody"}]}
ONE = {"name": "bench-one", "tasks": [{"name": "only", "command": "true"}]}


def start(workflow: str) -> tuple[str, bytes]:
    """A StartWorkflow command for ``workflow``: (instance id, value), for the commands topic."""
    iid = str(uuid.uuid4())
    return iid, codec.dumps({"type": "StartWorkflow", "message_id": str(uuid.uuid4()),
                             "instance_id": iid, "sent_at": "2026-01-01T00:00:00+00:00",
                             "workflow": workflow})


async def publish(c: httpx.AsyncClient) -> None:
    for d in (*WORKLOADS.values(), PARKED, ONE):
        (await c.post("/api/v1/workflows", json=d)).raise_for_status()


async def _start(c: httpx.AsyncClient, workflow: str) -> uuid.UUID:
    r = await c.post(f"/api/v1/workflows/{workflow}/runs", json={})
    r.raise_for_status()
    return uuid.UUID(r.json()["instance_id"])


async def _finished(pool: asyncpg.Pool, ids: list[uuid.UUID], wait: Wait,
                    limit_s: float = 300) -> list[asyncpg.Record]:
    async def probe() -> list[asyncpg.Record] | None:
        rows = await pool.fetch(
            "SELECT instance_id, state, extract(epoch FROM started_at) AS s, "
            "extract(epoch FROM finished_at) AS f FROM shoal_read.workflow_runs "
            "WHERE instance_id = ANY($1::uuid[]) AND state IN ('succeeded', 'failed', 'stopped')",
            ids)
        return rows if len(rows) == len(ids) else None

    rows: list[asyncpg.Record] = await wait(probe, limit_s=limit_s, interval=0.05)
    bad = [r for r in rows if r["state"] != "succeeded"]
    if bad:
        raise RuntimeError(f"{len(bad)} benchmark runs did not succeed: {bad[0]['state']}")
    return rows


async def _hops(pool: asyncpg.Pool, iid: uuid.UUID) -> list[float]:
    rows = await pool.fetch(
        "SELECT extract(epoch FROM started_at) AS s, extract(epoch FROM finished_at) AS f "
        "FROM shoal_read.task_runs WHERE instance_id = $1 ORDER BY task", iid)
    return [(float(b["s"]) - float(a["f"])) * 1000 for a, b in itertools.pairwise(rows)]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1)


async def bench_workloads(c: httpx.AsyncClient, pool: asyncpg.Pool, wait: Wait,
                          repeat: int = 3) -> dict[str, Any]:
    out: dict[str, Any] = {}
    await _finished(pool, [await _start(c, "bench-chain3")], wait)  # warm-up
    for key in ("chain50", "fanout200", "sleep_fanout"):
        totals, hops = [], []
        for _ in range(repeat):
            iid = await _start(c, WORKLOADS[key]["name"])
            (run,) = await _finished(pool, [iid], wait)
            totals.append(float(run["f"]) - float(run["s"]))
            if key == "chain50":
                hops += await _hops(pool, iid)
        out[key] = {"total_s": summary(totals)}
        if hops:
            out[key]["hop_ms"] = {"p50": _pct(hops, 0.5), "p99": _pct(hops, 0.99),
                                  "max": round(max(hops), 1), "hops": len(hops)}
    totals = []
    for _ in range(repeat):
        ids = await asyncio.gather(*(_start(c, "bench-chain3") for _ in range(100)))
        rows = await _finished(pool, list(ids), wait)
        totals.append(max(float(r["f"]) for r in rows) - min(float(r["s"]) for r in rows))
    out["many_runs"] = {"total_s": summary(totals),
                        "tasks_per_s": round(300 / statistics.median(totals), 1)}
    return out


# ---------------------------------------------------------------------------- idle
async def bench_idle(processes: list[Any], seconds: float = 30.0,
                     windows: int = 3) -> dict[str, Any]:
    """CPU of each owned process group, as % of one core, over ``windows`` windows."""
    tick = os.sysconf("SC_CLK_TCK")
    await asyncio.sleep(3.0)  # let the last work's reports and relays settle
    names: dict[int, str] = {}
    for p in processes:
        if p.alive():
            n = sum(1 for q in names.values() if q.startswith(p.name))
            names[p.pid] = p.name if not n else f"{p.name}-{n + 1}"
    per: dict[str, list[float]] = {n: [] for n in names.values()}
    totals = []
    for _ in range(windows):
        before = {pid: group_ticks(pid) for pid in names}
        t0 = time.monotonic()
        await asyncio.sleep(seconds / windows)
        dt = time.monotonic() - t0
        total = 0.0
        for pid, name in names.items():
            pct = (group_ticks(pid) - before[pid]) / tick / dt * 100
            per[name].append(pct)
            total += pct
        totals.append(total)
    return {"seconds": seconds, "total_percent_of_a_core": summary(totals, 1),
            "per_process_percent": {n: round(statistics.median(v), 1) for n, v in per.items()}}


# ---------------------------------------------------------------------------- sustained
class _Lag:
    """Records on ``topic`` past the offsets ``group`` committed (read as a non-member:
    this consumer never subscribes, so it never joins the group)."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                       enable_auto_commit=False)

    async def start(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:  # a request naming the topic: the reader's own metadata has no topics yet
            parts = await partitions_of(admin, self.topic)
        finally:
            await admin.close()
        await self.reader.start()
        self.parts = [TopicPartition(self.topic, p) for p in sorted(parts)]

    async def __call__(self) -> int:
        end = await self.reader.end_offsets(self.parts)
        lag = 0
        for tp in self.parts:
            committed = await self.reader.committed(tp)
            lag += max(0, end[tp] - (committed or 0))
        return lag

    async def close(self) -> None:
        await self.reader.stop()


async def bench_sustained(c: httpx.AsyncClient, pool: asyncpg.Pool, bootstrap: str,
                          prefix: str, runs: int = 10_000, clients: int = 8) -> dict[str, Any]:
    lag = _Lag(bootstrap, f"{prefix}.commands", f"{prefix}.orchestrator")
    await lag.start()
    ids: list[uuid.UUID] = []
    todo = iter(range(runs))
    t0 = time.monotonic()
    since = await pool.fetchval("SELECT coalesce(max(global_position), 0) FROM shoal.events")

    async def feeder() -> None:
        for _ in todo:
            ids.append(await _start(c, "bench-one"))

    async def done() -> int:
        return int(await pool.fetchval(
            "SELECT count(*) FROM shoal.events e JOIN shoal_read.workflow_runs r USING "
            "(instance_id) WHERE e.global_position > $1 AND e.type = 'WorkflowSucceeded' "
            "AND r.workflow = 'bench-one'", since))

    feed = asyncio.gather(*(feeder() for _ in range(clients)))
    samples: list[dict[str, float]] = []
    fed_at = None
    try:
        while True:
            await asyncio.sleep(1.0)
            n = await done()
            samples.append({"t": round(time.monotonic() - t0, 1), "submitted": len(ids),
                            "completed": n, "commands_lag": await lag()})
            if fed_at is None and feed.done():
                fed_at = time.monotonic() - t0
                feed.result()
            if n >= runs:
                break
            if time.monotonic() - t0 > 600:
                raise TimeoutError(f"sustained: {n} of {runs} runs completed in 600 s")
    finally:
        await lag.close()
    span = await pool.fetchrow(
        "SELECT extract(epoch FROM max(finished_at) - min(started_at)) AS s FROM "
        "shoal_read.workflow_runs WHERE instance_id = ANY($1::uuid[])", ids)
    seconds = float(span["s"])
    return {"runs": runs, "submit_s": round(fed_at or 0.0, 1),
            "submitted_per_s": round(runs / fed_at, 1) if fed_at else None,
            "first_start_to_last_end_s": round(seconds, 1),
            "tasks_per_s": round(runs / seconds, 1),
            "max_commands_lag": max(s["commands_lag"] for s in samples),
            "lag_over_time": samples}


# ---------------------------------------------------------------------------- scale
async def bench_scale(producer: Any, topic: str, pool: asyncpg.Pool, orchestrator: Any,
                      spawn: Callable[..., Any], wait: Wait, runs: int = 10_000
                      ) -> dict[str, Any]:
    rss_before = rss_mb(orchestrator.pid)
    burst = [start("bench-parked") for _ in range(runs)]
    ids = [uuid.UUID(i) for i, _ in burst]
    t0 = time.monotonic()
    futures = [await producer.send(topic, v, key=i.encode()) for i, v in burst]
    await asyncio.gather(*futures)

    async def dispatched() -> bool:
        n = await pool.fetchval(
            "SELECT count(*) FROM shoal.events WHERE instance_id = ANY($1::uuid[]) "
            "AND type = 'TaskDispatched'", ids)
        return bool(n >= runs)

    await wait(dispatched, limit_s=600, interval=0.25)
    started_s = time.monotonic() - t0
    # The orchestrator's append rate once the commands flow, from the events' own commit
    # times: every event of these runs, first transaction's start to last one's.
    span = await pool.fetchrow(
        "SELECT count(*) AS n, extract(epoch FROM max(recorded_at) - min(recorded_at)) AS s "
        "FROM shoal.events WHERE instance_id = ANY($1::uuid[])", ids)
    await asyncio.sleep(2.0)
    rss = rss_mb(orchestrator.pid)
    t_kill = time.monotonic()
    orchestrator.kill9()
    successor = spawn("orchestrator", SHOAL_LOG_LEVEL="INFO", SHOAL_LOG_FORMAT="text")

    async def loaded() -> int | None:
        text = successor.log_path.read_text() if successor.log_path.exists() else ""
        n = sum(int(line.split("loaded ", 1)[1].split()[0]) for line in text.splitlines()
                if "unfinished instances of partitions" in line)
        return n if n >= runs else None

    await wait(loaded, limit_s=300, interval=0.05)
    recovered = time.monotonic() - t_kill
    await asyncio.sleep(1.0)
    return {"active_runs": runs, "started_and_dispatched_s": round(started_s, 1),
            "append": {"events": span["n"], "first_to_last_commit_s": round(float(span["s"]), 2),
                       "events_per_s": round(span["n"] / float(span["s"]))
                       if span["s"] else None},
            "orchestrator_rss_mb": rss, "orchestrator_rss_before_mb": rss_before,
            "sigkill_to_all_loaded_s": round(recovered, 1),
            "successor_rss_mb": rss_mb(successor.pid)}
