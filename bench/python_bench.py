"""Python-native workloads of `make bench` (Windmill's orchestrator benchmark and more).

* ``fibo-40-10``: one flow of 40 Python function tasks in sequence, each a naive
  recursive ``fibo(10)``; ``fibo-10-33``: 10 tasks of ``fibo(33)`` in sequence, against
  the compute floor measured on this machine in the same run; ``fibo-200-parallel``:
  200 ``fibo(10)`` tasks with no dependencies. Each 3 times: total (the run's own
  timestamps, start to end), per-hop gap (a task's end to the next one's start, from
  the read model) and execution share (time inside tasks / total), as Windmill reports.
* ``python-start``: dispatch taken by the worker to user code running, for the warm
  runner and for a cold interpreter per task, through the worker's own attempt code
  (no broker involved: this is the worker's share of a hop).
* ``warm-runner-idle``: RSS and CPU of an idle warm runner (zygote and its spare).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.procfs import children, cpu_ticks, pss_kb, status_kb

FIBO = '''
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def fibo(n):
    return {"value": fib(n)}


def stamp():
    import time
    return {"t": time.monotonic()}
'''

# Windmill's published totals (2-vCPU AWS m4.large, one worker; other hardware).
WINDMILL_PUBLISHED_40x10_S = {
    "Airflow": 116.2, "Kestra": 6.04, "Prefect": 4.87, "Windmill": 4.38, "Temporal": 2.97,
    "Windmill (dedicated workers)": 2.09, "Hatchet": 1.22}


def write_code(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "benchfibo.py").write_text(FIBO)
    return root


def chain(name: str, n_tasks: int, arg: int) -> dict[str, Any]:
    return {"name": name, "tasks": [
        {"name": f"t{i:03d}", "type": "python", "function": "benchfibo:fibo",
         "args": {"n": arg}, "outputs": ["value"],
         **({"depends_on": [f"t{i - 1:03d}"]} if i else {})} for i in range(n_tasks)]}


def fan(name: str, n_tasks: int, arg: int) -> dict[str, Any]:
    return {"name": name, "tasks": [
        {"name": f"t{i:03d}", "type": "python", "function": "benchfibo:fibo",
         "args": {"n": arg}, "outputs": ["value"]} for i in range(n_tasks)]}


def summary(xs: list[float], digits: int = 3) -> dict[str, float]:
    return {"median": round(statistics.median(xs), digits), "min": round(min(xs), digits),
            "max": round(max(xs), digits)}


def compute_floor(n: int, times: int) -> float:
    """Seconds of ``times`` x fib(n) in one process here (what no scheduler can beat)."""
    namespace: dict[str, Any] = {}
    exec(FIBO, namespace)
    t0 = time.perf_counter()
    for _ in range(times):
        namespace["fib"](n)
    return time.perf_counter() - t0


async def one_run(c: httpx.AsyncClient, pool: asyncpg.Pool, workflow: str,
                  wait: Callable[..., Awaitable[Any]]) -> dict[str, float]:
    r = await c.post(f"/api/v1/workflows/{workflow}/runs", json={})
    r.raise_for_status()
    iid = uuid.UUID(r.json()["instance_id"])

    async def done() -> asyncpg.Record | None:
        row = await pool.fetchrow(
            "SELECT state, extract(epoch FROM started_at) AS s, "
            "extract(epoch FROM finished_at) AS f FROM shoal_read.workflow_runs "
            "WHERE instance_id = $1 AND state IN ('succeeded', 'failed')", iid)
        return row

    run = await wait(done, limit_s=600, interval=0.05)
    if run["state"] != "succeeded":
        raise RuntimeError(f"benchmark run {iid} of {workflow} {run['state']}")
    tasks = await pool.fetch(
        "SELECT task, extract(epoch FROM started_at) AS s, extract(epoch FROM finished_at) AS f"
        " FROM shoal_read.task_runs WHERE instance_id = $1 ORDER BY started_at", iid)
    total = float(run["f"]) - float(run["s"])
    busy = sum(float(t["f"]) - float(t["s"]) for t in tasks)
    gaps = [float(b["s"]) - float(a["f"]) for a, b in itertools.pairwise(tasks)]
    return {"total_s": total, "hop_ms": statistics.median(gaps) * 1000 if gaps else 0.0,
            "execution_share": busy / total if total else 0.0}


async def bench_python(c: httpx.AsyncClient, pool: asyncpg.Pool,
                       wait: Callable[..., Awaitable[Any]], repeat: int = 3) -> dict[str, Any]:
    """The Windmill workloads and the fan-out through the running stack."""
    out: dict[str, Any] = {}
    for d in (chain("fibo-40-10", 40, 10), chain("fibo-10-33", 10, 33),
              fan("fibo-200-parallel", 200, 10)):
        (await c.post("/api/v1/workflows", json=d)).raise_for_status()
    await one_run(c, pool, "fibo-40-10", wait)  # warm-up: groups joined, caches filled
    floor = compute_floor(33, 10)
    for name in ("fibo-40-10", "fibo-10-33", "fibo-200-parallel"):
        runs = [await one_run(c, pool, name, wait) for _ in range(repeat)]
        entry: dict[str, Any] = {
            "total_s": summary([r["total_s"] for r in runs]),
            "hop_ms": summary([r["hop_ms"] for r in runs], 1),
            "execution_share": summary([r["execution_share"] for r in runs], 2)}
        if name == "fibo-10-33":
            entry["compute_floor_s"] = round(floor, 3)
            entry["total_over_floor"] = summary([r["total_s"] / floor for r in runs])
        if name == "fibo-200-parallel":
            del entry["hop_ms"]
        out[name] = entry
    out["windmill_published_40x10_s"] = WINDMILL_PUBLISHED_40x10_S
    return out


async def python_start(work: Path, code: Path, n: int = 200) -> dict[str, Any]:
    """Dispatch taken → user code running, through the worker's Attempt (warm and cold)."""
    from shoal_worker.executor import Attempt
    from shoal_worker.warm import WarmPython

    env = {**os.environ, "SHOAL_CODE_PATH": str(code)}
    out: dict[str, Any] = {}
    fn = {"function": "benchfibo:stamp", "args": {}}
    for label, preload, use_warm, spec in (
            ("warm_function_preloaded_ms", "benchfibo", True, fn),
            ("warm_function_ms", "", True, fn),
            ("warm_script_ms", "", True, None),
            ("cold_script_ms", "", False, None)):
        warm = WarmPython({**env, "SHOAL_PYTHON_PRELOAD": preload})
        await warm.start()
        try:
            samples = []
            for i in range(n if use_warm else n // 4):
                d = {"instance_id": "bench", "task": f"{label}{i}", "attempt": 1,
                     "dispatch_id": f"{label}{i}", "task_type": "python", "outputs": ["t"],
                     "command": "import time\nprint('${setValue(t=%r)}' % time.monotonic())",
                     **({"spec": spec} if spec else {})}
                t0 = time.monotonic()
                a = Attempt(d, work / "start", env, warm=warm if use_warm else None,
                            code_path=(str(code),), received_at=t0, keep_workdir="never")
                o = await a.run()
                samples.append((float(o.outputs["t"]) - t0) * 1000)
                await asyncio.sleep(0.005)  # one at a time, as in a chain
            samples.sort()
            out[label] = {"p50": round(samples[len(samples) // 2], 2),
                          "p90": round(samples[int(len(samples) * 0.9)], 2),
                          "max": round(samples[-1], 2), "samples": len(samples)}
            if preload:
                out["warm_runner_idle"] = await _idle(warm)
        finally:
            await warm.close()
    return out


async def _idle(warm: Any) -> dict[str, Any]:
    """RSS (and PSS: shared pages counted once) of the zygote and its spare, and their
    CPU over 10 s with nothing to do."""
    pid = warm.pid
    pids = [pid, *children(pid)]
    await asyncio.sleep(1.0)
    cpu0 = sum(cpu_ticks(p) for p in pids)
    await asyncio.sleep(10.0)
    cpu1 = sum(cpu_ticks(p) for p in pids)
    return {"processes": len(pids),
            "rss_mb": round(sum(status_kb(p, "VmRSS") for p in pids) / 1024, 1),
            "pss_mb": round(sum(pss_kb(p) for p in pids) / 1024, 1),
            "cpu_percent_of_a_core": round((cpu1 - cpu0) / os.sysconf("SC_CLK_TCK") / 10 * 100,
                                           2)}
