"""Membership reports: which live process owns which partitions, with their lag."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field

import asyncpg

from shoal.infra import codec
from shoal.infra.db import DB_ERRORS

log = logging.getLogger(__name__)


@dataclass
class Membership:
    """What this member owns now (kept current by its rebalance listener and lag sampler)."""

    member_id: str
    service: str
    group: str
    partitions: set[int] = field(default_factory=set)
    lag: dict[int, int] = field(default_factory=dict)


def member_id(service: str) -> str:
    return f"{service}-{socket.gethostname()}-{os.getpid()}"


async def report(pool: asyncpg.Pool, me: Membership, stop: asyncio.Event,
                 every: float = 2.0) -> None:
    """Upsert this member's row every ``every`` seconds; remove it on a clean stop."""
    try:
        while not stop.is_set():
            with contextlib.suppress(*DB_ERRORS):
                await pool.execute(
                    "INSERT INTO shoal.members (member_id, service, grp, host, pid, partitions,"
                    " lag, last_seen) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, now()) "
                    "ON CONFLICT (member_id) DO UPDATE SET partitions = EXCLUDED.partitions, "
                    "lag = EXCLUDED.lag, last_seen = now()",
                    me.member_id, me.service, me.group, socket.gethostname(), os.getpid(),
                    sorted(me.partitions),
                    codec.dumps({str(p): n for p, n in sorted(me.lag.items())}).decode())
                # Rows of members that died without a clean stop.
                await pool.execute("DELETE FROM shoal.members WHERE last_seen < now() - "
                                   "interval '1 hour'")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
    finally:
        with contextlib.suppress(*DB_ERRORS):
            await pool.execute("DELETE FROM shoal.members WHERE member_id = $1", me.member_id)
