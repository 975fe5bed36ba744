"""Readiness as /healthz reports it: can this service reach the database right now?"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from shoal.infra.db import DB_ERRORS

log = logging.getLogger(__name__)


class Health:
    def __init__(self) -> None:
        self.database_ok = True
        self.reason = ""

    def __call__(self) -> bool:
        return self.database_ok

    async def watch(self, pool: asyncpg.Pool, stop: asyncio.Event, every: float = 2.0) -> None:
        """Ping the database every ``every`` seconds; a failed ping makes /healthz 503."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(pool.fetchval("SELECT 1"), timeout=every)
            except DB_ERRORS as exc:
                if self.database_ok:
                    log.warning("unhealthy: the database does not answer (%r)", exc)
                self.database_ok, self.reason = False, repr(exc)
            else:
                if not self.database_ok:
                    log.info("healthy again: the database answers")
                self.database_ok, self.reason = True, ""
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
