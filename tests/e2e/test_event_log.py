"""The event log's tools end to end: time travel, fork, bundles, checker, streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.e2e.test_cli import shoal
from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e


async def start(stack: Stack, workflow: str, **body) -> str:
    r = await stack.request("POST", f"/api/v1/workflows/{workflow}/runs", json=body)
    assert r.status_code == 202, r.text
    return r.json()["instance_id"]


async def start_many(stack: Stack, workflow: str, n: int) -> list[str]:
    """``n`` runs with params i = 0..n-1, started 100 at a time."""
    ids: list[str] = []
    for first in range(0, n, 100):
        ids += await asyncio.gather(*[start(stack, workflow, params={"i": i})
                                      for i in range(first, min(n, first + 100))])
    return ids


async def all_finished(conn: asyncpg.Connection, n: int, timeout: float) -> None:
    async def done() -> bool:
        return await conn.fetchval("SELECT count(*) FROM shoal_read.workflow_runs "
                                   "WHERE state IN ('succeeded', 'failed')") == n
    await eventually(done, timeout=timeout, what=f"{n} runs finished")


def latest(tasks: list[dict]) -> dict[str, tuple[str, int]]:
    """Each task's latest attempt as (state, attempt)."""
    out: dict[str, tuple[str, int]] = {}
    for t in sorted(tasks, key=lambda t: t["attempt"]):
        out[t["task"]] = (t["state"], t["attempt"])
    return out


async def test_replay_at_every_event_equals_what_the_run_showed(stack: Stack, tmp_path: Path):
    """Acceptance 1: a run with a retry and a pause, watched through the API while it runs;
    at every event seen, replay?until= rebuilds the same run and task states."""
    flag = tmp_path / "tried"
    await stack.apply({"name": "travel", "tasks": [
        {"name": "flaky", "command": f"if [ -f {flag} ]; then echo ok; else touch {flag}; "
                                     "exit 3; fi", "retries": 1, "retry_interval": 1},
        {"name": "slow", "command": "sleep 2", "depends_on": ["flaky"]},
        {"name": "after", "command": "echo done", "depends_on": ["slow"]}]})
    iid = await start(stack, "travel")
    seen: dict[int, dict] = {}
    paused = resumed = False
    while True:
        run = await stack.run_state(iid)
        if run:
            seen[run["last_seq"]] = run
            if not paused and latest(run["tasks"]).get("slow", ("",))[0] == "running":
                r = await stack.request("POST", f"/api/v1/runs/{iid}/pause")
                assert r.status_code == 202, r.text
                paused = True
            if paused and not resumed and run["state"] == "paused":
                r = await stack.request("POST", f"/api/v1/runs/{iid}/resume")
                assert r.status_code == 202, r.text
                resumed = True
            if run["state"] in ("succeeded", "failed"):
                break
        await asyncio.sleep(0.02)
    assert run["state"] == "succeeded" and resumed
    assert latest(run["tasks"])["flaky"] == ("succeeded", 2)
    states = {r["state"] for r in seen.values()}
    assert {"running", "paused", "succeeded"} <= states, states

    full = (await stack.request("GET", f"/api/v1/runs/{iid}/replay")).json()["steps"]
    assert [s["seq"] for s in full] == list(range(1, run["last_seq"] + 1))
    types = [s["type"] for s in full]
    assert "TaskRetryScheduled" in types and "WorkflowPaused" in types
    for seq, shown in sorted(seen.items()):
        r = await stack.request("GET", f"/api/v1/runs/{iid}/replay", params={"until": seq})
        steps = r.json()["steps"]
        assert [s["seq"] for s in steps] == list(range(1, seq + 1))
        assert steps == full[:seq]
        at = steps[-1]
        assert (at["state"], at["attempt"]) == (shown["state"], shown["attempt"]), seq
        rebuilt = {t["task"]: (t["state"], t["attempt"]) for t in at["tasks"] if t["state"]}
        assert rebuilt == latest(shown["tasks"]), f"after event {seq}"
    assert len(seen) >= 6, sorted(seen)

    # --at an instant in the middle of `slow`: it is running there.
    slow = [t for t in run["tasks"] if t["task"] == "slow"][-1]
    t0, t1 = (datetime.fromisoformat(slow[k]) for k in ("started_at", "finished_at"))
    mid = (t0 + (t1 - t0) / 2).isoformat()
    out = (await shoal(stack, "replay", iid, "--at", mid)).stdout.splitlines()
    header, last = out[0].split(), out[-1].split()
    assert header[:3] == ["seq", "event", "run"] and header[3:] == ["flaky", "slow", "after"]
    assert last[3:] == ["succeeded#2", "running", "-"], out


