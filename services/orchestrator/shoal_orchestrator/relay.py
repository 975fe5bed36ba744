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

A record the broker refuses for good (larger than it accepts: a task whose command or
parameters run to megabytes; the producer refuses what is above
SHOAL_KAFKA_MAX_MESSAGE_BYTES before sending it, so the broker never has to) never holds
up the rows behind it: it is dead-lettered
(``partition`` -1, ``offset`` the outbox row's id) and deleted with the rest; a refused
dispatch is also reported as its attempt's ``TaskFailed`` (the worker id
``outbox-relay``), so its run fails or retries instead of waiting for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shoal.core.model import TaskFailed
from shoal.infra import codec
from shoal.infra.db import DB_ERRORS
from shoal.infra.kafka import TOO_LARGE, ensure_topics, send_reliably
from shoal.infra.lifecycle import utcnow_iso
from shoal.infra.policy import DeadLetters
from shoal.infra.settings import Settings
from shoal.infra.store import COMMITTED

log = logging.getLogger(__name__)

_RELAY_LOCK = 0x5E0A2
BATCH = 2000
# Errors that refuse one record for good (not the broker, not the connection): retrying
# cannot help, and the rows behind it must not wait for it.
REFUSED = TOO_LARGE
RELAY_WORKER = "outbox-relay"
_REPORT_NS = uuid.UUID("5e0a2b1d-0d6c-4c61-9a57-2f1c3a7e0b42")


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
        pending: list[tuple[asyncpg.Record, asyncio.Future[Any]]] = []
        refused: list[tuple[asyncpg.Record, KafkaError]] = []
        for r in rows:
            try:
                pending.append((r, await self.producer.send(r["topic"], r["value"],
                                                            key=r["key"])))
            except REFUSED as exc:  # larger than this producer may send
                refused.append((r, exc))
        results = await asyncio.gather(*(f for _, f in pending), return_exceptions=True)
        for (r, _), res in zip(pending, results, strict=True):
            if isinstance(res, REFUSED):  # larger than the broker accepts
                refused.append((r, res))
            elif isinstance(res, BaseException):
                raise res  # nothing deleted: the pass is retried
        if refused:
            await self._refuse(refused)
        # Exactly the rows sent: a commit without events takes no table lock, so a row
        # with a lower id than these may have become visible since the SELECT (unsent).
        await conn.execute("DELETE FROM shoal.outbox WHERE id = ANY($1::bigint[])",
                           [r["id"] for r in rows])
        self.published += len(rows)
        return len(rows)

    async def _refuse(self, refused: list[tuple[asyncpg.Record, KafkaError]]) -> None:
        """Dead-letter each refused row (the one dead-letter path: logged, counted), and
        fail the attempt of a refused dispatch; both on the broker before the rows are
        deleted (again after a crash: deduplicated)."""
        dead = DeadLetters(self.producer, self.settings.dead_letters_topic, "orchestrator")
        for r, exc in refused:
            value: bytes = r["value"] or b""
            await dead.send(
                f"bug: this record of {len(value)} bytes is larger than the broker accepts "
                f"(SHOAL_KAFKA_MAX_MESSAGE_BYTES {self.settings.kafka_max_message_bytes}, "
                f"or the topic's max.message.bytes): not sent ({type(exc).__name__}: {exc})",
                topic=r["topic"], partition=-1, offset=r["id"], key=r["key"], value=value)
            report = _failed_dispatch(value, len(value))
            if report is not None:
                await send_reliably(self.producer, self.settings.commands_topic,
                                    codec.encode_command(report), report.instance_id.encode())


def _failed_dispatch(value: bytes, size: int) -> TaskFailed | None:
    """The report that fails a dispatch the broker refused (None for any other record)."""
    try:
        d = codec.loads(value)
        if not isinstance(d, dict) or d.get("type") != "DispatchTask":
            return None
        return TaskFailed(
            message_id=str(uuid.uuid5(_REPORT_NS, f"{d['dispatch_id']}/refused")),
            instance_id=d["instance_id"], sent_at=utcnow_iso(), task=d["task"],
            attempt=d["attempt"], dispatch_id=d["dispatch_id"], worker_id=RELAY_WORKER,
            error=f"refused: the dispatch is {size} bytes, more than the broker accepts; "
                  "make the task's command, script or parameters smaller (or pass large "
                  "data through a file or a resource)")
    except (ValueError, KeyError, TypeError):
        return None
