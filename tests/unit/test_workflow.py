"""decide/evolve: the state tables, scenarios, and the replay property (acceptance 6)."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.core.definition import parse_definition
from shoal.core.model import (
    AnyEvent,
    InputRejected,
    ResolvedStart,
    Run,
    RunState,
    StartWorkflow,
    TaskDispatched,
    TaskFailed,
    TaskStarted,
    TaskState,
    TaskSucceeded,
    event_data,
    event_from_data,
)
from shoal.core.workflow import (
    INPUT_TYPES,
    REPORT_TYPES,
    TASK_TABLE,
    WORKFLOW_TABLE,
    Context,
    decide,
    evolve,
    fold,
)
from shoal.infra import codec

IID = "00000000-0000-4000-8000-000000000001"


class Driver:
    """Feeds inputs like the orchestrator does and keeps the live state and the log."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.definition = parse_definition(raw)
        self.run: Run | None = None
        self.log: list[AnyEvent] = []
        self.n = 0

    def feed(self, inp: Any) -> list[AnyEvent]:
        self.n += 1
        ctx = Context(now=f"2026-01-01T00:00:{self.n % 60:02d}+00:00", message_id=f"m{self.n}")
        d = decide(self.run, inp, ctx)
        assert d.dead_letter is None, d.dead_letter
        for e in d.events:
            self.run = evolve(self.run, e, instance_id=IID)
        self.log.extend(d.events)
        return list(d.events)

    def start(self) -> list[AnyEvent]:
        cmd = StartWorkflow(message_id=f"s{self.n}", instance_id=IID, sent_at="t",
                            workflow=self.definition.name)
        return self.feed(ResolvedStart(command=cmd, definition=self.definition, version=1))

    def report(self, kind: type, task: str, attempt: int | None = None,
               dispatch_id: str | None = None, **kw: Any) -> list[AnyEvent]:
        assert self.run is not None
        t = self.run.tasks[task]
        return self.feed(kind(message_id=f"r{self.n}", instance_id=IID, sent_at="t", task=task,
                              attempt=attempt or t.attempt,
                              dispatch_id=dispatch_id or t.dispatch_id, worker_id="w1", **kw))


def diamond(**extra: Any) -> dict[str, Any]:
    return {"name": "diamond", "tasks": [
        {"name": "a", "command": "echo '${setValue(rows=42)}'", "outputs": ["rows"]},
        {"name": "b", "command": "echo ${rows}", "depends_on": ["a"]},
        {"name": "c", "command": "echo c", "depends_on": ["a"]},
        {"name": "d", "command": "echo d", "depends_on": ["b", "c"]}], **extra}


def dispatched(events: list[AnyEvent]) -> list[str]:
    return [e.task for e in events if isinstance(e, TaskDispatched)]


# ------------------------------------------------------------------ tables


def test_workflow_table_is_complete():
    for state in RunState:
        assert set(WORKFLOW_TABLE[state]) == set(INPUT_TYPES), state


def test_task_table_is_complete():
    for state in TaskState:
        assert set(TASK_TABLE[state]) == set(REPORT_TYPES), state


# ------------------------------------------------------------------ scenarios


def test_diamond_runs_in_dependency_order_and_passes_outputs_down():
    d = Driver(diamond())
    assert dispatched(d.start()) == ["a"]
    d.report(TaskStarted, "a")
    after_a = d.report(TaskSucceeded, "a", exit_code=0, outputs={"rows": "42"})
    assert dispatched(after_a) == ["b", "c"]
    b = next(e for e in d.log if isinstance(e, TaskDispatched) and e.task == "b")
    assert b.command == "echo 42"
    assert dispatched(d.report(TaskSucceeded, "b", exit_code=0)) == []
    events = d.report(TaskSucceeded, "c", exit_code=0)
    assert dispatched(events) == ["d"]
    last = d.report(TaskSucceeded, "d", exit_code=0)
    assert [e.type for e in last] == ["TaskSucceeded", "WorkflowSucceeded"]
    assert d.run is not None and d.run.state is RunState.SUCCEEDED


def test_failure_with_end_fails_the_run_and_dispatches_nothing_more():
    d = Driver(diamond())
    d.start()
    d.report(TaskSucceeded, "a", exit_code=0)
    d.report(TaskFailed, "b", exit_code=3, error="exit code 3")
    assert d.run.state is RunState.RUNNING  # c still running: wait for it
    events = d.report(TaskSucceeded, "c", exit_code=0)
    assert dispatched(events) == []
    assert events[-1].type == "WorkflowFailed" and "exit code 3" in events[-1].reason
    assert "d" not in d.run.tasks


def test_failure_with_continue_runs_independent_branches():
    raw = {"name": "two", "failure_strategy": "continue", "tasks": [
        {"name": "x", "command": "exit 1"}, {"name": "x2", "command": "echo", "depends_on": ["x"]},
        {"name": "y", "command": "echo"}, {"name": "y2", "command": "echo", "depends_on": ["y"]}]}
    d = Driver(raw)
    d.start()
    d.report(TaskFailed, "x", exit_code=1)
    assert dispatched(d.report(TaskSucceeded, "y", exit_code=0)) == ["y2"]
    assert d.report(TaskSucceeded, "y2", exit_code=0)[-1].type == "WorkflowFailed"
    assert "x2" not in d.run.tasks


