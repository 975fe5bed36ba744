"""One execution per attempt (core): a start from a worker that does not hold the attempt
is answered with a kill to that worker, and its later reports are not accepted; a claim
that waits for its answer is granted to the first claimant only."""

from __future__ import annotations

from shoal.core.model import (
    RunState,
    TaskKilled,
    TaskKillRequested,
    TaskStarted,
    TaskSucceeded,
)
from shoal.core.workflow import claim_refusal
from tests.unit.test_workflow import Driver, chain, types


def _from(d: Driver, kind: type, worker: str, **kw: object) -> list:
    t = d.r.tasks["a"]
    return d.feed(kind(**d.msg(), task="a", attempt=t.attempt, dispatch_id=t.dispatch_id,
                       worker_id=worker, **kw))


def test_a_second_workers_start_is_killed_and_its_success_not_accepted():
    d = Driver(chain("a", "b"))
    d.start()
    _from(d, TaskStarted, "w1")
    stray = _from(d, TaskStarted, "w2")
    assert types(stray) == ["InputRejected", "TaskKillRequested"]
    kill = stray[1]
    assert isinstance(kill, TaskKillRequested)
    assert kill.worker_id == "w2" and kill.reason == "stray"
    assert "held by worker w1" in stray[0].reason
    assert types(_from(d, TaskSucceeded, "w2", exit_code=0)) == ["InputRejected"]
    # The stray worker's answer to the kill does not end the holder's attempt either.
    assert types(_from(d, TaskKilled, "w2", error="not running on this worker")) == [
        "InputRejected"]
    assert d.state("a") == "running" and d.r.tasks["a"].worker_id == "w1"
    assert "b" not in d.r.tasks
    # The holder's own reports are accepted.
    assert types(_from(d, TaskStarted, "w1")) == ["InputRejected"]  # duplicate: no kill
    assert "TaskSucceeded" in types(_from(d, TaskSucceeded, "w1", exit_code=0))
    assert d.state("a") == "succeeded" and d.r.state is RunState.RUNNING


def test_a_claim_is_granted_to_the_first_claimant_only():
    """The orchestrator's answer to a claim that waits for it: the first claimant of an
    attempt goes ahead; a later one (a redelivery, a dispatch sent twice) never runs it,
    whether the attempt is held, finished or superseded."""
    d = Driver(chain("a", "b"))
    d.start()
    t = d.r.tasks["a"]

    def claim(worker: str, attempt: int | None = None) -> TaskStarted:
        return TaskStarted(**d.msg(), task="a", attempt=attempt or t.attempt,
                           dispatch_id=t.dispatch_id, worker_id=worker, claim=True)

    first = claim("w1")
    d.feed(first)
    assert claim_refusal(d.r, first) is None
    assert claim_refusal(d.r, claim("w1")) is None  # asked again by the holder
    assert "held by worker w1" in (claim_refusal(d.r, claim("w2")) or "")
    assert "superseded" in (claim_refusal(d.r, claim("w2", attempt=2)) or "")
    assert "never dispatched" in (claim_refusal(None, claim("w2")) or "")
    _from(d, TaskSucceeded, "w1", exit_code=0)
    assert "succeeded" in (claim_refusal(d.r, claim("w1")) or "")
    assert "succeeded" in (claim_refusal(d.r, claim("w2")) or "")
