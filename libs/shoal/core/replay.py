"""Time travel: the state after each event, by the same fold the orchestrator uses."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from shoal.core.evolve import evolve
from shoal.core.model import AnyEvent, Run, TaskRun


def view(run: Run) -> dict[str, Any]:
    """What a person asks of a run at one point: its state and every task's (a task not
    reached yet has state None), in the definition's order."""
    tasks = []
    for name in run.definition.task_names:
        t = run.tasks.get(name)
        tasks.append({"task": name, "state": t.state.value if t else None,
                      "attempt": t.attempt if t else None,
                      "exit_code": t.exit_code if t else None,
                      "worker_id": t.worker_id if t else None,
                      "outputs": dict(t.outputs) if t else {}})
    return {"state": run.state.value, "attempt": run.attempt, "tasks": tasks}


def steps(events: Iterable[tuple[int, AnyEvent]], *, instance_id: str,
          until: int | None = None) -> Iterator[tuple[int, AnyEvent, Run]]:
    """``(seq, event, state after it)`` for every event up to ``until`` (inclusive)."""
    run: Run | None = None
    for seq, event in events:
        if until is not None and seq > until:
            return
        run = evolve(run, event, instance_id=instance_id)
        yield seq, event, run


def carried_tasks(run: Run) -> list[dict[str, Any]]:
    """What a fork of ``run`` (in the state after some event) keeps: every task that had
    finished with success by then (succeeded, forced_success, skipped), with its attempt,
    outcome and outputs. Failed, killed, lost and unfinished tasks run again in the fork."""
    return [_carried(t) for name in run.definition.task_names
            if (t := run.tasks.get(name)) is not None and t.state.done_ok]


def _carried(t: TaskRun) -> dict[str, Any]:
    return {"task": t.name, "state": t.state.value, "attempt": t.attempt,
            "exit_code": t.exit_code, "outputs": dict(t.outputs), "worker_id": t.worker_id,
            "started_at": t.started_at, "finished_at": t.finished_at,
            "branch_skipped": t.branch_skipped}