async def test_fork_a_failed_chain_with_a_corrected_param(stack: Stack, tmp_path: Path):
    """Acceptance 2: fork at the event before the failing task's dispatch, with ok=1."""
    side, got = tmp_path / "side-effect", tmp_path / "got"
    await stack.apply({"name": "forkme", "params": {"ok": "0"}, "tasks": [
        {"name": "first", "command": f"echo ran >> {side}\necho '${{setValue(token=t-42)}}'",
         "outputs": ["token"]},
        {"name": "middle", "command": 'test "${ok}" = 1', "depends_on": ["first"]},
        {"name": "last", "command": f"echo ${{token}} > {got}", "depends_on": ["middle"]}]})
    iid = await start(stack, "forkme")
    failed = await stack.wait_run(iid)
    assert failed["state"] == "failed"
    events = await stack.events(iid)
    at = next(e["seq"] for e in events
              if e["type"] == "TaskDispatched" and e["data"]["task"] == "middle") - 1

    out = await shoal(stack, "fork", iid, "--at", str(at), "--param", "ok=1", "--wait",
                      "--timeout", "60", "--json")
    new_id, _, body = out.stdout.partition("\n")
    forked = json.loads(body)
    assert forked["state"] == "succeeded", forked
    assert forked["forked_from"] == {"instance_id": iid, "seq": at}
    assert forked["params"]["ok"] == "1"
    assert side.read_text() == "ran\n", "the first task ran again in the fork"
    assert got.read_text() == "t-42\n", "the first task's output did not reach the third"
    first = [t for t in forked["tasks"] if t["task"] == "first"]
    assert [(t["state"], t["outputs"]) for t in first] == [("succeeded", {"token": "t-42"})]
    submitted = (await stack.events(new_id.strip()))[0]
    assert submitted["data"]["forked_from"] == {"instance_id": iid, "seq": at}
    status = (await shoal(stack, "status", new_id.strip())).stdout
    assert f"forked from {iid} after event {at}" in status

    # Bad forks are refused with a reason, and nothing starts.
    r = await stack.request("POST", f"/api/v1/runs/{iid}/fork", json={"at": 999})
    assert r.status_code == 422 and "at must be" in r.json()["detail"], r.text
    r = await stack.request("POST", "/api/v1/runs/00000000-0000-4000-8000-000000000009/fork",
                            json={"at": 1})
    assert r.status_code == 404
    r = await stack.request("POST", f"/api/v1/runs/{iid}/fork", json={"at": 2},
                            role="viewer")
    assert r.status_code == 403
    runs = (await stack.request("GET", "/api/v1/runs", params={"workflow": "forkme"})).json()
    assert len(runs["runs"]) == 2


READ_MODELS = {
    "shoal_read.workflow_runs": "instance_id",
    "shoal_read.task_runs": "instance_id, task, attempt",
}


async def snapshot(conn: asyncpg.Connection) -> dict[str, list[tuple]]:
    return {table: [tuple(r) for r in await conn.fetch(
        f"SELECT * FROM {table} ORDER BY {key}")] for table, key in READ_MODELS.items()}


