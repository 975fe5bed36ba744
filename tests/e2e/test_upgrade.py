"""Rolling upgrades: the previous release (built from the repository's history) and this
tree on one database and one set of topics.

- ``test_upgrade_with_runs_in_flight``: the previous release's whole stack with runs in
  every in-flight state (running, paused, waiting to retry, waiting on a dependency, a
  schedule about to fire, a serial backfill half done) and finished ones (succeeded,
  failed, stopped); its services are stopped and this tree's started on the same database
  and topics. Every run finishes, each task executes once (a file outside the system
  counts the executions), the finished runs read the same, replay gives the same steps,
  a rebuild of the projections gives the same rows, and an old run forks.
- ``test_mixed_versions_share_the_groups``: an orchestrator and a worker of each release
  in the same consumer groups; every run succeeds, each task once; then the old ones are
  stopped while runs are in flight, and those finish too.

Both print their figures (time from the new services' start to each run's first progress
and to all finished).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from shoal.infra.db import migration_files
from shoal.infra.processes import OwnedProcess
from tests.e2e.kafka_io import read_all
from tests.e2e.test_cli import shoal
from tests.releases import PREVIOUS_RELEASE, Release, release_tree
from tests.support import Stack, eventually

pytestmark = pytest.mark.e2e

SERVICES = ("orchestrator", "projector", "worker", "scheduler")
READ_MODELS = {"shoal_read.workflow_runs": "instance_id",
               "shoal_read.task_runs": "instance_id, task, attempt"}


@pytest.fixture(scope="module")
def previous() -> Iterator[Release]:
    with release_tree(PREVIOUS_RELEASE) as release:
        yield release


def test_a_clone_without_the_release_fails_naming_it() -> None:
    """CI clones hold the whole history: a missing release commit is a failure that says
    what to do, never a skip."""
    missing = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(AssertionError, match=f"release commit {missing} is not in the clone"
                                             r".*git fetch --unshallow"), release_tree(missing):
        pass


def side_effects(effects: Path, definition: dict[str, Any]) -> dict[str, Any]:
    """Every shell task appends ``instance task attempt`` to ``effects`` when its command
    succeeded: an execution the system does not know of still shows."""
    mark = f'echo "$SHOAL_INSTANCE_ID $SHOAL_TASK $SHOAL_ATTEMPT" >> {effects}'
    return {**definition, "tasks": [
        {**t, "command": f"{t['command']} && {mark}"} if "command" in t else t
        for t in definition["tasks"]]}


def chain(name: str, n: int, command: str) -> dict[str, Any]:
    return {"name": name, "tasks": [
        {"name": f"s{i}", "command": command, **({"depends_on": [f"s{i - 1}"]} if i else {})}
        for i in range(n)]}


def executions(effects: Path) -> Counter[tuple[str, str]]:
    if not effects.exists():
        return Counter()
    return Counter((iid, task) for iid, task, _ in
                   (line.split() for line in effects.read_text().splitlines()))


async def start_run(stack: Stack, workflow: str, **body: Any) -> str:
    r = await stack.request("POST", f"/api/v1/workflows/{workflow}/runs", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["instance_id"])


async def start_release(stack: Stack, release: Release | None, names: tuple[str, ...],
                        **extra: str) -> list[OwnedProcess]:
    """The api and ``names`` of ``release`` (None: this tree), started together (they
    migrate at start, safely at once); returns once the api answers /healthz."""
    procs = [stack.start(n, release=release, **extra) for n in ("api", *names)]
    await eventually(stack._healthy, timeout=90, what="API /healthz")
    return procs


ENTRY_MODULES = {"api": "services/api/shoal_api/app", "orchestrator":
                 "services/orchestrator/shoal_orchestrator/main",
                 "worker": "services/worker/shoal_worker/main",
                 "projector": "services/projector/shoal_projector/main",
                 "scheduler": "services/scheduler/shoal_scheduler/main"}


def assert_old_code_ran(release: Release, services: list[OwnedProcess]) -> None:
    """The services compiled the release's own files: each one's entry module (which
    nothing else imports; ``Release.check`` imports the packages only) and the database
    module have bytecode in the release's tree (``Release.env`` writes it)."""
    for module in ["libs/shoal/infra/db", *(ENTRY_MODULES[p.name] for p in services)]:
        where = release.root / module
        assert list(where.parent.glob(f"__pycache__/{where.name}.*.pyc")), \
            f"{module} of {release.name} never ran"


