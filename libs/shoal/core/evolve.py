"""evolve: fold one event into the run state. Pure; an event that cannot apply is a bug."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from typing import Any, TypeVar, assert_never

from shoal.core.definition import Priority, parse_definition
from shoal.core.model import (
    AnyEvent,
    InputRejected,
    KillReason,
    Run,
    RunState,
    TaskDecided,
    TaskDelayed,
    TaskDispatched,
    TaskDryRun,
    TaskFailedEvent,
    TaskForcedSuccess,
    TaskKilledEvent,
    TaskKillRequested,
    TaskLost,
    TaskPaused,
    TaskRetryScheduled,
    TaskRun,
    TaskSkipped,
    TaskStartedEvent,
    TaskState,
    TaskSucceededEvent,
    TaskTimedOut,
    Timer,
    TimerArmed,
    TimerCancelled,
    TimerFired,
    TimerKind,
    WorkflowFailed,
    WorkflowPaused,
    WorkflowPausing,
    WorkflowQueued,
    WorkflowRestarted,
    WorkflowResumed,
    WorkflowStarted,
    WorkflowStopped,
    WorkflowStopping,
    WorkflowSubmitted,
    WorkflowSucceeded,
    WorkflowTimedOut,
)

T = TypeVar("T")


_COPIERS: dict[type, Callable[[Any], Any]] = {}


def _copier(cls: type) -> Callable[[Any], Any]:
    """A function copying every field of a ``cls`` instance, unrolled (no loop, no
    ``getattr``): generated once per class from its fields."""
    if cls in _COPIERS:
        return _COPIERS[cls]
    names = [f.name for f in fields(cls)]
    body = "".join(f"    put(o, {n!r}, obj.{n})\n" for n in names)
    source = f"def copy(obj):\n    o = new(cls)\n{body}    return o\n"
    scope: dict[str, Any] = {"new": object.__new__, "put": object.__setattr__, "cls": cls}
    exec(source, scope)  # noqa: S102 - generated from the dataclass's own field names
    copier: Callable[[Any], Any] = scope["copy"]
    _COPIERS[cls] = copier
    return copier


def replace(obj: T, **changes: Any) -> T:
    """``dataclasses.replace`` for the frozen, slotted state classes, without going through
    ``__init__`` (which costs ≈ 8 µs for a ``Run`` and dominated folding long histories).
    They have no ``__post_init__`` and every field is an init field; a name that is not a
    field fails as it does there (``AttributeError``: slotted classes have no ``__dict__``)."""
    new: T = _copier(type(obj))(obj)
    put = object.__setattr__
    for name, value in changes.items():
        put(new, name, value)
    return new


def evolve(run: Run | None, event: AnyEvent, *, instance_id: str = "") -> Run:
    if isinstance(event, WorkflowSubmitted):
        if run is not None:
            raise AssertionError("WorkflowSubmitted on an existing run")
        definition = parse_definition(event.definition)
        scope = (frozenset(event.scope_tasks) if event.scope_tasks is not None
                 else frozenset(definition.task_names))
        carried = {c["task"]: carried_task(c) for c in event.carried}
        return Run(
            instance_id=instance_id, workflow=event.workflow, version=event.version,
            definition=definition, state=RunState.SUBMITTED, attempt=event.attempt,
            params=dict(event.params), priority=Priority(event.priority), seq=1,
            scope=scope, dry_run=event.dry_run, schedule_time=event.schedule_time,
            parent=event.parent, submitted_at=event.at, forked_from=event.forked_from,
            tasks=carried, last_attempts={n: t.attempt for n, t in carried.items()},
            startup=dict(event.startup) if event.startup is not None else {
                k: v for k, v in event.params.items() if definition.params.get(k) != v},
            actor=event.actor,
        )
    if run is None:
        raise AssertionError(f"{event.type} before WorkflowSubmitted")
    new = _apply(run, event)
    if new is run:
        return replace(run, seq=run.seq + 1)
    object.__setattr__(new, "seq", run.seq + 1)  # ``new`` is a fresh copy nobody holds yet
    return new


def _apply(run: Run, event: AnyEvent) -> Run:
    """``event`` applied to ``run`` (``seq`` is set by ``evolve``); returns ``run`` itself
    when the event changes nothing else, a fresh copy otherwise."""
    match event:
        case WorkflowStarted():
            return replace(run, state=RunState.RUNNING, started_at=event.at)
        case WorkflowQueued():
            return replace(run, state=RunState.SERIAL_WAIT)
        case WorkflowPausing():
            return replace(run, state=RunState.READY_PAUSE,
                           last_actor=event.actor or run.last_actor)
        case WorkflowPaused():
            return replace(run, state=RunState.PAUSED, last_actor=event.actor or run.last_actor)
        case WorkflowResumed():
            return replace(run, state=RunState.RUNNING, last_actor=event.actor or run.last_actor)
        case WorkflowStopping():
            # Without an actor it is Shoal's own stop (a timeout, failure strategy `end`).
            return replace(run, state=RunState.READY_STOP,
                           stopping_to=RunState(event.outcome), failure=event.reason,
                           last_actor=event.actor or run.last_actor,
                           stopped_by=event.actor or run.stopped_by)
        case WorkflowStopped():
            return replace(run, state=RunState.STOPPED, finished_at=event.at, stopping_to=None)
        case WorkflowSucceeded():
            return replace(run, state=RunState.SUCCEEDED, finished_at=event.at, failure=None)
        case WorkflowFailed():
            return replace(run, state=RunState.FAILED, finished_at=event.at,
                           failure=event.reason, stopping_to=None)
        case WorkflowRestarted():
            kept = {n: t for n, t in run.tasks.items() if n in set(event.kept)}
            return replace(run, state=RunState.RUNNING, attempt=event.attempt, tasks=kept,
                           timers={}, stopping_to=None, failure=None, started_at=event.at,
                           finished_at=None, stopped_by=None,
                           last_actor=event.actor or run.last_actor)
        case WorkflowTimedOut():
            return run
        case TimerArmed():
            timer = Timer(timer_id=event.timer_id, kind=TimerKind(event.kind),
                          fire_at=event.fire_at, task=event.task, attempt=event.attempt)
            return replace(run, timers={**run.timers, event.timer_id: timer})
        case TimerCancelled() | TimerFired():
            return replace(run, timers={k: v for k, v in run.timers.items()
                                        if k != event.timer_id})
        case TaskDelayed():
            return _new_task(run, event.task, event.attempt, TaskState.SUBMITTED)
        case TaskDispatched():
            current = run.tasks.get(event.task)
            if current is not None and current.attempt == event.attempt:
                t = replace(current, state=TaskState.DISPATCHED,
                            dispatch_id=event.dispatch_id, spec=event.spec)
                return _with_task(run, t)
            run = _new_task(run, event.task, event.attempt, TaskState.DISPATCHED)
            return _with_task(run, replace(run.tasks[event.task],
                                           dispatch_id=event.dispatch_id, spec=event.spec))
        case TaskDryRun():
            run = _new_task(run, event.task, event.attempt, TaskState.SUCCEEDED)
            return _with_task(run, replace(run.tasks[event.task], started_at=event.at,
                                           finished_at=event.at, exit_code=0))
        case TaskStartedEvent():
            t = run.tasks[event.task]
            return _with_task(run, replace(t, state=TaskState.RUNNING, worker_id=event.worker_id,
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
                t, state=TaskState.FAILED, worker_id=event.worker_id or t.worker_id,
                exit_code=event.exit_code, error=event.error,
                started_at=t.started_at or event.reported_at or event.at,
                finished_at=event.reported_at or event.at))
        case TaskKilledEvent():
            t = run.tasks[event.task]
            return _with_task(run, replace(
                t, state=TaskState.KILLED, exit_code=event.exit_code,
                kill_reason=KillReason(event.reason), error=f"killed ({event.reason})",
                finished_at=event.reported_at or event.at))
        case TaskKillRequested():
            target = run.tasks.get(event.task)
            if target is None or target.attempt != event.attempt or not target.state.active:
                return run  # a stray attempt: the kill is an effect only
            return _with_task(run, replace(target, kill_reason=KillReason(event.reason)))
        case TaskRetryScheduled():
            t = run.tasks[event.task]
            return _with_task(run, replace(
                t, state=TaskState.RETRY_WAIT, attempt=event.attempt, tries=t.tries + 1,
                dispatch_id=None, worker_id=None, exit_code=None, error="", kill_reason=None,
                started_at=None, finished_at=None), attempt=event.attempt)
        case TaskTimedOut():
            return run
        case TaskPaused():
            return _with_task(run, replace(run.tasks[event.task], state=TaskState.PAUSED))
        case TaskSkipped():
            run = _new_task(run, event.task, event.attempt, TaskState.SKIPPED)
            return _with_task(run, replace(run.tasks[event.task], finished_at=event.at,
                                           branch_skipped=event.propagates))
        case TaskDecided():
            state = TaskState.FAILED if event.error else TaskState.SUCCEEDED
            run = _new_task(run, event.task, event.attempt, state)
            return _with_task(run, replace(run.tasks[event.task], started_at=event.at,
                                           finished_at=event.at, error=event.error,
                                           exit_code=None if event.error else 0))
        case TaskForcedSuccess():
            t = run.tasks[event.task]
            run = replace(run, last_actor=event.actor or run.last_actor)
            return _with_task(run, replace(t, state=TaskState.FORCED_SUCCESS))
        case TaskLost():
            t = run.tasks[event.task]
            return _with_task(run, replace(t, state=TaskState.LOST, error="lease lapsed",
                                           finished_at=event.at))
        case InputRejected():
            return run
        case WorkflowSubmitted():
            raise AssertionError("WorkflowSubmitted on an existing run")
        case _:
            assert_never(event)


def carried_task(c: Mapping[str, Any]) -> TaskRun:
    """A task a fork starts with, as its source run had finished it."""
    return TaskRun(name=c["task"], state=TaskState(c["state"]), attempt=int(c["attempt"]),
                   worker_id=c.get("worker_id"), exit_code=c.get("exit_code"),
                   outputs=dict(c.get("outputs") or {}), started_at=c.get("started_at"),
                   finished_at=c.get("finished_at"),
                   branch_skipped=bool(c.get("branch_skipped")))


def _new_task(run: Run, name: str, attempt: int, state: TaskState) -> Run:
    return _with_task(run, TaskRun(name=name, state=state, attempt=attempt), attempt=attempt)


def _with_task(run: Run, task: TaskRun, *, attempt: int | None = None) -> Run:
    last = run.last_attempts
    if attempt is not None and attempt > last.get(task.name, 0):
        last = {**last, task.name: attempt}
    return replace(run, tasks={**run.tasks, task.name: task}, last_attempts=last)


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
