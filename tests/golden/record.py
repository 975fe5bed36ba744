"""Record the golden corpus of this release: ``python -m tests.golden.record OUTDIR``.

Starts a stack of its own (the embedded broker unless SHOAL_TEST_KAFKA_BOOTSTRAP is set,
fresh databases on the PostgreSQL of SHOAL_DATABASE_URL or the local one), drives every
scenario below to its end through the API, and writes each run's history, read-model
rows and replay steps under OUTDIR (``tests/golden/<release>/``, see
:mod:`tests.golden.corpus`). ``make golden`` runs it for the version in pyproject.toml.
A recorded corpus is never re-recorded nor removed: later releases replay it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from shoal.core.rows import RUN_COLUMNS, TASK_COLUMNS
from shoal.infra.db import migrate
from shoal.infra.processes import free_port, start_broker
from tests.golden.corpus import dump, row
from tests.support import Stack, eventually

LOCAL_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
NS = uuid.UUID("2f6c0f8e-5d1a-4b8e-9c55-60a1d0e3b7a2")
FINISHED = ("succeeded", "failed", "stopped")

DEFINITIONS: list[dict[str, Any]] = [
    {"name": "g-chain", "params": {"who": "world"}, "tasks": [
        {"name": "a", "command": "echo '${setValue(greeting=hello-${who})}'",
         "outputs": ["greeting"]},
        {"name": "b", "command": "echo ${greeting}", "depends_on": ["a"]},
        {"name": "c", "command": "echo c", "depends_on": ["b"]}]},
    {"name": "g-fanout", "tasks": [
        {"name": "root", "command": "echo root"},
        *({"name": f"leaf{i}", "command": f"echo {i}", "depends_on": ["root"],
           "priority": p} for i, p in enumerate(["high", "medium", "low", "medium"])),
        {"name": "join", "command": "echo join",
         "depends_on": [f"leaf{i}" for i in range(4)]}]},
    # Fails on its first attempt (a marker file per key), succeeds on the retry.
    {"name": "g-retry", "params": {"key": "x"}, "tasks": [
        {"name": "flaky", "retries": 2, "retry_interval": 1,
         "command": "f=/tmp/shoal-golden-${key}; if [ -f $f ]; then rm -f $f; "
                    "exit 0; fi; touch $f; exit 3"}]},
    {"name": "g-exhausted", "tasks": [
        {"name": "never", "command": "exit 4", "retries": 1, "retry_interval": 1}]},
    {"name": "g-timeout", "tasks": [
        {"name": "slow", "command": "sleep 30", "timeout": 1, "timeout_strategy": "fail"},
        {"name": "after", "command": "echo after", "depends_on": ["slow"]}]},
    {"name": "g-slow", "tasks": [
        {"name": "first", "command": "sleep 4"},
        {"name": "second", "command": "echo second", "depends_on": ["first"]}]},
    {"name": "g-long", "tasks": [{"name": "long", "command": "sleep 60"}]},
    # Fails on its first run (a marker file per key): recover or force success finish it.
    {"name": "g-once", "params": {"key": "x"}, "tasks": [
        {"name": "prep", "command": "echo prep"},
        {"name": "flaky", "depends_on": ["prep"],
         "command": "f=/tmp/shoal-golden-${key}; if [ -f $f ]; then rm -f $f; "
                    "exit 0; fi; touch $f; exit 5"},
        {"name": "last", "command": "echo last", "depends_on": ["flaky"]}]},
    {"name": "g-routed", "params": {"code": "0"}, "tasks": [
        {"name": "check", "command": "exit ${code}"},
        {"name": "route", "type": "conditions", "depends_on": ["check"],
         "on_success": ["report"], "on_failure": ["alert"]},
        {"name": "report", "command": "echo report"},
        {"name": "publish", "command": "echo publish", "depends_on": ["report"]},
        {"name": "alert", "command": "echo alert"}]},
    {"name": "g-switched", "params": {"region": "eu"}, "tasks": [
        {"name": "pick", "type": "switch", "cases": [
            {"when": "${region} == 'eu'", "then": ["eu-load"]},
            {"when": "${region} in ['us', 'ca']", "then": ["us-load"]}],
         "default": ["other-load"]},
        {"name": "eu-load", "command": "echo eu"}, {"name": "us-load", "command": "echo us"},
        {"name": "other-load", "command": "echo other"}]},
    {"name": "g-child", "params": {"day": "x"}, "tasks": [
        {"name": "work", "command": "echo '${setValue(total=7-${day})}'",
         "outputs": ["total"]}]},
    {"name": "g-parent", "params": {"bizdate": "20260301"}, "tasks": [
        {"name": "sub", "type": "sub_workflow", "workflow": "g-child",
         "params": {"day": "${bizdate}"}, "outputs": ["total"]},
        {"name": "after", "command": "echo '${setValue(seen=${total})}'",
         "outputs": ["seen"], "depends_on": ["sub"]}]},
    {"name": "g-upstream", "tasks": [{"name": "u", "command": "true"}]},
    {"name": "g-held", "tasks": [
        {"name": "held", "command": "sleep 4", "retries": 1, "retry_interval": 1}]},
    {"name": "g-serial", "execution": "serial_wait", "tasks": [
        {"name": "turn", "command": "sleep 2"}]},
    {"name": "g-downstream", "tasks": [
        {"name": "wait", "type": "dependent", "timeout": 120,
         "depends_on_workflow": {"workflow": "g-upstream", "task": None,
                                 "date": "$[yyyyMMdd-1]"}},
        {"name": "go", "command": "echo go", "depends_on": ["wait"]}]},
]


class Recorder:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.scenarios: dict[str, list[str]] = {}

    def iid(self, scenario: str, n: int = 0) -> str:
        iid = str(uuid.uuid5(NS, f"{scenario}/{n}"))
        self.scenarios.setdefault(scenario, []).append(iid)
        return iid

    async def start(self, scenario: str, workflow: str, n: int = 0, **body: Any) -> str:
        iid = self.iid(scenario, n)
        r = await self.stack.request("POST", f"/api/v1/workflows/{workflow}/runs",
                                     json={"instance_id": iid, **body})
        assert r.status_code == 202, r.text
        return iid

    async def control(self, iid: str, action: str) -> None:
        r = await self.stack.request("POST", f"/api/v1/runs/{iid}/{action}")
        assert r.status_code == 202, r.text

    async def done(self, iid: str, *, attempt: int = 1,
                   states: tuple[str, ...] = FINISHED) -> dict[str, Any]:
        return await self.stack.wait_run(iid, states=states, timeout=120, attempt=attempt)


def _fresh_marker(key: str) -> str:
    """A marker file's key (the same in every recording): no marker left from before."""
    Path("/tmp", f"shoal-golden-{key}").unlink(missing_ok=True)
    return key


