"""Metrics derived from the event stream as the projector applies it."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import asyncpg

from shoal.infra import metrics
from shoal.infra.db import DB_ERRORS
from shoal.infra.readmodels import CHECKPOINT
from shoal.infra.store import StoredEvent

# Events older than this are history being re-projected (a rebuild), not live latency.
_LIVE = timedelta(minutes=5)
_ENDS = {"TaskSucceeded": "succeeded", "TaskFailed": "failed", "TaskKilled": "killed",
         "TaskLost": "lost"}


class Observer:
    """Feeds the dispatch-to-start and task-duration histograms from committed events."""

    def __init__(self) -> None:
        self.dispatched: dict[tuple[str, str, int], datetime] = {}
        self.started: dict[tuple[str, str, int], datetime] = {}
        self.workflow: dict[str, str] = {}

    def observe(self, events: list[StoredEvent]) -> None:
        now = datetime.now(UTC)
        for e in events:
            metrics.PROJECTED.inc()
            at = datetime.fromisoformat(e.recorded_at)
            if e.type == "WorkflowSubmitted":
                self.workflow[e.instance_id] = e.data["workflow"]
            elif e.type in ("WorkflowSucceeded", "WorkflowFailed", "WorkflowStopped"):
                self.workflow.pop(e.instance_id, None)
            if "task" not in e.data or "attempt" not in e.data or now - at > _LIVE:
                continue
            key = (e.instance_id, e.data["task"], e.data["attempt"])
            if e.type == "TaskDispatched":
                self.dispatched[key] = at
            elif e.type == "TaskStarted":
                self.started[key] = at
                sent = self.dispatched.pop(key, None)
                if sent is not None:
                    metrics.DISPATCH_TO_START.observe((at - sent).total_seconds())
            elif e.type in _ENDS:
                self.dispatched.pop(key, None)
                began = self.started.pop(key, None)
                if began is not None:
                    metrics.TASK_DURATION.labels(
                        self.workflow.get(e.instance_id, "unknown"), _ENDS[e.type]
                    ).observe((at - began).total_seconds())


async def gauges(pool: asyncpg.Pool, stop: asyncio.Event, every: float = 5.0) -> None:
    """Runs by workflow and state, and how far the read models trail the log."""
    seen: set[tuple[str, ...]] = set()
    while not stop.is_set():
        with contextlib.suppress(*DB_ERRORS):
            rows = await pool.fetch("SELECT workflow, state, count(*) AS n FROM "
                                    "shoal_read.workflow_runs GROUP BY 1, 2")
            for r in rows:
                metrics.RUNS.labels(r["workflow"], r["state"]).set(r["n"])
            seen = metrics.clear_missing(metrics.RUNS,
                                         ((r["workflow"], r["state"]) for r in rows), seen)
            lag = await pool.fetchval(
                "SELECT coalesce((SELECT max(global_position) FROM shoal.events), 0) - "
                "coalesce((SELECT position FROM shoal_read.checkpoints WHERE name = $1), 0)",
                CHECKPOINT)
            metrics.PROJECTOR_LAG.set(max(int(lag), 0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
