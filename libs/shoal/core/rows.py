"""The runs projection as a pure fold: stored events onto read-model rows.

``workflow_runs`` and ``task_runs`` rows are plain dicts keyed by column name. A batch of
events is folded onto the rows it touches (loaded by the adapter first) and the adapter
writes back only the rows that changed, one statement per table per batch: the
projector and ``projections rebuild`` apply thousands of events per transaction this way
instead of two statements per event.

The semantics are those of an ``UPDATE`` per event: an event about a run or a task whose
row does not exist changes nothing (except the ones that create rows), and every
expression reads the row as it was before that event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from shoal.core import versions

RUN_COLUMNS = ("instance_id", "workflow", "version", "state", "priority", "params",
               "schedule_time", "submitted_at", "started_at", "finished_at", "duration_ms",
               "attempt", "parent_instance_id", "failure", "last_seq",
               "forked_from_instance_id", "forked_from_seq", "imported", "actor",
               "last_actor", "stopped_by")
TASK_COLUMNS = ("instance_id", "task", "attempt", "state", "worker_id", "started_at",
                "finished_at", "duration_ms", "exit_code", "outputs", "error",
                "worker_group", "child_instance_id")

TaskKey = tuple[str, str, int]

_RUN_STATE = {"WorkflowQueued": "serial_wait", "WorkflowPausing": "ready_pause",
              "WorkflowPaused": "paused", "WorkflowResumed": "running",
              "WorkflowStopping": "ready_stop"}
_FINISHED = {"WorkflowSucceeded": "succeeded", "WorkflowFailed": "failed",
             "WorkflowStopped": "stopped"}
_TASK_ROW = {"TaskDispatched": "dispatched", "TaskDelayed": "submitted",
             "TaskRetryScheduled": "retry_wait"}


class Event(Protocol):
    """What the fold reads of a stored event."""

    @property
    def instance_id(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...
    @property
    def schema_version(self) -> int: ...


@dataclass(frozen=True, slots=True)
class _Upcast:
    instance_id: str
    seq: int
    type: str
    data: dict[str, Any]
    schema_version: int


def current(e: Event) -> Event:
    """``e`` with its data in the shape this release reads (upcast when written by an
    earlier one; :class:`~shoal.core.versions.FutureVersion` when by a later one)."""
    want = versions.EVENTS.current.get(e.type, e.schema_version)
    if e.schema_version == want:
        return e
    return _Upcast(e.instance_id, e.seq, e.type,
                   versions.upcast(e.type, e.schema_version, e.data, versions.EVENTS), want)


def ts(v: str | None) -> datetime | None:
    """An event's ISO time (an offset-less one is UTC)."""
    if not v:
        return None
    t = datetime.fromisoformat(v)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def duration_ms(end: datetime | None, start: datetime | None) -> int | None:
    """Milliseconds from ``start`` (or ``end`` when unknown) to ``end``, rounded half away
    from zero as PostgreSQL's numeric-to-bigint cast does; ``None`` without an end."""
    if end is None:
        return None
    delta = end - (start if start is not None else end)
    us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return (us + 500) // 1000 if us >= 0 else -((-us + 500) // 1000)


def task_keys(events: Iterable[Event]) -> set[TaskKey]:
    """The task rows a batch may read or write."""
    keys: set[TaskKey] = set()
    for e in map(current, events):
        d = e.data
        if e.type == "WorkflowSubmitted":
            keys.update((e.instance_id, c["task"], c["attempt"])
                        for c in d.get("carried") or ())
        elif "task" in d and "attempt" in d:
            keys.add((e.instance_id, d["task"], d["attempt"]))
    return keys


@dataclass(slots=True)
class Rows:
    """The rows a batch touches, as loaded, and which of them it changed."""

    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: dict[TaskKey, dict[str, Any]] = field(default_factory=dict)
    dirty_runs: set[str] = field(default_factory=set)
    dirty_tasks: set[TaskKey] = field(default_factory=set)

    def changed_runs(self) -> list[dict[str, Any]]:
        return [self.runs[i] for i in sorted(self.dirty_runs)]

    def changed_tasks(self) -> list[dict[str, Any]]:
        return [self.tasks[k] for k in sorted(self.dirty_tasks)]


def fold(rows: Rows, events: Iterable[Event], *, imported: bool = False) -> Rows:
    """Apply ``events`` in order to ``rows`` (in place; also returned)."""
    for e in events:
        _apply(rows, current(e), imported)
    return rows


def _touch(rows: Rows, e: Event, **sets: Any) -> None:
    run = rows.runs.get(e.instance_id)
    if run is not None:
        run.update(sets)
        run["last_seq"] = e.seq
        rows.dirty_runs.add(e.instance_id)


def _task(rows: Rows, e: Event, sets: Mapping[str, Any]) -> None:
    key = (e.instance_id, e.data["task"], e.data["attempt"])
    row = rows.tasks.get(key)
    if row is not None:
        row.update(sets)
        rows.dirty_tasks.add(key)
    _touch(rows, e)


def _task_row(rows: Rows, e: Event, state: str) -> None:
    key = (e.instance_id, e.data["task"], e.data["attempt"])
    row = rows.tasks.get(key)
    if row is None:
        rows.tasks[key] = row = _new_task(key)
    row["state"] = state
    rows.dirty_tasks.add(key)
    _touch(rows, e)


