"""Inputs, events and the state they fold into.

Vocabulary: commands are imperative (``StartWorkflow``), reports and events past tense
(``TaskSucceeded``, ``WorkflowStarted``), states adjectives (``running``). The same words
appear in ``schemas/``, REST and the read models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from shoal.core.definition import Priority, WorkflowDefinition


class RunState(StrEnum):
    """States of a workflow run this release can reach (CONTRACT §3 names)."""

    SUBMITTED = "submitted"
    RUNNING = "running"
    FAILED = "failed"
    SUCCEEDED = "succeeded"

    @property
    def finished(self) -> bool:
        return self in (RunState.FAILED, RunState.SUCCEEDED)


class TaskState(StrEnum):
    """States of a task attempt this release can reach (CONTRACT §3 names)."""

    DISPATCHED = "dispatched"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (TaskState.SUCCEEDED, TaskState.FAILED)

    @property
    def active(self) -> bool:
        return self in (TaskState.DISPATCHED, TaskState.RUNNING)


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True, kw_only=True)
class StartWorkflow:
    """Command: start a run of ``workflow`` under ``instance_id`` (idempotent per id)."""

    type: ClassVar[str] = "StartWorkflow"
    message_id: str
    instance_id: str
    sent_at: str
    workflow: str
    version: int | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    priority: Priority | None = None
    schedule_time: str | None = None
    parent: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskReport:
    """Base of the worker's reports; ``attempt`` + ``dispatch_id`` are the fencing token."""

    type: ClassVar[str] = "TaskReport"
    message_id: str
    instance_id: str
    sent_at: str
    task: str
    attempt: int
    dispatch_id: str
    worker_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStarted(TaskReport):
    type: ClassVar[str] = "TaskStarted"


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSucceeded(TaskReport):
    type: ClassVar[str] = "TaskSucceeded"
    exit_code: int = 0
    outputs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFailed(TaskReport):
    type: ClassVar[str] = "TaskFailed"
    exit_code: int | None = None
    error: str = ""


Command = StartWorkflow | TaskStarted | TaskSucceeded | TaskFailed
COMMAND_TYPES: dict[str, type[Command]] = {
    c.type: c for c in (StartWorkflow, TaskStarted, TaskSucceeded, TaskFailed)
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedStart:
    """A StartWorkflow with its definition looked up by the adapter (decide stays pure)."""

    type: ClassVar[str] = "ResolvedStart"
    command: StartWorkflow
    definition: WorkflowDefinition
    version: int

    @property
    def message_id(self) -> str:
        return self.command.message_id


Input = ResolvedStart | TaskStarted | TaskSucceeded | TaskFailed


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base event. ``at`` is the decision time from the context, never a clock read."""

    type: ClassVar[str] = "Event"
    at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowSubmitted(Event):
    type: ClassVar[str] = "WorkflowSubmitted"
    workflow: str
    version: int
    definition: Mapping[str, Any]
    params: Mapping[str, str]
    priority: str
    attempt: int = 1
    schedule_time: str | None = None
    parent: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowStarted(Event):
    type: ClassVar[str] = "WorkflowStarted"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowSucceeded(Event):
    type: ClassVar[str] = "WorkflowSucceeded"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowFailed(Event):
    type: ClassVar[str] = "WorkflowFailed"
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskDispatched(Event):
    """A task attempt was handed to a worker group; carries exactly what will run."""

    type: ClassVar[str] = "TaskDispatched"
    task: str
    attempt: int
    dispatch_id: str
    task_type: str
    worker_group: str
    command: str
    env: Mapping[str, str]
    outputs: tuple[str, ...] | list[str]
    priority: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStartedEvent(Event):
    type: ClassVar[str] = "TaskStarted"
    task: str
    attempt: int
    worker_id: str
    reported_at: str | None = None  # the worker's clock: when it happened, not when decided


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSucceededEvent(Event):
    type: ClassVar[str] = "TaskSucceeded"
    task: str
    attempt: int
    worker_id: str
    reported_at: str | None = None  # the worker's clock: when it happened, not when decided
    exit_code: int
    outputs: Mapping[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFailedEvent(Event):
    type: ClassVar[str] = "TaskFailed"
    task: str
    attempt: int
    worker_id: str
    reported_at: str | None = None  # the worker's clock: when it happened, not when decided
    exit_code: int | None
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class InputRejected(Event):
    """An input not allowed in the current state: recorded, changes nothing else."""

    type: ClassVar[str] = "InputRejected"
    input_type: str
    input_message_id: str
    reason: str


AnyEvent = (
    WorkflowSubmitted | WorkflowStarted | WorkflowSucceeded | WorkflowFailed | TaskDispatched
    | TaskStartedEvent | TaskSucceededEvent | TaskFailedEvent | InputRejected
)
EVENT_TYPES: dict[str, type[AnyEvent]] = {
    e.type: e
    for e in (
        WorkflowSubmitted, WorkflowStarted, WorkflowSucceeded, WorkflowFailed, TaskDispatched,
        TaskStartedEvent, TaskSucceededEvent, TaskFailedEvent, InputRejected,
    )
}


def event_data(event: AnyEvent) -> dict[str, Any]:
    """The event's fields as plain data (what the store keeps in ``data``)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(event):
        v = getattr(event, f.name)
        if isinstance(v, Mapping):
            v = dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def event_from_data(type_name: str, data: Mapping[str, Any]) -> AnyEvent:
    """Rebuild an event from its stored form; unknown fields (added later) are ignored."""
    cls = EVENT_TYPES[type_name]
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in names}
    if cls is TaskDispatched:
        kwargs["outputs"] = tuple(kwargs.get("outputs", ()))
    return cls(**kwargs)


# --------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRun:
    """The current attempt of one task in a run."""

    name: str
    state: TaskState
    attempt: int
    dispatch_id: str
    worker_id: str | None = None
    exit_code: int | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)
    error: str = ""
    dispatched_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """The state of one workflow instance: a pure fold of its events."""

    instance_id: str
    workflow: str
    version: int
    definition: WorkflowDefinition
    state: RunState
    attempt: int
    params: Mapping[str, str]
    priority: Priority
    tasks: Mapping[str, TaskRun]
    seq: int
    schedule_time: str | None = None
    parent: Mapping[str, str] | None = None
    submitted_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    failure: str | None = None
