"""Inputs, events and the state they fold into.

Vocabulary: commands are imperative (``StartWorkflow``), reports and events past tense
(``TaskSucceeded``, ``WorkflowPaused``), states adjectives (``ready_pause``). The same words
appear in ``schemas/``, REST and the read models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from shoal.core import versions
from shoal.core.definition import Priority, WorkflowDefinition


class RunState(StrEnum):
    """States of a workflow run (CONTRACT §3 names)."""

    SUBMITTED = "submitted"
    RUNNING = "running"
    READY_PAUSE = "ready_pause"
    PAUSED = "paused"
    READY_STOP = "ready_stop"
    STOPPED = "stopped"
    FAILED = "failed"
    SUCCEEDED = "succeeded"
    SERIAL_WAIT = "serial_wait"  # serial execution: waits until no other run of it runs

    @property
    def finished(self) -> bool:
        return self in (RunState.STOPPED, RunState.FAILED, RunState.SUCCEEDED)


class TaskState(StrEnum):
    """States of a task in a run (CONTRACT §3 names)."""

    SUBMITTED = "submitted"        # ready, waiting for its delay to pass
    DISPATCHED = "dispatched"      # handed to a worker group
    RUNNING = "running"            # a worker started it
    RETRY_WAIT = "retry_wait"      # failed; the next attempt waits for its retry timer
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    KILLED = "killed"
    PAUSED = "paused"              # would have been dispatched, but the run is pausing
    SKIPPED = "skipped"            # disabled: passed over, successors run
    FORCED_SUCCESS = "forced_success"
    LOST = "lost"                  # its worker stopped renewing the lease

    @property
    def active(self) -> bool:
        """Holds (or may hold) a worker process."""
        return self in (TaskState.DISPATCHED, TaskState.RUNNING)

    @property
    def waiting(self) -> bool:
        """Will run later without a worker holding it now."""
        return self in (TaskState.SUBMITTED, TaskState.RETRY_WAIT, TaskState.PAUSED)

    @property
    def done_ok(self) -> bool:
        """Counts as success for its successors."""
        return self in (TaskState.SUCCEEDED, TaskState.FORCED_SUCCESS, TaskState.SKIPPED)

    @property
    def done_bad(self) -> bool:
        return self in (TaskState.FAILED, TaskState.KILLED, TaskState.LOST)


class Scope(StrEnum):
    """Which part of the DAG a start-from-node run executes (DolphinScheduler's
    TASK_POST / TASK_PRE / TASK_ONLY)."""

    DOWNSTREAM = "downstream"
    UPSTREAM = "upstream"
    ONLY = "only"


class TimerKind(StrEnum):
    RETRY = "retry"
    DELAY = "delay"
    TASK_TIMEOUT = "task_timeout"
    WORKFLOW_TIMEOUT = "workflow_timeout"


class KillReason(StrEnum):
    STOP = "stop"          # the run was stopped (or a workflow timeout failed it)
    FAILURE = "failure"    # failure strategy `end`: another task failed
    TIMEOUT = "timeout"    # the task's own timeout with strategy `fail`
    STRAY = "stray"        # an attempt that is no longer current reported it started


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Every input carries these (CONTRACT §2)."""

    type: ClassVar[str] = "Message"
    message_id: str
    instance_id: str
    sent_at: str
    # Who sent it, for the audit trail: a token's name, ``scheduler``, a Kafka producer's
    # own ``actor`` (``kafka`` when it gave none); None on internal inputs (reports, timers).
    actor: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StartWorkflow(Message):
    """Command: start a run of ``workflow`` under ``instance_id`` (idempotent per id)."""

    type: ClassVar[str] = "StartWorkflow"
    workflow: str
    version: int | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    priority: Priority | None = None
    schedule_time: str | None = None
    # {instance_id, task} of the run that started this one; a sub_workflow task also
    # sends the attempt and dispatch_id its outcome report is fenced with.
    parent: Mapping[str, Any] | None = None
    start_from: tuple[str, ...] | None = None
    scope: Scope = Scope.DOWNSTREAM
    dry_run: bool = False
    # A fork: {instance_id, seq} of the run and event it starts from, and the tasks that
    # had succeeded by then (``carried``, see ``shoal.core.replay.carried_tasks``).
    forked_from: Mapping[str, Any] | None = None
    carried: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PauseWorkflow(Message):
    type: ClassVar[str] = "PauseWorkflow"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumeWorkflow(Message):
    type: ClassVar[str] = "ResumeWorkflow"


