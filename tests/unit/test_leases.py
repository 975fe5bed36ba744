"""The lease monitor keeps heartbeat deadlines for instances owned elsewhere."""

from __future__ import annotations

from typing import Any

from shoal.core.definition import Priority, parse_definition
from shoal.core.model import Run, RunState, TaskRun, TaskState
from shoal.infra.settings import Settings
from shoal_orchestrator.handler import Cache
from shoal_orchestrator.leases import LeaseMonitor


class RecordingProducer:
    """Stands in for the producer: records what would be published (no broker here)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        self.sent.append((topic, value, key))


def running_run(dispatch_id: str) -> Run:
    d = parse_definition({"name": "w", "tasks": [{"name": "a", "command": "sleep 60"}]})
    return Run(instance_id="i-1", workflow="w", version=1, definition=d,
               state=RunState.RUNNING, attempt=1, params={}, priority=Priority.MEDIUM,
               tasks={"a": TaskRun(name="a", state=TaskState.RUNNING, attempt=1,
                                   dispatch_id=dispatch_id, worker_id="w-1")},
               seq=4, scope=frozenset({"a"}))


async def test_a_moved_instance_keeps_the_lease_its_worker_last_renewed():
    settings = Settings(lease_timeout=10.0)
    cache, producer = Cache(), RecordingProducer()
    monitor = LeaseMonitor(settings, cache, producer)  # type: ignore[arg-type]
    # Heard at t=0 while another orchestrator owned the instance; the worker then died.
    monitor.heard({"worker_id": "w-1", "running": [{"dispatch_id": "d-1"}]}, now=0.0)
    assert await monitor.check(now=5.0) == 0          # not owned here: nothing to do
    cache.put("i-1", 0, running_run("d-1"))            # the instance moves here at t=6
    assert await monitor.check(now=6.0) == 0
    # It lapses 10 s after the last heartbeat, not 10 s after the move.
    assert await monitor.check(now=10.5) == 1
    assert producer.sent and b"ExpireLease" in producer.sent[0][1]


async def test_an_attempt_never_heard_of_gets_a_full_lease():
    cache, producer = Cache(), RecordingProducer()
    monitor = LeaseMonitor(Settings(lease_timeout=10.0), cache, producer)  # type: ignore[arg-type]
    cache.put("i-1", 0, running_run("d-2"))
    assert await monitor.check(now=100.0) == 0
    assert await monitor.check(now=109.0) == 0
    assert await monitor.check(now=110.5) == 1


async def test_deadlines_of_attempts_owned_elsewhere_are_forgotten_once_long_past():
    monitor = LeaseMonitor(Settings(lease_timeout=10.0), Cache(),
                           RecordingProducer())  # type: ignore[arg-type]
    monitor.heard({"running": [{"dispatch_id": "d-3"}]}, now=0.0)
    await monitor.check(now=25.0)
    assert "d-3" in monitor.expiry
    await monitor.check(now=31.0)
    assert "d-3" not in monitor.expiry
