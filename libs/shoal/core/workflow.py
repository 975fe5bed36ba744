"""decide / evolve for one workflow instance, as explicit state tables.

``decide(run, input, ctx)`` returns the events an input causes (or a dead-letter reason
when there is no stream to record a rejection in); ``evolve(run, event)`` folds one event.
Both are pure: ``ctx`` carries the decision time and an id source derived from the
input's ``message_id``, so the same inputs always give the same events (replay can
re-decide and compare).

The tables (:data:`WORKFLOW_TABLE`, :data:`TASK_TABLE`) say, for each state, what every
input does: a handler, or a rejection reason recorded as ``InputRejected``. There is no
if-else over states elsewhere; a test checks each table has every (state, input) pair.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import assert_never

from shoal.core.definition import FailureStrategy, Priority, WorkflowDefinition, parse_definition
from shoal.core.model import (
    AnyEvent,
    Input,
    InputRejected,
    ResolvedStart,
    Run,
    RunState,
    TaskDispatched,
    TaskFailed,
    TaskFailedEvent,
    TaskReport,
    TaskRun,
    TaskStartedEvent,
    TaskState,
    TaskSucceeded,
    TaskSucceededEvent,
    WorkflowFailed,
    WorkflowStarted,
    WorkflowSubmitted,
    WorkflowSucceeded,
)
from shoal.core.params import expand

_ID_NAMESPACE = uuid.UUID("6f1c1c5e-3b1d-4f5e-9a56-5a0a1f0c7d10")


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """What a decision may depend on besides state and input."""

    now: str
    message_id: str

    def new_id(self, n: int) -> str:
        """The n-th id of this decision: the same input always yields the same ids."""
        return str(uuid.uuid5(_ID_NAMESPACE, f"{self.message_id}/{n}"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """Events to append, or (only when no stream exists) a reason to dead-letter the input."""

    events: tuple[AnyEvent, ...] = ()
    dead_letter: str | None = None


INPUT_TYPES: tuple[str, ...] = ("ResolvedStart", "TaskStarted", "TaskSucceeded", "TaskFailed")
REPORT_TYPES: tuple[str, ...] = ("TaskStarted", "TaskSucceeded", "TaskFailed")


# --------------------------------------------------------------------------- decide


def decide(run: Run | None, inp: Input, ctx: Context) -> Decision:
    """The events ``inp`` causes in ``run`` (None: the instance does not exist yet)."""
    if run is None:
        if isinstance(inp, ResolvedStart):
            return Decision(events=tuple(_start(inp, ctx)))
        return Decision(dead_letter=f"{inp.type} for unknown instance {inp.instance_id}")
    handler = WORKFLOW_TABLE[run.state][inp.type]
    if isinstance(handler, str):
        return Decision(events=(_rejected(inp, handler, ctx),))
    return Decision(events=tuple(handler(run, inp, ctx)))


WorkflowHandler = Callable[[Run, Input, Context], list[AnyEvent]]
TaskHandler = Callable[[TaskRun, TaskReport, Context], list[AnyEvent]]


def _rejected(inp: Input, reason: str, ctx: Context) -> InputRejected:
    return InputRejected(at=ctx.now, input_type=_input_name(inp),
                         input_message_id=inp.message_id, reason=reason)


def _input_name(inp: Input) -> str:
    return "StartWorkflow" if isinstance(inp, ResolvedStart) else inp.type


def _start(inp: ResolvedStart, ctx: Context) -> list[AnyEvent]:
    cmd, definition = inp.command, inp.definition
    params = {**definition.params, **cmd.params}
    priority = cmd.priority or definition.priority
    submitted = WorkflowSubmitted(
        at=ctx.now, workflow=definition.name, version=inp.version,
        definition=definition.to_dict(), params=params, priority=priority.value,
        schedule_time=cmd.schedule_time, parent=cmd.parent,
    )
    events: list[AnyEvent] = [submitted, WorkflowStarted(at=ctx.now)]
    run = fold(events, instance_id=cmd.instance_id)
    return events + _advance(run, ctx)


def _reject_existing(run: Run, inp: Input, ctx: Context) -> list[AnyEvent]:
    return [_rejected(inp, f"instance {run.instance_id} already exists "
                           f"(state {run.state.value}); start is idempotent", ctx)]


def _on_report(run: Run, inp: Input, ctx: Context) -> list[AnyEvent]:
    """Route a worker report through the task table, then advance the DAG."""
    assert isinstance(inp, TaskReport)
    task = run.tasks.get(inp.task)
    if task is None:
        return [_rejected(inp, f"task '{inp.task}' was never dispatched in this run", ctx)]
    if (inp.attempt, inp.dispatch_id) != (task.attempt, task.dispatch_id):
        return [_rejected(inp, f"superseded attempt {inp.attempt} of '{inp.task}' "
                               f"(current attempt {task.attempt}); ignored", ctx)]
    handler = TASK_TABLE[task.state][inp.type]
    if isinstance(handler, str):
        return [_rejected(inp, handler, ctx)]
    events = handler(task, inp, ctx)
    after = evolve_all(run, events)
    return events + _advance(after, ctx)


def _task_started(task: TaskRun, r: TaskReport, ctx: Context) -> list[AnyEvent]:
    return [TaskStartedEvent(at=ctx.now, task=task.name, attempt=task.attempt,
                             worker_id=r.worker_id, reported_at=r.sent_at)]


def _task_succeeded(task: TaskRun, r: TaskReport, ctx: Context) -> list[AnyEvent]:
    assert isinstance(r, TaskSucceeded)
    return [TaskSucceededEvent(at=ctx.now, task=task.name, attempt=task.attempt,
                               worker_id=r.worker_id, exit_code=r.exit_code,
                               outputs=dict(r.outputs), reported_at=r.sent_at)]


def _task_failed(task: TaskRun, r: TaskReport, ctx: Context) -> list[AnyEvent]:
    assert isinstance(r, TaskFailed)
    return [TaskFailedEvent(at=ctx.now, task=task.name, attempt=task.attempt,
                            worker_id=r.worker_id, exit_code=r.exit_code, error=r.error,
                            reported_at=r.sent_at)]


_FINISHED_TASK = "task already finished; late or duplicated report discarded"

TASK_TABLE: Mapping[TaskState, Mapping[str, TaskHandler | str]] = {
    TaskState.DISPATCHED: {
        "TaskStarted": _task_started,
        "TaskSucceeded": _task_succeeded,
        "TaskFailed": _task_failed,
    },
    TaskState.RUNNING: {
        "TaskStarted": "task already running; duplicated start report discarded",
        "TaskSucceeded": _task_succeeded,
        "TaskFailed": _task_failed,
    },
    TaskState.SUCCEEDED: dict.fromkeys(REPORT_TYPES, _FINISHED_TASK),
    TaskState.FAILED: dict.fromkeys(REPORT_TYPES, _FINISHED_TASK),
}

_FINISHED_RUN = "run already finished; report recorded and ignored"

WORKFLOW_TABLE: Mapping[RunState, Mapping[str, WorkflowHandler | str]] = {
    RunState.SUBMITTED: {"ResolvedStart": _reject_existing,
                         **dict.fromkeys(REPORT_TYPES, _on_report)},
    RunState.RUNNING: {"ResolvedStart": _reject_existing,
                       **dict.fromkeys(REPORT_TYPES, _on_report)},
    RunState.SUCCEEDED: {"ResolvedStart": _reject_existing,
                         **dict.fromkeys(REPORT_TYPES, _FINISHED_RUN)},
    RunState.FAILED: {"ResolvedStart": _reject_existing,
                      **dict.fromkeys(REPORT_TYPES, _FINISHED_RUN)},
}


# --------------------------------------------------------------------------- DAG progress


def ready_tasks(run: Run) -> list[str]:
    """Tasks not yet dispatched whose predecessors all succeeded, most urgent first."""
    ready = [
        t for t in run.definition.tasks
        if t.name not in run.tasks
        and all(_succeeded(run, d) for d in t.depends_on)
    ]
    order = {t.name: i for i, t in enumerate(run.definition.tasks)}
    ready.sort(key=lambda t: (t.priority.rank, order[t.name]))
    return [t.name for t in ready]


def _succeeded(run: Run, task: str) -> bool:
    t = run.tasks.get(task)
    return t is not None and t.state is TaskState.SUCCEEDED


def _advance(run: Run, ctx: Context) -> list[AnyEvent]:
    """Dispatch what became ready; finish the run when nothing is left to wait for."""
    if run.state.finished:
        return []
    failed = [t for t in run.tasks.values() if t.state is TaskState.FAILED]
    events: list[AnyEvent] = []
    if not failed or run.definition.failure_strategy is FailureStrategy.CONTINUE:
        for n, name in enumerate(ready_tasks(run)):
            events.append(_dispatch(run, name, ctx, n))
        run = evolve_all(run, events)
    if any(t.state.active for t in run.tasks.values()):
        return events
    if failed:
        first = failed[0]
        detail = f"exit code {first.exit_code}" if first.exit_code is not None else first.error
        events.append(WorkflowFailed(at=ctx.now, reason=f"task '{first.name}' failed ({detail})"))
    elif len(run.tasks) == len(run.definition.tasks):
        events.append(WorkflowSucceeded(at=ctx.now))
    else:  # pragma: no cover - the DAG is acyclic, so something is always ready
        raise AssertionError(f"run {run.instance_id} has nothing ready, active or failed")
    return events


def _dispatch(run: Run, name: str, ctx: Context, n: int) -> TaskDispatched:
    definition = run.definition
    task = definition.task(name)
    params = dict(run.params)
    for upstream in _ancestors(definition, name):
        params.update(run.tasks[upstream].outputs)
    return TaskDispatched(
        at=ctx.now, task=name, attempt=1, dispatch_id=ctx.new_id(100 + n),
        task_type=task.type, worker_group=definition.worker_group_of(task),
        command=expand(task.command, params),
        env={k: expand(v, params) for k, v in task.env.items()},
        outputs=tuple(task.outputs),
        priority=run.priority.rank * len(Priority) + task.priority.rank,
    )


def _ancestors(definition: WorkflowDefinition, name: str) -> list[str]:
    """Ancestors in definition order, so a nearer producer's output is applied last."""
    seen: set[str] = set()
    stack = list(definition.task(name).depends_on)
    while stack:
        cur = stack.pop()
        if cur not in seen:
            seen.add(cur)
            stack.extend(definition.task(cur).depends_on)
    return [t.name for t in definition.tasks if t.name in seen]


