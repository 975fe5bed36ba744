"""The consistency checker's rules: pure functions of a run's history and its read-model rows.

A violation names the instance, the event (seq) it is about and what is wrong. The rules:

- ``read-model``: the read model's row and its tasks' latest attempts equal fold(events);
- ``stuck``: the run is running, nothing is active or waiting, and no event came for a
  grace period (the orchestrator always dispatches or finishes after a decision);
- ``succeeded-twice``: one attempt of a task has two TaskSucceeded events;
- ``unclosed-attempt``: a finished run has a dispatched attempt with neither a start nor a
  close (succeeded, failed, killed, lost);
- ``not-replayable``: the history does not fold (it starts without WorkflowSubmitted, or an
  event cannot apply).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shoal.core.evolve import evolve
from shoal.core.model import AnyEvent, Run, RunState

CLOSES = frozenset({"TaskStarted", "TaskSucceeded", "TaskFailed", "TaskKilled", "TaskLost"})


@dataclass(frozen=True, slots=True)
class Violation:
    instance_id: str
    seq: int
    kind: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"instance_id": self.instance_id, "seq": self.seq, "kind": self.kind,
                "detail": self.detail}


def check_history(instance_id: str, events: Sequence[tuple[int, str, AnyEvent]],
                  *, now: datetime, grace: timedelta) -> tuple[Run | None, list[Violation]]:
    """Fold ``(seq, recorded_at, event)`` and apply the rules that need only the log;
    return the state it folds to (None if it does not) and the violations."""
    out: list[Violation] = []
    run: Run | None = None
    succeeded: Counter[tuple[str, int]] = Counter()
    dispatched: dict[tuple[str, int], int] = {}
    closed: set[tuple[str, int]] = set()
    for seq, _, e in events:
        try:
            run = evolve(run, e, instance_id=instance_id)
        except (AssertionError, KeyError, ValueError, TypeError) as exc:
            out.append(Violation(instance_id, seq, "not-replayable",
                                 f"{e.type} does not apply: {exc!r}"))
            return None, out
        key = (getattr(e, "task", ""), getattr(e, "attempt", 0))
        if e.type == "TaskSucceeded":
            succeeded[key] += 1
            if succeeded[key] == 2:
                out.append(Violation(instance_id, seq, "succeeded-twice",
                                     f"task {key[0]} attempt {key[1]} succeeded again"))
        if e.type == "TaskDispatched":
            dispatched.setdefault(key, seq)
        elif e.type in CLOSES:
            closed.add(key)
    if run is None:
        return None, out
    if run.state.finished:
        for (task, attempt), seq in sorted(dispatched.items(), key=lambda kv: kv[1]):
            if (task, attempt) not in closed:
                out.append(Violation(instance_id, seq, "unclosed-attempt",
                                     f"task {task} attempt {attempt} was dispatched and "
                                     "never started or closed"))
    if run.state is RunState.RUNNING and not any(
            t.state.active or t.state.waiting for t in run.tasks.values()) and events:
        last_seq, last_at, _ = events[-1]
        quiet = now - datetime.fromisoformat(last_at)
        if quiet > grace:
            out.append(Violation(instance_id, last_seq, "stuck",
                                 f"running with every task finished, no event for "
                                 f"{quiet.total_seconds():.0f} s"))
    return run, out


def check_read_model(run: Run, row: Mapping[str, Any] | None,
                     tasks: Sequence[Mapping[str, Any]], *, imported: bool = False
                     ) -> list[Violation]:
    """The read model's row and task rows against the fold ``run``. ``tasks`` are the
    instance's ``task_runs`` rows; each task's latest attempt in ``run`` must be there."""
    iid = run.instance_id
    if row is None:
        return [Violation(iid, run.seq, "read-model", "no workflow_runs row")]
    out = []
    want = {"workflow": run.workflow, "version": run.version, "state": run.state.value,
            "attempt": run.attempt, "last_seq": run.seq, "imported": imported,
            "actor": run.actor, "last_actor": run.last_actor, "stopped_by": run.stopped_by}
    for k, v in want.items():
        if row.get(k) != v:
            out.append(Violation(iid, run.seq, "read-model",
                                 f"workflow_runs.{k} is {row.get(k)!r}, the log says {v!r}"))
    by_key = {(t["task"], t["attempt"]): t for t in tasks}
    for name, t in sorted(run.tasks.items()):
        got = by_key.get((name, t.attempt))
        if got is None:
            out.append(Violation(iid, run.seq, "read-model",
                                 f"task_runs has no row for {name} attempt {t.attempt}"))
            continue
        for k, v in (("state", t.state.value), ("exit_code", t.exit_code),
                     ("outputs", dict(t.outputs))):
            if got.get(k) != v:
                out.append(Violation(iid, run.seq, "read-model",
                                     f"task_runs {name}#{t.attempt}.{k} is {got.get(k)!r}, "
                                     f"the log says {v!r}"))
    return out