@dataclass(frozen=True, slots=True, kw_only=True)
class StopWorkflow(Message):
    type: ClassVar[str] = "StopWorkflow"


@dataclass(frozen=True, slots=True, kw_only=True)
class RerunWorkflow(Message):
    type: ClassVar[str] = "RerunWorkflow"


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoverWorkflow(Message):
    type: ClassVar[str] = "RecoverWorkflow"


@dataclass(frozen=True, slots=True, kw_only=True)
class ForceTaskSuccess(Message):
    type: ClassVar[str] = "ForceTaskSuccess"
    task: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WakeWorkflow(Message):
    """Published by the orchestrator that released a serial workflow's slot to the run
    that now holds it: it may start."""

    type: ClassVar[str] = "WakeWorkflow"


@dataclass(frozen=True, slots=True, kw_only=True)
class FireTimer(Message):
    """Published by an orchestrator's timer poller when a durable timer is due."""

    type: ClassVar[str] = "FireTimer"
    timer_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskReport(Message):
    """Base of the worker's reports; ``attempt`` + ``dispatch_id`` are the fencing token."""

    type: ClassVar[str] = "TaskReport"
    task: str
    attempt: int
    dispatch_id: str
    worker_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskStarted(TaskReport):
    """The worker's claim of the attempt, sent before it runs anything. ``claim``: the
    worker waits for the orchestrator's answer (it got a dispatch another worker may have
    held, see ``shoal.core.workflow.claim_refusal``)."""

    type: ClassVar[str] = "TaskStarted"
    claim: bool = False


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


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskKilled(TaskReport):
    """The worker killed the attempt's process group (or did not have it: ``error`` says)."""

    type: ClassVar[str] = "TaskKilled"
    exit_code: int | None = None
    error: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpireLease(TaskReport):
    """Published by the orchestrator's lease monitor: the worker running this attempt
    stopped listing it in its heartbeats for longer than the lease timeout."""

    type: ClassVar[str] = "ExpireLease"


Command = (
    StartWorkflow | PauseWorkflow | ResumeWorkflow | StopWorkflow | RerunWorkflow
    | RecoverWorkflow | ForceTaskSuccess | FireTimer | TaskStarted | TaskSucceeded
    | TaskFailed | TaskKilled | ExpireLease | WakeWorkflow
)
COMMAND_TYPES: dict[str, type[Command]] = {
    c.type: c for c in (
        StartWorkflow, PauseWorkflow, ResumeWorkflow, StopWorkflow, RerunWorkflow,
        RecoverWorkflow, ForceTaskSuccess, FireTimer, TaskStarted, TaskSucceeded, TaskFailed,
        TaskKilled, ExpireLease, WakeWorkflow)
}
CONTROL_TYPES = ("PauseWorkflow", "ResumeWorkflow", "StopWorkflow", "RerunWorkflow",
                 "RecoverWorkflow", "WakeWorkflow")
# Commands people and services send (the others are Shoal's own: reports, timers, wakes);
# one of these without an ``actor`` came straight from a Kafka producer (CONTRACT §2).
AUDITED_TYPES = frozenset({"StartWorkflow", "PauseWorkflow", "ResumeWorkflow", "StopWorkflow",
                           "RerunWorkflow", "RecoverWorkflow", "ForceTaskSuccess"})
