"""Alerts: an effect of committed events, recorded with the projection, then delivered.

``record`` runs inside the projector's batch transaction: each event that a workflow's
``alerts: {on, channels}`` asks for yields one row per channel in ``shoal.alerts``, keyed
``<instance>:<seq>:<channel>``. The row commits exactly when the projection of that event
does, so no orchestrator or projector crash loses an alert or records it twice.

``Deliverer`` sends pending rows, one row lock at a time (several projectors never send
the same row), and marks them delivered in the same transaction. A crash between the
send and that commit sends the row again with the same ``Idempotency-Key`` (webhooks)
or ``Message-ID`` (email), so a receiver sees one alert. Failed sends retry with
exponential backoff (1 s doubling to 5 min) and give up after ``MAX_ATTEMPTS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import asyncpg
import httpx

from shoal.infra import codec, metrics
from shoal.infra.db import DB_ERRORS
from shoal.infra.settings import Settings
from shoal.infra.store import StoredEvent

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 12
_KIND = {"WorkflowFailed": "failure", "WorkflowSucceeded": "success",
         "WorkflowTimedOut": "timeout", "TaskTimedOut": "timeout", "TaskLost": "failover"}


class Recorder:
    """Turns committed events into alert rows (called in the projection's transaction)."""

    def __init__(self) -> None:
        self._alerts: dict[tuple[str, int], dict[str, Any] | None] = {}
        self.recorded = asyncio.Event()

    async def _config(self, conn: asyncpg.Connection, workflow: str,
                      version: int) -> dict[str, Any] | None:
        key = (workflow, version)
        if key not in self._alerts:
            raw = await conn.fetchval(
                "SELECT definition->'alerts' FROM shoal.workflow_definitions "
                "WHERE name = $1 AND version = $2", workflow, version)
            self._alerts[key] = codec.loads(raw) if raw else None
        return self._alerts[key]

    async def record(self, conn: asyncpg.Connection, events: list[StoredEvent]) -> None:
        for e in events:
            kind = _KIND.get(e.type)
            if kind is None:
                continue
            run = await conn.fetchrow(
                "SELECT workflow, version, state, attempt FROM shoal_read.workflow_runs "
                "WHERE instance_id = $1", e.instance_id)
            if run is None:
                continue
            config = await self._config(conn, run["workflow"], run["version"])
            if not config or kind not in config.get("on", []):
                continue
            payload = {"event": kind, "workflow": run["workflow"], "version": run["version"],
                       "instance_id": e.instance_id, "attempt": run["attempt"],
                       "state": run["state"], "seq": e.seq, "event_type": e.type,
                       "task": e.data.get("task"), "reason": e.data.get("reason"),
                       "recorded_at": e.recorded_at}
            for channel in config.get("channels", []):
                await conn.execute(
                    "INSERT INTO shoal.alerts (key, channel, event, instance_id, payload) "
                    "VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT (key) DO NOTHING",
                    f"{e.instance_id}:{e.seq}:{channel}", channel, kind, e.instance_id,
                    codec.dumps(payload).decode())
                self.recorded.set()


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``X-Shoal-Signature``: HMAC-SHA256 over ``<timestamp>.<body>``, hex."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class Deliverer:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, wake: asyncio.Event) -> None:
        self.settings = settings
        self.pool = pool
        self.wake = wake
        self.channels = settings.alert_channel_map()
        for name in self.channels:
            for outcome in ("sent", "retry", "gave_up"):
                metrics.ALERTS.labels(name, outcome)  # exposed at 0 from the start

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=10.0) as client:
            while not stop.is_set():
                self.wake.clear()
                try:
                    while await self.deliver_one(client):
                        pass
                    metrics.ALERT_BACKLOG.set(await self.pool.fetchval(
                        "SELECT count(*) FROM shoal.alerts WHERE delivered_at IS NULL "
                        "AND NOT gave_up"))
                except DB_ERRORS as exc:
                    log.warning("alert delivery: %r; retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), 1.0)

    async def deliver_one(self, client: httpx.AsyncClient) -> bool:
        """Send the oldest due alert; False when none is due."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT key, channel, event, payload::text AS payload, attempts "
                "FROM shoal.alerts WHERE delivered_at IS NULL AND NOT gave_up "
                "AND next_attempt_at <= now() ORDER BY next_attempt_at, created_at LIMIT 1 "
                "FOR UPDATE SKIP LOCKED")
            if row is None:
                return False
            error = await self._send(client, row["channel"], row["key"], row["event"],
                                     row["payload"].encode())
            attempts = row["attempts"] + 1
            if error is None:
                await conn.execute("UPDATE shoal.alerts SET delivered_at = now(), attempts = $2,"
                                   " last_error = NULL WHERE key = $1", row["key"], attempts)
                metrics.ALERTS.labels(row["channel"], "sent").inc()
                return True
            gave_up = attempts >= MAX_ATTEMPTS or row["channel"] not in self.channels
            delay = timedelta(seconds=min(2 ** (attempts - 1), 300))
            await conn.execute(
                "UPDATE shoal.alerts SET attempts = $2, last_error = $3, gave_up = $4, "
                "next_attempt_at = $5 WHERE key = $1", row["key"], attempts, error[:2000],
                gave_up, datetime.now(UTC) + delay)
            metrics.ALERTS.labels(row["channel"], "gave_up" if gave_up else "retry").inc()
            log.warning("alert %s via %s: %s (%s)", row["key"], row["channel"], error,
                        "gave up" if gave_up else f"retrying in {delay.total_seconds():.0f}s",
                        extra={"instance_id": row["key"].split(":")[0]})
            return True

    async def _send(self, client: httpx.AsyncClient, channel: str, key: str, event: str,
                    body: bytes) -> str | None:
        """None when delivered, else what went wrong."""
        ch = self.channels.get(channel)
        if ch is None:
            return f"unknown channel {channel!r} (SHOAL_ALERT_CHANNELS)"
        try:
            if ch["type"] == "webhook":
                ts = str(int(time.time()))
                headers = {**ch.get("headers", {}), "Content-Type": "application/json",
                           "Idempotency-Key": key, "X-Shoal-Event": event,
                           "X-Shoal-Timestamp": ts}
                if ch.get("secret"):
                    headers["X-Shoal-Signature"] = signature(ch["secret"], ts, body)
                r = await client.post(ch["url"], content=body, headers=headers)
                return None if r.is_success else f"HTTP {r.status_code}"
            payload = codec.loads(body)
            msg = EmailMessage()
            msg["From"] = ch["from"]
            msg["To"] = ", ".join(ch["to"])
            msg["Subject"] = (f"[shoal] {payload['workflow']}: {event} "
                              f"({payload['instance_id']})")
            msg["Message-ID"] = f"<{key.replace(':', '.')}@shoal>"
            msg.set_content("\n".join(f"{k}: {v}" for k, v in payload.items()
                                      if v is not None))
            await aiosmtplib.send(msg, hostname=ch["host"], port=int(ch.get("port", 25)),
                                  username=ch.get("username"), password=ch.get("password"),
                                  start_tls=bool(ch.get("starttls", False)), timeout=10)
        except (httpx.HTTPError, aiosmtplib.SMTPException, OSError, KeyError,
                ValueError) as exc:
            return repr(exc)
        return None
