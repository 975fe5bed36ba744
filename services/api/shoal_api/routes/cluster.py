"""The cluster: live orchestrators and workers, the partitions each owns, and the lag."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from shoal.infra import codec
from shoal_api.deps import VIEWER, Res
from shoal_api.models import Cluster
from shoal_api.problems import ERRORS

router = APIRouter(prefix="/api/v1", tags=["workers"], dependencies=[VIEWER],
                   responses=ERRORS)


@router.get("/cluster", response_model=Cluster)
async def cluster(res: Res) -> Cluster:
    """Members whose last report is younger than SHOAL_LEASE_TIMEOUT. Orchestrators report
    every 2 s, workers with each heartbeat; a member killed shows until then."""
    live = res.settings.lease_timeout
    orchestrators = await res.pool.fetch(
        "SELECT member_id, grp, host, pid, partitions, lag::text AS lag, started_at, last_seen"
        " FROM shoal.members WHERE service = 'orchestrator' AND "
        "last_seen > now() - make_interval(secs => $1) ORDER BY member_id", live)
    workers = await res.pool.fetch(
        "SELECT worker_id, worker_group, host, pid, slots, jsonb_array_length(running) AS busy,"
        " partitions::text AS partitions, lag::text AS lag, last_heartbeat FROM "
        "shoal_read.workers WHERE NOT stopping AND last_heartbeat > now() - "
        "make_interval(secs => $1) ORDER BY worker_group, worker_id", live)
    groups: dict[str, dict[str, Any]] = {}

    def count(group: str, partitions: list[int], lag: dict[str, int]) -> None:
        g = groups.setdefault(group, {"group": group, "members": 0, "partitions": 0,
                                      "lag": 0})
        g["members"] += 1
        g["partitions"] += len(partitions)
        g["lag"] += sum(lag.values())

    out_o = []
    for r in orchestrators:
        lag = codec.loads(r["lag"])
        count(r["grp"], list(r["partitions"]), lag)
        out_o.append({"member_id": r["member_id"], "group": r["grp"], "host": r["host"],
                      "pid": r["pid"], "partitions": list(r["partitions"]), "lag": lag,
                      "started_at": r["started_at"].isoformat(),
                      "last_seen": r["last_seen"].isoformat()})
    out_w = []
    prefix = res.settings.topic_prefix
    for r in workers:
        partitions, lag = codec.loads(r["partitions"]), codec.loads(r["lag"])
        count(f"{prefix}.workers.{r['worker_group']}", partitions, lag)
        out_w.append({"worker_id": r["worker_id"], "group": r["worker_group"],
                      "host": r["host"], "pid": r["pid"], "slots": r["slots"],
                      "busy": r["busy"], "partitions": partitions, "lag": lag,
                      "last_heartbeat": r["last_heartbeat"].isoformat()})
    return Cluster.model_validate({"orchestrators": out_o, "workers": out_w,
                                   "groups": sorted(groups.values(),
                                                    key=lambda g: g["group"])})
