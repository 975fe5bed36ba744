"""Time travel: the state after each event, by the same fold the orchestrator uses."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from shoal.core.evolve import evolve
from shoal.core.model import AnyEvent, Run


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