async def chain(rec: Recorder) -> None:
    await rec.done(await rec.start("chain", "g-chain", params={"who": "golden"}))


async def fanout(rec: Recorder) -> None:
    await rec.done(await rec.start("fanout", "g-fanout"))


async def retries(rec: Recorder) -> None:
    key = _fresh_marker("retry")
    ok = await rec.start("retry", "g-retry", params={"key": key})
    out = await rec.start("retries-exhausted", "g-exhausted")
    assert (await rec.done(ok))["state"] == "succeeded"
    assert (await rec.done(out))["state"] == "failed"


async def timeout(rec: Recorder) -> None:
    assert (await rec.done(await rec.start("timeout", "g-timeout")))["state"] == "failed"


async def pause_resume(rec: Recorder) -> None:
    iid = await rec.start("pause-resume", "g-slow")
    await rec.stack.wait_task_state(iid, "running", task="first", timeout=60)
    await rec.control(iid, "pause")
    await rec.stack.wait_state(iid, "paused", timeout=60)
    await rec.control(iid, "resume")
    assert (await rec.done(iid))["state"] == "succeeded"


async def stop_rerun(rec: Recorder) -> None:
    iid = await rec.start("stop-rerun", "g-long")
    await rec.stack.wait_task_state(iid, "running", task="long", timeout=60)
    await rec.control(iid, "stop")
    assert (await rec.done(iid))["state"] == "stopped"
    # A rerun of the chain once it succeeded: every task again, attempt 2.
    again = await rec.start("rerun", "g-chain")
    await rec.done(again)
    await rec.control(again, "rerun")
    assert (await rec.done(again, attempt=2))["state"] == "succeeded"


