"""Shadow replay: this build's ``decide`` over a recorded history, decision by decision.

Every input the orchestrator applied left one batch of events in the log, all with the
input's ``message_id`` as ``causation_id``. For each batch, :func:`shadow_run` rebuilds
the input from the batch, folds the events before it into the state ``decide`` saw, calls
``decide`` with a :class:`~shoal.core.workflow.Context` reproducing the recorded one, and
compares the events it returns with the recorded batch. Whatever it finds, it goes on
from the *recorded* events, so one difference does not shift every later decision.

What the context reproduces, and so what is compared exactly:

- ``now`` is the batch's decision time (every event of a decision carries it as ``at``);
  times derived from it (``fire_at`` of timers and retries) are compared as they are;
- ``message_id`` is the ``causation_id``; the ids a decision generates (dispatch ids,
  child run ids) derive from it, so they are compared as they are, not modulo anything;
- ``actor`` is the one the batch's events record (reports, timers and wakes have none);
- ``slot_free`` (serial execution: the adapter looked up who holds the workflow's slot)
  is read off the recorded decision: a start that queued or was discarded, or a rerun or
  recover refused because ``another run of`` the workflow ran, saw the slot taken.

Events are compared in the current build's shape (``event_from_data`` of the recorded
data, then plain data again): a field an older release did not write reads as its
default on both sides, a field the current build no longer has is not compared.

An input is rebuilt from the first event of its batch (``TaskSucceeded`` from the
``TaskSucceeded`` report, ``WorkflowSubmitted`` from the resolved start, ``TimerFired``
from ``FireTimer``, ``InputRejected`` from the input it names...). What the log does not
hold cannot be rebuilt: a refused worker report records neither its attempt nor its
dispatch id (only a refused ``TaskStarted`` does, through the kill it caused). Such
inputs are reported as :class:`Unreconstructed`, never silently passed over.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shoal.core import versions
from shoal.core.definition import Priority, parse_definition
from shoal.core.evolve import evolve
from shoal.core.model import (
    AnyEvent,
    ExpireLease,
    FireTimer,
    ForceTaskSuccess,
    Input,
    PauseWorkflow,
    RecoverWorkflow,
    RerunWorkflow,
    ResolvedStart,
    ResumeWorkflow,
    Run,
    Scope,
    StartWorkflow,
    StopWorkflow,
    TaskFailed,
    TaskKilled,
    TaskStarted,
    TaskSucceeded,
    WakeWorkflow,
    event_data,
    event_from_data,
)
from shoal.core.workflow import WORKFLOW_TABLE, Context, decide

__all__ = ["Difference", "Recorded", "RunReport", "Unreconstructed", "batches",
           "reconstruct", "shadow_run"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Recorded:
    """One stored event as the log (or a bundle) holds it."""

    seq: int
    type: str
    data: Mapping[str, Any]
    causation_id: str | None
    recorded_at: str | None = None
    schema_version: int = 1  # of ``data`` as written; 1 before releases wrote one

    def event(self) -> AnyEvent:
        """The typed event in this build's shape (upcast; a later release's version
        raises :class:`~shoal.core.versions.FutureVersion`)."""
        return event_from_data(self.type, self.data, self.schema_version)


@dataclass(frozen=True, slots=True, kw_only=True)
class Difference:
    """A decision this build makes differently: the first event where it departs."""

    instance_id: str
    workflow: str
    seq: int                 # the first differing event (or where a missing one would be)
    event_type: str          # the recorded event there ("-": this build decides more)
    input_type: str
    causation_id: str
    expected: list[dict[str, Any]]  # the recorded batch, as {type, data}
    got: list[dict[str, Any]]       # what this build decides, as {type, data}
    diff: str

    def as_dict(self) -> dict[str, Any]:
        return {"instance_id": self.instance_id, "workflow": self.workflow, "seq": self.seq,
                "event_type": self.event_type, "input_type": self.input_type,
                "causation_id": self.causation_id, "diff": self.diff,
                "expected": self.expected, "got": self.got}


@dataclass(frozen=True, slots=True, kw_only=True)
class Unreconstructed:
    """A recorded decision whose input cannot be rebuilt from the log: not compared."""

    instance_id: str
    workflow: str
    seq: int
    event_type: str
    causation_id: str | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"instance_id": self.instance_id, "workflow": self.workflow, "seq": self.seq,
                "event_type": self.event_type, "causation_id": self.causation_id,
                "reason": self.reason}


@dataclass(slots=True, kw_only=True)
class RunReport:
    instance_id: str
    workflow: str
    compared: int = 0        # decisions rebuilt and compared
    identical: int = 0
    skipped: int = 0         # decisions before ``since``: folded, not compared
    differences: list[Difference] = field(default_factory=list)
    unreconstructed: list[Unreconstructed] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"instance_id": self.instance_id, "workflow": self.workflow,
                "compared": self.compared, "identical": self.identical,
                "skipped": self.skipped,
                "differences": [d.as_dict() for d in self.differences],
                "unreconstructed": [u.as_dict() for u in self.unreconstructed]}


def batches(events: Sequence[Recorded]) -> Iterator[list[Recorded]]:
    """The recorded events in decisions: consecutive events of one ``causation_id``."""
    cur: list[Recorded] = []
    for e in events:
        if cur and (e.causation_id is None or e.causation_id != cur[0].causation_id):
            yield cur
            cur = []
        cur.append(e)
    if cur:
        yield cur


def _plain(value: Any) -> Any:
    """JSON's view of a value: what the store keeps and what the comparison compares."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _shape(event: AnyEvent) -> dict[str, Any]:
    return {"type": event.type, "data": _plain(event_data(event))}


