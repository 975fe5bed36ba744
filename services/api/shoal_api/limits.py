"""Request middleware: body size limit and request metrics.

A request body larger than the limit is refused with 413 before it is buffered.

A declared ``Content-Length`` over the limit is answered at once, without reading the
body; a chunked body is counted while it arrives and cut off at the limit. Either way
the API holds at most ``limit`` bytes of one request in memory.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shoal.infra import metrics
from shoal_api.problems import problem


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _refuse(self) -> Any:
        return problem(413, f"the request body is larger than the API accepts "
                            f"({self.limit} bytes; SHOAL_API_MAX_BODY_BYTES)", "too-large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            too_big = declared is not None and int(declared) > self.limit
        except ValueError:
            too_big = False
        if too_big:
            await self._refuse()(scope, receive, send)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracking)
        except BodyTooLarge:
            if not started:
                await self._refuse()(scope, receive, send)


class RequestMetrics:
    """Counts requests by method, route template and status, and times them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            metrics.observe_http(scope["method"], route, status, started)


class StreamSlot:
    """One open stream of a key; ``release`` is idempotent. An unreleased slot is released
    when it is collected (a stream whose body never started, as when the client left
    before the first byte, never runs its ``finally``)."""

    def __init__(self, limit: StreamLimit, key: str) -> None:
        self._limit: StreamLimit | None = limit
        self._key = key

    def release(self) -> None:
        if self._limit is not None:
            self._limit.release(self._key)
            self._limit = None

    def __del__(self) -> None:
        self.release()


class StreamLimit:
    """Open server-sent-event streams per key (a token's name), in this API process."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self.open: dict[str, int] = {}

    def acquire(self, key: str) -> StreamSlot | None:
        """A slot, or None when ``key`` already holds ``per_key`` streams."""
        if self.open.get(key, 0) >= self.per_key:
            return None
        self.open[key] = self.open.get(key, 0) + 1
        return StreamSlot(self, key)

    def release(self, key: str) -> None:
        n = self.open.get(key, 0) - 1
        if n > 0:
            self.open[key] = n
        else:
            self.open.pop(key, None)