KAFKA_ACTOR = "kafka"          # an audited command published to Kafka without an actor
SCHEDULER_ACTOR = "scheduler"  # schedule fires and backfill runs
ANONYMOUS_ACTOR = "anonymous"  # API requests while tokens are off (SHOAL_API_TOKENS unset)
# Names a token may not take: they would pass for Shoal's own actors in the audit trail.
RESERVED_ACTORS = frozenset({KAFKA_ACTOR, SCHEDULER_ACTOR, ANONYMOUS_ACTOR, "orchestrator"})


def command_actor(type_name: str, actor: str | None) -> str | None:
    """The actor recorded for a decoded command: its own, else ``kafka`` for an audited
    command (a producer that named nobody), else None (Shoal's internal inputs)."""
    if actor:
        return actor
    return KAFKA_ACTOR if type_name in AUDITED_TYPES else None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedStart:
    """A StartWorkflow with its definition looked up by the adapter (decide stays pure)."""

    type: ClassVar[str] = "StartWorkflow"
    command: StartWorkflow
    definition: WorkflowDefinition
    version: int

    @property
    def message_id(self) -> str:
        return self.command.message_id

    @property
    def instance_id(self) -> str:
        return self.command.instance_id

    @property
    def actor(self) -> str | None:
        return self.command.actor