def _actor(batch: Sequence[Recorded]) -> str | None:
    for e in batch:
        actor = e.data.get("actor")
        if isinstance(actor, str) and actor:
            return actor
    return None


_REJECTED_TASK = re.compile(r"^task '(.+?)' is ")
_REJECTED_TIMER = re.compile(r"^timer (.+) is no longer armed$")
_SLOT_TAKEN = "another run of "
_RAISED, _DEAD = "(decide raised)", "(dead letter)"  # what "got" holds when not events


def reconstruct(run: Run | None, batch: Sequence[Recorded], instance_id: str,
                ) -> tuple[Input, Context] | str:
    """The input and context of the decision that recorded ``batch`` in state ``run``, or
    why they cannot be rebuilt from it."""
    # A report first cancels its attempt's timers: the event after them says what it was.
    first = next((e for e in batch if e.type != "TimerCancelled"), batch[0])
    d = first.data
    mid = first.causation_id
    if not mid:
        return "the event records no causation_id"
    now = str(d.get("at") or "")
    if not now:
        return "the event records no decision time (at)"
    actor = _actor(batch)
    common: dict[str, Any] = {"message_id": mid, "instance_id": instance_id, "sent_at": now,
                              "actor": actor}

    def ctx(slot_free: bool = True) -> Context:
        return Context(now=now, message_id=mid, slot_free=slot_free, actor=actor)

    if first.type == "WorkflowSubmitted":
        if run is not None:
            return "WorkflowSubmitted on a run that exists"
        definition = parse_definition(d["definition"])
        params = d.get("params") or {}
        startup = d.get("startup")
        if startup is None:  # older events: what evolve takes as the run's own params
            startup = {k: v for k, v in params.items() if definition.params.get(k) != v}
        cmd = StartWorkflow(
            **common, workflow=d["workflow"], version=d["version"], params=dict(startup),
            priority=Priority(d["priority"]), schedule_time=d.get("schedule_time"),
            parent=d.get("parent"), start_from=tuple(d["start_from"])
            if d.get("start_from") else None, scope=Scope(d.get("scope") or "downstream"),
            dry_run=bool(d.get("dry_run")), forked_from=d.get("forked_from"),
            carried=tuple(d.get("carried") or ()))
        taken = len(batch) > 1 and batch[1].type in ("WorkflowQueued", "WorkflowStopping")
        return ResolvedStart(command=cmd, definition=definition,
                             version=int(d["version"])), ctx(slot_free=not taken)
    if run is None:
        return f"{first.type} before the run's WorkflowSubmitted"
    if first.type == "InputRejected":
        return _rejected(run, batch, common, ctx)
    if first.type == "TimerCancelled":
        return "a decision that only cancelled timers"

    task = run.tasks.get(str(d.get("task", "")))
    report: dict[str, Any] = {**common, "actor": None}
    if first.type in ("TaskStarted", "TaskSucceeded", "TaskFailed", "TaskKilled",
                      "TaskLost"):
        if task is None or task.dispatch_id is None:
            return f"{first.type} of a task that was never dispatched"
        fence: dict[str, Any] = {"task": task.name, "attempt": int(d["attempt"]),
                 "dispatch_id": task.dispatch_id}
        sent: dict[str, Any] = {"sent_at": d.get("reported_at") or now}
        if first.type == "TaskStarted":
            return TaskStarted(**{**report, **sent}, **fence,
                               worker_id=d["worker_id"]), ctx()
        if first.type == "TaskSucceeded":
            return TaskSucceeded(**{**report, **sent}, **fence, worker_id=d["worker_id"],
                                 exit_code=d.get("exit_code", 0),
                                 outputs=dict(d.get("outputs") or {})), ctx()
        if first.type == "TaskFailed":
            # A TaskKilled report that failed the attempt records the same event.
            return TaskFailed(**{**report, **sent}, **fence, worker_id=d.get("worker_id") or "",
                              exit_code=d.get("exit_code"), error=d.get("error", "")), ctx()
        if first.type == "TaskKilled" and d.get("reported_at"):
            return TaskKilled(**{**report, **sent}, **fence, worker_id=d.get("worker_id") or "",
                              exit_code=d.get("exit_code")), ctx()
        # TaskLost, or a kill closed by a lapsed lease: the lease monitor's ExpireLease.
        return ExpireLease(**report, **fence, worker_id=task.worker_id or ""), ctx()
    simple: dict[str, type[PauseWorkflow | ResumeWorkflow | StopWorkflow | WakeWorkflow]] = {
        "WorkflowPausing": PauseWorkflow, "WorkflowPaused": PauseWorkflow,
        "WorkflowResumed": ResumeWorkflow, "WorkflowStopping": StopWorkflow,
        "WorkflowStarted": WakeWorkflow,
    }
    if first.type in simple:
        cls = simple[first.type]
        return cls(**(report if cls is WakeWorkflow else common)), ctx()
    if first.type == "WorkflowRestarted":
        restart = RerunWorkflow if d.get("mode") == "rerun" else RecoverWorkflow
        return restart(**common), ctx()
    if first.type == "TaskForcedSuccess":
        return ForceTaskSuccess(**common, task=str(d["task"])), ctx()
    if first.type == "TimerFired":
        return FireTimer(**report, timer_id=str(d["timer_id"])), ctx()
    return f"no input of this build starts a decision with {first.type}"


