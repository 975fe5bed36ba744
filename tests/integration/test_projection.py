"""The batched runs projection against the real Postgres: random histories of several
runs, interleaved and cut into random batches, give the same rows as one event per batch,
and the rows the consistency checker expects of fold(events)."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.core.check import check_read_model
from shoal.core.evolve import fold
from shoal.core.model import TaskSucceeded, event_data
from shoal.infra import codec
from shoal.infra.projection import LIVE, Tables, apply
from shoal.infra.store import Append, EventStore, StoredEvent
from tests.unit.test_workflow import Driver, dags, random_history


class Timed(Driver):
    """Reports sent at real times (the projection parses them)."""

    def msg(self) -> dict[str, str]:
        return {**super().msg(), "sent_at": f"2026-01-01T01:{self.n // 60 % 60:02d}:"
                                            f"{self.n % 60:02d}.{self.n % 7}5+00:00"}

pytestmark = pytest.mark.integration
ONE_BY_ONE = Tables("shoal_read.workflow_runs_one", "shoal_read.task_runs_one")


def histories(n: int) -> list[Driver]:
    out: list[Driver] = []

    @settings(max_examples=n, database=None, derandomize=True, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(dags(), st.data())
    def collect(raw: dict[str, Any], data: st.DataObject) -> None:
        out.append(random_history(Timed(raw), data))

    collect()
    return out


def interleave(drivers: list[Driver], rng: random.Random) -> tuple[list[str], list[StoredEvent]]:
    ids = [str(uuid.uuid4()) for _ in drivers]
    queues = [[(iid, i, e) for i, e in enumerate(d.log, start=1)]
              for iid, d in zip(ids, drivers, strict=True)]
    out: list[StoredEvent] = []
    while any(queues):
        q = rng.choice([q for q in queues if q])
        iid, seq, e = q.pop(0)
        out.append(StoredEvent(len(out) + 1, iid, seq, e.type,
                               codec.loads(codec.dumps(event_data(e))), None, "", 1))
    return ids, out


async def test_batches_of_any_size_give_the_rows_of_the_fold(pool):
    drivers = histories(30)
    rng = random.Random(7)
    ids, events = interleave(drivers, rng)
    async with pool.acquire() as conn:
        await conn.execute(
            f"CREATE TABLE {ONE_BY_ONE.runs} (LIKE {LIVE.runs} INCLUDING ALL);"
            f"CREATE TABLE {ONE_BY_ONE.tasks} (LIKE {LIVE.tasks} INCLUDING ALL)")
        i = 0
        while i < len(events):
            n = rng.choice([1, 2, 5, 40, 500])
            async with conn.transaction():
                await apply(conn, events[i:i + n])
            i += n
        for e in events:
            await apply(conn, [e], tables=ONE_BY_ONE)
        cols = "* , outputs::text AS outputs"
        for a, b in ((LIVE.runs, ONE_BY_ONE.runs), (LIVE.tasks, ONE_BY_ONE.tasks)):
            diff = await conn.fetchval(
                f"SELECT count(*) FROM ((TABLE {a} EXCEPT TABLE {b}) UNION ALL "
                f"(TABLE {b} EXCEPT TABLE {a})) x")
            assert diff == 0, f"{a} and {b} differ in {diff} rows"
        by_iid = dict(zip(ids, drivers, strict=True))
        assert await conn.fetchval(f"SELECT count(*) FROM {LIVE.runs}") == len(drivers)
        for iid, d in by_iid.items():
            row = await conn.fetchrow(f"SELECT * FROM {LIVE.runs} WHERE instance_id = $1",
                                      uuid.UUID(iid))
            tasks = [{**dict(t), "outputs": codec.loads(t["outputs"])} for t in await conn.fetch(
                f"SELECT {cols} FROM {LIVE.tasks} WHERE instance_id = $1", uuid.UUID(iid))]
            run = fold(d.log, instance_id=iid)
            assert check_read_model(run, dict(row), tasks) == [], iid


async def test_a_check_while_the_projector_moves_on_sees_one_snapshot(pool):
    """The checker reads the checkpoint, the events up to it and the rows: the projector
    committing in between must not look like a read model ahead of its log."""
    from shoal.infra.checker import check
    from shoal_projector.projection import project_once
    from tests.unit.test_workflow import chain

    store = EventStore(pool)
    d = Timed(chain(*(f"t{i}" for i in range(60))))
    d.start()
    while not d.r.state.finished:
        d.report(TaskSucceeded, next(n for n, t in d.r.tasks.items() if t.state.active),
                 exit_code=0)
    iid, seq, stop = str(uuid.uuid4()), 1, asyncio.Event()

    async def writer() -> None:
        nonlocal seq
        for e in d.log:
            await store.commit([Append(iid, seq, [e], str(uuid.uuid4()), 0, "running")], [])
            seq += 1
            await project_once(pool)
        stop.set()

    task = asyncio.create_task(writer())
    violations = []
    while not stop.is_set():
        report, _ = await check(pool, since=0)
        violations += report.violations
    await task
    assert violations == []


async def test_a_disabled_check_job_keeps_the_projector_running(pool):
    from shoal.infra.settings import Settings
    from shoal_projector.main import check_continuously

    stop = asyncio.Event()
    job = asyncio.create_task(check_continuously(Settings(check_interval=0), pool, stop))
    await asyncio.sleep(0.3)
    assert not job.done(), "the job returned: run_service would end the projector"
    stop.set()
    await asyncio.wait_for(job, 2)


async def _chain_run(store: EventStore, n: int = 3) -> str:
    """A finished chain of ``n`` tasks, appended; its instance id."""
    from tests.unit.test_workflow import chain

    d = Timed(chain(*(f"t{i}" for i in range(n))))
    d.start()
    while not d.r.state.finished:
        d.report(TaskSucceeded, next(n for n, t in d.r.tasks.items() if t.state.active),
                 exit_code=0)
    iid = str(uuid.uuid4())
    await store.commit([Append(iid, 1, list(d.log), str(uuid.uuid4()), 0, "succeeded")], [])
    return iid


async def _raw_event(pool, iid: str, type_: str, data: dict[str, Any],
                     version: int = 1) -> int:
    """An event row as no release of Shoal writes it (a fold bug or a later release's)."""
    return await pool.fetchval(
        "INSERT INTO shoal.events (instance_id, seq, type, data, schema_version) "
        "VALUES ($1, 1, $2, $3::jsonb, $4) RETURNING global_position",
        uuid.UUID(iid), type_, codec.dumps(data).decode(), version)


async def _run_row(pool, iid: str) -> Any:
    return await pool.fetchrow("SELECT state FROM shoal_read.workflow_runs WHERE "
                               "instance_id = $1", uuid.UUID(iid))


async def test_an_event_the_projection_cannot_apply_is_handed_over_and_the_rest_projected(
        pool):
    """One event the read-model fold fails on neither stops the projector nor holds up
    the runs after it: it is handed to ``poison`` (dead-lettered by the projector) before
    the checkpoint passes it, and the batch's other events are applied."""
    from shoal_projector.projection import project_once

    store = EventStore(pool)
    before = await _chain_run(store)
    bad = str(uuid.uuid4())
    position = await _raw_event(pool, bad, "TaskSucceeded", {"task": 5})
    after = await _chain_run(store)
    poisoned: list[tuple[int, str]] = []

    async def poison(e: StoredEvent, reason: str) -> None:
        poisoned.append((e.global_position, reason))

    applied = await project_once(pool, poison=poison)
    assert [p for p, _ in poisoned] == [position]
    assert f"run {bad}" in poisoned[0][1] and "TaskSucceeded" in poisoned[0][1]
    assert position not in [e.global_position for e in applied]
    for iid in (before, after):
        assert (await _run_row(pool, iid))["state"] == "succeeded"
    last = await pool.fetchval("SELECT max(global_position) FROM shoal.events")
    assert await pool.fetchval("SELECT position FROM shoal_read.checkpoints") == last
    assert await project_once(pool, poison=poison) == [] and len(poisoned) == 1
    # The checker names the run (it used to stop at its unreadable event).
    from shoal.infra.checker import check
    report, _ = await check(pool, since=0)
    assert [(v.instance_id, v.kind) for v in report.violations] == [(bad, "not-replayable")]
    # A rebuild leaves it out the same way, and says so.
    from shoal.infra.readmodels import rebuild
    done = await rebuild(pool, batch=4)
    assert [p for p, _ in done.left_out] == [position] and done.runs == 2
    for iid in (before, after):
        assert (await _run_row(pool, iid))["state"] == "succeeded"


async def test_an_event_of_a_newer_release_holds_the_projection_before_it(pool):
    """Not skipped: the read models stop before it (a projector of the release that wrote
    it carries on from there) and everything before it is applied."""
    from shoal_projector.projection import project_once

    store = EventStore(pool)
    before = await _chain_run(store)
    newer = str(uuid.uuid4())
    position = await _raw_event(pool, newer, "WorkflowSubmitted", {"anything": 1}, 99)
    after = await _chain_run(store)
    held: list[tuple[int, str]] = []
    poisoned: list[StoredEvent] = []

    async def poison(e: StoredEvent, reason: str) -> None:
        poisoned.append(e)

    for _ in range(2):
        await project_once(pool, poison=poison, held=lambda e, r: held.append(
            (e.global_position, r)))
    assert (await _run_row(pool, before))["state"] == "succeeded"
    assert await _run_row(pool, newer) is None and await _run_row(pool, after) is None
    assert await pool.fetchval("SELECT position FROM shoal_read.checkpoints") == position - 1
    assert [p for p, _ in held] == [position, position] and poisoned == []
    assert "schema_version 99 is newer than this release reads" in held[0][1]
    # A rebuild cannot pass it either: it refuses, and the live read models stay as they are.
    from shoal.infra.readmodels import RebuildHeld, rebuild
    with pytest.raises(RebuildHeld, match=f"at position {position} "):
        await rebuild(pool)
    assert (await _run_row(pool, before))["state"] == "succeeded"
