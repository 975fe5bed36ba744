"""A busy worker keeps polling (real broker): with every slot taken its partitions are
paused, but it goes on calling getmany, so it never leaves its group for being busy."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import UTC, datetime

import pytest

from shoal.infra import codec, kafka
from shoal.infra.settings import Settings
from shoal_worker.main import Worker
from tests.support import eventually

pytestmark = pytest.mark.integration


def _dispatch(prefix: str) -> bytes:
    d = str(uuid.uuid4())
    return codec.dumps({
        "type": "DispatchTask", "message_id": d, "instance_id": str(uuid.uuid4()),
        "sent_at": datetime.now(UTC).isoformat(), "workflow": "w", "task": "a", "attempt": 1,
        "dispatch_id": d, "task_type": "shell", "worker_group": "default",
        "command": "sleep 4", "env": {}, "outputs": [], "priority": 0})


async def test_a_worker_with_every_slot_busy_keeps_polling(broker: str, tmp_path):
    s = Settings(kafka_bootstrap=broker, topic_prefix=f"t{secrets.token_hex(4)}",
                 data_dir=str(tmp_path), worker_slots=1, worker_prefetch=0,
                 worker_warm_python=False, partitions=1)
    await kafka.ensure_topics(s, kafka.base_topics(s))
    producer = kafka.producer(s)
    await producer.start()
    w = Worker(s, producer)
    w.control_ready.set()  # no kill/answer reader here: nothing to wait for before polling
    stop = asyncio.Event()
    consuming = asyncio.create_task(w.consume(stop))
    try:
        for _ in range(2):
            await producer.send_and_wait(s.tasks_topic("default"), _dispatch(s.topic_prefix))
        await eventually(lambda: asyncio.sleep(0, len(w.running) == 1), timeout=30,
                         what="the one slot busy")
        before = w.polls
        await asyncio.sleep(1.0)
        assert len(w.running) == 1 and not w.queue  # busy: nothing more was taken
        assert w.polls - before >= 3, "a busy worker stopped polling"
        assert w.polls - before <= 50, "a busy worker spins instead of waiting in getmany"
    finally:
        stop.set()
        await asyncio.wait_for(consuming, 30)
        await producer.stop()
