"""Worker entry point: consumes ``<prefix>.tasks.<group>`` with a bounded number of slots.

Offsets are committed once every fetched dispatch has been started and its TaskStarted
report is on the broker; from then on the orchestrator owns the attempt. When all slots
are busy the worker pauses its partitions instead of rejecting work, so nothing is
dropped while it is full.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer

from shoal.core.errors import MessageInvalid
from shoal.core.model import TaskFailed, TaskStarted, TaskSucceeded
from shoal.infra import codec, kafka
from shoal.infra.lifecycle import run_service, setup_logging, utcnow_iso
from shoal.infra.settings import Settings
from shoal_worker.executor import Attempt, Outcome

log = logging.getLogger("shoal.worker")
_REPORT_NS = uuid.UUID("1b6c7e0a-53a2-4c55-8f4e-2f1d8c3e9b21")


def report_id(dispatch_id: str, kind: str) -> str:
    """Deterministic: a re-run of the same dispatch produces the same report ids."""
    return str(uuid.uuid5(_REPORT_NS, f"{dispatch_id}/{kind}"))


class Worker:
    def __init__(self, settings: Settings, producer: AIOKafkaProducer) -> None:
        self.settings = settings
        self.producer = producer
        self.worker_id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.running: dict[str, Attempt] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.base_env = dict(os.environ)

    async def consume(self, stop: asyncio.Event) -> None:
        s = self.settings
        topic = s.tasks_topic(s.worker_group)
        await kafka.ensure_topics(s, [topic, s.commands_topic, s.dead_letters_topic])
        consumer = kafka.consumer(s, topic, group_id=f"{s.topic_prefix}.workers.{s.worker_group}")
        await consumer.start()
        log.info("worker %s serving group %s with %d slots", self.worker_id, s.worker_group,
                 s.worker_slots)
        try:
            while not stop.is_set():
                free = s.worker_slots - len(self.running)
                if free <= 0:
                    consumer.pause(*consumer.assignment())
                    await asyncio.sleep(0.05)
                    continue
                consumer.resume(*consumer.paused())
                batch = await consumer.getmany(timeout_ms=500, max_records=free)
                if not batch:
                    continue
                msgs = sorted((m for ms in batch.values() for m in ms),
                              key=lambda m: _priority(m.value))
                for m in msgs:
                    await self._accept(m.value, m.key)
                await consumer.commit({tp: ms[-1].offset + 1 for tp, ms in batch.items()})
        finally:
            await consumer.stop()
            await self._drain()

    async def _accept(self, value: bytes | None, key: bytes | None) -> None:
        try:
            d = codec.loads(value or b"")
            if not isinstance(d, dict):
                raise MessageInvalid("a dispatch must be a JSON object")
            codec.validate("tasks", "DispatchTask", d)
        except (MessageInvalid, ValueError) as exc:
            await self.producer.send_and_wait(self.settings.dead_letters_topic, codec.dumps({
                "reason": f"invalid dispatch: {exc}", "topic": self.settings.tasks_topic(
                    self.settings.worker_group), "partition": -1, "offset": -1,
                "key": key.decode("utf-8", "replace") if key else None,
                "value": (value or b"").decode("utf-8", "replace"), "dead_at": utcnow_iso()}))
            return
        if d["dispatch_id"] in self.running:
            return  # redelivered while still running here
        attempt = Attempt(d, self.settings.data_dir, self.base_env)
        self.running[d["dispatch_id"]] = attempt
        await self._report(TaskStarted(**self._report_fields(d, "started")))
        t = asyncio.create_task(self._run(attempt))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _run(self, attempt: Attempt) -> None:
        d = attempt.dispatch
        try:
            try:
                outcome = await attempt.run()
            except Exception as exc:  # the attempt must still be reported
                log.exception("attempt %s of %s failed in the worker", d["attempt"], d["task"])
                outcome = Outcome(exit_code=None, error=f"worker error: {exc!r}")
            if outcome.exit_code == 0:
                await self._report(TaskSucceeded(**self._report_fields(d, "finished"),
                                                 exit_code=0, outputs=outcome.outputs))
            else:
                await self._report(TaskFailed(**self._report_fields(d, "finished"),
                                              exit_code=outcome.exit_code, error=outcome.error))
        finally:
            self.running.pop(d["dispatch_id"], None)

    def _report_fields(self, d: dict[str, Any], kind: str) -> dict[str, Any]:
        return {"message_id": report_id(d["dispatch_id"], kind),
                "instance_id": d["instance_id"], "sent_at": utcnow_iso(), "task": d["task"],
                "attempt": d["attempt"], "dispatch_id": d["dispatch_id"],
                "worker_id": self.worker_id}

    async def _report(self, cmd: TaskStarted | TaskSucceeded | TaskFailed) -> None:
        await self.producer.send_and_wait(self.settings.commands_topic,
                                          codec.encode_command(cmd),
                                          key=cmd.instance_id.encode())

    async def _drain(self, grace: float = 25.0) -> None:
        """On shutdown let running attempts finish, then kill what is left and report it."""
        if not self.tasks:
            return
        log.info("waiting up to %.0fs for %d running tasks", grace, len(self.tasks))
        _, pending = await asyncio.wait(set(self.tasks), timeout=grace)
        if pending:
            for a in list(self.running.values()):
                a.kill(signal.SIGKILL)
            await asyncio.wait(pending, timeout=5)


def _priority(value: bytes | None) -> int:
    try:
        return int(codec.loads(value or b"{}").get("priority", 0))
    except (ValueError, AttributeError, TypeError):
        return 0


async def main(settings: Settings) -> None:
    setup_logging(settings.log_level, "worker")
    producer = kafka.producer(settings)
    await producer.start()
    worker = Worker(settings, producer)
    try:
        await run_service("worker", [worker.consume], grace=35.0)
    finally:
        await producer.stop()


def run() -> None:
    asyncio.run(main(Settings()))