def _rejected(run: Run, batch: Sequence[Recorded], common: dict[str, Any],
              ctx: Callable[..., Context]) -> tuple[Input, Context] | str:
    d = batch[0].data
    kind, reason = str(d.get("input_type")), str(d.get("reason", ""))
    if d.get("input_message_id") not in (None, common["message_id"]):
        return "InputRejected names another input than its causation_id"
    report: dict[str, Any] = {**common, "actor": None}
    controls: dict[str, type[PauseWorkflow | ResumeWorkflow | StopWorkflow | RerunWorkflow
                                | RecoverWorkflow]] = {
        "PauseWorkflow": PauseWorkflow, "ResumeWorkflow": ResumeWorkflow,
        "StopWorkflow": StopWorkflow, "RerunWorkflow": RerunWorkflow,
        "RecoverWorkflow": RecoverWorkflow}
    if kind in controls:
        taken = kind in ("RerunWorkflow", "RecoverWorkflow") and \
            reason.startswith(_SLOT_TAKEN)
        return controls[kind](**common), ctx(slot_free=not taken)
    if kind == "WakeWorkflow":
        return WakeWorkflow(**report), ctx()
    if kind == "StartWorkflow":
        cmd = StartWorkflow(**common, workflow=run.workflow, version=run.version)
        return ResolvedStart(command=cmd, definition=run.definition,
                             version=run.version), ctx()
    if kind == "ForceTaskSuccess":
        if isinstance(WORKFLOW_TABLE[run.state]["ForceTaskSuccess"], str):
            return ForceTaskSuccess(**common, task=""), ctx()  # refused by the state alone
        m = _REJECTED_TASK.match(reason)
        if m is None:
            return "a refused ForceTaskSuccess whose reason names no task"
        return ForceTaskSuccess(**common, task=m.group(1)), ctx()
    if kind == "FireTimer":
        m = _REJECTED_TIMER.match(reason)
        if m is None:
            return "a refused FireTimer whose reason names no timer"
        return FireTimer(**report, timer_id=m.group(1)), ctx()
    reports: dict[str, type[TaskStarted | TaskSucceeded | TaskFailed | TaskKilled
                            | ExpireLease]] = {
        "TaskStarted": TaskStarted, "TaskSucceeded": TaskSucceeded, "TaskFailed": TaskFailed,
        "TaskKilled": TaskKilled, "ExpireLease": ExpireLease}
    said = d.get("report")
    if kind in reports and isinstance(said, dict):  # recorded since 0.2.0
        try:
            return reports[kind](**{**report, **said}), ctx()
        except TypeError as exc:
            return f"a refused {kind} whose recorded report does not fit it: {exc}"
    if kind == "TaskStarted":
        kill = next((e.data for e in batch[1:] if e.type == "TaskKillRequested"
                     and e.data.get("reason") == "stray"), None)
        if kill is not None:  # a stray start: the kill it caused records its fencing token
            return TaskStarted(**report, task=str(kill["task"]), attempt=int(kill["attempt"]),
                               dispatch_id=str(kill["dispatch_id"]),
                               worker_id=str(kill.get("worker_id") or "")), ctx()
    return (f"a refused {kind} records neither its attempt nor its dispatch id "
            "(only its reason; releases before 0.2.0 kept no more)")


