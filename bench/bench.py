"""make bench: the figures the issues ask for, against the real broker and Postgres.

1. Diamond latency: publish StartWorkflow -> WorkflowSucceeded committed (median of 10,
   after one warm-up run so the consumer groups have joined).
2. Burst: 1,000 StartWorkflow of a 1-task DAG published at once with no worker running;
   events appended per second by the orchestrator (3 events per start).
3. Then one worker (8 slots) drains the 1,000 runs: runs completed per second.
4. Scheduler: lateness of fires of a schedule every second (run submitted - fire time);
   the time from SIGKILL of the owning scheduler (two running, default session timeout)
   to the first fire submitted by the other; a parallel backfill of 200 dates
   (parallelism 20, one-task runs): runs per second.
5. Python (bench/python_bench.py): Windmill's fibo-40-10 and fibo-10-33 flows, 200
   fibo(10) in parallel, Python task start (warm runner and cold interpreter) and the
   idle warm runner's RSS and CPU.
6. Workloads (bench/workloads.py): chain50, fanout200, many_runs, sleep_fanout (3 times
   each), then the whole stack's idle CPU over 30 s; ``sustained``: 10,000 one-task runs
   through the REST API; ``scale``: 10,000 active runs, orchestrator RSS, SIGKILL and
   recovery.
7. Event log (bench/log_bench.py): loading a 2,000- and a 10,000-event instance whole vs
   from its snapshot, a full consistency check's instances/s (over everything the other
   groups left in the log), then the log grown to 1,000,000 events: the projector's
   catch-up and the online rebuild, events/s.
8. Migrations (bench/migrations_bench.py, its own database): a 1,000,000-event log at the
   previous release's schema, this tree's pending migrations applied one by one while
   appends go on: each one's duration, longest lock and longest append stall.

`bench.py [core] [python] [workloads] [sustained] [scheduler] [scale] [log] [migrations]` runs only
those groups (default: all, in that order). A table of the figures is printed at the end
and everything goes to ``bench/results/<UTC time>.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer

from bench import workloads
from bench.log_bench import bench_log
from bench.migrations_bench import bench_migrations, migrations_table
from bench.python_bench import bench_python, python_start, write_code
from bench.table import table
from bench.workloads import start
from shoal.infra.db import migrate
from shoal.infra.processes import OwnedProcess, free_port, service_argv, start_broker, wait_port

ADMIN = os.environ.get("SHOAL_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DIAMOND = {"name": "diamond", "tasks": [
    {"name": "a", "command": "true"}, {"name": "b", "command": "true", "depends_on": ["a"]},
    {"name": "c", "command": "true", "depends_on": ["a"]},
    {"name": "d", "command": "true", "depends_on": ["b", "c"]}]}
ONE = {"name": "one", "tasks": [{"name": "only", "command": "true"}]}


async def wait_until(probe, limit_s: float = 120.0, interval: float = 0.01):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        got = await probe()
        if got:
            return got
        await asyncio.sleep(interval)
    raise TimeoutError("benchmark step timed out")


TOKEN = secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


GROUPS = ("core", "python", "workloads", "sustained", "scheduler", "scale", "log", "migrations")


async def main() -> None:
    groups = [g for a in sys.argv[1:] for g in a.split() if g] or list(GROUPS)
    unknown = set(groups) - set(GROUPS)
    if unknown:
        sys.exit(f"unknown benchmark group(s) {', '.join(sorted(unknown))}; "
                 f"choose from {', '.join(GROUPS)}")
    results: dict[str, object] = {}
    if "migrations" in groups:  # its own database at the previous release's schema
        groups.remove("migrations")
        results["migrations"] = await bench_migrations(ADMIN)
        if not groups:
            return save(results, bootstrap_given=None)
    work = Path(tempfile.mkdtemp(prefix="shoal-bench-"))
    code = write_code(work / "code")
    owned: list[OwnedProcess] = []
    bootstrap = os.environ.get("SHOAL_KAFKA_BOOTSTRAP")
    if not bootstrap:
        port = free_port()
        owned.append(start_broker(port, work / "broker.log"))
        bootstrap = f"127.0.0.1:{port}"
    dbname = f"shoal_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN)
    await admin.execute(f'CREATE DATABASE "{dbname}"')
    db = ADMIN.rpartition("/")[0] + "/" + dbname
    await migrate(db)
    prefix = f"bench{secrets.token_hex(3)}"
    api_port = free_port()
    env = {**os.environ, "SHOAL_KAFKA_BOOTSTRAP": bootstrap, "SHOAL_DATABASE_URL": db,
           "SHOAL_TOPIC_PREFIX": prefix, "SHOAL_API_PORT": str(api_port),
           "SHOAL_DATA_DIR": str(work / "data"), "SHOAL_LOG_LEVEL": "WARNING",
           "SHOAL_API_TOKENS": f"admin:{TOKEN}", "SHOAL_METRICS_PORT": "0",
           "SHOAL_CODE_PATH": str(code), "SHOAL_PYTHON_PRELOAD": "benchfibo"}

    def spawn(name: str, **extra: str) -> OwnedProcess:
        n = sum(1 for p in owned if p.name == name)
        p = OwnedProcess(name, service_argv(name), {**env, **extra},
                         work / f"{name}-{n}.log").start()
        owned.append(p)
        return p

    pool = await asyncpg.create_pool(db, min_size=1, max_size=4)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        spawn("api")
        wait_port("127.0.0.1", api_port, 60)
        api = f"http://127.0.0.1:{api_port}"
        async with httpx.AsyncClient(base_url=api, timeout=30, headers=AUTH) as c:
            for d in (DIAMOND, ONE):
                (await c.post("/api/v1/workflows", json=d)).raise_for_status()
            await workloads.publish(c)
        orchestrator = spawn("orchestrator")
        worker = spawn("worker")
        await producer.start()
        if "core" in groups:
            results.update(await bench_core(producer, f"{prefix}.commands", pool, worker,
                                            spawn))
        else:
            spawn("projector")
        if "python" in groups:
            async with httpx.AsyncClient(base_url=api, timeout=30, headers=AUTH) as c:
                results["python"] = await bench_python(c, pool, wait_until)
            results["python_start"] = await python_start(work, code)
        async with httpx.AsyncClient(base_url=api, timeout=60, headers=AUTH) as c:
            if "workloads" in groups:
                results["workloads"] = await workloads.bench_workloads(c, pool, wait_until)
                results["idle"] = await workloads.bench_idle(owned)
            if "sustained" in groups:
                results["sustained"] = await workloads.bench_sustained(
                    c, pool, bootstrap, prefix,
                    runs=int(os.environ.get("BENCH_SUSTAINED_RUNS", "10000")))
        if "scheduler" in groups:
            results.update(await bench_scheduler(api, pool, spawn))
        if "scale" in groups:
            results["scale"] = await workloads.bench_scale(
                producer, f"{prefix}.commands", pool, orchestrator, spawn, wait_until,
                runs=int(os.environ.get("BENCH_SCALE_RUNS", "10000")))

        def restart_projector():  # type: ignore[no-untyped-def]
            for p in owned:
                if p.name == "projector" and p.alive():
                    p.stop()
            return lambda: spawn("projector", SHOAL_CHECK_INTERVAL="0")

        if "log" in groups:
            results["log"] = await bench_log(
                pool, restart_projector,
                total=int(os.environ.get("BENCH_LOG_EVENTS", "1000000")))
    finally:
        await producer.stop()
        await pool.close()
        for p in reversed(owned):
            p.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        await admin.close()
    save(results, bootstrap_given=bool(os.environ.get("SHOAL_KAFKA_BOOTSTRAP")))


def save(results: dict[str, object], bootstrap_given: bool | None) -> None:
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H%M%S", time.gmtime())
    results["machine"] = machine(bootstrap_given=bootstrap_given)
    (out / f"{stamp}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    if set(results) - {"migrations", "machine"}:
        print(table(results))
    if "migrations" in results:
        print(migrations_table(results["migrations"]))  # type: ignore[arg-type]
    print(f"results: bench/results/{stamp}.json")


def machine(bootstrap_given: bool | None) -> dict[str, object]:
    """``bootstrap_given``: None when no broker was used."""
    cpu = next((ln.split(":", 1)[1].strip() for ln in
                Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")),
               "unknown")
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": sys.version.split()[0],
            "broker": "none" if bootstrap_given is None else
            "given (SHOAL_KAFKA_BOOTSTRAP)" if bootstrap_given else "embedded"}


async def bench_core(producer: AIOKafkaProducer, topic: str, pool: asyncpg.Pool,
                 worker: OwnedProcess, spawn) -> dict[str, object]:  # type: ignore[no-untyped-def]
    results: dict[str, object] = {}

    async def succeeded_at(iid: str) -> float | None:
        ts = await pool.fetchval(
            "SELECT extract(epoch FROM recorded_at) FROM shoal.events "
            "WHERE instance_id = $1 AND type IN ('WorkflowSucceeded', 'WorkflowFailed')",
            uuid.UUID(iid))
        return float(ts) if ts is not None else None

    latencies = []
    for i in range(11):
        iid, value = start("diamond")
        t0 = time.time()
        await producer.send_and_wait(topic, value, key=iid.encode())
        done = await wait_until(lambda iid=iid: succeeded_at(iid))
        if i:  # the first run is the warm-up (consumer groups joining)
            latencies.append((done - t0) * 1000)
    results["diamond_all_ms"] = [round(x) for x in latencies]
    results["diamond_ms"] = {"median": round(statistics.median(latencies), 1),
                             "min": round(min(latencies), 1),
                             "max": round(max(latencies), 1), "runs": len(latencies)}

    worker.stop()
    burst = [start("one") for _ in range(1000)]
    ids = [uuid.UUID(i) for i, _ in burst]

    async def appended() -> int:
        return int(await pool.fetchval(
            "SELECT count(*) FROM shoal.events WHERE instance_id = ANY($1::uuid[])", ids))

    t0 = time.monotonic()
    futures = [await producer.send(topic, v, key=i.encode()) for i, v in burst]
    await asyncio.gather(*futures)
    t_published = time.monotonic()
    await wait_until(lambda: _at_least(appended, 3000), limit_s=300)
    t_done = time.monotonic()
    results["burst_1000_starts"] = {
        "events": 3000, "publish_s": round(t_published - t0, 3),
        "append_s": round(t_done - t0, 3),
        "events_per_s": round(3000 / (t_done - t0)),
    }

    async def finished() -> int:
        return int(await pool.fetchval(
            "SELECT count(*) FROM shoal.events WHERE instance_id = ANY($1::uuid[]) "
            "AND type = 'WorkflowSucceeded'", ids))

    t0 = time.monotonic()
    spawn("worker")
    await wait_until(lambda: _at_least(finished, 1000), limit_s=600, interval=0.1)
    elapsed = time.monotonic() - t0
    results["drain_1000_runs_one_worker_default_slots"] = {
        "seconds_incl_group_join": round(elapsed, 1),
        "runs_per_s": round(1000 / elapsed, 1)}
    spawn("projector")
    return results


async def bench_scheduler(api: str, pool: asyncpg.Pool, spawn) -> dict[str, object]:  # type: ignore[no-untyped-def]
    out: dict[str, object] = {}
    # INFO: the scheduler logs each fire, which tells which one owns the schedule.
    schedulers = [spawn("scheduler", SHOAL_LOG_LEVEL="INFO", SHOAL_LOG_FORMAT="text"),
                  spawn("scheduler", SHOAL_LOG_LEVEL="INFO", SHOAL_LOG_FORMAT="text")]
    async with httpx.AsyncClient(base_url=api, timeout=30, headers=AUTH) as c:
        r = await c.post("/api/v1/schedules", json={"workflow": "one", "cron": "* * * * * ?"})
        r.raise_for_status()
        sid = r.json()["id"]

        async def lateness() -> list[float]:
            rows = await pool.fetch(
                "SELECT extract(epoch FROM e.recorded_at - r.schedule_time) AS late FROM "
                "shoal_read.workflow_runs r JOIN shoal.events e ON e.instance_id = "
                "r.instance_id AND e.seq = 1 WHERE r.workflow = 'one' AND r.schedule_time "
                "IS NOT NULL ORDER BY r.schedule_time")
            return [float(x["late"]) * 1000 for x in rows]

        await wait_until(lambda: _len_at_least(lateness, 25), limit_s=120, interval=0.2)
        late = (await lateness())[-20:]  # steady state: not the fires of the groups' joining
        out["schedule_fire_lateness_ms"] = {"median": round(statistics.median(late), 1),
                                            "max": round(max(late), 1), "fires": len(late)}

        def fired_last(p: OwnedProcess) -> str:
            lines = [ln for ln in p.log_path.read_text().splitlines()  # type: ignore[union-attr]
                     if f"schedule {sid} fired" in ln]
            return lines[-1][:25] if lines else ""

        victim = max(schedulers, key=fired_last)
        t_kill = time.time()
        victim.kill9()

        async def first_after() -> float | None:
            ts = await pool.fetchval(
                "SELECT extract(epoch FROM min(e.recorded_at)) FROM shoal.events e JOIN "
                "shoal_read.workflow_runs r USING (instance_id) WHERE e.seq = 1 AND "
                "r.workflow = 'one' AND e.recorded_at > to_timestamp($1)", t_kill)
            return float(ts) if ts is not None else None

        t_first = await wait_until(first_after, limit_s=120, interval=0.2)
        out["scheduler_sigkill_to_first_caught_up_fire_s"] = round(t_first - t_kill, 1)
        (await c.put(f"/api/v1/schedules/{sid}", json={"enabled": False})).raise_for_status()

        t0 = time.monotonic()
        r = await c.post("/api/v1/workflows/one/backfill", json={
            "start": "2020-01-01", "end": "2020-07-18", "cron": "0 0 * * *", "mode": "parallel",
            "parallelism": 20})
        r.raise_for_status()
        bid = r.json()["backfill_id"]

        async def bf_done() -> bool:
            p = (await c.get(f"/api/v1/backfills/{bid}")).json()
            return bool(p["state"] == "finished")

        await wait_until(bf_done, limit_s=600, interval=0.2)
        elapsed = time.monotonic() - t0
        out["backfill_200_parallel_20"] = {"seconds": round(elapsed, 1),
                                           "runs_per_s": round(200 / elapsed, 1)}
    return out


async def _len_at_least(probe, n: int) -> bool:  # type: ignore[no-untyped-def]
    return len(await probe()) >= n


async def _at_least(probe, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await probe() >= n


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