async def test_rebuild_after_1000_runs_is_row_for_row_identical_and_online(stack: Stack):
    """Acceptance 6: rebuilt tables equal the live ones; readers never see them empty."""
    await stack.apply({"name": "many", "params": {"i": "0"}, "tasks": [
        {"name": "a", "command": "echo '${setValue(n=${i})}'", "outputs": ["n"]},
        {"name": "b", "command": "exit $(( ${n} % 10 == 0 ))", "depends_on": ["a"]}]})
    await start_many(stack, "many", 1000)
    conn = await asyncpg.connect(stack.database_url)
    try:
        await all_finished(conn, 1000, timeout=180)
        before = await snapshot(conn)
        assert sum(1 for r in before["shoal_read.workflow_runs"] if r[3] == "failed") == 100

        counts: list[int] = []
        reading = True

        async def dashboard() -> None:
            reader = await asyncpg.connect(stack.database_url)
            try:
                while reading:
                    counts.append(await reader.fetchval(
                        "SELECT count(*) FROM shoal_read.workflow_runs"))
                    await asyncio.sleep(0.01)
            finally:
                await reader.close()

        watcher = asyncio.create_task(dashboard())
        out = await shoal(stack, "projections", "rebuild",
                          SHOAL_DATABASE_URL=stack.database_url)
        reading = False
        await watcher
        print("\n" + out.stdout.strip())
        assert "(1000 runs)" in out.stdout, out.stdout
        after = await snapshot(conn)
        assert after == before, "rebuilt read models differ from the live ones"
        assert counts and set(counts) == {1000}, "a reader saw the read models incomplete"
    finally:
        await conn.close()


