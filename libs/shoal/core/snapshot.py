"""Snapshots: a run's folded state as JSON, so loading an instance with a long history
costs the latest snapshot plus the events after it, not the whole log.

``FORMAT`` changes whenever the state's shape does; a snapshot of another format is not
used (the orchestrator folds the whole history instead), so an upgrade never misreads one.
"""

from __future__ import annotations

from typing import Any

from shoal.core.definition import Priority, parse_definition
from shoal.core.model import KillReason, Run, RunState, TaskRun, TaskState, Timer, TimerKind

FORMAT = 1


def snapshot_due(first_seq: int, last_seq: int, every: int) -> bool:
    """Whether appending events ``first_seq..last_seq`` crosses a multiple of ``every``."""
    return every > 0 and (first_seq - 1) // every != last_seq // every


def to_snapshot(run: Run) -> dict[str, Any]:
    return {
        "format": FORMAT, "instance_id": run.instance_id, "workflow": run.workflow,
        "version": run.version, "definition": run.definition.to_dict(),
        "state": run.state.value, "attempt": run.attempt, "params": dict(run.params),
        "priority": run.priority.value, "seq": run.seq, "scope": sorted(run.scope),
        "dry_run": run.dry_run, "last_attempts": dict(run.last_attempts),
        "tasks": [_task(t) for t in run.tasks.values()],
        "timers": [{"timer_id": t.timer_id, "kind": t.kind.value, "fire_at": t.fire_at,
                    "task": t.task, "attempt": t.attempt} for t in run.timers.values()],
        "stopping_to": run.stopping_to.value if run.stopping_to else None,
        "schedule_time": run.schedule_time, "parent": run.parent,
        "submitted_at": run.submitted_at, "started_at": run.started_at,
        "finished_at": run.finished_at, "failure": run.failure,
        "startup": dict(run.startup), "forked_from": run.forked_from,
        "actor": run.actor, "last_actor": run.last_actor, "stopped_by": run.stopped_by,
    }


def _task(t: TaskRun) -> dict[str, Any]:
    return {"name": t.name, "state": t.state.value, "attempt": t.attempt, "tries": t.tries,
            "dispatch_id": t.dispatch_id, "worker_id": t.worker_id, "exit_code": t.exit_code,
            "outputs": dict(t.outputs), "error": t.error,
            "kill_reason": t.kill_reason.value if t.kill_reason else None,
            "started_at": t.started_at, "finished_at": t.finished_at,
            "branch_skipped": t.branch_skipped, "spec": t.spec}


def from_snapshot(d: dict[str, Any]) -> Run | None:
    """The run a snapshot holds, or None when it is of another format."""
    if d.get("format") != FORMAT:
        return None
    tasks = {t["name"]: TaskRun(
        name=t["name"], state=TaskState(t["state"]), attempt=t["attempt"], tries=t["tries"],
        dispatch_id=t["dispatch_id"], worker_id=t["worker_id"], exit_code=t["exit_code"],
        outputs=t["outputs"], error=t["error"],
        kill_reason=KillReason(t["kill_reason"]) if t["kill_reason"] else None,
        started_at=t["started_at"], finished_at=t["finished_at"],
        branch_skipped=t["branch_skipped"], spec=t["spec"]) for t in d["tasks"]}
    timers = {t["timer_id"]: Timer(timer_id=t["timer_id"], kind=TimerKind(t["kind"]),
                                   fire_at=t["fire_at"], task=t["task"], attempt=t["attempt"])
              for t in d["timers"]}
    return Run(
        instance_id=d["instance_id"], workflow=d["workflow"], version=d["version"],
        definition=parse_definition(d["definition"]), state=RunState(d["state"]),
        attempt=d["attempt"], params=d["params"], priority=Priority(d["priority"]),
        tasks=tasks, seq=d["seq"], scope=frozenset(d["scope"]), dry_run=d["dry_run"],
        last_attempts=d["last_attempts"], timers=timers,
        stopping_to=RunState(d["stopping_to"]) if d["stopping_to"] else None,
        schedule_time=d["schedule_time"], parent=d["parent"], submitted_at=d["submitted_at"],
        started_at=d["started_at"], finished_at=d["finished_at"], failure=d["failure"],
        startup=d["startup"], forked_from=d["forked_from"],
        # Added later (optional keys, same format): older snapshots have no audit fields.
        actor=d.get("actor"), last_actor=d.get("last_actor"), stopped_by=d.get("stopped_by"))