# --------------------------------------------------------------------------- evolve


def evolve(run: Run | None, event: AnyEvent, *, instance_id: str = "") -> Run:
    """Fold one event. An event that cannot apply to ``run`` is a bug: it raises."""
    if isinstance(event, WorkflowSubmitted):
        if run is not None:
            raise AssertionError("WorkflowSubmitted on an existing run")
        return Run(
            instance_id=instance_id, workflow=event.workflow, version=event.version,
            definition=parse_definition(event.definition), state=RunState.SUBMITTED,
            attempt=event.attempt, params=dict(event.params),
            priority=Priority(event.priority), tasks={}, seq=1,
            schedule_time=event.schedule_time, parent=event.parent, submitted_at=event.at,
        )
    if run is None:
        raise AssertionError(f"{event.type} before WorkflowSubmitted")
    run = replace(run, seq=run.seq + 1)
    match event:
        case WorkflowStarted():
            return replace(run, state=RunState.RUNNING, started_at=event.at)
        case WorkflowSucceeded():
            return replace(run, state=RunState.SUCCEEDED, finished_at=event.at)
        case WorkflowFailed():
            return replace(run, state=RunState.FAILED, finished_at=event.at,
                           failure=event.reason)
        case TaskDispatched():
            return _with_task(run, TaskRun(
                name=event.task, state=TaskState.DISPATCHED, attempt=event.attempt,
                dispatch_id=event.dispatch_id, dispatched_at=event.at))
        case TaskStartedEvent():
            t = run.tasks[event.task]
            return _with_task(run, replace(t, state=TaskState.RUNNING,
                                           worker_id=event.worker_id,
                                           started_at=event.reported_at or event.at))
        case TaskSucceededEvent():
            t = run.tasks[event.task]
            return _with_task(run, replace(
                t, state=TaskState.SUCCEEDED, worker_id=event.worker_id,
                exit_code=event.exit_code, outputs=dict(event.outputs),
                started_at=t.started_at or event.reported_at or event.at,
                finished_at=event.reported_at or event.at))
        case TaskFailedEvent():
            t = run.tasks[event.task]
            return _with_task(run, replace(
                t, state=TaskState.FAILED, worker_id=event.worker_id,
                exit_code=event.exit_code, error=event.error,
                started_at=t.started_at or event.reported_at or event.at,
                finished_at=event.reported_at or event.at))
        case InputRejected():
            return run
        case _:
            assert_never(event)


def _with_task(run: Run, task: TaskRun) -> Run:
    return replace(run, tasks={**run.tasks, task.name: task})


def evolve_all(run: Run, events: Iterable[AnyEvent]) -> Run:
    for e in events:
        run = evolve(run, e)
    return run


def fold(events: Iterable[AnyEvent], *, instance_id: str) -> Run:
    """The state of an instance from its whole history."""
    run: Run | None = None
    for e in events:
        run = evolve(run, e, instance_id=instance_id)
    if run is None:
        raise ValueError("empty history")
    return run
