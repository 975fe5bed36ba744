"""The outbox relay: publish committed effects, then delete them.

Runs in every orchestrator; one of them leads. The leader holds a session-level advisory
lock on a connection of its own for as long as that connection lives, so only it
publishes and rows go out in commit order (per-instance order on ``<prefix>.events``
holds). A pass is two statements (read the oldest rows, delete what was sent) with no
transaction or pool hand-off around them; the others try the lock again at each pass.
The leader LISTENs on that connection for the notification every commit of outbox rows
sends, so rows committed by any orchestrator go out at once, not at the next interval.
A dead leader's connection closes and PostgreSQL releases its lock with it. Publishing
is at-least-once: a crash between send and delete re-sends; consumers dedupe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shoal.infra.db import DB_ERRORS
from shoal.infra.kafka import ensure_topics
from shoal.infra.settings import Settings
from shoal.infra.store import COMMITTED

log = logging.getLogger(__name__)

_RELAY_LOCK = 0x5E0A2
BATCH = 2000


class OutboxRelay:
    def __init__(self, settings: Settings, producer: AIOKafkaProducer) -> None:
        self.settings = settings
        self.producer = producer
        self.wake = asyncio.Event()
        self._known_topics: set[str] = set()
        self.published = 0
        self._conn: asyncpg.Connection | None = None
        self.leading = False

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                # Clear before the pass, not after: a wake that arrives during the pass
                # must survive it, or its rows would wait for the next interval.
                self.wake.clear()
                try:
                    n = await self.relay_once()
                except (*DB_ERRORS, KafkaError) as exc:
                    # Nothing was deleted: the rows are still there for the next pass. A
                    # database error also gives up the lead (the next pass reconnects).
                    log.warning("outbox relay: %r; retrying", exc)
                    if not isinstance(exc, KafkaError):
                        await self._drop()
                    n = 0
                    await asyncio.sleep(0.5)
                    self.wake.set()
                if n >= BATCH:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(),
                                           self.settings.outbox_relay_interval)
        finally:
            await self._drop()

    async def _lead(self) -> asyncpg.Connection | None:
        """The connection holding the relay lock, or None while another relay leads."""
        if self._conn is None or self._conn.is_closed():
            self.leading = False
            self._conn = await asyncpg.connect(self.settings.database_url)
        if not self.leading:
            self.leading = bool(await self._conn.fetchval(
                "SELECT pg_try_advisory_lock($1)", _RELAY_LOCK))
            if self.leading:
                await self._conn.add_listener(COMMITTED, lambda *_: self.wake.set())
        return self._conn if self.leading else None

    async def _drop(self) -> None:
        conn, self._conn, self.leading = self._conn, None, False
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def close(self) -> None:
        await self._drop()

    async def relay_once(self) -> int:
        conn = await self._lead()
        if conn is None:
            return 0
        rows = await conn.fetch(
            "SELECT id, topic, key, value FROM shoal.outbox ORDER BY id LIMIT $1", BATCH)
        if not rows:
            return 0
        new_topics = {r["topic"] for r in rows} - self._known_topics
        if new_topics:
            await ensure_topics(self.settings, new_topics)
            self._known_topics |= new_topics
        futures = [await self.producer.send(r["topic"], r["value"], key=r["key"])
                   for r in rows]
        await asyncio.gather(*futures)
        # Exactly the rows sent: a commit without events takes no table lock, so a row
        # with a lower id than these may have become visible since the SELECT (unsent).
        await conn.execute("DELETE FROM shoal.outbox WHERE id = ANY($1::bigint[])",
                           [r["id"] for r in rows])
        self.published += len(rows)
        return len(rows)