Input = (
    ResolvedStart | PauseWorkflow | ResumeWorkflow | StopWorkflow | RerunWorkflow
    | RecoverWorkflow | ForceTaskSuccess | FireTimer | TaskStarted | TaskSucceeded
    | TaskFailed | TaskKilled | ExpireLease | WakeWorkflow
)
INPUT_TYPES: tuple[str, ...] = (
    "StartWorkflow", "PauseWorkflow", "ResumeWorkflow", "StopWorkflow", "RerunWorkflow",
    "RecoverWorkflow", "ForceTaskSuccess", "FireTimer", "WakeWorkflow", "TaskStarted",
    "TaskSucceeded", "TaskFailed", "TaskKilled", "ExpireLease",
)
REPORT_TYPES: tuple[str, ...] = ("TaskStarted", "TaskSucceeded", "TaskFailed", "TaskKilled",
                                 "ExpireLease")


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
    parent: Mapping[str, Any] | None = None
    scope_tasks: list[str] | tuple[str, ...] | None = None  # None: the whole DAG
    start_from: list[str] | tuple[str, ...] | None = None
    scope: str = "downstream"
    dry_run: bool = False
    startup: Mapping[str, str] | None = None  # the run's own params (None: older events)
    forked_from: Mapping[str, Any] | None = None  # {instance_id, seq} of a fork's source
    carried: list[Mapping[str, Any]] | tuple[Mapping[str, Any], ...] = ()  # a fork's outcomes
    actor: str | None = None  # who started the run (None: older events)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowStarted(Event):
    type: ClassVar[str] = "WorkflowStarted"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowQueued(Event):
    """Serial execution: another run of this workflow runs; this one waits (serial_wait)."""

    type: ClassVar[str] = "WorkflowQueued"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowPausing(Event):
    type: ClassVar[str] = "WorkflowPausing"
    actor: str | None = None  # who sent the command that caused it


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowPaused(Event):
    type: ClassVar[str] = "WorkflowPaused"
    actor: str | None = None  # who sent the command that caused it


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowResumed(Event):
    type: ClassVar[str] = "WorkflowResumed"
    actor: str | None = None  # who sent the command that caused it


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowStopping(Event):
    """Killing what runs; the run ends ``outcome`` (stopped, or failed) once all confirmed."""

    type: ClassVar[str] = "WorkflowStopping"
    outcome: str
    reason: str
    actor: str | None = None  # who stopped it (None: a timeout or a failure)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowStopped(Event):
    type: ClassVar[str] = "WorkflowStopped"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowSucceeded(Event):
    type: ClassVar[str] = "WorkflowSucceeded"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowFailed(Event):
    type: ClassVar[str] = "WorkflowFailed"
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowRestarted(Event):
    """Rerun (every task again) or recover (only what did not succeed); attempt + 1."""

    type: ClassVar[str] = "WorkflowRestarted"
    attempt: int
    mode: str  # rerun | recover
    kept: list[str] | tuple[str, ...] = ()
    actor: str | None = None  # who sent the command that caused it


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowTimedOut(Event):
    type: ClassVar[str] = "WorkflowTimedOut"
    strategy: str
    timeout: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerArmed(Event):
    """A durable timer; the orchestrator stores it and fires it as a FireTimer input."""

    type: ClassVar[str] = "TimerArmed"
    timer_id: str
    kind: str
    fire_at: str
    task: str | None = None
    attempt: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerCancelled(Event):
    type: ClassVar[str] = "TimerCancelled"
    timer_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired(Event):
    type: ClassVar[str] = "TimerFired"
    timer_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskDelayed(Event):
    """Ready, but starts after its ``delay``."""

    type: ClassVar[str] = "TaskDelayed"
    task: str
    attempt: int


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
    # The type's expanded fields: sql/http request, child run, dependency window.
    spec: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskDryRun(Event):
    """Dry run: the task 'succeeded' without executing; ``command`` is what would have run."""

    type: ClassVar[str] = "TaskDryRun"
    task: str
    attempt: int
    command: str


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
    reported_at: str | None = None
    exit_code: int
    outputs: Mapping[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFailedEvent(Event):
    type: ClassVar[str] = "TaskFailed"
    task: str
    attempt: int
    worker_id: str | None = None
    reported_at: str | None = None
    exit_code: int | None
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskKilledEvent(Event):
    type: ClassVar[str] = "TaskKilled"
    task: str
    attempt: int
    reason: str
    worker_id: str | None = None
    reported_at: str | None = None
    exit_code: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskLost(Event):
    """The attempt's lease lapsed: its worker died or no longer has it."""

    type: ClassVar[str] = "TaskLost"
    task: str
    attempt: int
    worker_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskKillRequested(Event):
    """Kill this attempt's process group on ``worker_id`` (None: whichever worker has it)."""

    type: ClassVar[str] = "TaskKillRequested"
    task: str
    attempt: int
    dispatch_id: str
    worker_id: str | None
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRetryScheduled(Event):
    """The next attempt waits in ``retry_wait`` until ``fire_at``."""

    type: ClassVar[str] = "TaskRetryScheduled"
    task: str
    attempt: int
    fire_at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskTimedOut(Event):
    type: ClassVar[str] = "TaskTimedOut"
    task: str
    attempt: int
    strategy: str
    timeout: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskPaused(Event):
    type: ClassVar[str] = "TaskPaused"
    task: str
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSkipped(Event):
    """Passed over. ``propagates``: a branch not taken (its successors whose predecessors
    are all such are skipped too), not a disabled task (whose successors run)."""

    type: ClassVar[str] = "TaskSkipped"
    task: str
    attempt: int
    reason: str
    propagates: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskDecided(Event):
    """A conditions/switch task decided in the orchestrator: ``taken`` branches may run,
    the others are skipped. ``error`` set: it could not decide and failed."""

    type: ClassVar[str] = "TaskDecided"
    task: str
    attempt: int
    decision: str
    taken: list[str] | tuple[str, ...] = ()
    untaken: list[str] | tuple[str, ...] = ()
    error: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskForcedSuccess(Event):
    type: ClassVar[str] = "TaskForcedSuccess"
    task: str
    attempt: int
    actor: str | None = None  # who sent the command that caused it


@dataclass(frozen=True, slots=True, kw_only=True)
class InputRejected(Event):
    """An input not allowed in the current state: recorded, changes nothing else."""

    type: ClassVar[str] = "InputRejected"
    input_type: str
    input_message_id: str
    reason: str
    actor: str | None = None  # who sent the command that caused it
    # A refused worker report's own fields (task, attempt, dispatch_id, worker_id and its
    # outcome), so the decision can be checked again (shadow replay); absent before 0.2.0.
    report: Mapping[str, Any] | None = None


AnyEvent = (
    WorkflowSubmitted | WorkflowStarted | WorkflowPausing | WorkflowPaused | WorkflowResumed
    | WorkflowStopping | WorkflowStopped | WorkflowSucceeded | WorkflowFailed
    | WorkflowRestarted | WorkflowTimedOut | TimerArmed | TimerCancelled | TimerFired
    | TaskDelayed | TaskDispatched | TaskDryRun | TaskStartedEvent | TaskSucceededEvent
    | TaskFailedEvent | TaskKilledEvent | TaskKillRequested | TaskRetryScheduled
    | TaskTimedOut | TaskPaused | TaskSkipped | TaskForcedSuccess | InputRejected | TaskLost
    | WorkflowQueued | TaskDecided
)
EVENT_TYPES: dict[str, type[AnyEvent]] = {
    e.type: e
    for e in (
        WorkflowSubmitted, WorkflowStarted, WorkflowPausing, WorkflowPaused, WorkflowResumed,
        WorkflowStopping, WorkflowStopped, WorkflowSucceeded, WorkflowFailed,
        WorkflowRestarted, WorkflowTimedOut, TimerArmed, TimerCancelled, TimerFired,
        TaskDelayed, TaskDispatched, TaskDryRun, TaskStartedEvent, TaskSucceededEvent,
        TaskFailedEvent, TaskKilledEvent, TaskKillRequested, TaskRetryScheduled,
        TaskTimedOut, TaskPaused, TaskSkipped, TaskForcedSuccess, InputRejected, TaskLost,
        WorkflowQueued, TaskDecided,
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


_FIELD_NAMES: dict[type, frozenset[str]] = {}


def _field_names(cls: type) -> frozenset[str]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(f.name for f in dataclasses.fields(cls))
    return names


def event_from_data(type_name: str, data: Mapping[str, Any], version: int) -> AnyEvent:
    """Rebuild an event from its stored form written at schema ``version``: upcast to
    this release's shape (:class:`~shoal.core.versions.FutureVersion` for a newer one);
    unknown fields (added later, optional) are ignored."""
    cls = EVENT_TYPES[type_name]
    if version != versions.EVENTS.current.get(type_name, version):
        data = versions.upcast(type_name, version, data, versions.EVENTS)
    names = _field_names(cls)
    kwargs: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v)
                              for k, v in data.items() if k in names}
    return cls(**kwargs)


# --------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True, kw_only=True)
class Timer:
    timer_id: str
    kind: TimerKind
    fire_at: str
    task: str | None = None
    attempt: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRun:
    """The current attempt of one task in a run."""

    name: str
    state: TaskState
    attempt: int
    tries: int = 1                 # attempts of this task in the current run attempt
    dispatch_id: str | None = None
    worker_id: str | None = None
    exit_code: int | None = None
    outputs: Mapping[str, str] = field(default_factory=dict)
    error: str = ""
    kill_reason: KillReason | None = None
    started_at: str | None = None
    finished_at: str | None = None
    branch_skipped: bool = False       # skipped as an untaken branch (propagates)
    spec: Mapping[str, Any] | None = None  # the dispatched attempt's expanded fields


ORCHESTRATOR = "orchestrator"  # worker_id of attempts the orchestrator itself holds


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
    scope: frozenset[str]
    dry_run: bool = False
    last_attempts: Mapping[str, int] = field(default_factory=dict)
    timers: Mapping[str, Timer] = field(default_factory=dict)
    stopping_to: RunState | None = None
    schedule_time: str | None = None
    parent: Mapping[str, Any] | None = None
    submitted_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    failure: str | None = None
    startup: Mapping[str, str] = field(default_factory=dict)
    forked_from: Mapping[str, Any] | None = None
    actor: str | None = None        # who started it
    last_actor: str | None = None   # who last paused, resumed, stopped, reran, recovered it
    stopped_by: str | None = None   # who stopped it (while it is stopping or stopped)

    def next_attempt(self, task: str) -> int:
        return self.last_attempts.get(task, 0) + 1