async def test_a_failed_runs_bundle_imports_read_only_into_another_installation(
        stack: Stack, other_stack: Stack, tmp_path: Path):
    """Acceptance 3: export-run, import-run into an empty database: the same states and
    events replay there, the run is marked imported and nothing executes it."""
    await stack.apply({"name": "incident", "tasks": [
        {"name": "extract", "command": "echo '${setValue(rows=7)}'", "outputs": ["rows"]},
        {"name": "load", "command": "echo loading ${rows}; exit 4", "depends_on": ["extract"],
         "retries": 1, "retry_interval": 1}]})
    iid = await start(stack, "incident")
    assert (await stack.wait_run(iid))["state"] == "failed"
    bundle_file = tmp_path / "bundle.json"
    out = await shoal(stack, "export-run", iid)
    bundle_file.write_text(out.stdout)
    bundle = json.loads(out.stdout)
    assert bundle["schema"] == "shoal.run-bundle/1"
    assert bundle["definition"]["workflow"] == "incident"
    assert [p["attempt"] for p in bundle["logs"] if p["task"] == "load"] == [1, 2]

    other_stack.start("api")
    await eventually(other_stack._healthy, timeout=60, what="the other API")
    other_stack.start("orchestrator")  # present, and still never executes it
    imported = await shoal(other_stack, "import-run", str(bundle_file))
    assert f"imported run {iid}" in imported.stdout

    mine = (await stack.request("GET", f"/api/v1/runs/{iid}/replay")).json()
    theirs = (await other_stack.request("GET", f"/api/v1/runs/{iid}/replay")).json()
    assert theirs == mine
    assert await other_stack.events(iid) == await stack.events(iid)
    run = await other_stack.run_state(iid)
    assert run["imported"] is True and run["state"] == "failed"
    original = await stack.run_state(iid)
    assert latest(run["tasks"]) == latest(original["tasks"])
    assert "imported from an incident bundle" in (await shoal(other_stack, "status", iid)).stdout

    # Read-only: controls, forks and a second import are refused; nothing was appended.
    for action in ("rerun", "recover"):
        r = await other_stack.request("POST", f"/api/v1/runs/{iid}/{action}")
        assert r.status_code == 409 and "imported" in r.json()["detail"], r.text
    r = await other_stack.request("POST", f"/api/v1/runs/{iid}/fork", json={"at": 3})
    assert r.status_code == 409, r.text
    again = await shoal(other_stack, "import-run", str(bundle_file), check=False)
    assert again.returncode != 0 and "already exists" in again.stderr
    broken = {**bundle, "events": bundle["events"][1:]}
    r = await other_stack.request("POST", "/api/v1/runs/import", json=broken)
    assert r.status_code == 422 and "seq" in r.json()["detail"], r.text
    conn = await asyncpg.connect(other_stack.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM shoal.events") == 0
        # A rebuild keeps the imported run.
        await shoal(other_stack, "projections", "rebuild",
                    SHOAL_DATABASE_URL=other_stack.database_url)
        assert await conn.fetchval("SELECT imported FROM shoal_read.workflow_runs "
                                   "WHERE instance_id = $1", uuid.UUID(iid))
    finally:
        await conn.close()


async def test_check_is_quiet_after_200_runs_and_names_a_hand_altered_row(bare_stack: Stack):
    """Acceptance 4: `shoal check` finds nothing on a healthy system; a read-model row
    altered by hand is named, by the CLI and by the projector's periodic job (metric)."""
    stack = bare_stack
    stack.start("api")
    await eventually(stack._healthy, timeout=60, what="API up")
    stack.start("orchestrator")
    stack.start("projector", SHOAL_CHECK_INTERVAL="1", SHOAL_CHECK_SWEEP="500")
    stack.start("worker")
    await stack.apply({"name": "healthy", "params": {"i": "0"}, "tasks": [
        {"name": "a", "command": "echo '${setValue(n=${i})}'", "outputs": ["n"]},
        {"name": "b", "command": "exit $(( ${n} % 25 == 0 ))", "depends_on": ["a"]},
        {"name": "c", "command": "true", "depends_on": ["a"]}]})
    ids = await start_many(stack, "healthy", 200)
    conn = await asyncpg.connect(stack.database_url)
    try:
        await all_finished(conn, 200, timeout=120)
        clean = await shoal(stack, "check")
        assert "checked 200 instances" in clean.stdout and "no violation" in clean.stdout

        victim = ids[17]
        await conn.execute("UPDATE shoal_read.task_runs SET state = 'failed' "
                           "WHERE instance_id = $1 AND task = 'c'", uuid.UUID(victim))
        found = await shoal(stack, "check", check=False)
        assert found.returncode == 1, found.stdout + found.stderr
        assert victim in found.stdout and "read-model" in found.stdout, found.stdout
        report = json.loads((await shoal(stack, "check", "--json", check=False)).stdout)
        assert [(v["instance_id"], v["kind"]) for v in report["violations"]] == [
            (victim, "read-model")]
        assert "task_runs c#1.state is 'failed'" in report["violations"][0]["detail"]
        # Incremental: nothing happened after the last position, so nothing to check.
        since = await shoal(stack, "check", "--since", str(report["until"]))
        assert "checked 0 instances" in since.stdout
    finally:
        await conn.close()

    # The projector's job finds it too (its sweep visits every row) and counts it.
    port = stack.metrics_ports[("projector", 0)]

    async def counted() -> bool:
        async with httpx.AsyncClient(timeout=5) as c:
            text = (await c.get(f"http://127.0.0.1:{port}/metrics",
                                headers=stack.auth("viewer"))).text
        return 'shoal_consistency_violations_total{kind="read-model"}' in text and \
            'shoal_consistency_violations_total{kind="read-model"} 0.0' not in text
    await eventually(counted, timeout=30, what="the periodic check counting the violation")
    assert f"consistency: read-model at {victim}" in (stack.workdir / "projector-0.log").read_text()


async def read_sse(stack: Stack, path: str, *, last_event_id: str | None = None,
                   stop_after: int | None = None, until_end: bool = True,
                   timeout: float = 60, started: asyncio.Event | None = None,
                   stop_when: Callable[[dict], bool] | None = None) -> list[dict]:
    """Server-sent events of ``path`` as dicts {id, event, data}; stops after ``stop_after``
    messages, at ``event: end``, or after ``timeout`` seconds."""
    headers = stack.auth("viewer")
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    out: list[dict] = []

    async def read() -> None:
        async with httpx.AsyncClient(base_url=stack.api, timeout=None) as c, \
                c.stream("GET", path, headers=headers) as r:
            assert r.status_code == 200, await r.aread()
            assert r.headers["content-type"].startswith("text/event-stream")
            if started:
                started.set()
            msg: dict = {}
            async for line in r.aiter_lines():
                if not line:
                    if "data" in msg:
                        out.append(msg)
                        if msg.get("event") == "end" and until_end:
                            return
                        if stop_after and len(out) >= stop_after:
                            return
                        if stop_when and stop_when(msg):
                            return
                    msg = {}
                    continue
                field, _, value = line.partition(": ")
                if field in ("id", "event", "data"):
                    msg[field] = value

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(read(), timeout)
    return out


async def test_streams_deliver_every_event_in_order_and_resume_without_gaps(stack: Stack):
    """Acceptance 5: a run's stream, cut and resumed with Last-Event-ID, gives every event
    exactly once in order; the workflow stream gives only that workflow's runs."""
    await stack.apply({"name": "streamed", "tasks": [
        {"name": f"t{i}", "command": "sleep 0.3", **({"depends_on": [f"t{i - 1}"]} if i else {})}
        for i in range(4)]})
    await stack.apply({"name": "other", "tasks": [{"name": "x", "command": "true"}]})
    started = asyncio.Event()
    watcher = asyncio.create_task(read_sse(
        stack, "/api/v1/stream?workflow=streamed", until_end=False, timeout=60,
        started=started, stop_when=lambda m: '"WorkflowSucceeded"' in m["data"]))
    await started.wait()
    iid = await start(stack, "streamed")
    other = await start(stack, "other")

    async def exists() -> bool:
        r = await stack.request("GET", f"/api/v1/runs/{iid}/stream", params={"after": 10**9},
                                role="viewer", timeout=2)
        return r.status_code != 404
    # (a 404 answers at once; a 200 streams, so a short read timeout is expected then)
    with contextlib.suppress(httpx.ReadTimeout):
        await eventually(exists, what="the run's first event")

    first = await read_sse(stack, f"/api/v1/runs/{iid}/stream", stop_after=5)
    assert len(first) == 5 and all(m.get("event") is None for m in first)
    rest = await read_sse(stack, f"/api/v1/runs/{iid}/stream", last_event_id=first[-1]["id"])
    assert rest[-1]["event"] == "end" and rest[-1]["data"] == "WorkflowSucceeded"
    got = [json.loads(m["data"]) for m in first + rest[:-1]]
    history = await stack.events(iid)
    assert [(e["seq"], e["global_position"]) for e in got] == [
        (e["seq"], e["global_position"]) for e in history], "gap, duplicate or disorder"
    assert [int(m["id"]) for m in first + rest[:-1]] == [e["global_position"] for e in got]
    assert got == history

    # The CLI follows the same stream to the run's end.
    out = (await shoal(stack, "events", iid, "--follow")).stdout.splitlines()
    assert [int(ln.split()[0]) for ln in out] == [e["seq"] for e in history]

    seen = [json.loads(m["data"]) for m in await watcher]
    assert {e["instance_id"] for e in seen} == {iid}, "the workflow stream leaked another run"
    assert [e["seq"] for e in seen] == [e["seq"] for e in history]
    assert other not in {e["instance_id"] for e in seen}

    r = await stack.request("GET", f"/api/v1/runs/{iid}/stream",
                            headers={"Last-Event-ID": "nope"})
    assert r.status_code == 400
