"""The worker's bookkeeping of dispatches (no broker needed: the producer is not used):
a dispatch id is queued at most once, and not again once it ran here. (That its offset
is committed only after its start was sent is tested end to end in test_workers.py.)"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from shoal.core.model import TaskStarted, TaskSucceeded
from shoal.infra import codec
from shoal.infra.settings import Settings
from shoal_worker.main import Worker, _StartReport

TP = TopicPartition("t.tasks.default", 0)


def dispatch(dispatch_id: str) -> bytes:
    return codec.dumps({
        "type": "DispatchTask", "message_id": dispatch_id, "instance_id": str(uuid.uuid4()),
        "sent_at": datetime.now(UTC).isoformat(), "workflow": "w", "task": "a", "attempt": 1,
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



class _BrokerDown(Worker):
    """A worker whose reports fail as with the broker away, until ``up``."""

    up = False
    sent_types: list[str]

    async def _report(self, cmd):  # type: ignore[no-untyped-def]
        if not self.up:
            raise KafkaConnectionError("broker away")
        self.sent_types.append(cmd.type)

    async def _report_both(self, first, second):  # type: ignore[no-untyped-def]
        await self._report(first)
        await self._report(second)


async def test_a_failed_start_report_keeps_the_dispatchs_offset(tmp_path):
    w = _BrokerDown(Settings(topic_prefix="t", data_dir=str(tmp_path)), producer=None)  # type: ignore[arg-type]
    w.sent_types = []
    d1 = str(uuid.uuid4())
    await w._buffer(TP, 0, dispatch(d1), None)
    d = w.queue[0].dispatch
    started = _StartReport(w, TaskStarted(**w._fields(d, "started")), 0.0,
                           on_sent=lambda: w._started(TP, 0))
    assert await started.task is False
    assert w.unstarted[TP] == {0}, "the offset of a dispatch whose start was lost moved on"
    w.up = True
    await started.then(TaskSucceeded(**w._fields(d, "finished"), exit_code=0))
    assert w.sent_types == ["TaskStarted", "TaskSucceeded"] and w.unstarted[TP] == set()


async def test_a_dispatch_older_than_the_horizon_is_refused_with_a_report(tmp_path):
    w = _BrokerDown(Settings(topic_prefix="t", data_dir=str(tmp_path),
                             dispatch_horizon_s=600), producer=None)  # type: ignore[arg-type]
    w.up, w.sent_types = True, []
    reports: list = []

    async def keep(cmd):  # type: ignore[no-untyped-def]
        reports.append(cmd)
    w._report = keep  # type: ignore[method-assign]
    stale, fresh = str(uuid.uuid4()), str(uuid.uuid4())
    old = codec.loads(dispatch(stale))
    old["sent_at"] = "2026-01-01T00:00:00+00:00"      # long before now
    await w._buffer(TP, 0, codec.dumps(old), None)
    await w._buffer(TP, 1, dispatch(fresh), None)
    assert [p.dispatch["dispatch_id"] for p in w.queue] == [fresh]
    assert [(r.type, r.dispatch_id) for r in reports] == [("TaskFailed", stale)]
    assert "SHOAL_DISPATCH_HORIZON_S" in reports[0].error
    assert w.unstarted[TP] == {1} and w.fetched[TP] == 2   # its offset moves on



async def test_reports_are_kept_only_for_the_resend_window_and_killed_queued_ids_go(tmp_path,
                                                                                 monkeypatch):
    import shoal_worker.main as wm

    w = Worker(Settings(topic_prefix="t", data_dir=str(tmp_path)), producer=None)  # type: ignore[arg-type]
    d = codec.loads(dispatch(str(uuid.uuid4())))
    clock = [1000.0]
    monkeypatch.setattr(wm.time, "monotonic", lambda: clock[0])
    w._remember(TaskStarted(**w._fields(d, "started")))
    clock[0] += wm.RESEND_WINDOW + 1
    w._remember(TaskSucceeded(**w._fields(d, "finished"), exit_code=0))
    assert len(w.sent) == 1
    queued = str(uuid.uuid4())
    await w._buffer(TP, 5, dispatch(queued), None)
    await w._on_control(codec.dumps({
        "type": "KillTask", "message_id": str(uuid.uuid4()), "instance_id": str(uuid.uuid4()),
        "task": "a", "attempt": 1, "dispatch_id": queued, "worker_id": w.worker_id,
        "reason": "stopped", "sent_at": "t"}))
    assert queued not in w.queued and not w.queue


async def test_a_hand_over_commits_up_to_the_first_dispatch_not_started_here(tmp_path):
    """Revoked while one dispatch runs (its start reported) and two wait in the queue: the
    offset committed is that of the first queued one, so the next owner gets both."""
    import heapq

    class Commits:
        def __init__(self) -> None:
            self.offsets: list[dict] = []

        async def commit(self, offsets):  # type: ignore[no-untyped-def]
            self.offsets.append(dict(offsets))

    w = Worker(Settings(topic_prefix="t", data_dir=str(tmp_path)), producer=None)  # type: ignore[arg-type]
    for offset in range(3):
        await w._buffer(TP, offset, dispatch(str(uuid.uuid4())), None)
    first = heapq.heappop(w.queue)             # started here ...
    w._started(TP, first.offset)               # ... and its start is on the broker
    consumer = Commits()
    await w.hand_over(consumer, [TP], wait=0.1)  # type: ignore[arg-type]
    assert consumer.offsets == [{TP: 1}]
    assert not w.queue and TP not in w.unstarted
