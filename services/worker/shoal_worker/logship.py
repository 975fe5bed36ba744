"""Ships an attempt's output to ``<prefix>.task-logs`` in ordered chunks while it runs.

Lines are batched (up to ``MAX_LINES`` lines or ``MAX_BYTES`` of text, or ``FLUSH_S``
seconds) and sent keyed by instance id, so one partition carries them in order; each chunk
is numbered, and the last one says ``final`` so followers know the attempt's log ended.
Sending waits for the broker when it is slower than the task: back-pressure reaches the
pipe reader, and no line is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka import AIOKafkaProducer

from shoal.infra import codec
from shoal.infra.kafka import send_reliably

MAX_LINES = 2000
MAX_BYTES = 256 * 1024
FLUSH_S = 0.2


class LogShipper:
    def __init__(self, producer: AIOKafkaProducer, topic: str, dispatch: dict[str, Any]) -> None:
        self.producer = producer
        self.topic = topic
        self.key = dispatch["instance_id"].encode()
        self.head = {"instance_id": dispatch["instance_id"], "task": dispatch["task"],
                     "attempt": dispatch["attempt"], "dispatch_id": dispatch["dispatch_id"]}
        self.lines: list[tuple[str, str]] = []
        self.size = 0
        self.chunk = 0
        self.lock = asyncio.Lock()
        self.flusher: asyncio.Task[None] | None = None

    async def add(self, lines: list[tuple[str, str]]) -> None:
        for stamp, line in lines:
            self.lines.append((stamp, line))
            self.size += len(line) + 40
            if len(self.lines) >= MAX_LINES or self.size >= MAX_BYTES:
                await self.flush()
        if self.lines and self.flusher is None:
            self.flusher = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(FLUSH_S)
        self.flusher = None
        await self.flush()

    async def flush(self, *, final: bool = False) -> None:
        async with self.lock:
            if not self.lines and not final:
                return
            lines, self.lines, self.size = self.lines, [], 0
            value = codec.dumps({**self.head, "chunk": self.chunk, "lines": lines,
                                 "final": final})
            self.chunk += 1
            await send_reliably(self.producer, self.topic, value, self.key)

    async def close(self) -> None:
        if self.flusher is not None:
            self.flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.flusher
        await self.flush(final=True)
