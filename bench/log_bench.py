"""Event-log figures of `make bench` (group ``log``), against the bench's database:

* ``load``: loading one instance with a long history (a 1,000-task chain, ≈2,000 events)
  the way an orchestrator does after a failover — the whole history versus the latest
  snapshot plus its tail (``SHOAL_SNAPSHOT_EVERY``, default 100). Median of 5.
* ``rebuild``: ``shoal projections rebuild`` of everything in the log so far: events/s.
* ``check``: a full consistency check: instances/s.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import asyncpg

from shoal.core.definition import parse_definition
from shoal.core.evolve import evolve
from shoal.core.model import ResolvedStart, Run, StartWorkflow, TaskDispatched, TaskSucceeded
from shoal.core.snapshot import snapshot_due
from shoal.core.workflow import Context, decide
from shoal.infra import checker
from shoal.infra.readmodels import rebuild
from shoal.infra.store import Append, EventStore


def _long_history(tasks: int) -> list[list[Any]]:
    """The decisions of a chain run to success, as lists of events (pure core)."""
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
    while run is not None and not run.state.finished:
        t = next(e for e in decisions[-1] if isinstance(e, TaskDispatched))
        feed(TaskSucceeded(message_id=f"r{n}", task=t.task, attempt=t.attempt,
                           dispatch_id=t.dispatch_id, worker_id="w", exit_code=0, **common))
    return decisions


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


async def bench_log(pool: asyncpg.Pool) -> dict[str, object]:
    store = EventStore(pool)
    decisions = _long_history(1000)
    events = sum(len(d) for d in decisions)
    whole = await _store(store, decisions, every=0)
    snapped = await _store(store, decisions, every=100)

    async def timed(iid: str) -> float:
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            await store.load_runs([iid])
            samples.append((time.perf_counter() - t0) * 1000)
        return round(statistics.median(samples), 1)

    out: dict[str, object] = {"load": {
        "events": events, "whole_history_ms": await timed(whole),
        "snapshot_plus_tail_ms": await timed(snapped), "snapshot_every": 100}}
    done = await rebuild(pool)
    out["rebuild"] = {"events": done.events, "runs": done.runs,
                      "seconds": round(done.seconds, 2), "events_per_s": round(done.rate)}
    report, _ = await checker.check(pool, since=0)
    out["check"] = {"instances": report.instances, "seconds": round(report.seconds, 2),
                    "instances_per_s": round(report.instances / report.seconds)
                    if report.seconds else None, "violations": len(report.violations)}
    return out