async def recover_force(rec: Recorder) -> None:
    key = _fresh_marker("recover")
    iid = await rec.start("recover", "g-once", params={"key": key})
    assert (await rec.done(iid))["state"] == "failed"
    await rec.control(iid, "recover")
    assert (await rec.done(iid, attempt=2))["state"] == "succeeded"
    key = _fresh_marker("force")
    forced = await rec.start("force-success", "g-once", params={"key": key})
    assert (await rec.done(forced))["state"] == "failed"
    Path("/tmp", f"shoal-golden-{key}").unlink(missing_ok=True)
    r = await rec.stack.request("POST", f"/api/v1/runs/{forced}/tasks/flaky/force-success")
    assert r.status_code == 202, r.text
    await rec.stack.wait_task_state(forced, "forced_success", task="flaky", timeout=60)
    if (await rec.stack.run_state(forced) or {}).get("state") == "failed":
        await rec.control(forced, "recover")
    assert (await rec.done(forced, attempt=2))["state"] == "succeeded"


async def branches(rec: Recorder) -> None:
    ids = [await rec.start("conditions", "g-routed", 0, params={"code": "0"}),
           await rec.start("conditions", "g-routed", 1, params={"code": "3"}),
           await rec.start("switch", "g-switched", 0, params={"region": "eu"}),
           await rec.start("switch", "g-switched", 1, params={"region": "jp"})]
    for iid in ids:
        assert (await rec.done(iid))["state"] == "succeeded"


async def sub_workflow(rec: Recorder) -> None:
    assert (await rec.done(await rec.start("sub-workflow", "g-parent")))["state"] == \
        "succeeded"


async def dependent(rec: Recorder) -> None:
    down = await rec.start("dependent", "g-downstream",
                           schedule_time="2026-03-02T01:00:00+00:00")
    await rec.stack.wait_task_state(down, "running", task="wait", timeout=60)
    up = await rec.start("dependent", "g-upstream", 1,
                         schedule_time="2026-03-01T05:00:00+00:00")
    await rec.done(up)
    assert (await rec.done(down))["state"] == "succeeded"


async def dry_run(rec: Recorder) -> None:
    await rec.done(await rec.start("dry-run", "g-fanout", dry_run=True))


async def fork(rec: Recorder) -> None:
    source = await rec.start("fork", "g-chain", 0)
    await rec.done(source)
    events = await rec.stack.events(source)
    at = next(e["seq"] for e in events if e["type"] == "TaskSucceeded")  # a succeeded
    iid = rec.iid("fork", 1)
    r = await rec.stack.request("POST", f"/api/v1/runs/{source}/fork",
                                json={"at": at, "params": {"who": "fork"},
                                      "instance_id": iid})
    assert r.status_code == 202, r.text
    assert (await rec.done(iid))["state"] == "succeeded"


