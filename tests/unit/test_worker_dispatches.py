"""The worker's bookkeeping of dispatches (no broker needed: the producer is not used):
a dispatch id is queued at most once, and not again once it ran here. (That its offset
is committed only after its start was sent is tested end to end in test_workers.py.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from shoal.core.model import TaskStarted, TaskSucceeded
from shoal.infra import codec
from shoal.infra.settings import Settings
from shoal_worker.main import Worker, _Claim, _Revoke

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


async def test_a_copy_that_arrives_while_the_first_runs_never_starts(tmp_path):
    """An orchestrator that died between the outbox relay's send and delete makes its
    successor send the dispatch again: a copy fetched while the first runs here is not
    queued, and one already queued is not started once the first has finished."""
    w = Worker(Settings(topic_prefix="t", data_dir=str(tmp_path)), producer=None)  # type: ignore[arg-type]
    d1, d2 = str(uuid.uuid4()), str(uuid.uuid4())
    w.running[d1] = object()  # type: ignore[assignment]
    await w._buffer(TP, 0, dispatch(d1), None)
    assert not w.queue and w.unstarted.get(TP, set()) == set()
    await w._buffer(TP, 1, dispatch(d2), None)       # queued ...
    w.finished[d2] = None                            # ... while its first copy finished
    w.running.clear()
    await w._start_ready()
    assert not w.running and not w.queue and w.unstarted[TP] == set()


def test_only_a_dispatch_of_an_orchestrator_that_answers_claims_is_asked_about(tmp_path):
    """A redelivered dispatch (on the broker before this worker owned its partition) is
    asked about before it runs — when its orchestrator answers claims (0.2.0 on). A 0.1.0
    orchestrator's dispatch says nothing of it: asking would wait for an answer that never
    comes during a rolling upgrade, so it runs as 0.1.0 ran it."""
    w = Worker(Settings(topic_prefix="t", data_dir=str(tmp_path)), producer=None)  # type: ignore[arg-type]
    w.owned_since[TP] = datetime.now(UTC).timestamp()
    old = {**codec.loads(dispatch(str(uuid.uuid4()))),
           "sent_at": "2026-01-01T00:00:00+00:00"}
    assert w._may_be_held(TP, {**old, "answers_claims": True})
    assert not w._may_be_held(TP, old)
    fresh = {**codec.loads(dispatch(str(uuid.uuid4()))), "answers_claims": True}
    w.owned_since[TP] = datetime.now(UTC).timestamp() - 60
    assert not w._may_be_held(TP, fresh)


class _BrokerDown(Worker):
    """A worker whose reports fail as with the broker away, until ``up``."""

    up = False
    sent_types: list[str]

    async def _report(self, cmd):  # type: ignore[no-untyped-def]
        if not self.up:
            raise KafkaConnectionError("broker away")
        self.sent_types.append(cmd.type)



async def test_nothing_runs_and_the_offset_stays_until_the_claim_is_on_the_broker(tmp_path):
    w = _BrokerDown(Settings(topic_prefix="t", data_dir=str(tmp_path)), producer=None)  # type: ignore[arg-type]
    w.sent_types = []
    await w._buffer(TP, 0, dispatch(str(uuid.uuid4())), None)
    d = w.queue[0].dispatch
    claim = _Claim(w, TaskStarted(**w._fields(d, "started")), on_sent=lambda: w._started(TP, 0))
    gate = asyncio.create_task(claim.granted())
    await asyncio.sleep(0.3)
    assert not gate.done(), "the attempt may run before its claim is on the broker"
    assert w.unstarted[TP] == {0}, "the offset of a dispatch not claimed moved on"
    w.up = True
    assert await asyncio.wait_for(gate, 10) is None
    assert w.sent_types == ["TaskStarted"] and w.unstarted[TP] == set()
    await claim.then(TaskSucceeded(**w._fields(d, "finished"), exit_code=0))
    assert w.sent_types == ["TaskStarted", "TaskSucceeded"]


def answer(w: Worker, d: dict, granted: bool, worker_id: str | None = None) -> bytes:
    return codec.dumps({
        "type": "StartAnswer", "message_id": "m", "instance_id": d["instance_id"],
        "task": d["task"], "attempt": d["attempt"], "dispatch_id": d["dispatch_id"],
        "worker_id": worker_id or w.worker_id, "granted": granted,
        "reason": None if granted else "held by worker w-0", "sent_at": "t"})


async def test_a_claim_that_asks_runs_only_once_the_orchestrator_granted_it(tmp_path):
    w = _BrokerDown(Settings(topic_prefix="t", data_dir=str(tmp_path)), producer=None)  # type: ignore[arg-type]
    w.up, w.sent_types = True, []
    outcomes = []
    for granted in (True, False):
        d = codec.loads(dispatch(str(uuid.uuid4())))
        claim = _Claim(w, TaskStarted(**w._fields(d, "started"), claim=True))
        gate = asyncio.create_task(claim.granted())
        await asyncio.sleep(0.05)
        assert not gate.done(), "a claim that asks ran before its answer"
        await w._on_control(answer(w, d, granted, worker_id="someone-else"))
        await asyncio.sleep(0.05)
        assert not gate.done(), "another worker's answer was taken"
        await w._on_control(answer(w, d, granted))
        outcomes.append(await asyncio.wait_for(gate, 5))
        claim.close()
    assert outcomes[0] is None
    assert outcomes[1] is not None and "held by worker w-0" in outcomes[1]
    assert not w.answers


async def test_a_dispatch_sent_before_the_partition_was_ours_asks(tmp_path):
    """Sent before this worker owned the partition (plus the clock skew allowed): its
    previous owner may have claimed it. A partition given back in the same rebalance
    keeps its time."""
    w = Worker(Settings(topic_prefix="t", data_dir=str(tmp_path), worker_claim_skew=2),
               producer=None)  # type: ignore[arg-type]
    revoke = _Revoke(w)
    other = TopicPartition("t.tasks.default", 1)
    await revoke.on_partitions_assigned([TP])
    def sent(seconds_ago: float) -> dict:
        d = codec.loads(dispatch(str(uuid.uuid4())))
        d["sent_at"] = datetime.fromtimestamp(time.time() - seconds_ago, UTC).isoformat()
        d["answers_claims"] = True  # its orchestrator answers claims (0.2.0 on)
        return d
    w.owned_since[TP] -= 60                         # ours for a minute
    assert w._may_be_held(TP, sent(61))
    assert not w._may_be_held(TP, sent(30))
    await revoke.on_partitions_revoked([TP])
    await revoke.on_partitions_assigned([TP, other])  # TP given back: nobody else had it
    assert not w._may_be_held(TP, sent(30))
    assert w._may_be_held(other, sent(30))
    assert w._may_be_held(other, sent(0)), "within the clock skew allowed"
    assert w._may_be_held(TopicPartition("t.tasks.default", 2), sent(0)), "not ours"
    await revoke.on_partitions_revoked([TP, other])
    await revoke.on_partitions_assigned([other])
    assert TP not in w.owned_since


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


class _Producer:
    """Takes every send at once; ``seen`` is called with each value sent."""

    def __init__(self, seen) -> None:  # type: ignore[no-untyped-def]
        self.seen = seen

    async def send_and_wait(self, topic, value, key=None):  # type: ignore[no-untyped-def]
        self.seen(value)


async def test_an_attempts_end_is_journaled_until_the_broker_has_it(tmp_path):
    """A worker killed between its task's end and the broker's acknowledgement of the end
    report leaves the report in its task-groups file, for its successor to send."""
    journal: list = []
    w = Worker(Settings(topic_prefix="t", data_dir=str(tmp_path), worker_warm_python=False),
               producer=None)  # type: ignore[arg-type]

    def seen(value: bytes) -> None:
        if codec.loads(value).get("type") == "TaskSucceeded":
            journal.append(codec.loads(w.groups.path.read_text())["pending"])
    w.producer = _Producer(seen)  # type: ignore[assignment]
    w.groups.dir.mkdir(parents=True)
    w.owned_since[TP] = 0.0                      # ours for ever: nothing to ask
    await w._buffer(TP, 0, dispatch(str(uuid.uuid4())), None)
    await w._start_ready()
    await asyncio.wait_for(asyncio.gather(*w.tasks), 30)
    assert len(journal) == 1 and len(journal[0]) == 1
    message_id, _key, value = journal[0][0]
    assert codec.loads(value)["type"] == "TaskSucceeded"
    assert codec.loads(value)["message_id"] == message_id
    assert codec.loads(w.groups.path.read_text())["pending"] == []