def _new_task(key: TaskKey, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(TASK_COLUMNS)
    row.update(instance_id=key[0], task=key[1], attempt=key[2], outputs={})
    row.update(values)
    return row


def _apply(rows: Rows, e: Event, imported: bool) -> None:
    d = e.data
    at = ts(d.get("reported_at") or d.get("at"))
    t = e.type
    if t == "WorkflowSubmitted":
        _submitted(rows, e, at, imported)
    elif t == "WorkflowStarted":
        _touch(rows, e, state="running", started_at=at)
    elif t == "WorkflowRestarted":
        _touch(rows, e, state="running", attempt=d["attempt"], started_at=at,
               finished_at=None, duration_ms=None, failure=None, stopped_by=None,
               **_controlled(rows, e))
    elif t == "WorkflowStopping":
        _touch(rows, e, state="ready_stop", failure=d.get("reason"), **_controlled(rows, e),
               **({"stopped_by": d["actor"]} if d.get("actor") else {}))
    elif t in _RUN_STATE:
        _touch(rows, e, state=_RUN_STATE[t], **_controlled(rows, e))
    elif t in _FINISHED:
        run = rows.runs.get(e.instance_id)
        if run is not None:
            state = _FINISHED[t]
            reason = d.get("reason")
            failure = None if state == "succeeded" else (
                reason if reason is not None else run["failure"])
            _touch(rows, e, state=state, finished_at=at, failure=failure,
                   duration_ms=duration_ms(at, run["started_at"]))
    elif t in _TASK_ROW:
        _task_row(rows, e, _TASK_ROW[t])
        if t == "TaskDispatched":
            _task(rows, e, {"worker_group": d.get("worker_group"),
                            "child_instance_id": (d.get("spec") or {}).get("child_instance_id")})
    elif t == "TaskDecided":
        _task_row(rows, e, "failed" if d.get("error") else "succeeded")
        _task(rows, e, {"started_at": at, "finished_at": at, "duration_ms": 0,
                        "exit_code": None if d.get("error") else 0,
                        "error": d.get("error") or None})
    elif t in ("TaskSkipped", "TaskDryRun"):
        dry = t == "TaskDryRun"
        _task_row(rows, e, "succeeded" if dry else "skipped")
        _task(rows, e, {"started_at": at, "finished_at": at, "duration_ms": 0,
                        "exit_code": 0 if dry else None,
                        "error": "dry run" if dry else d.get("reason")})
    elif t == "TaskStarted":
        _task(rows, e, {"state": "running", "worker_id": d.get("worker_id"), "started_at": at})
    elif t in ("TaskSucceeded", "TaskFailed"):
        old = rows.tasks.get((e.instance_id, d["task"], d["attempt"])) or {}
        started = old.get("started_at")
        _task(rows, e, {
            "state": "succeeded" if t == "TaskSucceeded" else "failed",
            "worker_id": d["worker_id"] if d.get("worker_id") is not None
            else old.get("worker_id"),
            "exit_code": d.get("exit_code"), "outputs": d.get("outputs") or {},
            "error": d.get("error") or None,
            "started_at": started if started is not None else at, "finished_at": at,
            "duration_ms": duration_ms(at, started)})
    elif t == "TaskKilled":
        old = rows.tasks.get((e.instance_id, d["task"], d["attempt"])) or {}
        _task(rows, e, {"state": "killed", "exit_code": d.get("exit_code"),
                        "error": f"killed ({d.get('reason')})", "finished_at": at,
                        "duration_ms": duration_ms(at, old.get("started_at"))})
    elif t == "TaskLost":
        old = rows.tasks.get((e.instance_id, d["task"], d["attempt"])) or {}
        _task(rows, e, {"state": "lost", "error": "lease lapsed", "finished_at": at,
                        "duration_ms": duration_ms(at, old.get("started_at"))})
    elif t == "TaskPaused":
        _task(rows, e, {"state": "paused"})
    elif t == "TaskForcedSuccess":
        _task(rows, e, {"state": "forced_success"})
        _touch(rows, e, **_controlled(rows, e))
    else:
        _touch(rows, e)  # timers, kill requests, rejections: history only


def _controlled(rows: Rows, e: Event) -> dict[str, Any]:
    """``last_actor`` after a control event: its actor when it has one (events Shoal
    causes itself, such as a drained pause, leave it as it was)."""
    actor = e.data.get("actor")
    return {"last_actor": actor} if actor else {}


def _submitted(rows: Rows, e: Event, at: datetime | None, imported: bool) -> None:
    d = e.data
    iid = e.instance_id
    if iid not in rows.runs:  # a second WorkflowSubmitted changes nothing
        forked = d.get("forked_from") or {}
        rows.runs[iid] = {
            "instance_id": iid, "workflow": d["workflow"], "version": d["version"],
            "state": "submitted", "priority": d["priority"], "params": d.get("params", {}),
            "schedule_time": ts(d.get("schedule_time")), "submitted_at": at,
            "started_at": None, "finished_at": None, "duration_ms": None,
            "attempt": d.get("attempt", 1),
            "parent_instance_id": (d.get("parent") or {}).get("instance_id"),
            "failure": None, "last_seq": e.seq,
            "forked_from_instance_id": forked.get("instance_id"),
            "forked_from_seq": forked.get("seq"), "imported": imported,
            "actor": d.get("actor"), "last_actor": None, "stopped_by": None}
        rows.dirty_runs.add(iid)
    for c in d.get("carried") or ():  # a fork's tasks, finished in its source
        key = (iid, c["task"], c["attempt"])
        if key in rows.tasks:
            continue
        started, finished = ts(c.get("started_at")), ts(c.get("finished_at"))
        rows.tasks[key] = _new_task(
            key, state=c["state"], worker_id=c.get("worker_id"), started_at=started,
            finished_at=finished, duration_ms=duration_ms(finished, started),
            exit_code=c.get("exit_code"), outputs=c.get("outputs") or {})
        rows.dirty_tasks.add(key)
