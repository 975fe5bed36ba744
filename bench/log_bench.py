"""Event-log figures of `make bench` (group ``log``), against the bench's database:

* ``load``: loading one instance with a long history (a 1,000-task chain, ≈2,000 events)
  the way an orchestrator does after a failover — the whole history versus the latest
  snapshot plus its tail (``SHOAL_SNAPSHOT_EVERY``, default 100). Median of 5.
* ``replay_10k``: the same for one instance of ≥ 10,000 events (the chain with start
  reports, rerun until the history is that long).
* ``check``: a full consistency check of what the other groups left: instances/s.
* ``million``: the log is grown to 1,000,000 events by copying its histories under new
  instance ids (with the projector stopped); a projector started afterwards catches up:
  events/s; then ``shoal projections rebuild`` of the whole log: events/s.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from typing import Any

import asyncpg

from shoal.core.definition import parse_definition
from shoal.core.evolve import evolve
from shoal.core.model import (
    RerunWorkflow,
    ResolvedStart,
    Run,
    StartWorkflow,
    TaskDispatched,
    TaskStarted,
    TaskSucceeded,
)
from shoal.core.snapshot import snapshot_due
from shoal.core.workflow import Context, decide
from shoal.infra import checker
from shoal.infra.readmodels import rebuild
from shoal.infra.store import Append, EventStore


def _long_history(tasks: int, min_events: int = 0) -> list[list[Any]]:
    """The decisions of a chain run to success, as lists of events (pure core); with
    ``min_events``, each task also reports its start and the run is rerun until its
    history has that many events."""
    raw = {"name": "long", "tasks": [
        {"name": f"t{i}", "command": "true", **({"depends_on": [f"t{i - 1}"]} if i else {})}
        for i in range(tasks)]}
    definition = parse_definition(raw)
    run: Run | None = None
    decisions = []
    n = 0

    def feed(inp: Any) -> None:
        nonlocal run, n
        n += 1
        d = decide(run, inp, Context(now="2026-01-01T00:00:00+00:00", message_id=f"m{n}"))
        for e in d.events:
            run = evolve(run, e, instance_id="bench")
        decisions.append(list(d.events))

    common = {"instance_id": "bench", "sent_at": "2026-01-01T00:00:00+00:00"}
    feed(ResolvedStart(command=StartWorkflow(message_id="s", workflow="long", **common),
                       definition=definition, version=1))
    while True:
        while run is not None and not run.state.finished:
            t = next(e for e in decisions[-1] if isinstance(e, TaskDispatched))
            report = {"message_id": f"r{n}", "task": t.task, "attempt": t.attempt,
                      "dispatch_id": t.dispatch_id, "worker_id": "w", **common}
            if min_events:
                feed(TaskStarted(**{**report, "message_id": f"s{n}"}))
            feed(TaskSucceeded(**report, exit_code=0))
        if sum(len(d) for d in decisions) >= min_events:
            return decisions
        feed(RerunWorkflow(message_id=f"rerun{n}", **common))


async def _store(store: EventStore, decisions: list[list[Any]], every: int) -> str:
    iid, seq, run = str(uuid.uuid4()), 1, None
    for events in decisions:
        for e in events:
            run = evolve(run, e, instance_id=iid)
        assert run is not None
        due = snapshot_due(seq, seq + len(events) - 1, every)
        await store.commit([Append(iid, seq, events, str(uuid.uuid4()), 0, run.state.value)],
                           [], snapshots=[(iid, run)] if due else [])
        seq += len(events)
    return iid


async def bench_log(pool: asyncpg.Pool, projector: Any = None,
                    total: int = 1_000_000) -> dict[str, object]:
    """``projector``: a callable that stops the running projector and returns one that
    starts a fresh one (for the million-event catch-up)."""
    store = EventStore(pool)
    decisions = _long_history(1000)
    events = sum(len(d) for d in decisions)
    whole = await _store(store, decisions, every=0)
    snapped = await _store(store, decisions, every=100)
    long = _long_history(1000, min_events=10_000)
    long_whole = await _store(store, long, every=0)
    long_snapped = await _store(store, long, every=100)

    async def timed(iid: str) -> float:
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            await store.load_runs([iid])
            samples.append((time.perf_counter() - t0) * 1000)
        return round(statistics.median(samples), 1)

    out: dict[str, object] = {"load": {
        "events": events, "whole_history_ms": await timed(whole),
        "snapshot_plus_tail_ms": await timed(snapped), "snapshot_every": 100},
        "replay_10k": {"events": sum(len(d) for d in long),
                       "whole_history_ms": await timed(long_whole),
                       "snapshot_plus_tail_ms": await timed(long_snapped)}}
    report, _ = await checker.check(pool, since=0)
    out["check"] = {"instances": report.instances, "seconds": round(report.seconds, 2),
                    "instances_per_s": round(report.instances / report.seconds)
                    if report.seconds else None, "violations": len(report.violations)}
    if projector is not None:
        out["million"] = await _million(pool, projector, total)
    return out


async def wait_for(probe: Any, limit_s: float = 900.0) -> None:
    deadline = time.monotonic() + limit_s
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError("the projector did not catch up")
        await asyncio.sleep(0.1)


async def grow(pool: asyncpg.Pool, total: int, streams: bool = False) -> int:
    """Copy the log's histories under new instance ids until it holds ``total`` events;
    return how many it holds. With ``streams``, each copied instance also gets its row in
    ``shoal.streams`` (as the orchestrator's commits write it)."""
    template = await pool.fetchval("SELECT max(global_position) FROM shoal.events")
    ids = [r["instance_id"] for r in await pool.fetch("SELECT DISTINCT instance_id "
                                                       "FROM shoal.events")]
    have = await pool.fetchval("SELECT count(*) FROM shoal.events")
    copy = 0
    async with pool.acquire() as conn:
        while have < total:
            copy += 1
            async with conn.transaction():
                await conn.execute("LOCK TABLE shoal.events IN EXCLUSIVE MODE")
                status = await conn.execute(
                    "INSERT INTO shoal.events (instance_id, seq, type, data, causation_id, "
                    "recorded_at) SELECT md5(instance_id::text || $1)::uuid, seq, type, data, "
                    "causation_id, recorded_at FROM shoal.events WHERE global_position <= $2 "
                    "ORDER BY global_position", f"copy{copy}", template)
                if streams:
                    await conn.execute(
                        "INSERT INTO shoal.streams (instance_id, partition, last_seq, state, "
                        "updated_at) SELECT md5(instance_id::text || $1)::uuid, partition, "
                        "last_seq, state, updated_at FROM shoal.streams "
                        "WHERE instance_id = ANY($2::uuid[])", f"copy{copy}", ids)
            have += int(status.split()[-1])
    return int(have)


async def _million(pool: asyncpg.Pool, projector: Any, total: int) -> dict[str, object]:
    start_projector = projector()  # stopped: the copies wait for the next one
    t0 = time.monotonic()
    have = await grow(pool, total)
    copied_s = time.monotonic() - t0
    last = await pool.fetchval("SELECT max(global_position) FROM shoal.events")
    behind = await pool.fetchval(
        "SELECT count(*) FROM shoal.events WHERE global_position > coalesce((SELECT position "
        "FROM shoal_read.checkpoints WHERE name = 'read_models'), 0)")
    t0 = time.monotonic()
    start_projector()

    async def caught_up() -> bool:
        pos = await pool.fetchval(
            "SELECT position FROM shoal_read.checkpoints WHERE name = 'read_models'")
        return bool(pos is not None and pos >= last)

    await wait_for(caught_up)
    caught = time.monotonic() - t0
    done = await rebuild(pool, batch=5000)
    return {"events": have, "copy_s": round(copied_s, 1),
            "projector": {"events": behind, "seconds_incl_process_start": round(caught, 1),
                          "events_per_s": round(behind / caught)},
            "rebuild": {"events": done.events, "runs": done.runs,
                        "seconds": round(done.seconds, 1), "events_per_s": round(done.rate)}}
