"""Shadow replay's reading side: recorded histories from the log (read-only) or bundles.

The log is read in one ``REPEATABLE READ READ ONLY`` transaction, a page of instances at a
time: every run is seen as of one instant, nothing is written, and nothing is locked that
an append would wait for. The comparison itself is :mod:`shoal.core.shadow`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shoal.core import versions
from shoal.core.shadow import Recorded, RunReport, shadow_run
from shoal.infra import codec

BUNDLE_SCHEMA = "shoal.run-bundle/1"


@dataclass(frozen=True, slots=True, kw_only=True)
class Filter:
    since: datetime | None = None   # compare decisions recorded at or after this
    workflow: str | None = None
    instance: str | None = None


@dataclass(slots=True)
class Summary:
    runs: list[RunReport] = field(default_factory=list)

    @property
    def differences(self) -> int:
        return sum(len(r.differences) for r in self.runs)

    @property
    def unreconstructed(self) -> int:
        return sum(len(r.unreconstructed) for r in self.runs)

    def as_dict(self) -> dict[str, Any]:
        return {"runs": len(self.runs), "compared": sum(r.compared for r in self.runs),
                "identical": sum(r.identical for r in self.runs),
                "skipped": sum(r.skipped for r in self.runs),
                "differences": [d.as_dict() for r in self.runs for d in r.differences],
                "unreconstructed": [u.as_dict() for r in self.runs for u in r.unreconstructed]}


def instant(text: str) -> datetime:
    """An RFC 3339 time or a date (an offset-less one is UTC); ValueError if neither."""
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _recorded(e: Mapping[str, Any]) -> Recorded:
    return Recorded(seq=int(e["seq"]), type=str(e["type"]), data=dict(e["data"]),
                    causation_id=str(e["causation_id"]) if e.get("causation_id") else None,
                    recorded_at=str(e["recorded_at"]) if e.get("recorded_at") else None,
                    schema_version=versions.version_of(e))


def shadow_histories(histories: Iterable[tuple[str, list[Mapping[str, Any]]]],
                     flt: Filter) -> Iterator[RunReport]:
    """Shadow-replay each ``(instance_id, stored events)`` the filter selects."""
    since = flt.since.isoformat() if flt.since else None
    for iid, events in histories:
        if not events:
            continue
        if flt.instance and iid != flt.instance:
            continue
        first = events[0]
        if flt.workflow and (first.get("type") != "WorkflowSubmitted"
                             or first["data"].get("workflow") != flt.workflow):
            continue
        if flt.since and not any(e.get("recorded_at") and instant(str(e["recorded_at"]))
                                 >= flt.since for e in events):
            continue
        yield shadow_run(iid, [_recorded(e) for e in events], since=since)


def bundle_histories(bundle: Any) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """The history in a bundle from ``shoal export-run``; ValueError says what is wrong."""
    if not isinstance(bundle, dict) or bundle.get("schema") != BUNDLE_SCHEMA:
        raise ValueError(f"not a run bundle (schema {BUNDLE_SCHEMA})")
    events = bundle.get("events")
    if not isinstance(events, list) or not events or not all(
            isinstance(e, dict) and isinstance(e.get("data"), dict) for e in events):
        raise ValueError("a bundle's events must be a non-empty list of events")
    return [(str(bundle.get("instance_id")), sorted(events, key=lambda e: int(e["seq"])))]


async def database_histories(url: str, flt: Filter, *, page: int = 200) -> Summary:
    """Shadow-replay the runs of the log at ``url`` (and runs imported from bundles)."""
    out = Summary()
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            for table in ("events", "imported_events"):
                cols = ("instance_id, seq, type, data::text AS data, causation_id, "
                        "recorded_at, schema_version")
                ids = await _selected(conn, table, flt)
                for i in range(0, len(ids), page):
                    rows = await conn.fetch(
                        f"SELECT {cols} FROM shoal.{table} WHERE instance_id = ANY($1) "
                        "ORDER BY instance_id, seq", ids[i:i + page])
                    out.runs.extend(shadow_histories(_grouped(rows), flt))
    finally:
        await conn.close()
    return out


async def _selected(conn: asyncpg.Connection, table: str, flt: Filter) -> list[uuid.UUID]:
    """The ids of the runs the filter selects, in id order (one query)."""
    where: list[str] = []
    args: list[Any] = []
    if flt.instance:
        args.append(uuid.UUID(flt.instance))
        where.append(f"instance_id = ${len(args)}")
    if flt.workflow:
        args.append(flt.workflow)
        where.append(f"seq = 1 AND data->>'workflow' = ${len(args)}")
    else:
        where.append("seq = 1")
    if flt.since:
        args.append(flt.since)
        where.append(f"instance_id IN (SELECT instance_id FROM shoal.{table} "
                     f"WHERE recorded_at >= ${len(args)})")
    rows = await conn.fetch(f"SELECT instance_id FROM shoal.{table} "
                            f"WHERE {' AND '.join(where)} ORDER BY instance_id", *args)
    return [r["instance_id"] for r in rows]


def _grouped(rows: Iterable[asyncpg.Record]) -> Iterator[tuple[str, list[Mapping[str, Any]]]]:
    cur: list[Mapping[str, Any]] = []
    iid = ""
    for r in rows:
        rid = str(r["instance_id"])
        if cur and rid != iid:
            yield iid, cur
            cur = []
        iid = rid
        cur.append({"seq": r["seq"], "type": r["type"], "data": codec.loads(r["data"]),
                    "causation_id": r["causation_id"],
                    "recorded_at": r["recorded_at"].isoformat(),
                    "schema_version": r["schema_version"]})
    if cur:
        yield iid, cur
