"""The consistency checker against the database: which instances to check, and the rows.

Incremental by global position: a pass checks the instances with events after ``since``
up to what the projector has applied (a read model that merely lags is not a violation),
plus, when ``sweep`` is given, that many further instances in id order (so a row altered
by hand is found eventually, though no event touches it again).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from shoal.core.check import Violation, check_history, check_read_model
from shoal.core.model import event_from_data
from shoal.infra import codec, metrics
from shoal.infra.readmodels import CHECKPOINT

log = logging.getLogger("shoal.checker")

CHECKER = "checker"          # checkpoint of the periodic check (shoal_read.checkpoints)
SWEEP = "checker_sweep"      # where the periodic sweep continues (an instance id)


@dataclass
class Report:
    since: int
    until: int
    instances: int = 0
    violations: list[Violation] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until, "instances": self.instances,
                "violations": [v.as_dict() for v in self.violations],
                "seconds": round(self.seconds, 3)}


async def check(pool: asyncpg.Pool, *, since: int = 0, grace: float = 60.0,
                sweep_from: uuid.UUID | None = None,
                sweep: int = 0) -> tuple[Report, uuid.UUID | None]:
    """Check what changed in ``(since, projected]`` (every instance when ``since`` is 0),
    plus ``sweep`` instances after ``sweep_from``; return the report and the sweep's end."""
    t0 = time.monotonic()
    # One snapshot: the projector commits rows and checkpoint together, so the rows read
    # here are exactly the projection of the events up to the checkpoint read here.
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read",
                                                        readonly=True):
        until = await conn.fetchval(
            "SELECT position FROM shoal_read.checkpoints WHERE name = $1", CHECKPOINT) or 0
        report = Report(since=since, until=until)
        ids = [r["instance_id"] for r in await conn.fetch(
            "SELECT DISTINCT instance_id FROM shoal.events WHERE global_position > $1 "
            "AND global_position <= $2", since, until)]
        if since == 0:
            ids += [r["instance_id"] for r in await conn.fetch(
                "SELECT instance_id FROM shoal.imported_runs")]
        swept_to = None
        if sweep:
            more = [r["instance_id"] for r in await conn.fetch(
                "SELECT instance_id FROM shoal_read.workflow_runs WHERE instance_id > $1 "
                "ORDER BY instance_id LIMIT $2", sweep_from or uuid.UUID(int=0), sweep)]
            swept_to = more[-1] if len(more) == sweep else None  # None: wrap around
            ids = list(dict.fromkeys([*ids, *more]))
        now = datetime.now(UTC)
        for chunk in range(0, len(ids), 200):
            report.violations += await _check_instances(
                conn, ids[chunk:chunk + 200], until, now, timedelta(seconds=grace))
        report.instances = len(ids)
        if since == 0:  # a full check also finds rows no event explains
            for r in await conn.fetch(
                    "SELECT w.instance_id, w.last_seq FROM shoal_read.workflow_runs w WHERE "
                    "NOT w.imported AND NOT EXISTS (SELECT 1 FROM shoal.events e WHERE "
                    "e.instance_id = w.instance_id)"):
                report.violations.append(Violation(str(r["instance_id"]), r["last_seq"],
                                                   "read-model", "a row with no events"))
    for v in report.violations:
        metrics.CONSISTENCY_VIOLATIONS.labels(v.kind).inc()
    metrics.CONSISTENCY_CHECKED.inc(report.instances)
    report.seconds = time.monotonic() - t0
    return report, swept_to


async def _check_instances(conn: asyncpg.Connection, ids: Sequence[uuid.UUID], until: int,
                           now: datetime, grace: timedelta) -> list[Violation]:
    events = await conn.fetch(
        "SELECT instance_id, seq, type, data::text AS data, recorded_at, schema_version "
        "FROM shoal.events "
        "WHERE instance_id = ANY($1) AND global_position <= $2 ORDER BY instance_id, seq",
        ids, until)
    imported = await conn.fetch(
        "SELECT instance_id, seq, type, data::text AS data, recorded_at, schema_version "
        "FROM shoal.imported_events WHERE instance_id = ANY($1) ORDER BY instance_id, seq", ids)
    rows = {r["instance_id"]: r for r in await conn.fetch(
        "SELECT instance_id, workflow, version, state, attempt, last_seq, imported, actor, "
        "last_actor, stopped_by FROM shoal_read.workflow_runs WHERE instance_id = ANY($1)", ids)}
    tasks: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for t in await conn.fetch(
            "SELECT instance_id, task, attempt, state, exit_code, outputs::text AS outputs "
            "FROM shoal_read.task_runs WHERE instance_id = ANY($1)", ids):
        tasks.setdefault(t["instance_id"], []).append(
            {**dict(t), "outputs": codec.loads(t["outputs"])})
    histories: dict[uuid.UUID, list[tuple[int, str, Any]]] = {}
    kinds: dict[uuid.UUID, bool] = {}
    out: list[Violation] = []
    unreadable: set[uuid.UUID] = set()
    for source, is_imported in ((events, False), (imported, True)):
        for e in source:
            if e["instance_id"] in unreadable:
                continue
            kinds[e["instance_id"]] = is_imported
            try:
                event = event_from_data(e["type"], codec.loads(e["data"]), e["schema_version"])
            except Exception as exc:  # noqa: BLE001 - that run's violation, not the check's end
                unreadable.add(e["instance_id"])
                histories.pop(e["instance_id"], None)
                out.append(Violation(str(e["instance_id"]), e["seq"], "not-replayable",
                                     f"{e['type']} cannot be read: {exc}"))
                continue
            histories.setdefault(e["instance_id"], []).append(
                (e["seq"], e["recorded_at"].isoformat(), event))
    for iid, history in histories.items():
        run, found = check_history(str(iid), history, now=now, grace=grace)
        out += found
        if run is not None:
            row = rows.get(iid)
            out += check_read_model(run, dict(row) if row else None, tasks.get(iid, []),
                                    imported=kinds[iid])
    return out


async def periodic(pool: asyncpg.Pool, *, grace: float, sweep: int) -> Report:
    """One pass of the projector's job: from its checkpoint, plus the sweep; violations
    are logged (and counted by ``check``)."""
    state = await pool.fetchrow(
        "SELECT position FROM shoal_read.checkpoints WHERE name = $1", CHECKER)
    cursor = await pool.fetchval("SELECT value FROM shoal.checker_state WHERE name = $1", SWEEP)
    report, swept_to = await check(pool, since=state["position"] if state else 0, grace=grace,
                                   sweep_from=uuid.UUID(cursor) if cursor else None,
                                   sweep=sweep)
    for v in report.violations:
        log.warning("consistency: %s at %s seq %d: %s", v.kind, v.instance_id, v.seq, v.detail,
                    extra={"instance_id": v.instance_id})
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO shoal_read.checkpoints (name, position) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position", CHECKER,
            report.until)
        await conn.execute(
            "INSERT INTO shoal.checker_state (name, value) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value", SWEEP,
            str(swept_to) if swept_to else None)
    if report.violations or report.instances:
        log.info("consistency check: %d instances (positions %d..%d), %d violations, %.3f s",
                 report.instances, report.since, report.until, len(report.violations),
                 report.seconds)
    return report
