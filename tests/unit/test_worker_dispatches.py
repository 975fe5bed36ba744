"""The worker's bookkeeping of dispatches (no broker needed: the producer is not used):
a dispatch id is queued at most once, and not again once it ran here. (That its offset
is committed only after its start was sent is tested end to end in test_workers.py.)"""

from __future__ import annotations

import uuid

from aiokafka import TopicPartition

from shoal.infra import codec
from shoal.infra.settings import Settings
from shoal_worker.main import Worker

TP = TopicPartition("t.tasks.default", 0)


def dispatch(dispatch_id: str) -> bytes:
    return codec.dumps({
        "type": "DispatchTask", "message_id": dispatch_id, "instance_id": str(uuid.uuid4()),
        "sent_at": "2026-01-01T00:00:00+00:00", "workflow": "w", "task": "a", "attempt": 1,
        "dispatch_id": dispatch_id, "task_type": "shell", "worker_group": "default",
        "command": "true", "env": {}, "outputs": [], "priority": 0})


async def test_a_dispatch_id_is_queued_once_and_not_again_once_finished(tmp_path):
    w = Worker(Settings(topic_prefix="t", data_dir=str(tmp_path)), producer=None)  # type: ignore[arg-type]
    d1, d2 = str(uuid.uuid4()), str(uuid.uuid4())
    await w._buffer(TP, 0, dispatch(d1), None)
    await w._buffer(TP, 1, dispatch(d1), None)      # re-issued after a broker loss
    assert [p.dispatch["dispatch_id"] for p in w.queue] == [d1]
    assert w.unstarted[TP] == {0}
    w.finished[d2] = None                            # ran here before
    await w._buffer(TP, 2, dispatch(d2), None)
    assert [p.dispatch["dispatch_id"] for p in w.queue] == [d1]
    assert w.fetched[TP] == 3