async def migrations_applied(conn: asyncpg.Connection) -> list[str]:
    return [r["name"] for r in await conn.fetch(
        "SELECT name FROM shoal_meta.schema_migrations ORDER BY version")]


def unchanged(old: Any, new: Any, where: str = "") -> list[str]:
    """Where ``new`` differs from ``old`` in what ``old`` has (a later release may add
    fields; it may not change or drop one). ``allowed_actions`` may only grow."""
    if isinstance(old, dict) and isinstance(new, dict):
        diffs: list[str] = []
        for k, v in old.items():
            if k not in new:
                diffs.append(f"{where}.{k}: dropped")
            elif k == "allowed_actions":
                if not set(v) <= set(new[k]):
                    diffs.append(f"{where}.{k}: {v} -> {new[k]}")
            else:
                diffs += unchanged(v, new[k], f"{where}.{k}")
        return diffs
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True))
                for d in unchanged(a, b, f"{where}[{i}]")]
    return [] if old == new else [f"{where}: {old!r} -> {new!r}"]


async def read_models(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {table: [tuple(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY {key}")]
            for table, key in READ_MODELS.items()}


async def caught_up(conn: asyncpg.Connection) -> bool:
    """The projector has applied every event."""
    return bool(await conn.fetchval(
        "SELECT coalesce((SELECT max(position) FROM shoal_read.checkpoints), 0) >= "
        "coalesce((SELECT max(global_position) FROM shoal.events), 0)"))


async def no_dead_letters(stack: Stack) -> None:
    """Neither release refused a message of the other (nor anything else) — except the
    one kind of message this release adds that a 0.1.0 worker cannot read: the
    orchestrator's answer to a claim (``StartAnswer``, on worker-control, which every worker
    reads). A 0.1.0 worker refuses it clearly, as the upgrade policy says an older service
    refuses a newer message, and it was never meant for that worker."""
    letters = await read_all(stack.bootstrap, f"{stack.prefix}.dead-letters")
    refused = [d for d in letters if not (
        d.get("service") == "worker" and d.get("topic", "").endswith(".worker-control")
        and json.loads(base64.b64decode(d["value_b64"])).get("type") == "StartAnswer")]
    assert not refused, [(d.get("service"), d.get("reason")) for d in refused]


async def first_event_after(conn: asyncpg.Connection, iid: str, t: datetime) -> datetime | None:
    got: datetime | None = await conn.fetchval(
        "SELECT min(recorded_at) FROM shoal.events WHERE instance_id = $1 AND recorded_at >= $2",
        uuid.UUID(iid), t)
    return got


@pytest.mark.timeout(420)
async def test_upgrade_with_runs_in_flight(unmigrated_stack: Stack, previous: Release,
                                          tmp_path: Path) -> None:
    stack = unmigrated_stack
    effects = tmp_path / "side-effects.txt"
    # Business days for the dependency: recent ones (retention prunes successes older
    # than SHOAL_RETENTION_DAYS by business time).
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday = today - timedelta(days=1)
    previous.check(stack.env())
    old = await start_release(stack, previous, SERVICES, SHOAL_WORKER_SLOTS="8")
    for d in (side_effects(effects, chain("chain", 8, "sleep 2")),
              side_effects(effects, chain("pausable", 3, "sleep 2")),
              side_effects(effects, {"name": "flaky", "tasks": [
                  {"name": "first", "command": '[ "$SHOAL_ATTEMPT" -ge 2 ]', "retries": 1,
                   "retry_interval": 20},
                  {"name": "then", "command": "true", "depends_on": ["first"]}]}),
              side_effects(effects, {"name": "upstream", "tasks": [
                  {"name": "u", "command": "true"}]}),
              side_effects(effects, {"name": "downstream", "tasks": [
                  {"name": "wait", "type": "dependent", "timeout": 600,
                   "depends_on_workflow": {"workflow": "upstream", "task": "u"}},
                  {"name": "go", "command": "true", "depends_on": ["wait"]}]}),
              side_effects(effects, {"name": "tick", "tasks": [
                  {"name": "a", "command": "true"}]}),
              side_effects(effects, {"name": "daily", "tasks": [
                  {"name": "load", "command": "sleep 4"}]}),
              side_effects(effects, {"name": "diamond", "tasks": [
                  {"name": "a", "command": "echo '${setValue(n=1)}'", "outputs": ["n"]},
                  {"name": "b", "command": "true", "depends_on": ["a"]},
                  {"name": "c", "command": "true", "depends_on": ["a"]},
                  {"name": "d", "command": "test ${n} = 1", "depends_on": ["b", "c"]}]}),
              side_effects(effects, {"name": "forkme", "params": {"ok": "0"}, "tasks": [
                  {"name": "first", "command": "echo '${setValue(token=t-42)}'",
                   "outputs": ["token"]},
                  {"name": "middle", "command": 'test "${ok}" = 1', "depends_on": ["first"]},
                  {"name": "last", "command": 'test "${token}" = t-42',
                   "depends_on": ["middle"]}]}),
              {"name": "sleeper", "tasks": [{"name": "nap", "command": "sleep 60"}]}):
        await stack.apply(d)

    # Finished runs, read as the previous release shows them.
    done_ok = await start_run(stack, "diamond")
    done_failed = await start_run(stack, "forkme")
    upstream_before = await start_run(stack, "upstream",
                                      schedule_time=(yesterday + timedelta(hours=5)).isoformat())
    stopped = await start_run(stack, "sleeper")
    await stack.wait_state(stopped, "running", timeout=60)
    assert (await stack.request("POST", f"/api/v1/runs/{stopped}/stop")).status_code == 202
    expected = {done_ok: "succeeded", done_failed: "failed", upstream_before: "succeeded",
                stopped: "stopped"}
    for iid, state in expected.items():
        assert (await stack.wait_run(iid, states=(state,), timeout=90))["state"] == state
    finished = list(expected)
    before = {iid: await stack.run_state(iid) for iid in finished}
    replays = {iid: (await stack.request("GET", f"/api/v1/runs/{iid}/replay")).json()
               for iid in finished}

    # Runs in flight: a serial backfill (one run done), a dependency wait, a paused run,
    # a retry timer, a running chain, and a schedule whose fires fall in the upgrade.
    r = await stack.request("POST", "/api/v1/workflows/daily/backfill",
                            json={"start": "2026-01-01", "end": "2026-01-04", "mode": "serial"})
    assert r.status_code == 202, r.text
    backfill, backfill_runs = r.json()["backfill_id"], r.json()["instance_ids"]
    assert len(backfill_runs) == 4
    waiting = await start_run(stack, "downstream",
                              schedule_time=(today + timedelta(hours=1)).isoformat())
    await stack.wait_task_state(waiting, "running", task="wait", timeout=60)
    paused = await start_run(stack, "pausable")
    await stack.wait_state(paused, "running", timeout=60)
    assert (await stack.request("POST", f"/api/v1/runs/{paused}/pause")).status_code == 202
    await stack.wait_state(paused, "paused", timeout=60)
    await stack.wait_run(backfill_runs[0], states=("succeeded",), timeout=90)
    flaky = await start_run(stack, "flaky")

    async def retry_armed() -> bool:
        return any(e["type"] == "TaskRetryScheduled" for e in await stack.events(flaky))
    await eventually(retry_armed, timeout=60, what="the retry timer armed")
    running = await start_run(stack, "chain")
    await stack.wait_state(running, "running", timeout=60)
    fire_from = (datetime.now(UTC) + timedelta(seconds=5)).replace(microsecond=0)
    fire_from += timedelta(seconds=fire_from.second % 2)
    fire_to = fire_from + timedelta(seconds=8)
    r = await stack.request("POST", "/api/v1/schedules", json={
        "workflow": "tick", "cron": "0/2 * * * * ?", "timezone": "UTC",
        "start": fire_from.replace(tzinfo=None).isoformat(),
        "end": fire_to.replace(tzinfo=None).isoformat()})
    assert r.status_code == 201, r.text
    planned = [f for f in r.json()["next_fires"] if datetime.fromisoformat(f) <= fire_to]
    assert len(planned) == 5, r.json()
    await asyncio.sleep(1)  # the old scheduler takes the schedule

    # The upgrade: every old service stopped (SIGTERM, a worker drains), this tree's started.
    t_stop = time.monotonic()
    stack.terminate(old)
    stopped_in = time.monotonic() - t_stop
    assert_old_code_ran(previous, old)
    conn = await asyncpg.connect(stack.database_url)
    try:
        old_migrations = await migrations_applied(conn)
        assert old_migrations == sorted(p.name for p in (
            previous.root / "libs/shoal/infra/migrations").glob("*.sql"))
        in_flight = {waiting: "running", paused: "paused", flaky: "running",
                     running: "running"}
        states = {str(r["instance_id"]): r["state"] for r in await conn.fetch(
            "SELECT instance_id, state FROM shoal_read.workflow_runs")}
        assert {i: states.get(i) for i in in_flight} == in_flight, \
            "the runs were not in flight when the previous release stopped"
        assert 1 <= sum(states.get(i) == "succeeded" for i in backfill_runs) < 4, \
            "the backfill was not half done when the previous release stopped"
        assert not await conn.fetchval(
            "SELECT count(*) FROM shoal.events WHERE instance_id = $1 AND type = 'TimerFired'",
            uuid.UUID(flaky)), "the retry fired before the upgrade"

        t_new = datetime.now(UTC)
        t0 = time.monotonic()
        await start_release(stack, None, SERVICES, SHOAL_WORKER_SLOTS="8")
        assert await migrations_applied(conn) == [name for _, name, _ in migration_files()]
        upstream_after = await start_run(stack, "upstream",
                                         schedule_time=(today + timedelta(hours=5)).isoformat())
        # A wait that began after the upgrade, met by a success of the previous release.
        waiting_after = await start_run(stack, "downstream",
                                        schedule_time=(yesterday + timedelta(hours=1)).isoformat())
        await stack.wait_state(paused, "paused", timeout=60)
        t_resume = datetime.now(UTC)
        assert (await stack.request("POST", f"/api/v1/runs/{paused}/resume")).status_code == 202

        async def fired() -> list[dict[str, Any]] | None:
            r = await stack.request("GET", "/api/v1/runs", params={"workflow": "tick"})
            got = r.json()["runs"]
            return got if len(got) >= len(planned) else None
        ticks = await eventually(fired, timeout=120, what="the schedule's fires")
        assert sorted(datetime.fromisoformat(t["schedule_time"]) for t in ticks) == \
            [datetime.fromisoformat(f) for f in planned]
        carried = [waiting, paused, flaky, running, *backfill_runs[1:],
                   *(t["instance_id"] for t in ticks)]
        for iid in [*carried, upstream_after, waiting_after]:
            assert (await stack.wait_run(iid, timeout=120))["state"] == "succeeded", iid
        r = await stack.request("GET", f"/api/v1/backfills/{backfill}")
        assert (r.json()["state"], r.json()["succeeded"]) == ("finished", 4), r.json()

        # The figures: the new services' start to each run's first event, and to the end.
        progress = {}
        for kind, iids in (("running chain", [running]),
                           ("backfill", backfill_runs),
                           ("dependency (its upstream started after)", [waiting])):
            first = min(t for t in [await first_event_after(conn, i, t_new) for i in iids]
                        if t is not None)
            progress[kind] = (first - t_new).total_seconds()
        due = next(datetime.fromisoformat(e["data"]["fire_at"]) for e in await stack.events(flaky)
                   if e["type"] == "TimerArmed" and e["data"]["kind"] == "retry")
        progress["retry timer due"] = (due - t_new).total_seconds()
        first = await first_event_after(conn, flaky, due)
        assert first is not None
        progress["retry fired after due"] = (first - due).total_seconds()
        resumed = await first_event_after(conn, paused, t_resume)
        assert resumed is not None
        progress["paused (from resume)"] = (resumed - t_resume).total_seconds()
        progress["first scheduled fire"] = min(
            (datetime.fromisoformat(t["submitted_at"]) - t_new).total_seconds() for t in ticks)
        last_end = await conn.fetchval(
            "SELECT max(finished_at) FROM shoal_read.workflow_runs WHERE instance_id = "
            "ANY($1::uuid[])", [uuid.UUID(i) for i in carried])
        print(f"\nprevious release stopped in {stopped_in:.1f} s; this tree's services "
              f"started: {', '.join(f'{k} +{v:.1f} s' for k, v in progress.items())}; "
              f"every carried run finished +{(last_end - t_new).total_seconds():.1f} s "
              f"(wall {time.monotonic() - t0:.1f} s)")

        # Each task executed once, and every success has its execution.
        ran = executions(effects)
        twice = {k: n for k, n in ran.items() if n > 1}
        assert not twice, f"tasks executed more than once: {twice}"
        succeeded = {(str(r["instance_id"]), r["task"]) for r in await conn.fetch(
            "SELECT instance_id, task FROM shoal_read.task_runs WHERE state = 'succeeded' "
            "AND task <> 'wait'")}  # the dependent task runs in no worker
        assert set(ran) == succeeded, (set(ran) ^ succeeded)

        # The finished runs read as the previous release showed them; replay is unchanged.
        for iid in finished:
            diffs = unchanged(before[iid], await stack.run_state(iid))
            assert not diffs, f"run {iid} reads differently after the upgrade: {diffs}"
            r = await stack.request("GET", f"/api/v1/runs/{iid}/replay")
            assert r.status_code == 200, r.text
            diffs = unchanged(replays[iid], r.json())
            assert not diffs, f"replay of {iid} differs after the upgrade: {diffs}"
        out = await shoal(stack, "replay", done_failed)
        assert out.stdout.splitlines()[-1].split()[2] == "failed", out.stdout

        # A fork of a run the previous release failed: what succeeded is carried over.
        events = await stack.events(done_failed)
        at = next(e["seq"] for e in events
                  if e["type"] == "TaskDispatched" and e["data"]["task"] == "middle") - 1
        r = await stack.request("POST", f"/api/v1/runs/{done_failed}/fork",
                                json={"at": at, "params": {"ok": "1"}})
        assert r.status_code == 202, r.text
        fork = r.json()["instance_id"]
        forked = await stack.wait_run(fork, timeout=90)
        assert forked["state"] == "succeeded", forked
        assert forked["forked_from"] == {"instance_id": done_failed, "seq": at}
        assert executions(effects)[(fork, "first")] == 0, "the fork ran a carried task again"
        assert executions(effects)[(fork, "middle")] == 1

        # The checker agrees with the log; a rebuild gives the same rows, old runs included.
        r = await stack.request("GET", "/api/v1/check", params={"grace": 600})
        assert r.json()["violations"] == [], r.json()
        await eventually(lambda: caught_up(conn), timeout=60, what="the projector caught up")
        live = await read_models(conn)
        out = await shoal(stack, "projections", "rebuild", SHOAL_DATABASE_URL=stack.database_url)
        print(out.stdout.strip())
        assert await read_models(conn) == live, "rebuilt read models differ from the live ones"
        for iid in finished:
            diffs = unchanged(before[iid], await stack.run_state(iid))
            assert not diffs, f"run {iid} reads differently after the rebuild: {diffs}"
        await no_dead_letters(stack)
    finally:
        await conn.close()


def fan_out(name: str, width: int) -> dict[str, Any]:
    return {"name": name, "tasks": [
        {"name": "root", "command": "true"},
        *[{"name": f"f{i}", "command": "sleep 0.2", "depends_on": ["root"]}
          for i in range(width)],
        {"name": "join", "command": "true", "depends_on": [f"f{i}" for i in range(width)]}]}


@pytest.mark.timeout(420)
async def test_mixed_versions_share_the_groups(unmigrated_stack: Stack, previous: Release,
                                               tmp_path: Path) -> None:
    stack = unmigrated_stack
    effects = tmp_path / "side-effects.txt"
    previous.check(stack.env())
    old = await start_release(stack, previous, ("orchestrator", "worker", "projector"))
    new = [stack.start("orchestrator"), stack.start("worker")]
    await stack.apply(side_effects(effects, chain("m-chain", 4, "sleep 0.2")))
    await stack.apply(side_effects(effects, fan_out("m-fan", 5)))
    await stack.apply(side_effects(effects, chain("m-long", 6, "sleep 1")))
    conn = await asyncpg.connect(stack.database_url)
    try:
        async def both_own_partitions() -> bool:
            rows = await conn.fetch("SELECT pid, partitions FROM shoal.members "
                                    "WHERE service = 'orchestrator'")
            owners = {r["pid"] for r in rows if r["partitions"]}
            return owners == {old[1].pid, new[0].pid}
        await eventually(both_own_partitions, timeout=90,
                         what="an orchestrator of each release owning partitions")

        ids = [await start_run(stack, "m-chain" if i % 2 else "m-fan") for i in range(30)]
        for iid in ids:
            assert (await stack.wait_run(iid, timeout=120))["state"] == "succeeded", iid
        workers = {r["worker_id"]: r["n"] for r in await conn.fetch(
            "SELECT worker_id, count(*) AS n FROM shoal_read.task_runs "
            "WHERE instance_id = ANY($1::uuid[]) GROUP BY worker_id",
            [uuid.UUID(i) for i in ids])}
        parts = await conn.fetch(
            "SELECT m.pid, count(*) AS n FROM shoal.streams s JOIN shoal.members m "
            "ON s.partition = ANY(m.partitions) AND m.service = 'orchestrator' "
            "WHERE s.instance_id = ANY($1::uuid[]) GROUP BY m.pid", [uuid.UUID(i) for i in ids])
        print(f"\nmixed: tasks by worker {workers}; runs by orchestrator pid "
              f"{ {r['pid']: r['n'] for r in parts} }")
        assert set(workers) == {old[2].env["SHOAL_WORKER_ID"], new[1].env["SHOAL_WORKER_ID"]}, \
            "a worker of one release ran no task"

        # The previous release's orchestrator and worker leave with runs in flight; the
        # api and projector are replaced by this tree's.
        more = [await start_run(stack, "m-long") for _ in range(10)]
        await asyncio.gather(*(stack.wait_state(i, "running", timeout=60) for i in more))
        t_new = datetime.now(UTC)
        stack.terminate(old)
        assert_old_code_ran(previous, old)
        unfinished = await conn.fetchval(
            "SELECT count(*) FROM shoal.streams WHERE instance_id = ANY($1::uuid[]) AND "
            "state NOT IN ('succeeded', 'failed', 'stopped')", [uuid.UUID(i) for i in more])
        assert unfinished, "no run was in flight when the previous release stopped"
        await start_release(stack, None, ("projector",))
        for iid in more:
            assert (await stack.wait_run(iid, timeout=120))["state"] == "succeeded", iid
        last_end = await conn.fetchval(
            "SELECT max(finished_at) FROM shoal_read.workflow_runs WHERE instance_id = "
            "ANY($1::uuid[])", [uuid.UUID(i) for i in more])
        print(f"previous release's services stopped with {unfinished} runs in flight: all "
              f"finished +{(last_end - t_new).total_seconds():.1f} s")

        ran = executions(effects)
        twice = {k: n for k, n in ran.items() if n > 1}
        assert not twice, f"tasks executed more than once: {twice}"
        succeeded = {(str(r["instance_id"]), r["task"]) for r in await conn.fetch(
            "SELECT instance_id, task FROM shoal_read.task_runs WHERE state = 'succeeded'")}
        assert set(ran) == succeeded, (set(ran) ^ succeeded)
        assert len(succeeded) == 15 * 4 + 15 * 7 + 10 * 6
        r = await stack.request("GET", "/api/v1/check", params={"grace": 600})
        assert r.json()["violations"] == [], r.json()
        await no_dead_letters(stack)
    finally:
        await conn.close()
