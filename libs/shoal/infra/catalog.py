"""What any service may read of the workflow catalog the API owns."""

from __future__ import annotations

import asyncpg


async def workflow_status(conn: asyncpg.Pool | asyncpg.Connection, name: str) -> str | None:
    """``online``, ``offline``, ``deleted``, or None when no such workflow was published."""
    row = await conn.fetchrow(
        "SELECT EXISTS (SELECT 1 FROM shoal.workflow_definitions WHERE name = $1) AS known, "
        "s.online, s.deleted FROM (SELECT 1) one LEFT JOIN shoal.workflow_status s "
        "ON s.name = $1", name)
    if not row["known"]:
        return None
    if row["deleted"]:
        return "deleted"
    return "offline" if row["online"] is False else "online"