async def lost(rec: Recorder) -> None:
    """Its worker SIGKILLed mid-task: the lease lapses (TaskLost), another worker retries."""
    iid = await rec.start("lost", "g-held")
    await rec.stack.wait_task_state(iid, "running", task="held", timeout=60)
    run = await rec.stack.run_state(iid) or {}
    holder = next(t["worker_id"] for t in run["tasks"] if t["task"] == "held")
    proc = next(p for p in rec.stack.processes if p.name == "worker"
                and p.env.get("SHOAL_WORKER_ID") == holder and p.alive())
    proc.signal(signal.SIGKILL)
    assert (await rec.done(iid))["state"] == "succeeded"
    rec.stack.start("worker", SHOAL_WORKER_ID=f"{holder}-again")


async def serial(rec: Recorder) -> None:
    """serial_wait: the second run queues until the first ends, then is woken."""
    first = await rec.start("serial", "g-serial", 0)
    await rec.stack.wait_state(first, "running", timeout=60)
    second = await rec.start("serial", "g-serial", 1)
    await rec.stack.wait_state(second, "serial_wait", timeout=60)
    for iid in (first, second):
        assert (await rec.done(iid))["state"] == "succeeded"


# Run together; then, one at a time, those that kill a worker or share a serial slot.
SCENARIOS: list[Callable[[Recorder], Awaitable[None]]] = [
    chain, fanout, retries, timeout, pause_resume, stop_rerun, recover_force, branches,
    sub_workflow, dependent, dry_run, fork]
ALONE: list[Callable[[Recorder], Awaitable[None]]] = [serial, lost]


@contextlib.asynccontextmanager
async def database(admin_url: str) -> AsyncIterator[str]:
    name = f"shoal_golden_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{admin_url.rpartition('/')[0]}/{name}"
    try:
        await migrate(url)
        yield url
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def caught_up(stack: Stack, pool: asyncpg.Pool) -> None:
    """Until the projector has applied every event of every run."""
    async def probe() -> bool:
        behind = await pool.fetchval(
            "SELECT count(*) FROM (SELECT instance_id, max(seq) AS seq FROM shoal.events "
            "GROUP BY instance_id) e LEFT JOIN shoal_read.workflow_runs w USING (instance_id) "
            "WHERE w.last_seq IS DISTINCT FROM e.seq")
        return behind == 0
    await eventually(probe, timeout=60, what="the projector caught up")


async def write_runs(stack: Stack, pool: asyncpg.Pool, out: Path, names: dict[str, str],
                     *, imported: bool = False) -> list[str]:
    table = "imported_events" if imported else "events"
    version_col = await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = "
        "'shoal' AND table_name = $1 AND column_name = 'schema_version')", table)
    cols = "seq, type, data::text AS data, causation_id, recorded_at" + (
        ", schema_version" if version_col else "")
    written = []
    for r in await pool.fetch(f"SELECT DISTINCT instance_id FROM shoal.{table} "
                              "ORDER BY instance_id"):
        iid = str(r["instance_id"])
        events = []
        for e in await pool.fetch(f"SELECT {cols} FROM shoal.{table} WHERE instance_id = $1 "
                                  "ORDER BY seq", r["instance_id"]):
            stored: dict[str, Any] = {
                "seq": e["seq"], "type": e["type"], "data": json.loads(e["data"]),
                "causation_id": str(e["causation_id"]) if e["causation_id"] else None,
                "recorded_at": e["recorded_at"].isoformat()}
            if version_col:
                stored["schema_version"] = e["schema_version"]
            events.append(stored)
        run_row = await pool.fetchrow("SELECT * FROM shoal_read.workflow_runs "
                                      "WHERE instance_id = $1", r["instance_id"])
        task_rows = await pool.fetch("SELECT * FROM shoal_read.task_runs WHERE instance_id "
                                     "= $1 ORDER BY task, attempt", r["instance_id"])
        replay = await stack.request("GET", f"/api/v1/runs/{iid}/replay")
        assert replay.status_code == 200, replay.text
        scenario = names.get(iid) or "child"
        name = f"{scenario}--{iid[:8]}.json"
        dump(out / "runs" / name, {
            "instance_id": iid, "scenario": scenario, "imported": imported,
            "events": events,
            "read_model": {"workflow_run": row(dict(run_row), RUN_COLUMNS),
                           "task_runs": [row(dict(t), TASK_COLUMNS) for t in task_rows]},
            "replay": replay.json()["steps"]})
        written.append(name)
    return written


