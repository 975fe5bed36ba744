"""The consistency checker's rules on histories the orchestrator's own decide produces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.core.check import check_history, check_read_model
from shoal.core.model import Run, TaskSucceeded, TaskSucceededEvent
from tests.unit.test_workflow import IID, Driver, chain, dags, random_history

NOW = datetime(2026, 1, 1, 1, 0, tzinfo=UTC)
GRACE = timedelta(seconds=60)


def history(d: Driver, at: str = "2026-01-01T00:59:59+00:00") -> list:
    return [(i, at, e) for i, e in enumerate(d.log, start=1)]


def rows(run: Run) -> tuple[dict, list[dict]]:
    """What a correct projection holds for ``run``."""
    row = {"workflow": run.workflow, "version": run.version, "state": run.state.value,
           "attempt": run.attempt, "last_seq": run.seq, "imported": False}
    return row, [{"task": n, "attempt": t.attempt, "state": t.state.value,
                  "exit_code": t.exit_code, "outputs": dict(t.outputs)}
                 for n, t in run.tasks.items()]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.data())
def test_healthy_histories_have_no_violations(raw, data):
    d = random_history(Driver(raw), data)
    run, found = check_history(IID, history(d), now=NOW, grace=GRACE)
    assert found == []
    assert run == d.r
    row, tasks = rows(run)
    assert check_read_model(run, row, tasks) == []


def test_each_rule_names_the_instance_and_event():
    d = Driver(chain("a", "b"))
    d.start()
    d.report(TaskSucceeded, "a", exit_code=0, outputs={"x": "1"})
    run, found = check_history(IID, history(d), now=NOW, grace=GRACE)
    assert found == [] and run is not None
    row, tasks = rows(run)
    altered = [{**t, "outputs": {"x": "2"}} if t["task"] == "a" else t for t in tasks]
    [v] = check_read_model(run, row, altered)
    assert (v.instance_id, v.seq, v.kind) == (IID, run.seq, "read-model")
    assert "task_runs a#1.outputs" in v.detail
    [v] = check_read_model(run, {**row, "state": "failed"}, tasks)
    assert "workflow_runs.state is 'failed'" in v.detail
    assert check_read_model(run, None, tasks)[0].detail == "no workflow_runs row"

    # The same success appended twice.
    dup = next(e for e in d.log if isinstance(e, TaskSucceededEvent))
    twice = [*history(d), (len(d.log) + 1, "2026-01-01T00:59:59+00:00", dup)]
    _, found = check_history(IID, twice, now=NOW, grace=GRACE)
    assert [(v.kind, v.seq) for v in found] == [("succeeded-twice", len(d.log) + 1)]

    # Running, nothing active or waiting, quiet past the grace period: stuck.
    stuck = history(d, "2026-01-01T00:50:00+00:00")
    quiet_run, _ = check_history(IID, stuck, now=NOW, grace=GRACE)
    assert quiet_run is not None and quiet_run.tasks["b"].state.active  # b is dispatched
    cut = [(s, at, e) for s, at, e in stuck if getattr(e, "task", "") != "b"]
    _, found = check_history(IID, cut, now=NOW, grace=GRACE)
    assert [v.kind for v in found] == ["stuck"]
    _, found = check_history(IID, cut, now=NOW, grace=timedelta(hours=1))
    assert found == []

    # A history that does not fold.
    _, found = check_history(IID, history(d)[1:], now=NOW, grace=GRACE)
    assert [(v.kind, v.seq) for v in found] == [("not-replayable", 2)]


def test_a_finished_run_with_a_dispatched_attempt_never_closed():
    d = Driver(chain("a"))
    d.start()
    d.report(TaskSucceeded, "a", exit_code=0)
    log = history(d)
    # Drop the success: a finished run (the terminal event kept) whose attempt never closed.
    kept = [(s, at, e) for s, at, e in log if not isinstance(e, TaskSucceededEvent)]
    assert d.r.state.finished
    _, found = check_history(IID, kept, now=NOW, grace=GRACE)
    assert "unclosed-attempt" in [v.kind for v in found]
