"""decide for one workflow instance, as two explicit state tables.

``decide(run, input, ctx)`` returns the events an input causes (or, when there is no stream
yet, a reason to dead-letter it). It is pure: ``ctx`` carries the decision time and an id
source derived from the input's ``message_id``, so the same inputs give the same events.

:data:`WORKFLOW_TABLE` says, for each run state, what every input does; task reports are
routed through :data:`TASK_TABLE`, which says what each report does in each task state.
An entry is a handler, or a string: the reason the input is refused, recorded as
``InputRejected``. A test checks both tables have every (state, input) pair, and
``shoal.core.docs`` renders them for the README.

Late, duplicated and out-of-order reports are harmless by construction: a report must
carry the current attempt's fencing token (attempt + dispatch_id) and find its task in a
state whose row accepts it; anything else is recorded and ignored, and a stray
``TaskStarted`` also gets a kill sent to the worker that started it.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shoal.core import expr
from shoal.core.definition import (
    HELD_TYPES,
    LOGIC_TYPES,
    Execution,
    FailureStrategy,
    Priority,
    TaskDefinition,
    TimeoutStrategy,
    condition_holds,
)
from shoal.core.dependent import DateInvalid, date_window
from shoal.core.evolve import evolve, evolve_all, fold
from shoal.core.model import (
    ORCHESTRATOR,
    AnyEvent,
    FireTimer,
    ForceTaskSuccess,
    Input,
    InputRejected,
    KillReason,
    ResolvedStart,
    Run,
    RunState,
    Scope,
    TaskDecided,
    TaskDelayed,
    TaskDispatched,
    TaskDryRun,
    TaskFailed,
    TaskFailedEvent,
    TaskForcedSuccess,
    TaskKilled,
    TaskKilledEvent,
    TaskKillRequested,
    TaskLost,
    TaskPaused,
    TaskReport,
    TaskRetryScheduled,
    TaskRun,
    TaskSkipped,
    TaskStarted,
    TaskStartedEvent,
    TaskState,
    TaskSucceeded,
    TaskSucceededEvent,
    TaskTimedOut,
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
from shoal.core.params import expand, json_value, whole_reference
from shoal.core.paramtypes import definition_param_problems
from shoal.core.render import (
    RenderError,
    render_env,
    render_python,
    render_shell,
    render_url,
)
from shoal.core.render import references as all_references
from shoal.core.timeexpr import TimeExpressionInvalid, expand_time, system_params

__all__ = ["RUN_CONTROLS", "TASK_TABLE", "WORKFLOW_TABLE", "Context", "Decision",
           "allowed_controls", "claim_refusal", "decide", "evolve", "evolve_all", "fold",
           "rejection", "resolved_params"]

_ID_NAMESPACE = uuid.UUID("6f1c1c5e-3b1d-4f5e-9a56-5a0a1f0c7d10")
CHILD_NAMESPACE = uuid.UUID("0c6b6a57-8f7e-4d0c-b2b5-9d5a7a1e2c44")


def child_instance_id(dispatch_id: str) -> str:
    """The instance id of the child run a sub_workflow attempt starts (one per attempt)."""
    return str(uuid.uuid5(CHILD_NAMESPACE, dispatch_id))


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    """What a decision may depend on besides state and input."""

    now: str
    message_id: str
    # Serial execution: whether this run may hold its workflow's slot now (looked up by
    # the adapter; always True for parallel workflows).
    slot_free: bool = True
    # Who sent the input (the audit trail); the events it causes record it.
    actor: str | None = None

    def new_id(self, n: int) -> str:
        """The n-th id of this decision: the same input always yields the same ids."""
        return str(uuid.uuid5(_ID_NAMESPACE, f"{self.message_id}/{n}"))

    def after(self, seconds: float) -> str:
        return (datetime.fromisoformat(self.now) + timedelta(seconds=seconds)).isoformat()


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """Events to append, or (only when no stream exists) a reason to dead-letter the input."""

    events: tuple[AnyEvent, ...] = ()
    dead_letter: str | None = None


class Step:
    """Accumulates the events of one decision, keeping the state they lead to."""

    def __init__(self, run: Run, ctx: Context) -> None:
        self.run = run
        self.ctx = ctx
        self.events: list[AnyEvent] = []
        self._ids = 0

    def emit(self, event: AnyEvent) -> None:
        self.events.append(event)
        self.run = evolve(self.run, event)

    def new_id(self) -> str:
        self._ids += 1
        return self.ctx.new_id(self._ids)

    def reject(self, inp: Input, reason: str) -> None:
        report = _report_data(inp) if isinstance(inp, TaskReport) else None
        self.emit(InputRejected(at=self.ctx.now, input_type=inp.type,
                                input_message_id=inp.message_id, reason=reason,
                                actor=self.ctx.actor, report=report))


def _report_data(r: TaskReport) -> dict[str, Any]:
    """What a refused report said, for the record (its ids are the event's own)."""
    return {f.name: dict(v) if isinstance(v := getattr(r, f.name), Mapping) else v
            for f in dataclasses.fields(r) if f.name not in ("message_id", "instance_id",
                                                             "actor")}


Handler = Callable[[Step, Input], None]
TaskHandler = Callable[[Step, TaskRun, TaskReport], None]


# --------------------------------------------------------------------------- decide


def decide(run: Run | None, inp: Input, ctx: Context) -> Decision:
    """The events ``inp`` causes in ``run`` (None: the instance does not exist yet)."""
    if run is None:
        if isinstance(inp, ResolvedStart):
            return _start(inp, ctx)
        return Decision(dead_letter=f"{inp.type} for unknown instance {inp.instance_id}")
    step = Step(run, ctx)
    entry = WORKFLOW_TABLE[run.state][inp.type]
    if isinstance(entry, str):
        step.reject(inp, entry)
        _kill_if_stray(step, inp)
    else:
        entry(step, inp)
    return Decision(events=tuple(step.events))


def rejection(state: RunState, input_type: str) -> str | None:
    """Why ``input_type`` is refused in ``state`` by the table, or None when it is handled.

    The API answers 409 with it before publishing; the orchestrator stays authoritative.
    """
    entry = WORKFLOW_TABLE[state][input_type]
    return entry if isinstance(entry, str) else None


# The controls a user sends to a run, by the names the API and the console give them.
RUN_CONTROLS: Mapping[str, str] = {
    "pause": "PauseWorkflow", "resume": "ResumeWorkflow", "stop": "StopWorkflow",
    "rerun": "RerunWorkflow", "recover": "RecoverWorkflow", "force-success": "ForceTaskSuccess",
}


def allowed_controls(state: RunState) -> list[str]:
    """The controls ``state`` accepts, as :data:`WORKFLOW_TABLE` says (in
    :data:`RUN_CONTROLS`' order). What a client offers; the orchestrator still decides."""
    return [name for name, input_type in RUN_CONTROLS.items()
            if rejection(state, input_type) is None]


def _start(inp: ResolvedStart, ctx: Context) -> Decision:
    cmd, definition = inp.command, inp.definition
    scope_tasks: list[str] | None = None
    if cmd.start_from:
        unknown = [t for t in cmd.start_from if t not in definition.task_names]
        if unknown:
            return Decision(dead_letter=f"StartWorkflow: start_from names unknown task(s) "
                                        f"{', '.join(unknown)} of '{definition.name}'")
        scope_tasks = sorted(_scope(definition.task_names, cmd.start_from, cmd.scope,
                                    {t.name: t.depends_on for t in definition.tasks}))
    if cmd.parent is None:  # a sub-workflow's params are its parent task's, not a run's
        problems = definition_param_problems(definition, cmd.params)
        if problems:
            return Decision(dead_letter=f"StartWorkflow: {'; '.join(map(str, problems))}")
    bad = [str(c.get("task")) for c in cmd.carried if c.get("task") not in
           definition.task_names or c.get("state") not in CARRIED_STATES]
    if bad:
        return Decision(dead_letter=f"StartWorkflow: a fork carries task(s) {', '.join(bad)} "
                                    f"that '{definition.name}' v{inp.version} has not, or "
                                    "not as finished with success")
    submitted = WorkflowSubmitted(
        at=ctx.now, workflow=definition.name, version=inp.version,
        definition=definition.to_dict(), params={**definition.params, **cmd.params},
        startup=dict(cmd.params),
        priority=(cmd.priority or definition.priority).value,
        schedule_time=cmd.schedule_time, parent=cmd.parent, scope_tasks=scope_tasks,
        start_from=list(cmd.start_from) if cmd.start_from else None, scope=cmd.scope.value,
        dry_run=cmd.dry_run,
        forked_from=dict(cmd.forked_from) if cmd.forked_from else None,
        carried=[dict(c) for c in cmd.carried], actor=ctx.actor,
    )
    step = Step(fold([submitted], instance_id=cmd.instance_id), ctx)
    step.events.append(submitted)
    execution = definition.execution
    if execution.serial and not ctx.slot_free:
        if execution is Execution.SERIAL_DISCARD:
            step.emit(WorkflowStopping(at=ctx.now, outcome=RunState.STOPPED.value,
                                       reason=f"discarded: another run of '{definition.name}'"
                                              " is running (serial_discard)"))
            _advance(step)
        else:
            step.emit(WorkflowQueued(at=ctx.now))
        return Decision(events=tuple(step.events))
    step.emit(WorkflowStarted(at=ctx.now))
    _arm_workflow_timeout(step)
    _advance(step)
    return Decision(events=tuple(step.events))


# What a fork may carry over from its source: outcomes its successors count as success.
CARRIED_STATES = frozenset(s.value for s in TaskState if s.done_ok)


def _wake(step: Step, inp: Input) -> None:
    """Its serial slot is free now: → running."""
    step.emit(WorkflowStarted(at=step.ctx.now))
    _arm_workflow_timeout(step)
    _advance(step)


def _scope(names: tuple[str, ...], start: tuple[str, ...], scope: Scope,
           deps: Mapping[str, tuple[str, ...]]) -> set[str]:
    if scope is Scope.ONLY:
        return set(start)
    edges: dict[str, list[str]] = {n: [] for n in names}
    for n in names:
        for d in deps[n]:
            if scope is Scope.DOWNSTREAM:
                edges[d].append(n)
            else:
                edges[n].append(d)
    seen = set(start)
    stack = list(start)
    while stack:
        for nxt in edges[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


# --------------------------------------------------------------------------- run commands


def _reject_existing(step: Step, inp: Input) -> None:
    """Recorded as InputRejected: a start is idempotent."""
    step.reject(inp, f"instance {step.run.instance_id} already exists "
                     f"(state {step.run.state.value}); start is idempotent")


def _pause(step: Step, inp: Input) -> None:
    """→ ready_pause while worker attempts run (nothing new is dispatched), else → paused.
    Child runs and dependency waits do not hold a pause up; child runs pause with it."""
    if any(_holds_worker(step.run, t) for t in step.run.tasks.values()):
        step.emit(WorkflowPausing(at=step.ctx.now, actor=step.ctx.actor))
    else:
        step.emit(WorkflowPaused(at=step.ctx.now, actor=step.ctx.actor))


def _resume(step: Step, inp: Input) -> None:
    """→ running; dispatches what is ready and what was paused."""
    step.emit(WorkflowResumed(at=step.ctx.now, actor=step.ctx.actor))
    _advance(step)


def _stop_command(step: Step, inp: Input) -> None:
    """→ ready_stop: kills running tasks in their workers; → stopped when all confirmed."""
    _stop(step, RunState.STOPPED, "stopped by request", actor=step.ctx.actor)


def _stop(step: Step, outcome: RunState, reason: str, actor: str | None = None) -> None:
    """Kill what runs; the run ends ``outcome`` once every kill is confirmed."""
    now = step.ctx.now
    step.emit(WorkflowStopping(at=now, outcome=outcome.value, reason=reason, actor=actor))
    _kill_all(step, KillReason.STOP)
    _cancel_timers(step)
    _advance(step)


def _kill_all(step: Step, reason: KillReason) -> None:
    """Request kills for running attempts; close attempts that hold no worker at once."""
    now = step.ctx.now
    for t in list(step.run.tasks.values()):
        if t.state is TaskState.RUNNING and _type(step.run, t.name) == "dependent":
            # Nothing runs anywhere: the wait just ends.
            _cancel_task_timers(step, t)
            step.emit(TaskKilledEvent(at=now, task=t.name, attempt=t.attempt,
                                      reason=reason.value, worker_id=ORCHESTRATOR))
        elif t.state is TaskState.RUNNING and t.kill_reason is None:
            step.emit(TaskKillRequested(at=now, task=t.name, attempt=t.attempt,
                                        dispatch_id=t.dispatch_id or "",
                                        worker_id=t.worker_id, reason=reason.value))
        elif t.state is TaskState.DISPATCHED:
            # No worker reported it yet: ask whichever worker has it, and close it now;
            # a later start of this attempt is a stray and gets killed on arrival.
            step.emit(TaskKillRequested(at=now, task=t.name, attempt=t.attempt,
                                        dispatch_id=t.dispatch_id or "", worker_id=None,
                                        reason=reason.value))
            step.emit(TaskKilledEvent(at=now, task=t.name, attempt=t.attempt,
                                      reason=reason.value))
        elif t.state.waiting:
            _cancel_task_timers(step, t)
            step.emit(TaskKilledEvent(at=now, task=t.name, attempt=t.attempt,
                                      reason=reason.value))


def _restart(step: Step, mode: str) -> None:
    run = step.run
    if run.definition.execution.serial and not step.ctx.slot_free:
        step.emit(InputRejected(
            at=step.ctx.now, input_type="RerunWorkflow" if mode == "rerun" else "RecoverWorkflow",
            input_message_id=step.ctx.message_id, actor=step.ctx.actor,
            reason=f"another run of '{run.workflow}' is running ({run.definition.execution})"))
        return
    kept = ([n for n, t in run.tasks.items() if t.state.done_ok] if mode == "recover" else [])
    step.emit(WorkflowRestarted(at=step.ctx.now, attempt=run.attempt + 1, mode=mode,
                                kept=sorted(kept), actor=step.ctx.actor))
    _arm_workflow_timeout(step)
    _advance(step)


def _rerun(step: Step, inp: Input) -> None:
    """→ running, attempt + 1: every task of the scope runs again."""
    _restart(step, "rerun")


def _recover(step: Step, inp: Input) -> None:
    """→ running, attempt + 1: only failed, killed and never-run tasks run again."""
    _restart(step, "recover")


def _force(step: Step, inp: Input) -> None:
    """A failed or killed task → forced_success (counts as success for successors)."""
    assert isinstance(inp, ForceTaskSuccess)
    t = step.run.tasks.get(inp.task)
    if t is None or not t.state.done_bad:
        state = t.state.value if t else "not run"
        step.reject(inp, f"task '{inp.task}' is {state}; only failed or killed tasks can be "
                         "forced to success")
        return
    step.emit(TaskForcedSuccess(at=step.ctx.now, task=t.name, attempt=t.attempt,
                                actor=step.ctx.actor))
    _advance(step)


# --------------------------------------------------------------------------- timers


def _timer(step: Step, inp: Input) -> None:
    """A due timer: retry/delay → dispatch (or pause); timeouts → warn or kill."""
    assert isinstance(inp, FireTimer)
    timer = step.run.timers.get(inp.timer_id)
    if timer is None:
        step.reject(inp, f"timer {inp.timer_id} is no longer armed")
        return
    step.emit(TimerFired(at=step.ctx.now, timer_id=timer.timer_id))
    run, now = step.run, step.ctx.now
    if timer.kind is TimerKind.WORKFLOW_TIMEOUT:
        timeout = run.definition.timeout or 0.0
        if run.definition.timeout_strategy is TimeoutStrategy.WARN:
            step.emit(WorkflowTimedOut(at=now, strategy="warn", timeout=timeout))
        else:
            step.emit(WorkflowTimedOut(at=now, strategy="fail", timeout=timeout))
            _stop(step, RunState.FAILED, f"workflow timed out after {timeout:g}s")
            return
    else:
        t = run.tasks.get(timer.task or "")
        if t is not None and t.attempt == timer.attempt:
            if timer.kind is TimerKind.TASK_TIMEOUT:
                _task_timed_out(step, t)
            elif t.state in (TaskState.RETRY_WAIT, TaskState.SUBMITTED):
                if run.state in (RunState.READY_PAUSE, RunState.PAUSED):
                    step.emit(TaskPaused(at=now, task=t.name, attempt=t.attempt))
                elif run.state in (RunState.RUNNING, RunState.SUBMITTED):
                    _dispatch(step, t.name, t.attempt)
    _advance(step)


def _task_timed_out(step: Step, t: TaskRun) -> None:
    d = step.run.definition.task(t.name)
    if not t.state.active or t.kill_reason is not None:
        return
    strategy = d.timeout_strategy.value
    step.emit(TaskTimedOut(at=step.ctx.now, task=t.name, attempt=t.attempt,
                           strategy=strategy, timeout=d.timeout or 0.0))
    if d.type == "dependent" and d.timeout_strategy is TimeoutStrategy.FAIL:
        spec = t.spec or {}
        step.emit(TaskFailedEvent(
            at=step.ctx.now, task=t.name, attempt=t.attempt, worker_id=ORCHESTRATOR,
            exit_code=None, error=f"timed out after {d.timeout or 0:g}s: {_waiting_for(spec)}"))
        _maybe_retry(step, step.run.tasks[t.name])
    elif d.timeout_strategy is TimeoutStrategy.FAIL:
        step.emit(TaskKillRequested(at=step.ctx.now, task=t.name, attempt=t.attempt,
                                    dispatch_id=t.dispatch_id or "", worker_id=t.worker_id,
                                    reason=KillReason.TIMEOUT.value))


def _arm(step: Step, kind: TimerKind, seconds: float, task: str | None = None,
         attempt: int | None = None) -> str:
    timer_id = f"{kind.value}:{task}:{attempt}" if task else f"{kind.value}:{attempt}"
    step.emit(TimerArmed(at=step.ctx.now, timer_id=timer_id, kind=kind.value,
                         fire_at=step.ctx.after(seconds), task=task, attempt=attempt))
    return timer_id


def _arm_workflow_timeout(step: Step) -> None:
    if step.run.definition.timeout:
        _arm(step, TimerKind.WORKFLOW_TIMEOUT, step.run.definition.timeout,
             attempt=step.run.attempt)


def _cancel_task_timers(step: Step, t: TaskRun) -> None:
    for timer in list(step.run.timers.values()):
        if timer.task == t.name:
            step.emit(TimerCancelled(at=step.ctx.now, timer_id=timer.timer_id))


def _cancel_timers(step: Step) -> None:
    for timer_id in sorted(step.run.timers):
        step.emit(TimerCancelled(at=step.ctx.now, timer_id=timer_id))


# --------------------------------------------------------------------------- task reports


def _report(step: Step, inp: Input) -> None:
    """Fenced by attempt + dispatch id, then routed through the task table."""
    """Route a worker report through the task table, then advance the DAG."""
    assert isinstance(inp, TaskReport)
    t = step.run.tasks.get(inp.task)
    if t is None:
        step.reject(inp, f"task '{inp.task}' was never dispatched in this run")
        _kill_if_stray(step, inp)
        return
    if (inp.attempt, inp.dispatch_id) != (t.attempt, t.dispatch_id):
        step.reject(inp, f"superseded attempt {inp.attempt} of '{inp.task}' "
                         f"(current attempt {t.attempt}); ignored")
        _kill_if_stray(step, inp)
        return
    if t.state.active and t.worker_id is not None and inp.worker_id != t.worker_id:
        # One execution per attempt: another worker got the same dispatch (a redelivery
        # after a rebalance). Its reports change nothing, and its process is killed.
        step.reject(inp, f"attempt {t.attempt} of '{inp.task}' is held by worker "
                         f"{t.worker_id}, not {inp.worker_id}; ignored")
        _kill_if_stray(step, inp)
        return
    entry = TASK_TABLE[t.state][inp.type]
    if isinstance(entry, str):
        step.reject(inp, entry)
        _kill_if_stray(step, inp)
        return
    entry(step, t, inp)
    _advance(step)


def _kill_if_stray(step: Step, inp: Input) -> None:
    """A TaskStarted that is not the current running attempt, or not by the worker that
    holds it: kill that worker's process."""
    if not isinstance(inp, TaskStarted):
        return
    t = step.run.tasks.get(inp.task)
    if (t is not None and t.state.active and t.worker_id in (None, inp.worker_id) and
            (t.attempt, t.dispatch_id) == (inp.attempt, inp.dispatch_id)):
        return  # a duplicate of the current attempt's start by its holder: it is wanted
    step.emit(TaskKillRequested(at=step.ctx.now, task=inp.task, attempt=inp.attempt,
                                dispatch_id=inp.dispatch_id, worker_id=inp.worker_id,
                                reason=KillReason.STRAY.value))


def claim_refusal(run: Run | None, claim: TaskStarted) -> str | None:
    """The answer to a worker's claim, given the run as it is after the claim was decided:
    None (go ahead) when that worker now holds the attempt, running; else why it must not
    run it. A later claimant of an attempt already claimed, started or finished by another
    is refused, so an attempt runs once however often its dispatch is delivered."""
    t = run.tasks.get(claim.task) if run is not None else None
    if t is None:
        return f"task '{claim.task}' was never dispatched in this run"
    if (claim.attempt, claim.dispatch_id) != (t.attempt, t.dispatch_id):
        return f"attempt {claim.attempt} of '{claim.task}' is superseded (now {t.attempt})"
    if t.state is not TaskState.RUNNING:
        return f"attempt {t.attempt} of '{claim.task}' is {t.state.value}"
    if t.worker_id != claim.worker_id:
        return f"attempt {t.attempt} of '{claim.task}' is held by worker {t.worker_id}"
    return None


def _t_started(step: Step, t: TaskRun, r: TaskReport) -> None:
    """→ running; arms the task timeout."""
    step.emit(TaskStartedEvent(at=step.ctx.now, task=t.name, attempt=t.attempt,
                               worker_id=r.worker_id, reported_at=r.sent_at))
    timeout = step.run.definition.task(t.name).timeout
    if timeout:
        _arm(step, TimerKind.TASK_TIMEOUT, timeout, t.name, t.attempt)


def _t_succeeded(step: Step, t: TaskRun, r: TaskReport) -> None:
    """→ succeeded; successors may become ready."""
    assert isinstance(r, TaskSucceeded)
    _cancel_task_timers(step, t)
    outputs = dict(r.outputs)
    declared = step.run.definition.task(t.name).outputs
    if declared and _type(step.run, t.name) == "sub_workflow":
        outputs = {k: v for k, v in outputs.items() if k in declared}  # the child's, chosen
    step.emit(TaskSucceededEvent(at=step.ctx.now, task=t.name, attempt=t.attempt,
                                 worker_id=r.worker_id, exit_code=r.exit_code,
                                 outputs=outputs, reported_at=r.sent_at))


def _t_ended(step: Step, t: TaskRun, r: TaskReport) -> None:
    """→ killed if we asked for it; else → failed, then retry_wait while retries remain."""
    assert isinstance(r, TaskFailed | TaskKilled)
    _cancel_task_timers(step, t)
    if t.kill_reason in (KillReason.STOP, KillReason.FAILURE):
        step.emit(TaskKilledEvent(at=step.ctx.now, task=t.name, attempt=t.attempt,
                                  reason=t.kill_reason.value, worker_id=r.worker_id,
                                  reported_at=r.sent_at, exit_code=r.exit_code))
        return
    if t.kill_reason is KillReason.TIMEOUT:
        timeout = step.run.definition.task(t.name).timeout or 0.0
        error = f"timed out after {timeout:g}s"
    elif isinstance(r, TaskKilled):
        error = f"killed on the worker: {r.error or 'no reason given'}"
    else:
        error = r.error or f"exit code {r.exit_code}"
    step.emit(TaskFailedEvent(at=step.ctx.now, task=t.name, attempt=t.attempt,
                              worker_id=r.worker_id, exit_code=r.exit_code, error=error,
                              reported_at=r.sent_at))
    _maybe_retry(step, step.run.tasks[t.name])


def _maybe_retry(step: Step, t: TaskRun) -> None:
    policy = step.run.definition.task(t.name).retry
    if t.tries > policy.retries or step.run.state not in (
            RunState.RUNNING, RunState.READY_PAUSE, RunState.SUBMITTED):
        return
    nxt = step.run.next_attempt(t.name)
    delay = policy.delay(t.tries)
    step.emit(TaskRetryScheduled(at=step.ctx.now, task=t.name, attempt=nxt,
                                 fire_at=step.ctx.after(delay)))
    _arm(step, TimerKind.RETRY, delay, t.name, nxt)


def _t_lost(step: Step, t: TaskRun, r: TaskReport) -> None:
    """Lease lapsed: → killed if we were killing it, else → lost, then retry by policy."""
    _cancel_task_timers(step, t)
    now = step.ctx.now
    if t.kill_reason in (KillReason.STOP, KillReason.FAILURE):
        step.emit(TaskKilledEvent(at=now, task=t.name, attempt=t.attempt,
                                  reason=t.kill_reason.value, worker_id=t.worker_id))
        return
    step.emit(TaskLost(at=now, task=t.name, attempt=t.attempt, worker_id=t.worker_id))
    # If that worker is only cut off, not dead, the attempt must not go on running there.
    step.emit(TaskKillRequested(at=now, task=t.name, attempt=t.attempt,
                                dispatch_id=t.dispatch_id or "", worker_id=t.worker_id,
                                reason=KillReason.STRAY.value))
    _maybe_retry(step, step.run.tasks[t.name])


_NOT_RUNNING = "no attempt of this task is running; report discarded"
_FINISHED_TASK = "task already finished; late or duplicated report discarded"
_ACTIVE: Mapping[str, TaskHandler | str] = {
    "TaskStarted": _t_started, "TaskSucceeded": _t_succeeded,
    "TaskFailed": _t_ended, "TaskKilled": _t_ended, "ExpireLease": _t_lost,
}

TASK_TABLE: Mapping[TaskState, Mapping[str, TaskHandler | str]] = {
    TaskState.SUBMITTED: dict.fromkeys(_ACTIVE, _NOT_RUNNING),
    TaskState.DISPATCHED: {**_ACTIVE,
                           "ExpireLease": "no worker started this attempt yet; no lease"},
    TaskState.RUNNING: {**_ACTIVE,
                        "TaskStarted": "task already running; duplicated start discarded"},
    TaskState.RETRY_WAIT: dict.fromkeys(_ACTIVE, _NOT_RUNNING),
    TaskState.PAUSED: dict.fromkeys(_ACTIVE, _NOT_RUNNING),
    TaskState.SUCCEEDED: dict.fromkeys(_ACTIVE, _FINISHED_TASK),
    TaskState.FAILED: dict.fromkeys(_ACTIVE, _FINISHED_TASK),
    TaskState.KILLED: dict.fromkeys(_ACTIVE, _FINISHED_TASK),
    TaskState.SKIPPED: dict.fromkeys(_ACTIVE, _FINISHED_TASK),
    TaskState.FORCED_SUCCESS: dict.fromkeys(_ACTIVE, _FINISHED_TASK),
    TaskState.LOST: dict.fromkeys(_ACTIVE, _FINISHED_TASK),
}


# --------------------------------------------------------------------------- the table


def _finished(state: str) -> str:
    return f"run already finished ({state})"


_LIVE: Mapping[str, Handler | str] = {
    "StartWorkflow": _reject_existing, "ForceTaskSuccess": _force, "FireTimer": _timer,
    "WakeWorkflow": "run is not waiting for its turn",
    **dict.fromkeys(("TaskStarted", "TaskSucceeded", "TaskFailed", "TaskKilled",
                     "ExpireLease"), _report),
}


def _ended(state: str, *, recover: bool) -> Mapping[str, Handler | str]:
    return {
        **_LIVE, "PauseWorkflow": _finished(state), "ResumeWorkflow": _finished(state),
        "StopWorkflow": _finished(state), "RerunWorkflow": _rerun,
        "RecoverWorkflow": _recover if recover else f"run {state}; nothing to recover",
        "ForceTaskSuccess": _force if recover else f"run {state}; nothing to force",
    }


WORKFLOW_TABLE: Mapping[RunState, Mapping[str, Handler | str]] = {
    RunState.SUBMITTED: {
        **_LIVE, "PauseWorkflow": _pause, "ResumeWorkflow": "run is not paused",
        "StopWorkflow": _stop_command, "RerunWorkflow": "run is not finished; stop it first",
        "RecoverWorkflow": "run is not finished; stop it first",
    },
    RunState.RUNNING: {
        **_LIVE, "PauseWorkflow": _pause, "ResumeWorkflow": "run is running, not paused",
        "StopWorkflow": _stop_command,
        "RerunWorkflow": "run is running; stop it before rerunning",
        "RecoverWorkflow": "run is running; stop it before recovering",
    },
    RunState.READY_PAUSE: {
        **_LIVE, "PauseWorkflow": "run is already pausing", "ResumeWorkflow": _resume,
        "StopWorkflow": _stop_command, "RerunWorkflow": "run is pausing; stop it first",
        "RecoverWorkflow": "run is pausing; stop it first",
    },
    RunState.PAUSED: {
        **_LIVE, "PauseWorkflow": "run is already paused", "ResumeWorkflow": _resume,
        "StopWorkflow": _stop_command,
        "RerunWorkflow": "run is paused; resume or stop it first",
        "RecoverWorkflow": "run is paused; resume or stop it first",
    },
    RunState.READY_STOP: {
        **_LIVE, "PauseWorkflow": "run is stopping", "ResumeWorkflow": "run is stopping",
        "StopWorkflow": "run is already stopping",
        "RerunWorkflow": "run is stopping; rerun once it stopped",
        "RecoverWorkflow": "run is stopping; recover once it stopped",
        "ForceTaskSuccess": "run is stopping",
    },
    RunState.SERIAL_WAIT: {
        **_LIVE, "PauseWorkflow": "run is waiting for its turn (serial execution)",
        "ResumeWorkflow": "run is waiting for its turn (serial execution)",
        "StopWorkflow": _stop_command,
        "RerunWorkflow": "run is waiting for its turn; stop it first",
        "RecoverWorkflow": "run is waiting for its turn; stop it first",
        "ForceTaskSuccess": "run is waiting for its turn; no task ran yet",
        "WakeWorkflow": _wake,
    },
    RunState.STOPPED: _ended("stopped", recover=True),
    RunState.FAILED: _ended("failed", recover=True),
    RunState.SUCCEEDED: _ended("succeeded", recover=False),
}


# --------------------------------------------------------------------------- DAG progress


def ready_tasks(run: Run) -> list[str]:
    """Tasks of the scope that may start now, most urgent first.

    A task is ready when every predecessor in scope counts as success; a conditions task
    when every predecessor in scope has finished, whatever its outcome."""
    ready = []
    for t in run.definition.tasks:
        if t.name not in run.scope:
            continue
        current = run.tasks.get(t.name)
        if current is not None:
            if current.state is TaskState.PAUSED:
                ready.append(t)
            continue
        any_outcome = t.type == "conditions"
        if all(d not in run.scope or (d in run.tasks and (
                run.tasks[d].state.done_ok or (any_outcome and run.tasks[d].state.done_bad)))
               for d in t.depends_on):
            ready.append(t)
    order = {t.name: i for i, t in enumerate(run.definition.tasks)}
    ready.sort(key=lambda t: (t.priority.rank, order[t.name]))
    return [t.name for t in ready]


def _type(run: Run, name: str) -> str:
    return run.definition.task(name).type


def _handled(run: Run, name: str) -> bool:
    """A failure conditions tasks branch on (every successor in scope is a conditions
    task, and there is one): it does not fail the run, the branches decide."""
    successors = [t for t in run.definition.tasks
                  if name in t.depends_on and t.name in run.scope]
    return bool(successors) and all(t.type == "conditions" for t in successors)


def _unhandled_failures(run: Run) -> list[TaskRun]:
    return [t for t in run.tasks.values()
            if t.state in (TaskState.FAILED, TaskState.LOST) and not _handled(run, t.name)]


def _holds_worker(run: Run, t: TaskRun) -> bool:
    """Active in a worker (a pause waits for it); held tasks run in the orchestrator."""
    return t.state.active and _type(run, t.name) not in HELD_TYPES


def _advance(step: Step) -> None:
    """Move the run forward as far as it goes: dispatch, skip, pause, stop, finish."""
    while True:
        run = step.run
        if run.state.finished:
            return
        active = any(t.state.active for t in run.tasks.values())
        if run.state is RunState.READY_STOP:
            if not active:
                _finish(step, run.stopping_to or RunState.STOPPED, run.failure or "stopped")
            return
        if run.state in (RunState.PAUSED, RunState.SERIAL_WAIT):
            return
        if _unhandled_failures(run) and run.definition.failure_strategy is FailureStrategy.END:
            _kill_all(step, KillReason.FAILURE)
            if not any(t.state.active for t in step.run.tasks.values()):
                _finish(step, RunState.FAILED, _failure_reason(step.run))
            return
        if run.state is RunState.READY_PAUSE:
            # Child runs and dependency waits pause with the run (their children are
            # paused by the orchestrator's effects); only worker attempts are waited for.
            if not any(_holds_worker(run, t) for t in run.tasks.values()):
                step.emit(WorkflowPaused(at=step.ctx.now))
            return
        if not _start_ready(step):
            break
    run = step.run
    if any(t.state.active or t.state.waiting for t in run.tasks.values()):
        return
    if _unhandled_failures(run) or any(t.state is TaskState.KILLED for t in run.tasks.values()):
        _finish(step, RunState.FAILED, _failure_reason(run))
    elif all(n in run.tasks and (run.tasks[n].state.done_ok or _handled(run, n))
             for n in run.scope):
        _finish(step, RunState.SUCCEEDED, "")
    else:  # pragma: no cover - the DAG is acyclic, so something is always ready or done
        raise AssertionError(f"run {run.instance_id} is stuck: nothing ready, active or failed")


def _all_branch_skipped(run: Run, name: str) -> bool:
    """DolphinScheduler: a task whose predecessors were all skipped as untaken branches
    is skipped too (a disabled predecessor does not count: its successors run)."""
    deps = [d for d in run.definition.task(name).depends_on if d in run.scope]
    return bool(deps) and all(run.tasks[d].branch_skipped for d in deps)


def _start_ready(step: Step) -> bool:
    """Start every ready task; True when something finished at once (skip, decision)."""
    instant = False
    for name in ready_tasks(step.run):
        run = step.run
        d = run.definition.task(name)
        current = run.tasks.get(name)
        now = step.ctx.now
        if current is not None:  # paused earlier: same attempt, dispatched now
            _dispatch(step, name, current.attempt)
        elif _all_branch_skipped(run, name):
            step.emit(TaskSkipped(at=now, task=name, attempt=run.next_attempt(name),
                                  reason="all predecessors skipped", propagates=True))
            instant = True
        elif d.disabled:
            step.emit(TaskSkipped(at=now, task=name, attempt=run.next_attempt(name),
                                  reason="disabled"))
            instant = True
        elif d.type in LOGIC_TYPES:
            _decide_branches(step, name)
            instant = True
        elif run.dry_run:
            step.emit(TaskDryRun(at=now, task=name, attempt=run.next_attempt(name),
                                 command=_dispatch_spec(run, d, _params_for(run, name),
                                                        "")[1]))
            instant = True
        elif d.delay > 0:
            attempt = run.next_attempt(name)
            step.emit(TaskDelayed(at=now, task=name, attempt=attempt))
            _arm(step, TimerKind.DELAY, d.delay, name, attempt)
        else:
            _dispatch(step, name, run.next_attempt(name))
    return instant


def _decide_branches(step: Step, name: str) -> None:
    """conditions: on_success when every predecessor counts as success, else on_failure.
    switch: the first case whose ``when`` holds, else ``default``. The branches not taken
    are skipped; an expression that cannot be evaluated fails the task."""
    run = step.run
    d = run.definition.task(name)
    attempt, spec = run.next_attempt(name), d.spec
    error = ""
    if d.type == "conditions" and spec.get("condition"):
        held = condition_holds(spec["condition"], _outcomes(run, d.depends_on))
        decision = "condition holds" if held else "condition does not hold"
        taken = tuple(spec["on_success"] if held else spec["on_failure"])
    elif d.type == "conditions":
        bad = [p for p in d.depends_on if p in run.scope and run.tasks[p].state.done_bad]
        decision = (f"failure ({', '.join(bad)} {run.tasks[bad[0]].state.value})" if bad
                    else "success")
        taken = tuple(spec["on_failure"] if bad else spec["on_success"])
    else:
        params = _params_for(run, name)
        decision, taken = "default", tuple(spec["default"])
        try:
            for i, case in enumerate(spec["cases"]):
                if expr.holds(expr.parse(case["when"]), params):
                    decision, taken = f"case {i}: {case['when']}", tuple(case["then"])
                    break
        except expr.ExpressionInvalid as exc:
            decision, taken, error = "error", (), f"switch could not decide: {exc}"
    untaken = [b for b in d.branches if b not in taken and b in run.scope]
    step.emit(TaskDecided(at=step.ctx.now, task=name, attempt=attempt, decision=decision,
                          taken=[b for b in taken if b in run.scope], untaken=untaken,
                          error=error))
    for b in untaken if not error else ():
        if b not in step.run.tasks:
            step.emit(TaskSkipped(at=step.ctx.now, task=b, attempt=step.run.next_attempt(b),
                                  reason=f"branch not taken by '{name}' ({decision})",
                                  propagates=True))


def _outcomes(run: Run, names: tuple[str, ...]) -> dict[str, str | None]:
    """success / failure / None (did not run) of each named task, for a condition."""
    return {n: ("success" if run.tasks[n].state.done_ok else "failure"
                if run.tasks[n].state.done_bad else None) if n in run.tasks else None
            for n in names}


def _dispatch(step: Step, name: str, attempt: int) -> None:
    run = step.run
    d = run.definition.task(name)
    params = _params_for(run, name)
    dispatch_id = step.new_id()
    spec, command = _dispatch_spec(run, d, params, dispatch_id)
    base = business_time(run)
    env_template = {k: _expand_time(v, base) for k, v in d.env.items()}
    if spec is not None and d.type in WORKER_RENDERED:
        # The worker renders from the templates (with secrets, which only it knows).
        spec["env_template"] = env_template
        spec["values"] = {**_values(params, list(env_template.values())),
                          **spec.get("values", {})}
    step.emit(TaskDispatched(
        at=step.ctx.now, task=name, attempt=attempt, dispatch_id=dispatch_id,
        task_type=d.type, worker_group=run.definition.worker_group_of(d),
        command=command, env=render_env(env_template, params.get),
        outputs=tuple(d.outputs),
        priority=run.priority.rank * len(Priority) + d.priority.rank, spec=spec,
    ))
    if d.type not in HELD_TYPES:
        return
    # The orchestrator holds it: it runs from now on, with its timeout armed.
    step.emit(TaskStartedEvent(at=step.ctx.now, task=name, attempt=attempt,
                               worker_id=ORCHESTRATOR))
    if d.timeout:
        _arm(step, TimerKind.TASK_TIMEOUT, d.timeout, name, attempt)
    if spec and spec.get("error"):
        step.emit(TaskFailedEvent(at=step.ctx.now, task=name, attempt=attempt,
                                  worker_id=ORCHESTRATOR, exit_code=None,
                                  error=str(spec["error"])))
        _cancel_task_timers(step, step.run.tasks[name])
        _maybe_retry(step, step.run.tasks[name])


# Task types whose text the worker renders from the dispatched templates and values.
WORKER_RENDERED = frozenset({"shell", "python", "sql", "http"})


def _values(params: Mapping[str, str], texts: list[str]) -> dict[str, str]:
    """The params ``texts`` refer to, with their values (what the worker renders with)."""
    return {n: params[n] for t in texts for n in all_references(t) if n in params}


def _shown(render: Callable[[str, Callable[[str], str | None]], str], text: str,
           params: Mapping[str, str]) -> str:
    """``text`` rendered for the events (secrets stay references); as written when a value
    cannot be rendered (the worker then fails the attempt saying why)."""
    try:
        return render(text, params.get)
    except RenderError:
        return text


def _dispatch_spec(run: Run, d: TaskDefinition, params: Mapping[str, str],
                   dispatch_id: str) -> tuple[dict[str, Any] | None, str]:
    """The type's fields, and the one-line ``command`` shown in the events for it (the
    script itself for shell and python). Task text carries parameter values as data: sql,
    http, shell and python scripts go out as templates (``$[...]`` evaluated) with the
    values they refer to, rendered on the worker (see :mod:`shoal.core.render`)."""
    base = business_time(run)

    def x(text: str) -> str:
        return _expand(text, params, run)

    def t(text: str) -> str:
        return _expand_time(text, base)

    spec = d.spec
    match d.type:
        case "sql":
            sql = t(spec["sql"])
            return {"datasource": spec["datasource"], "sql": sql,
                    "values": _values(params, [sql])}, sql
        case "http":
            headers = {k: t(v) for k, v in spec["headers"].items()}
            out = {"method": spec["method"], "url": t(spec["url"]), "headers": headers,
                   "body": t(spec["body"]), "expected_status": list(spec["expected_status"]),
                   "output_paths": dict(spec["output_paths"])}
            out["values"] = _values(params, [out["url"], out["body"], *headers.values()])
            return out, f"{out['method']} {_shown(render_url, out['url'], params)}"
        case "python" if "function" in spec:
            args = {k: _expand_arg(v, params, run) for k, v in spec["args"].items()}
            arg_texts = {k: _time_arg(v, base) for k, v in spec["args"].items()}
            return {"function": spec["function"], "args": args, "args_template": arg_texts,
                    "values": _values(params, _arg_strings(arg_texts))}, \
                _call_text(spec["function"], args)
        case "sub_workflow":
            local = {k: params[k] for k in d.params}
            return {"workflow": spec["workflow"], "params": local,
                    "child_instance_id": child_instance_id(dispatch_id)}, spec["workflow"]
        case "dependent":
            windows = []
            for alt in spec.get("any_of") or [spec]:
                w = {"workflow": alt["workflow"], "task": alt["task"], "date": x(alt["date"])}
                try:
                    start, end = date_window(w["date"])
                    w |= {"window_start": start.isoformat(), "window_end": end.isoformat()}
                except DateInvalid as exc:
                    w["error"] = str(exc)
                windows.append(w)
            out = dict(windows[0])
            if "any_of" in spec:  # any one of the windows met is enough
                out["any_of"] = windows
                out.pop("error", None)
                errors = [w["error"] for w in windows if "error" in w]
                if errors:
                    out["error"] = errors[0]
            return out, " or ".join(_waiting_for(w) for w in windows)
        case "shell":
            script = t(d.command)
            return {"template": script, "values": _values(params, [script])}, \
                _shown(render_shell, script, params)
        case "python":
            script = t(d.command)
            values = _values(params, [script])
            # Declared numbers and booleans are written as Python literals (render_python).
            types = {n: pt.type for n, pt in {**run.definition.param_types,
                                               **d.param_types}.items()
                     if n in values and pt.type in ("int", "float", "bool")}
            spec_out: dict[str, Any] = {"template": script, "values": values}
            if types:
                spec_out["types"] = types
            return spec_out, _shown(lambda text, look: render_python(text, look, types),
                               script, params)
        case _:
            return None, x(d.command)


def _time_arg(value: Any, base: datetime | None) -> Any:
    if isinstance(value, str):
        return _expand_time(value, base)
    if isinstance(value, Mapping):
        return {k: _time_arg(v, base) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_time_arg(v, base) for v in value]
    return value


def _arg_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _arg_strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _arg_strings(v)]
    return []


def _expand_arg(value: Any, params: Mapping[str, str], run: Run) -> Any:
    """A function task's argument: a string that is exactly one ``${name}`` of a known
    parameter takes that parameter's JSON value (``"42"`` gives 42, ``"eu"`` stays a
    string); other strings expand as text; lists and mappings expand inside."""
    if isinstance(value, str):
        whole = whole_reference(value)
        if whole is not None and whole in params:
            return json_value(params[whole])
        return _expand(value, params, run)
    if isinstance(value, Mapping):
        return {k: _expand_arg(v, params, run) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_expand_arg(v, params, run) for v in value]
    return value


def _call_text(function: str, args: Mapping[str, Any]) -> str:
    """The one line the events show for a function task: ``mod:fn(a=1, b='x')``."""
    shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
    return f"{function}({shown[:400]}{'...' if len(shown) > 400 else ''})"


def _waiting_for(spec: Mapping[str, Any]) -> str:
    what = spec.get("workflow", "?")
    if spec.get("task"):
        what = f"task '{spec['task']}' of {what}"
    return f"waiting for a successful run of {what} for {spec.get('date', '?')}"


def _expand(text: str, params: Mapping[str, str], run: Run) -> str:
    return _expand_time(expand(text, params), business_time(run))


def _params_for(run: Run, name: str) -> dict[str, str]:
    """What ``${name}`` means for task ``name``; DolphinScheduler's precedence, strongest
    last: system params < global params (a run's startup value replacing the declared one)
    < outputs of its ancestors (nearer producers later) < the task's own params (again a
    startup value replacing the declared one). ``$[...]`` in any value is evaluated; a
    task's own params may refer to the others (``day: ${bizdate}``). A startup param sets
    only a declared name (starts are checked), so it never replaces an upstream output of
    a name the definition does not declare."""
    base = business_time(run)
    params = system_params(base) if base else {}
    definition = run.definition
    startup = {k: _expand_time(v, base) for k, v in run.startup.items()}
    # DolphinScheduler resolves ${system.biz.date} & co. inside a global param's value too.
    params.update({k: startup[k] if k in startup else _expand_time(expand(v, params), base)
                   for k, v in definition.params.items()})
    if run.parent is not None:  # a sub-workflow also sees what its parent task passes
        params.update({k: v for k, v in startup.items() if k not in params})
    seen: set[str] = set()
    stack = list(definition.task(name).depends_on)
    while stack:
        cur = stack.pop()
        if cur not in seen:
            seen.add(cur)
            stack.extend(definition.task(cur).depends_on)
    for t in definition.tasks:
        if t.name in seen and t.name in run.tasks:
            params.update(run.tasks[t.name].outputs)
    visible = dict(params)
    params.update({k: startup[k] if k in startup else _expand(v, visible, run)
                   for k, v in definition.task(name).params.items()})
    return params


def resolved_params(params: Mapping[str, str], business: str | None) -> dict[str, str]:
    """A run's params (global and startup, as written) with the values its tasks used:
    ``$[...]`` evaluated against ``business`` (the run's schedule time, else the time it
    was submitted, as :func:`business_time`), as :func:`_params_for` does. What
    ``${name}`` meant in a task that neither sets ``name`` nor receives it from upstream."""
    base = datetime.fromisoformat(business) if business else None
    system = system_params(base) if base else {}
    return {k: _expand_time(expand(v, system), base) for k, v in params.items()}


def business_time(run: Run) -> datetime | None:
    """What time expressions are relative to: the run's schedule time (a wall-clock time
    in the offset it was given with), else the time the run was submitted."""
    stamp = run.schedule_time or run.submitted_at
    return datetime.fromisoformat(stamp) if stamp else None


def _expand_time(text: str, base: datetime | None) -> str:
    """Evaluate ``$[...]``; one that cannot be evaluated (definitions are checked when
    published, but run params are not) is left as written, like an unknown ``${name}``."""
    if base is None or "$[" not in text:
        return text
    try:
        return expand_time(text, base)
    except TimeExpressionInvalid:
        return text


def _failure_reason(run: Run) -> str:
    failed = _unhandled_failures(run)
    if failed:
        first = failed[0]
        return f"task '{first.name}' failed ({first.error or f'exit code {first.exit_code}'})"
    killed = [t.name for t in run.tasks.values() if t.state is TaskState.KILLED]
    return f"task(s) {', '.join(killed)} killed" if killed else (run.failure or "failed")


def _finish(step: Step, outcome: RunState, reason: str) -> None:
    _cancel_timers(step)
    now = step.ctx.now
    if outcome is RunState.SUCCEEDED:
        step.emit(WorkflowSucceeded(at=now))
    elif outcome is RunState.STOPPED:
        step.emit(WorkflowStopped(at=now))
    else:
        step.emit(WorkflowFailed(at=now, reason=reason))