def _diff(expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> tuple[int, str]:
    """Index of the first differing event, and a one-line account of the difference."""
    for i in range(max(len(expected), len(got))):
        if i < len(got) and got[i]["type"] == _RAISED:
            return i, f"this build raises deciding it: {got[i]['data']['error']}"
        if i < len(got) and got[i]["type"] == _DEAD:
            return i, f"this build dead-letters it: {got[i]['data']['reason']}"
        if i >= len(expected):
            return i, f"this build also decides {got[i]['type']} (and {len(got) - i - 1} more)"
        if i >= len(got):
            return i, (f"this build does not decide {expected[i]['type']} "
                       f"(nor {len(expected) - i - 1} more after it)")
        e, g = expected[i], got[i]
        if e["type"] != g["type"]:
            return i, f"recorded {e['type']}, this build decides {g['type']}"
        if e["data"] != g["data"]:
            keys = sorted(set(e["data"]) | set(g["data"]))
            parts = [f"{k}: {_short(e['data'].get(k))} -> {_short(g['data'].get(k))}"
                     for k in keys if e["data"].get(k) != g["data"].get(k)]
            return i, f"{e['type']} differs in " + "; ".join(parts)
    return -1, ""


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def shadow_run(instance_id: str, events: Iterable[Recorded], *,
               since: str | None = None) -> RunReport:
    """This build's decisions over one run's recorded history (``events`` in seq order).

    ``since`` (an ISO time): decisions recorded before it are folded, not compared.
    """
    recorded = list(events)
    workflow = str(recorded[0].data.get("workflow", "?")) if recorded else "?"
    report = RunReport(instance_id=instance_id, workflow=workflow)
    run: Run | None = None
    for batch in batches(recorded):
        first = batch[0]
        try:
            parsed = [e.event() for e in batch]
        except Exception as exc:  # noqa: BLE001 - an event this build cannot read at all
            bad = next(e for e in batch if not _readable(e))
            report.differences.append(Difference(
                instance_id=instance_id, workflow=workflow, seq=bad.seq, event_type=bad.type,
                input_type="?", causation_id=str(first.causation_id),
                expected=[{"type": e.type, "data": dict(e.data)} for e in batch], got=[],
                diff=f"this build cannot read the recorded {bad.type}: {exc!r}"))
            break
        if since is not None and first.recorded_at is not None and \
                _before(first.recorded_at, since):
            report.skipped += 1
        else:
            _compare(report, run, batch, parsed, instance_id)
        try:
            for event in parsed:
                run = evolve(run, event, instance_id=instance_id)
        except Exception as exc:  # noqa: BLE001 - a history that does not fold ends here
            report.unreconstructed.append(Unreconstructed(
                instance_id=instance_id, workflow=workflow, seq=first.seq,
                event_type=first.type, causation_id=first.causation_id,
                reason=f"the log does not fold from here: {exc!r}"))
            break
    return report


def _readable(e: Recorded) -> bool:
    try:
        e.event()
    except Exception:  # noqa: BLE001 - only asking whether it reads
        return False
    return True


def _instant(v: str) -> datetime:
    t = datetime.fromisoformat(v)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _before(recorded_at: str, since: str) -> bool:
    return _instant(recorded_at) < _instant(since)


def _compare(report: RunReport, run: Run | None, batch: list[Recorded],
             parsed: list[AnyEvent], instance_id: str) -> None:
    first = batch[0]
    found = reconstruct(run, batch, instance_id)
    if isinstance(found, str):
        report.unreconstructed.append(Unreconstructed(
            instance_id=instance_id, workflow=report.workflow, seq=first.seq,
            event_type=first.type, causation_id=first.causation_id, reason=found))
        return
    inp, ctx = found
    expected = [_shape(e) for e in parsed]
    report.compared += 1
    try:
        decision = decide(run, inp, ctx)
        got = [_shape(e) for e in decision.events]
        if decision.dead_letter:
            got.append({"type": _DEAD, "data": {"reason": decision.dead_letter}})
    except Exception as exc:  # noqa: BLE001 - this build failing to decide is a difference
        got = [{"type": _RAISED, "data": {"error": repr(exc)}}]
    # A field an earlier release did not write yet (added since, optional: an additive
    # change, see shoal.core.versions) is not compared: that release could not decide it.
    # A release writes every field of its events, so nothing else is ever absent.
    for i, (e, rec) in enumerate(zip(expected, batch, strict=False)):
        written = set(versions.upcast(rec.type, rec.schema_version, rec.data, versions.EVENTS))
        later = set(e["data"]) - written
        if later:
            expected[i] = {**e, "data": {k: v for k, v in e["data"].items() if k in written}}
            if i < len(got) and got[i]["type"] == e["type"]:
                got[i] = {**got[i], "data": {k: v for k, v in got[i]["data"].items()
                                             if k not in later}}
    index, text = _diff(expected, got)
    if index < 0:
        report.identical += 1
        return
    report.differences.append(Difference(
        instance_id=instance_id, workflow=report.workflow, seq=first.seq + index,
        event_type=batch[index].type if index < len(batch) else "-", input_type=inp.type,
        causation_id=str(first.causation_id), expected=expected, got=got, diff=text))