async def record(out: Path, bootstrap: str, admin_url: str, work: Path) -> None:
    async with database(admin_url) as url, database(admin_url) as other_url:
        stack = Stack(bootstrap, url, work / "main")
        other = Stack(bootstrap, other_url, work / "other")
        (work / "main").mkdir(parents=True)
        (work / "other").mkdir(parents=True)
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        other_pool = await asyncpg.create_pool(other_url, min_size=1, max_size=2)
        assert pool is not None and other_pool is not None
        try:
            await stack.start_all(workers=2)
            other.start("api")
            await eventually(other._healthy, timeout=60, what="the second API")
            for d in DEFINITIONS:
                await stack.apply(d)
            rec = Recorder(stack)
            results = await asyncio.gather(*(s(rec) for s in SCENARIOS),
                                           return_exceptions=True)
            failed = [(s.__name__, r) for s, r in zip(SCENARIOS, results, strict=True)
                      if isinstance(r, BaseException)]
            for alone in ALONE:
                try:
                    await alone(rec)
                except Exception as exc:
                    failed.append((alone.__name__, exc))
            if failed:
                print(stack.logs(), file=sys.stderr)
                raise SystemExit(f"scenarios failed: {failed!r}")
            await caught_up(stack, pool)
            if out.exists():
                shutil.rmtree(out)
            # An incident bundle of the fork's source, imported into another installation.
            source = rec.scenarios["fork"][0]
            bundle = (await stack.request("GET", f"/api/v1/runs/{source}/bundle")).json()
            dump(out / "bundles" / f"{source}.json", bundle)
            r = await other.request("POST", "/api/v1/runs/import", json=bundle)
            assert r.status_code == 201, r.text
            names = {iid: s for s, ids in rec.scenarios.items() for iid in ids}
            written = await write_runs(stack, pool, out, names)
            written += await write_runs(other, other_pool, out, {source: "imported-bundle"},
                                        imported=True)
            versions = await pool.fetch("SELECT DISTINCT data->>'workflow' AS w, "
                                        "(data->>'version')::int AS v FROM shoal.events "
                                        "WHERE seq = 1 ORDER BY 1, 2")
            for v in versions:
                got = await stack.request("GET", f"/api/v1/workflows/{v['w']}/versions/"
                                                 f"{v['v']}")
                assert got.status_code == 200, got.text
                dump(out / "definitions" / f"{v['w']}.v{v['v']}.json", got.json())
            commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                    text=True, check=False).stdout.strip()
            dump(out / "MANIFEST.json", {
                "release": out.name, "recorded_with": commit,
                "scenarios": {s: sorted(ids) for s, ids in sorted(rec.scenarios.items())},
                "runs": sorted(written)})
            print(f"recorded {len(written)} runs of {len(rec.scenarios)} scenarios in {out}")
        finally:
            await pool.close()
            await other_pool.close()
            other.stop()
            stack.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("outdir", type=Path, help="tests/golden/<release>")
    args = p.parse_args()
    admin_url = os.environ.get("SHOAL_DATABASE_URL") or LOCAL_PG
    work = Path(tempfile.mkdtemp(prefix="shoal-golden-"))
    bootstrap = os.environ.get("SHOAL_TEST_KAFKA_BOOTSTRAP")
    broker = None
    if not bootstrap:
        port = free_port()
        broker = start_broker(port, work / "broker.log")
        bootstrap = f"127.0.0.1:{port}"
    try:
        asyncio.run(record(args.outdir, bootstrap, admin_url, work))
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
