"""Time travel and fork in the core: replay's steps are the orchestrator's own states, and
a fork keeps exactly what had succeeded and runs the rest."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.core.definition import parse_definition
from shoal.core.evolve import fold
from shoal.core.model import (
    ResolvedStart,
    Run,
    StartWorkflow,
    TaskDispatched,
    TaskFailed,
    TaskState,
    TaskSucceeded,
)
from shoal.core.replay import carried_tasks, steps
from shoal.core.workflow import Context, decide
from tests.unit.test_workflow import IID, Driver, dags, random_history, roundtrip, settle

FORK = "00000000-0000-4000-8000-000000000002"


class Recording(Driver):
    """A Driver that also keeps the state after each decision, as the orchestrator has it."""

    def __init__(self, raw: dict[str, Any], **start: Any) -> None:
        super().__init__(raw, **start)
        self.states: list[tuple[int, Run]] = []

    def feed(self, inp: Any, slot_free: bool = True) -> list[Any]:
        events = super().feed(inp, slot_free)
        if events:
            self.states.append((len(self.log), self.r))
        return events


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.data())
def test_replay_steps_equal_the_live_state_after_every_decision(raw, data):
    d = random_history(Recording(raw), data)
    replayed = {seq: run for seq, _, run in
                steps(enumerate(roundtrip(d.log), start=1), instance_id=IID)}
    for seq, live in d.states:
        assert replayed[seq] == live, f"replay disagrees with the orchestrator at seq {seq}"
    until = data.draw(st.integers(1, len(d.log)))
    assert [s for s, _, _ in steps(enumerate(d.log, start=1), instance_id=IID,
                                   until=until)] == list(range(1, until + 1))


def state_after(d: Driver, at: int) -> Run:
    return next(run for seq, _, run in steps(enumerate(d.log, start=1), instance_id=IID)
                if seq == at)


def _fork(source: Run, raw: dict[str, Any], params: dict[str, str], seq: int) -> Driver:
    f = Driver(raw)
    cmd = StartWorkflow(message_id="fork", instance_id=FORK, sent_at="t",
                        workflow=source.workflow, params={**source.startup, **params},
                        forked_from={"instance_id": IID, "seq": seq},
                        carried=tuple(carried_tasks(source)))
    d = decide(None, ResolvedStart(command=cmd, definition=f.definition, version=1),
               Context(now="2026-01-02T00:00:00+00:00", message_id="fork"))
    assert d.dead_letter is None, d.dead_letter
    f.run = fold(d.events, instance_id=FORK)
    f.log = list(d.events)
    return f


CHAIN = {"name": "chain", "params": {"ok": "0"}, "tasks": [
    {"name": "first", "command": "echo '${setValue(token=t-42)}'", "outputs": ["token"]},
    {"name": "middle", "command": "test ${ok} = 1"},
    {"name": "last", "command": "echo ${token}", "depends_on": ["middle"]}]}
CHAIN["tasks"][1]["depends_on"] = ["first"]


def test_fork_before_the_failing_task_keeps_what_succeeded_and_overrides_params():
    d = Driver(CHAIN)
    d.start()
    d.report(TaskSucceeded, "first", exit_code=0, outputs={"token": "t-42"})
    d.report(TaskFailed, "middle", exit_code=1)
    assert d.r.state.value == "failed"
    # The event before middle's dispatch: first has succeeded, nothing else has happened.
    at = next(i for i, e in enumerate(d.log, start=1)
              if isinstance(e, TaskDispatched) and e.task == "middle") - 1
    source = state_after(d, at)
    f = _fork(source, CHAIN, {"ok": "1"}, at)
    submitted = f.log[0]
    assert submitted.forked_from == {"instance_id": IID, "seq": at}
    assert [c["task"] for c in submitted.carried] == ["first"]
    assert [e.task for e in f.log if isinstance(e, TaskDispatched)] == ["middle"]
    middle = next(e for e in f.log if isinstance(e, TaskDispatched))
    assert middle.command == "test '1' = 1"  # values go in quoted as data
    f.report(TaskSucceeded, "middle", exit_code=0)
    last = [e for e in f.log if isinstance(e, TaskDispatched)][-1]
    assert last.task == "last" and last.command == "echo 't-42'"
    f.report(TaskSucceeded, "last", exit_code=0)
    assert f.r.state.value == "succeeded"
    assert f.r.tasks["first"].outputs == {"token": "t-42"}


def test_a_fork_carrying_an_unknown_or_unfinished_task_is_dead_lettered():
    definition = parse_definition(CHAIN)
    for bad in ({"task": "nope", "state": "succeeded", "attempt": 1},
                {"task": "first", "state": "failed", "attempt": 1}):
        cmd = StartWorkflow(message_id="m", instance_id=FORK, sent_at="t", workflow="chain",
                            forked_from={"instance_id": IID, "seq": 3}, carried=(bad,))
        d = decide(None, ResolvedStart(command=cmd, definition=definition, version=1),
                   Context(now="2026-01-02T00:00:00+00:00", message_id="m"))
        assert d.dead_letter and "fork carries" in d.dead_letter


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.data())
def test_a_fork_at_any_event_never_reruns_what_had_succeeded(raw, data):
    d = random_history(Driver(raw), data)
    at = data.draw(st.integers(1, len(d.log)))
    source = state_after(d, at)
    kept = {n for n, t in source.tasks.items() if t.state.done_ok}
    f = _fork(source, raw, {}, at)
    for name in kept:
        assert f.r.tasks[name].state == source.tasks[name].state
        assert f.r.tasks[name].outputs == source.tasks[name].outputs
    settle(f, data)
    assert f.r.state.finished
    rerun = {e.task for e in f.log if isinstance(e, TaskDispatched)}
    assert not rerun & kept, f"the fork ran again what had succeeded: {rerun & kept}"
    assert all(f.r.tasks[n].state in (TaskState.SUCCEEDED, TaskState.FORCED_SUCCESS,
                                      TaskState.SKIPPED) for n in kept)