def test_superseded_duplicate_and_late_reports_are_recorded_and_change_nothing():
    d = Driver(diamond())
    d.start()
    d.report(TaskStarted, "a")
    before = d.run
    stale = d.report(TaskSucceeded, "a", attempt=2, exit_code=0)
    assert [type(e) for e in stale] == [InputRejected] and "superseded" in stale[0].reason
    dup = d.report(TaskStarted, "a")
    assert "already running" in dup[0].reason
    assert d.run.tasks == before.tasks
    d.report(TaskFailed, "a", exit_code=2)
    late = d.report(TaskStarted, "a")  # the seed's "late RUNNING after FAILURE"
    assert "run already finished" in late[0].reason
    assert d.run.state is RunState.FAILED


def test_second_start_of_same_instance_is_a_recorded_no_op():
    d = Driver(diamond())
    d.start()
    again = d.start()
    assert [e.type for e in again] == ["InputRejected"]
    assert dispatched(d.log) == ["a"]


def test_reports_for_unknown_instance_go_to_dead_letters():
    r = TaskStarted(message_id="m", instance_id=IID, sent_at="t", task="a", attempt=1,
                    dispatch_id="d", worker_id="w")
    assert decide(None, r, Context(now="t", message_id="m")).dead_letter


def test_same_input_same_events():
    a, b = Driver(diamond()), Driver(diamond())
    assert a.start() == b.start()


# ------------------------------------------------------------------ property: replay


@st.composite
def dags(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 15))
    tasks = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=3)) if i else []
        tasks.append({"name": f"t{i}", "command": f"echo ${{v{i}}}", "outputs": [f"v{i}"],
                      "depends_on": [f"t{j}" for j in deps],
                      "priority": draw(st.sampled_from(["high", "medium", "low"]))})
    return {"name": "random", "tasks": tasks,
            "failure_strategy": draw(st.sampled_from(["end", "continue"]))}


def roundtrip(events: list[AnyEvent]) -> list[AnyEvent]:
    """Through the stored form and JSON, validating each event against its schema."""
    out = []
    for e in events:
        data = json.loads(json.dumps(event_data(e)))
        codec.validate("events", e.type, data)
        out.append(event_from_data(e.type, data))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.data())
def test_replaying_the_log_gives_exactly_the_live_state(raw, data):
    d = Driver(raw)
    d.start()
    sent: list[tuple[type, str, int, str]] = []
    for _ in range(data.draw(st.integers(0, 40))):
        if d.run.state.finished:
            break
        active = sorted(n for n, t in d.run.tasks.items() if t.state.active)
        name = data.draw(st.sampled_from(active))
        t = d.run.tasks[name]
        action = data.draw(st.sampled_from(["start", "ok", "fail", "dup", "stale"]))
        if action == "start":
            d.report(TaskStarted, name)
        elif action == "ok":
            d.report(TaskSucceeded, name, exit_code=0, outputs={f"v{name[1:]}": name})
        elif action == "fail":
            d.report(TaskFailed, name, exit_code=data.draw(st.integers(1, 255)))
        elif action == "dup" and sent:
            kind, task, attempt, dispatch = data.draw(st.sampled_from(sent))
            extra = {"exit_code": 0} if kind is TaskSucceeded else {}
            d.report(kind, task, attempt=attempt, dispatch_id=dispatch, **extra)
        else:
            d.report(TaskSucceeded, name, attempt=t.attempt + 1, exit_code=0)
        sent.append((TaskStarted, name, t.attempt, t.dispatch_id))
    # Then every active task reports an outcome, as workers eventually do.
    while not d.run.state.finished:
        active = sorted(n for n, t in d.run.tasks.items() if t.state.active)
        assert active, "a running run always has an active task"
        name = data.draw(st.sampled_from(active))
        if data.draw(st.booleans()):
            d.report(TaskSucceeded, name, exit_code=0)
        else:
            d.report(TaskFailed, name, exit_code=1)
    run = d.run
    # Invariant: replay through the stored form gives exactly the live state.
    assert fold(roundtrip(d.log), instance_id=IID) == run
    # Invariant: nothing dispatched before all its predecessors succeeded.
    succeeded: set[str] = set()
    for e in d.log:
        if isinstance(e, TaskDispatched):
            assert set(d.definition.task(e.task).depends_on) <= succeeded
        if e.type == "TaskSucceeded":
            succeeded.add(e.task)
    # Invariant: no attempt succeeds or is dispatched twice.
    assert max(Counter(e.task for e in d.log if e.type == "TaskSucceeded").values(),
               default=1) == 1
    assert max(Counter(dispatched(d.log)).values()) == 1
    # Invariant: the run state agrees with the task states.
    states = {t.state for t in run.tasks.values()}
    if run.state is RunState.SUCCEEDED:
        assert states == {TaskState.SUCCEEDED} and len(run.tasks) == len(d.definition.tasks)
    else:
        assert TaskState.FAILED in states and not any(s.active for s in states)
