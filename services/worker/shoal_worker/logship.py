"""Ships an attempt's output to ``<prefix>.task-logs`` in ordered chunks while it runs.

Lines are batched (up to ``MAX_LINES`` lines or ``MAX_BYTES`` of text, or ``FLUSH_S``
seconds) and sent keyed by instance id, so one partition carries them in order; each chunk
is numbered, and the last one says ``final`` so followers know the attempt's log ended.
Sending waits for the broker when it is slower than the task: back-pressure reaches the
pipe reader. But a task never hangs on its log: when the broker stays away longer than
``give_up_after``, lines are dropped (counted; the whole output stays in the attempt's
``task.log`` on the worker) and shipping is tried again at most every ``RETRY_S``; the
next chunk that goes out says how many lines were dropped.

A chunk never exceeds what one record may be (``limit``, SHOAL_KAFKA_MAX_MESSAGE_BYTES):
one that would is sent as several, and a single line too long for a record goes out cut,
saying so (``task.log`` has it whole). The producer refuses larger records anyway; a
refusal here would have dropped the lines.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shoal.infra import codec
from shoal.infra.kafka import send_reliably

MAX_LINES = 2000
MAX_BYTES = 256 * 1024
FLUSH_S = 0.2
RETRY_S = 5.0


class LogShipper:
    def __init__(self, producer: AIOKafkaProducer, topic: str, dispatch: dict[str, Any],
                 give_up_after: float = 30.0, limit: int = 1_000_000) -> None:
        self.producer = producer
        self.limit = limit
        self.give_up_after = give_up_after
        self.dropped = 0
        self.down_until = 0.0  # while the broker is given up on: drop, do not wait
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
            loop = asyncio.get_running_loop()
            if loop.time() < self.down_until:
                self.dropped += len(lines)
                return
            if self.dropped:
                stamp = lines[0][0] if lines else ""
                lines.insert(0, (stamp, f"[shoal] {self.dropped} log lines were not shipped "
                                        "while the broker was unavailable (the worker's "
                                        "task.log of this attempt has them)"))
            try:
                await self._send(lines, final)
            except KafkaError:
                self.dropped += len(lines) - (1 if self.dropped else 0)
                self.down_until = loop.time() + RETRY_S
                return
            self.dropped = 0

    def _encode(self, lines: list[tuple[str, str]], final: bool) -> bytes:
        return codec.message("TaskLogChunk", {**self.head, "chunk": self.chunk,
                                              "lines": lines, "final": final})

    async def _send(self, lines: list[tuple[str, str]], final: bool) -> None:
        """``lines`` as one chunk, or as several when one would exceed ``limit``."""
        value = self._encode(lines, final)
        if len(value) > self.limit and len(lines) > 1:
            half = len(lines) // 2
            await self._send(lines[:half], False)
            await self._send(lines[half:], final)
            return
        if len(value) > self.limit:  # one line alone: cut to what surely fits
            stamp, line = lines[0]
            keep = max(0, len(line) * (self.limit // 2) // len(value))
            lines = [(stamp, f"{line[:keep]} [shoal: line cut at {keep} of {len(line)} "
                             "characters to fit one record; the attempt's task.log has it "
                             "whole]")]
            value = self._encode(lines, final)
        await send_reliably(self.producer, self.topic, value, self.key,
                            give_up_after=self.give_up_after)
        self.chunk += 1

    async def close(self) -> None:
        if self.flusher is not None:
            self.flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.flusher
        await self.flush(final=True)
