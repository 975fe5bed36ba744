"""decide/evolve: the state tables, every command and policy, and the replay property."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.core import versions
from shoal.core.definition import Priority, parse_definition
from shoal.core.model import (
    INPUT_TYPES,
    REPORT_TYPES,
    AnyEvent,
    ExpireLease,
    FireTimer,
    ForceTaskSuccess,
    PauseWorkflow,
    RecoverWorkflow,
    RerunWorkflow,
    ResolvedStart,
    ResumeWorkflow,
    Run,
    RunState,
    Scope,
    StartWorkflow,
    StopWorkflow,
    TaskDecided,
    TaskDispatched,
    TaskFailed,
    TaskKilled,
    TaskStarted,
    TaskState,
    TaskSucceeded,
    WakeWorkflow,
    event_data,
    event_from_data,
)
from shoal.core.workflow import (
    RUN_CONTROLS,
    TASK_TABLE,
    WORKFLOW_TABLE,
    Context,
    allowed_controls,
    decide,
    evolve,
    fold,
    resolved_params,
)
from shoal.infra import codec

IID = "00000000-0000-4000-8000-000000000001"


class Driver:
    """Feeds inputs like the orchestrator does and keeps the live state and the log."""

    def __init__(self, raw: dict[str, Any], **start: Any) -> None:
        self.definition = parse_definition(raw)
        self.run: Run | None = None
        self.log: list[AnyEvent] = []
        self.n = 0
        self.start_fields = start

    @property
    def r(self) -> Run:
        assert self.run is not None
        return self.run

    def feed(self, inp: Any, slot_free: bool = True) -> list[AnyEvent]:
        self.n += 1
        ctx = Context(now=f"2026-01-01T00:{self.n // 60 % 60:02d}:{self.n % 60:02d}+00:00",
                      message_id=f"m{self.n}", slot_free=slot_free,
                      actor=getattr(inp, "actor", None))
        d = decide(self.run, inp, ctx)
        assert d.dead_letter is None, d.dead_letter
        for e in d.events:
            self.run = evolve(self.run, e, instance_id=IID)
        self.log.extend(d.events)
        return list(d.events)

    def msg(self) -> dict[str, str]:
        return {"message_id": f"x{self.n}", "instance_id": IID, "sent_at": "t"}

    def start(self, slot_free: bool = True) -> list[AnyEvent]:
        cmd = StartWorkflow(**self.msg(), workflow=self.definition.name, **self.start_fields)
        return self.feed(ResolvedStart(command=cmd, definition=self.definition, version=1),
                         slot_free)

    def command(self, cls: type, **kw: Any) -> list[AnyEvent]:
        return self.feed(cls(**self.msg(), **kw))

    def report(self, kind: type, task: str, attempt: int | None = None,
               dispatch_id: str | None = None, **kw: Any) -> list[AnyEvent]:
        t = self.r.tasks.get(task)
        return self.feed(kind(**self.msg(), task=task, attempt=attempt or (t.attempt if t else 1),
                              dispatch_id=dispatch_id or (t.dispatch_id if t else None) or "none",
                              # From the attempt's holder (the orchestrator for held tasks).
                              worker_id=(t.worker_id if t and t.worker_id else "w1"), **kw))

    def fire(self, kind: str, task: str | None = None) -> list[AnyEvent]:
        timer = next(t for t in self.r.timers.values()
                     if t.kind.value == kind and (task is None or t.task == task))
        return self.feed(FireTimer(**self.msg(), timer_id=timer.timer_id))

    def state(self, task: str) -> str:
        return self.r.tasks[task].state.value


def types(events: list[AnyEvent]) -> list[str]:
    return [e.type for e in events]


def dispatched(events: list[AnyEvent]) -> list[str]:
    return [e.task for e in events if isinstance(e, TaskDispatched)]


def chain(*names: str, **extra: Any) -> dict[str, Any]:
    tasks = [{"name": n, "command": f"echo {n}", **({"depends_on": [names[i - 1]]} if i else {})}
             for i, n in enumerate(names)]
    return {"name": "chain", "tasks": tasks, **extra}


def diamond(**extra: Any) -> dict[str, Any]:
    return {"name": "diamond", "tasks": [
        {"name": "a", "command": "echo '${setValue(rows=42)}'", "outputs": ["rows"]},
        {"name": "b", "command": "echo ${rows}", "depends_on": ["a"]},
        {"name": "c", "command": "echo c", "depends_on": ["a"]},
        {"name": "d", "command": "echo d", "depends_on": ["b", "c"]}], **extra}


# ------------------------------------------------------------------ the tables


def test_workflow_table_has_every_state_and_input():
    assert set(WORKFLOW_TABLE) == set(RunState)
    for state in RunState:
        assert set(WORKFLOW_TABLE[state]) == set(INPUT_TYPES), state


def test_task_table_has_every_state_and_report():
    assert set(TASK_TABLE) == set(TaskState)
    for state in TaskState:
        assert set(TASK_TABLE[state]) == set(REPORT_TYPES), state


EXPECTED_RUN = {  # (state, command) -> handled (True) or refused (False)
    RunState.RUNNING: {"PauseWorkflow": True, "ResumeWorkflow": False, "StopWorkflow": True,
                       "RerunWorkflow": False, "RecoverWorkflow": False},
    RunState.READY_PAUSE: {"PauseWorkflow": False, "ResumeWorkflow": True,
                           "StopWorkflow": True, "RerunWorkflow": False,
                           "RecoverWorkflow": False},
    RunState.PAUSED: {"PauseWorkflow": False, "ResumeWorkflow": True, "StopWorkflow": True,
                      "RerunWorkflow": False, "RecoverWorkflow": False},
    RunState.READY_STOP: {"PauseWorkflow": False, "ResumeWorkflow": False,
                          "StopWorkflow": False, "RerunWorkflow": False,
                          "RecoverWorkflow": False},
    RunState.SUCCEEDED: {"PauseWorkflow": False, "ResumeWorkflow": False,
                         "StopWorkflow": False, "RerunWorkflow": True, "RecoverWorkflow": False},
    RunState.FAILED: {"PauseWorkflow": False, "ResumeWorkflow": False, "StopWorkflow": False,
                      "RerunWorkflow": True, "RecoverWorkflow": True},
    RunState.STOPPED: {"PauseWorkflow": False, "ResumeWorkflow": False,
                       "StopWorkflow": False, "RerunWorkflow": True, "RecoverWorkflow": True},
    RunState.SUBMITTED: {"PauseWorkflow": True, "ResumeWorkflow": False, "StopWorkflow": True,
                         "RerunWorkflow": False, "RecoverWorkflow": False},
    RunState.SERIAL_WAIT: {"PauseWorkflow": False, "ResumeWorkflow": False,
                           "StopWorkflow": True, "RerunWorkflow": False,
                           "RecoverWorkflow": False},
}


FORCE_ALLOWED = {RunState.SUBMITTED, RunState.RUNNING, RunState.READY_PAUSE, RunState.PAUSED,
                 RunState.STOPPED, RunState.FAILED}


@pytest.mark.parametrize("state", list(RunState))
def test_each_run_input_is_handled_or_refused_as_specified(state):
    expected = {**EXPECTED_RUN[state],
                "ForceTaskSuccess": state in FORCE_ALLOWED,
                "StartWorkflow": True,   # handled: recorded as an idempotent no-op
                "FireTimer": True,       # handled: a stale timer is refused by its handler
                "WakeWorkflow": state is RunState.SERIAL_WAIT,
                **dict.fromkeys(REPORT_TYPES, True)}  # routed to the task table
    assert set(expected) == set(INPUT_TYPES)
    for command, handled in expected.items():
        entry = WORKFLOW_TABLE[state][command]
        assert callable(entry) is handled, (state, command, entry)
        if not handled:
            assert isinstance(entry, str) and entry


@pytest.mark.parametrize("state", list(RunState))
def test_allowed_controls_are_what_the_table_handles(state):
    """What the console offers (GET /runs/{id} allowed_actions) comes from the table."""
    expected = [name for name, command in RUN_CONTROLS.items()
                if {**EXPECTED_RUN[state], "ForceTaskSuccess": state in FORCE_ALLOWED}[command]]
    assert allowed_controls(state) == expected


def test_allowed_controls_of_the_usual_states():
    assert allowed_controls(RunState.SUCCEEDED) == ["rerun"]
    assert allowed_controls(RunState.RUNNING) == ["pause", "stop", "force-success"]
    assert allowed_controls(RunState.PAUSED) == ["resume", "stop", "force-success"]
    assert allowed_controls(RunState.FAILED) == ["rerun", "recover", "force-success"]


def test_resolved_params_are_what_a_task_sees():
    """The run page shows day=$[yyyyMMdd-1] and, beside it, the value the run used: the
    same as ${day} expanded in a task, for a schedule time in another offset too."""
    d = Driver({"name": "p", "params": {"day": "$[yyyyMMdd-1]", "region": "eu"},
                "tasks": [{"name": "t", "command": "echo ${day} ${region}"}]},
               schedule_time="2026-03-01T01:00:00+08:00")
    events = d.start()
    sent = next(e for e in events if isinstance(e, TaskDispatched))
    # the day before 03-01 local (02-28 in UTC); values are quoted as data
    assert sent.command == "echo '20260228' 'eu'"
    assert resolved_params(d.r.params, d.r.schedule_time) == {"day": "20260228",
                                                              "region": "eu"}
    assert resolved_params({"day": "$[yyyyMMdd]"}, None) == {"day": "$[yyyyMMdd]"}
    assert resolved_params({"bad": "$[nope"}, "2026-01-01T00:00:00+00:00") == {
        "bad": "$[nope"}


@pytest.mark.parametrize("state", list(TaskState))
def test_each_report_is_accepted_only_while_an_attempt_is_active(state):
    for report in REPORT_TYPES:
        accepted = callable(TASK_TABLE[state][report])
        expected = state.active and not (
            (state is TaskState.RUNNING and report == "TaskStarted")
            or (state is TaskState.DISPATCHED and report == "ExpireLease"))
        assert accepted is expected, (state, report)


# ------------------------------------------------------------------ scenarios


def test_diamond_runs_in_dependency_order_and_passes_outputs_down():
    d = Driver(diamond())
    assert dispatched(d.start()) == ["a"]
    d.report(TaskStarted, "a")
    after_a = d.report(TaskSucceeded, "a", exit_code=0, outputs={"rows": "42"})
    assert dispatched(after_a) == ["b", "c"]
    b = next(e for e in d.log if isinstance(e, TaskDispatched) and e.task == "b")
    assert b.command == "echo '42'"
    d.report(TaskSucceeded, "b", exit_code=0)
    assert dispatched(d.report(TaskSucceeded, "c", exit_code=0)) == ["d"]
    assert types(d.report(TaskSucceeded, "d", exit_code=0))[-1] == "WorkflowSucceeded"


def test_end_strategy_kills_running_tasks_then_fails():
    d = Driver(diamond())
    d.start()
    d.report(TaskSucceeded, "a", exit_code=0)
    d.report(TaskStarted, "c")
    events = d.report(TaskFailed, "b", exit_code=3)
    kill = [e for e in events if e.type == "TaskKillRequested"]
    assert [(k.task, k.reason, k.worker_id) for k in kill] == [("c", "failure", "w1")]
    assert d.r.state is RunState.RUNNING
    end = d.report(TaskKilled, "c", exit_code=143)
    assert types(end)[-2:] == ["TaskKilled", "WorkflowFailed"]
    assert d.state("c") == "killed" and "d" not in d.r.tasks
    assert "exit code 3" in d.r.failure


def test_continue_strategy_runs_independent_branches_then_fails():
    raw = {"name": "two", "failure_strategy": "continue", "tasks": [
        {"name": "x", "command": "exit 1"}, {"name": "x2", "command": "e", "depends_on": ["x"]},
        {"name": "y", "command": "e"}, {"name": "y2", "command": "e", "depends_on": ["y"]}]}
    d = Driver(raw)
    d.start()
    d.report(TaskFailed, "x", exit_code=1)
    assert dispatched(d.report(TaskSucceeded, "y", exit_code=0)) == ["y2"]
    assert types(d.report(TaskSucceeded, "y2", exit_code=0))[-1] == "WorkflowFailed"
    assert "x2" not in d.r.tasks


def test_pause_lets_running_finish_and_dispatches_nothing_then_resume_continues():
    d = Driver(chain("a", "b"))
    d.start()
    d.report(TaskStarted, "a")
    assert types(d.command(PauseWorkflow)) == ["WorkflowPausing"]
    finished = d.report(TaskSucceeded, "a", exit_code=0)
    assert types(finished) == ["TaskSucceeded", "WorkflowPaused"]
    assert "b" not in d.r.tasks
    assert dispatched(d.command(ResumeWorkflow)) == ["b"]
    assert types(d.report(TaskSucceeded, "b", exit_code=0))[-1] == "WorkflowSucceeded"


def test_stop_kills_running_closes_dispatched_and_ends_stopped_on_confirmation():
    d = Driver(diamond())
    d.start()
    d.report(TaskSucceeded, "a", exit_code=0)
    d.report(TaskStarted, "b")
    events = d.command(StopWorkflow)
    assert d.r.state is RunState.READY_STOP
    kills = {(e.task, e.worker_id) for e in events if e.type == "TaskKillRequested"}
    assert kills == {("b", "w1"), ("c", None)}
    assert d.state("c") == "killed"  # never started: closed at once
    assert types(d.report(TaskFailed, "b", exit_code=143))[-2:] == ["TaskKilled",
                                                                   "WorkflowStopped"]
    # A late start of the closed attempt is a stray: recorded, and its process killed.
    late = d.feed(TaskStarted(**d.msg(), task="c", attempt=1,
                              dispatch_id=next(e.dispatch_id for e in d.log
                                               if isinstance(e, TaskDispatched)
                                               and e.task == "c"), worker_id="w9"))
    assert types(late) == ["InputRejected", "TaskKillRequested"]
    assert late[1].worker_id == "w9" and late[1].reason == "stray"


def test_retry_with_backoff_through_timers():
    raw = chain("a", "b")
    raw["tasks"][0].update(retries=2, retry_interval=10, retry_backoff=3, max_retry_interval=20)
    d = Driver(raw)
    d.start()
    events = d.report(TaskFailed, "a", exit_code=1)
    assert types(events) == ["TaskFailed", "TaskRetryScheduled", "TimerArmed"]
    assert d.state("a") == "retry_wait" and d.r.tasks["a"].attempt == 2
    first_fire = events[-1].fire_at
    assert dispatched(d.fire("retry")) == ["a"]
    d.report(TaskFailed, "a", exit_code=1)
    second = next(iter(d.r.timers.values()))
    gap1 = _seconds(first_fire) - _seconds(events[0].at)
    assert gap1 == 10
    assert d.r.tasks["a"].attempt == 3 and second.fire_at  # 30 capped at 20
    d.fire("retry")
    assert types(d.report(TaskFailed, "a", exit_code=1))[-1] == "WorkflowFailed"


def _seconds(iso: str) -> float:
    from datetime import datetime
    return datetime.fromisoformat(iso).timestamp()


def test_task_timeout_fail_kills_then_retries_by_policy():
    raw = chain("a")
    raw["tasks"][0].update(timeout=2, retries=1)
    d = Driver(raw)
    d.start()
    started = d.report(TaskStarted, "a")
    assert types(started) == ["TaskStarted", "TimerArmed"]
    fired = d.fire("task_timeout")
    assert types(fired) == ["TimerFired", "TaskTimedOut", "TaskKillRequested"]
    after = d.report(TaskKilled, "a", exit_code=137)
    assert types(after) == ["TaskFailed", "TaskRetryScheduled", "TimerArmed"]
    assert "timed out after 2s" in after[0].error


def test_task_timeout_warn_only_records():
    raw = chain("a")
    raw["tasks"][0].update(timeout=2, timeout_strategy="warn")
    d = Driver(raw)
    d.start()
    d.report(TaskStarted, "a")
    assert types(d.fire("task_timeout")) == ["TimerFired", "TaskTimedOut"]
    assert d.state("a") == "running"


def test_workflow_timeout_fail_stops_the_run_as_failed():
    d = Driver(chain("a", timeout=60))
    d.start()
    d.report(TaskStarted, "a")
    d.fire("workflow_timeout")
    assert d.r.state is RunState.READY_STOP
    d.report(TaskFailed, "a", exit_code=143)
    assert d.r.state is RunState.FAILED and "timed out after 60s" in d.r.failure


def test_delay_and_disabled():
    raw = chain("a", "b", "c")
    raw["tasks"][1]["disabled"] = True
    raw["tasks"][0]["delay"] = 5
    d = Driver(raw)
    assert types(d.start())[-2:] == ["TaskDelayed", "TimerArmed"]
    assert d.state("a") == "submitted"
    assert dispatched(d.fire("delay")) == ["a"]
    events = d.report(TaskSucceeded, "a", exit_code=0)
    assert "TaskSkipped" in types(events) and dispatched(events) == ["c"]
    assert d.state("b") == "skipped"


def test_recover_reruns_only_what_did_not_succeed():
    d = Driver(diamond(failure_strategy="continue"))
    d.start()
    d.report(TaskSucceeded, "a", exit_code=0, outputs={"rows": "7"})
    d.report(TaskFailed, "b", exit_code=1)
    d.report(TaskSucceeded, "c", exit_code=0)
    assert d.r.state is RunState.FAILED
    events = d.command(RecoverWorkflow)
    assert events[0].type == "WorkflowRestarted" and list(events[0].kept) == ["a", "c"]
    assert dispatched(events) == ["b"] and d.r.tasks["b"].attempt == 2 and d.r.attempt == 2
    b = next(e for e in events if isinstance(e, TaskDispatched))
    assert b.command == "echo '7'"  # the kept output still feeds the var pool
    d.report(TaskSucceeded, "b", exit_code=0)
    assert types(d.report(TaskSucceeded, "d", exit_code=0))[-1] == "WorkflowSucceeded"


def test_rerun_runs_everything_again_with_new_attempts():
    d = Driver(chain("a"))
    d.start()
    d.report(TaskSucceeded, "a", exit_code=0)
    events = d.command(RerunWorkflow)
    assert dispatched(events) == ["a"] and d.r.tasks["a"].attempt == 2 and d.r.attempt == 2


def test_force_success_unblocks_successors_in_a_running_run():
    d = Driver(chain("a", "b", failure_strategy="continue") | {
        "tasks": [{"name": "a", "command": "x"}, {"name": "z", "command": "z"},
                  {"name": "b", "command": "b", "depends_on": ["a"]}]})
    d.start()
    d.report(TaskStarted, "z")
    d.report(TaskFailed, "a", exit_code=1)
    assert dispatched(d.command(ForceTaskSuccess, task="a")) == ["b"]
    assert d.state("a") == "forced_success"
    refused = d.command(ForceTaskSuccess, task="z")
    assert types(refused) == ["InputRejected"] and "running" in refused[0].reason


def test_start_from_with_scope():
    for scope, expected in [(Scope.DOWNSTREAM, {"b", "d"}), (Scope.UPSTREAM, {"a", "b"}),
                            (Scope.ONLY, {"b"})]:
        d = Driver(diamond(), start_from=("b",), scope=scope)
        d.start()
        assert d.r.scope == frozenset(expected)
        while d.r.state is RunState.RUNNING:
            active = [n for n, t in d.r.tasks.items() if t.state.active]
            d.report(TaskSucceeded, active[0], exit_code=0)
        assert d.r.state is RunState.SUCCEEDED and set(d.r.tasks) == expected


def test_dry_run_succeeds_without_dispatching():
    d = Driver(diamond(), dry_run=True)
    events = d.start()
    assert dispatched(events) == [] and types(events)[-1] == "WorkflowSucceeded"
    assert [e.task for e in events if e.type == "TaskDryRun"] == ["a", "b", "c", "d"]


def test_priorities_order_dispatch():
    raw = {"name": "p", "tasks": [{"name": "low", "command": "x", "priority": "low"},
                                  {"name": "top", "command": "x", "priority": "highest"}]}
    d = Driver(raw, priority=Priority.HIGH)
    events = [e for e in d.start() if isinstance(e, TaskDispatched)]
    assert [e.task for e in events] == ["top", "low"]
    assert events[0].priority < events[1].priority
    assert Driver(raw, priority=Priority.LOWEST).start()[-1].priority > events[1].priority


def test_superseded_duplicate_and_late_reports_change_nothing():
    d = Driver(diamond())
    d.start()
    d.report(TaskStarted, "a")
    before = d.r.tasks
    stale = d.report(TaskSucceeded, "a", attempt=2, exit_code=0)
    assert types(stale) == ["InputRejected"] and "superseded" in stale[0].reason
    dup = d.report(TaskStarted, "a")
    assert types(dup) == ["InputRejected"]  # a duplicate of the current start is not killed
    assert d.r.tasks == before
    d.report(TaskFailed, "a", exit_code=2)
    late = d.report(TaskStarted, "a")  # the seed's "late RUNNING after FAILURE"
    assert late[0].type == "InputRejected" and d.r.state is RunState.FAILED


def test_refusals_are_recorded_with_the_reason():
    d = Driver(chain("a"))
    d.start()
    assert "not paused" in d.command(ResumeWorkflow)[0].reason
    d.report(TaskSucceeded, "a", exit_code=0)
    for cls in (PauseWorkflow, StopWorkflow, ResumeWorkflow, RecoverWorkflow):
        events = d.command(cls)
        assert types(events) == ["InputRejected"] and events[0].input_type == cls.type
    assert d.r.state is RunState.SUCCEEDED


# ------------------------------------------------------------------ property


@st.composite
def dags(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 30))
    tasks = []
    for i in range(n):
        deps = draw(st.lists(st.integers(0, i - 1), unique=True, max_size=3)) if i else []
        task: dict[str, Any] = {"name": f"t{i}", "command": f"echo ${{v{i}}}",
                                "outputs": [f"v{i}"], "depends_on": [f"t{j}" for j in deps],
                                "priority": draw(st.sampled_from(["high", "medium", "low"]))}
        if draw(st.integers(0, 9)) == 0:
            task["disabled"] = True
        if draw(st.integers(0, 4)) == 0:
            task["retries"] = draw(st.integers(1, 2))
            task["retry_interval"] = 1
        if draw(st.integers(0, 6)) == 0:
            task["timeout"] = 5
            task["timeout_strategy"] = draw(st.sampled_from(["warn", "fail"]))
        if draw(st.integers(0, 9)) == 0:
            task["delay"] = 1
        tasks.append(task)
    # Logic nodes: a conditions or switch task choosing among later tasks (each task the
    # branch of at most one), so branch edges keep the DAG acyclic.
    free = set(range(n))
    for i in range(n - 1):
        kind = draw(st.sampled_from(["plain", "plain", "conditions", "switch"]))
        later = sorted(j for j in free if j > i)
        if kind == "plain" or not later or (kind == "conditions" and not tasks[i]["depends_on"]):
            continue
        picks = draw(st.lists(st.sampled_from(later), unique=True, min_size=1, max_size=3))
        free -= set(picks)
        names = [f"t{j}" for j in picks]
        task = tasks[i]
        for key in ("command", "outputs", "retries", "retry_interval", "timeout",
                    "timeout_strategy", "delay"):
            task.pop(key, None)
        task["type"] = kind
        if kind == "conditions":
            cut = draw(st.integers(0, len(names)))
            task["on_success"], task["on_failure"] = names[:cut], names[cut:]
            if not names[:cut] and not names[cut:]:
                task["on_success"] = names
        else:
            task["cases"] = [{"when": f"${{pick}} == '{k}'", "then": [name]}
                             for k, name in zip("abc", names[:-1], strict=False)]
            task["default"] = names[-1:]
            if not task["cases"]:
                task["cases"] = [{"when": "${pick} == 'z'", "then": names}]
                task["default"] = []
    raw: dict[str, Any] = {"name": "random", "tasks": tasks,
                           "params": {"pick": draw(st.sampled_from("abcd"))},
                           "failure_strategy": draw(st.sampled_from(["end", "continue"]))}
    if draw(st.booleans()):
        raw["timeout"] = 100
    return raw


def roundtrip(events: list[AnyEvent]) -> list[AnyEvent]:
    """Through the stored form and JSON, validating each event against its schema."""
    out = []
    for e in events:
        data = json.loads(json.dumps(event_data(e)))
        codec.validate("events", e.type, data)
        out.append(event_from_data(e.type, data, versions.EVENTS.of(e.type)))
    return out


ACTIONS = ["started", "ok", "fail", "killed", "lease", "dup", "stale", "timer", "pause",
           "resume", "stop", "rerun", "recover", "force"]


def step_randomly(d: Driver, data: st.DataObject, sent: list[tuple]) -> None:
    action = data.draw(st.sampled_from(ACTIONS))
    run = d.r
    active = sorted(n for n, t in run.tasks.items() if t.state.active)
    if action in ("started", "ok", "fail", "killed", "lease") and active:
        name = data.draw(st.sampled_from(active))
        t = run.tasks[name]
        sent.append((name, t.attempt, t.dispatch_id))
        if action == "started":
            d.report(TaskStarted, name)
        elif action == "ok":
            d.report(TaskSucceeded, name, exit_code=0, outputs={f"v{name[1:]}": name})
        elif action == "fail":
            d.report(TaskFailed, name, exit_code=data.draw(st.integers(1, 255)))
        elif action == "lease":
            d.report(ExpireLease, name)
        else:
            d.report(TaskKilled, name, exit_code=137)
    elif action == "dup" and sent:
        name, attempt, dispatch = data.draw(st.sampled_from(sent))
        kind = data.draw(st.sampled_from([TaskStarted, TaskSucceeded, TaskFailed]))
        extra = {"exit_code": 0} if kind is TaskSucceeded else {}
        d.report(kind, name, attempt=attempt, dispatch_id=dispatch, **extra)
    elif action == "stale" and run.tasks:
        name = data.draw(st.sampled_from(sorted(run.tasks)))
        d.report(TaskSucceeded, name, attempt=run.tasks[name].attempt + 5, exit_code=0)
    elif action == "timer" and run.timers:
        timer_id = data.draw(st.sampled_from(sorted(run.timers)))
        d.feed(FireTimer(**d.msg(), timer_id=timer_id))
    elif action in ("pause", "resume", "stop", "rerun", "recover"):
        cls = {"pause": PauseWorkflow, "resume": ResumeWorkflow, "stop": StopWorkflow,
               "rerun": RerunWorkflow, "recover": RecoverWorkflow}[action]
        d.command(cls)
    elif action == "force" and run.tasks:
        d.command(ForceTaskSuccess, task=data.draw(st.sampled_from(sorted(run.tasks))))


def random_history(d: Driver, data: st.DataObject, steps: int = 40) -> Driver:
    """Start ``d``, feed it up to ``steps`` random inputs, then let it settle."""
    d.start()
    for _ in range(data.draw(st.integers(0, steps))):
        step_randomly(d, data, [])
    settle(d, data)
    return d


def settle(d: Driver, data: st.DataObject) -> None:
    """Inputs stop except what the system itself produces: timers fire, workers finish
    what they hold (and confirm kills), and a paused run is resumed."""
    for _ in range(2000):
        run = d.r
        if run.state.finished:
            return
        if run.state is RunState.PAUSED:
            d.command(ResumeWorkflow)
            continue
        active = sorted(n for n, t in run.tasks.items() if t.state.active)
        if active:
            name = data.draw(st.sampled_from(active))
            t = run.tasks[name]
            if t.kill_reason is not None:
                if t.state is TaskState.RUNNING and data.draw(st.booleans()):
                    d.report(ExpireLease, name)  # the worker died instead of confirming
                else:
                    d.report(TaskKilled, name, exit_code=137)
            elif data.draw(st.booleans()):
                d.report(TaskSucceeded, name, exit_code=0)
            else:
                d.report(TaskFailed, name, exit_code=1)
        elif run.timers:
            d.feed(FireTimer(**d.msg(), timer_id=min(run.timers, key=lambda k: (
                run.timers[k].fire_at, k))))
        else:
            raise AssertionError(f"stuck in {run.state}: nothing active, no timer armed")
    raise AssertionError("did not settle")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.data())
def test_random_interleavings_always_end_consistently(raw, data):
    d = Driver(raw)
    d.start()
    sent: list[tuple] = []
    for _ in range(data.draw(st.integers(0, 60))):
        step_randomly(d, data, sent)
    settle(d, data)
    run = d.r
    assert run.state.finished, "every run ends in a terminal state once inputs stop"
    assert fold(roundtrip(d.log), instance_id=IID) == run, "fold(events) == live state"
    check_log_invariants(d)
    states = {t.state for t in run.tasks.values()}
    assert not any(s.active or s.waiting for s in states)
    assert not run.timers
    if run.state is RunState.SUCCEEDED:
        # Every task counts as success, or failed where a conditions task branched on it.
        handled = {p for t in d.definition.tasks if t.type == "conditions" for p in t.depends_on
                   if all(s.type == "conditions" for s in d.definition.tasks
                          if p in s.depends_on and s.name in run.scope)}
        assert all(run.tasks[n].state.done_ok or n in handled for n in run.scope)
    elif run.state is RunState.FAILED:
        # A failed run names why; a task may have been forced to success after the failure
        # (the run stays failed until it is recovered, as in DolphinScheduler).
        assert run.failure
        assert (any(s.done_bad or s is TaskState.FORCED_SUCCESS for s in states)
                or "timed out" in run.failure)


def check_log_invariants(d: Driver) -> None:
    """Replayed event by event: dispatch order and at-most-once success per attempt."""
    run: Run | None = None
    succeeded: Counter[tuple[str, int]] = Counter()
    dispatched_attempts: Counter[tuple[str, int, str]] = Counter()
    untaken: set[str] = set()
    for e in d.log:
        if e.type in ("WorkflowRestarted", "WorkflowSubmitted"):
            untaken = set()
        if isinstance(e, TaskDecided):
            untaken |= set(e.untaken)
            assert not set(e.taken) & set(e.untaken)
        if isinstance(e, TaskDispatched):
            assert e.task not in untaken, f"{e.task} runs though its branch was not taken"
        if isinstance(e, TaskDispatched) and run is not None:
            for dep in d.definition.task(e.task).depends_on:
                if dep in run.scope:
                    assert run.tasks[dep].state.done_ok, (e.task, dep)
            dispatched_attempts[(e.task, e.attempt, e.dispatch_id)] += 1
        if e.type == "TaskSucceeded":
            succeeded[(e.task, e.attempt)] += 1
        run = evolve(run, e, instance_id=IID)
    assert all(n == 1 for n in succeeded.values()), "no attempt succeeds twice"
    assert all(n == 1 for n in dispatched_attempts.values())


def test_a_lapsed_lease_loses_the_attempt_and_retries_it():
    raw = chain("a")
    raw["tasks"][0].update(retries=1)
    d = Driver(raw)
    d.start()
    assert types(d.report(ExpireLease, "a")) == ["InputRejected"]  # not started: no lease
    d.report(TaskStarted, "a")
    lost = d.report(ExpireLease, "a")
    assert types(lost) == ["TaskLost", "TaskKillRequested", "TaskRetryScheduled", "TimerArmed"]
    assert lost[1].reason == "stray" and lost[1].worker_id == "w1"
    assert d.r.tasks["a"].attempt == 2
    first_dispatch = next(e.dispatch_id for e in d.log if isinstance(e, TaskDispatched))
    late = d.report(TaskSucceeded, "a", attempt=1, dispatch_id=first_dispatch, exit_code=0)
    assert types(late) == ["InputRejected"] and "superseded" in late[0].reason
    d.fire("retry")
    d.report(TaskStarted, "a")
    d.report(ExpireLease, "a")
    assert d.r.state is RunState.FAILED and d.state("a") == "lost"


def test_a_lapsed_lease_while_stopping_confirms_the_kill():
    d = Driver(chain("a"))
    d.start()
    d.report(TaskStarted, "a")
    d.command(StopWorkflow)
    assert types(d.report(ExpireLease, "a"))[-2:] == ["TaskKilled", "WorkflowStopped"]


def test_serial_wait_queues_then_wakes():
    d = Driver(chain("a", execution="serial_wait"))
    assert types(d.start(slot_free=False)) == ["WorkflowSubmitted", "WorkflowQueued"]
    assert d.r.state is RunState.SERIAL_WAIT and not d.r.tasks
    assert "waiting for its turn" in d.command(PauseWorkflow)[0].reason
    woken = d.command(WakeWorkflow)
    assert types(woken)[0] == "WorkflowStarted" and dispatched(woken) == ["a"]
    assert "not waiting" in d.command(WakeWorkflow)[0].reason


def test_serial_discard_stops_the_new_run():
    d = Driver(chain("a", execution="serial_discard"))
    events = d.start(slot_free=False)
    assert types(events)[-1] == "WorkflowStopped" and "serial_discard" in d.r.failure


def test_a_waiting_run_can_be_stopped():
    d = Driver(chain("a", execution="serial_priority"))
    d.start(slot_free=False)
    assert types(d.command(StopWorkflow))[-1] == "WorkflowStopped"


def test_serial_rerun_needs_the_slot():
    d = Driver(chain("a", execution="serial_wait"))
    d.start()
    d.report(TaskSucceeded, "a", exit_code=0)
    refused = d.feed(RerunWorkflow(**d.msg()), slot_free=False)
    assert types(refused) == ["InputRejected"] and "another run" in refused[0].reason
    assert dispatched(d.feed(RerunWorkflow(**d.msg()))) == ["a"]


def test_the_events_a_command_causes_carry_its_actor():
    d = Driver({"name": "w", "tasks": [{"name": "a", "type": "shell", "command": "x"},
                                       {"name": "b", "type": "shell", "command": "y",
                                        "depends_on": ["a"]}]}, actor="alice")
    submitted = d.start()[0]
    assert submitted.type == "WorkflowSubmitted" and submitted.actor == "alice"
    assert d.r.actor == "alice"
    assert [e.actor for e in d.command(PauseWorkflow, actor="bob")] == ["bob"]  # pausing
    d.report(TaskSucceeded, "a", exit_code=0)  # the drain completes the pause: no actor
    assert d.r.state is RunState.PAUSED and d.r.last_actor == "bob"
    events = d.command(StopWorkflow, actor="carol")
    assert events[0].type == "WorkflowStopping" and events[0].actor == "carol"
    assert (d.r.stopped_by, d.r.last_actor) == ("carol", "carol")
    restarted = d.command(RecoverWorkflow, actor="dave")[0]
    assert restarted.type == "WorkflowRestarted" and restarted.actor == "dave"
    assert (d.r.stopped_by, d.r.last_actor, d.r.actor) == (None, "dave", "alice")
    rejected = d.command(ResumeWorkflow, actor="erin")[0]  # running: refused, still named
    assert rejected.type == "InputRejected" and rejected.actor == "erin"
    assert d.r.last_actor == "dave"  # a refused command controlled nothing


def test_a_python_task_gets_declared_numbers_as_literals():
    """DolphinScheduler pastes values as text, so `n = ${n} + 1` is arithmetic there; a
    param declared int keeps that working while an undeclared one stays a string."""
    d = Driver({"name": "py", "params": {"n": {"value": "41", "type": "int"}, "s": "x"},
                "tasks": [{"name": "t", "type": "python",
                           "script": "n = ${n} + 1\nprint(${s})"}]})
    sent = next(e for e in d.start() if isinstance(e, TaskDispatched))
    assert sent.command == "n = 41 + 1\nprint('x')"
    assert sent.spec is not None and sent.spec["types"] == {"n": "int"}
