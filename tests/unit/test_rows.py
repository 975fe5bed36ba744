"""The runs projection's pure fold: on random histories it gives the rows the consistency
checker expects of fold(events), however the log is cut into batches."""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.core.check import check_read_model
from shoal.core.model import event_data
from shoal.core.rows import Rows, duration_ms, fold, task_keys
from shoal.infra import codec
from tests.unit.test_workflow import IID, Driver, dags, random_history


class Timed(Driver):
    """Reports sent at real times (the projection parses them); commands from a few
    actors, some from none (as Shoal's own are), so the audit columns vary."""

    def __init__(self, raw: dict[str, Any]) -> None:
        super().__init__(raw, actor="starter")

    def command(self, cls: type, **kw: Any) -> list[Any]:
        return super().command(cls, actor=[None, "ann", "bob"][self.n % 3], **kw)

    def msg(self) -> dict[str, str]:
        return {**super().msg(), "sent_at": f"2026-01-01T01:{self.n // 60 % 60:02d}:"
                                            f"{self.n % 60:02d}.{self.n % 7}5+00:00"}


@dataclass(frozen=True)
class Ev:
    instance_id: str
    seq: int
    type: str
    data: dict[str, Any]
    schema_version: int = 1


def stored(d: Driver) -> list[Ev]:
    return [Ev(IID, i, e.type, codec.loads(codec.dumps(event_data(e))))
            for i, e in enumerate(d.log, start=1)]


def in_batches(events: list[Ev], cuts: list[int]) -> Rows:
    """As the adapter does: each batch starts from copies of only the rows it touches."""
    table = Rows()
    bounds = sorted({0, len(events), *(c % (len(events) + 1) for c in cuts)})
    for lo, hi in itertools.pairwise(bounds):
        batch = events[lo:hi]
        keys = task_keys(batch)
        rows = Rows(runs={i: copy.deepcopy(r) for i, r in table.runs.items()
                          if i in {e.instance_id for e in batch}},
                    tasks={k: copy.deepcopy(t) for k, t in table.tasks.items() if k in keys})
        fold(rows, batch)
        for r in rows.changed_runs():
            table.runs[r["instance_id"]] = r
        for t in rows.changed_tasks():
            table.tasks[(t["instance_id"], t["task"], t["attempt"])] = t
    return table


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.data())
def test_rows_equal_what_the_checker_expects_of_the_fold(raw, data):
    d = random_history(Timed(raw), data)
    events = stored(d)
    cuts = data.draw(st.lists(st.integers(0, 10_000), max_size=8))
    table = in_batches(events, cuts)
    assert check_read_model(d.r, table.runs[IID], list(table.tasks.values())) == []
    whole = fold(Rows(), events)
    assert table.runs == whole.runs and table.tasks == whole.tasks, "batching changed rows"


def ev(seq: int, type_: str, iid: str = IID, **data: Any) -> Ev:
    return Ev(iid, seq, type_, data)


SUBMITTED = {"workflow": "w", "version": 1, "priority": "medium", "params": {"a": "1"},
             "at": "2026-01-01T00:00:00+00:00"}


def test_duration_rounds_half_away_from_zero_like_postgres():
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert duration_ms(t0.replace(microsecond=1500), t0) == 2
    assert duration_ms(t0.replace(microsecond=1499), t0) == 1
    assert duration_ms(t0, t0.replace(microsecond=1500)) == -2
    assert duration_ms(t0, None) == 0
    assert duration_ms(None, t0) is None


def test_events_of_unknown_rows_change_nothing_and_a_second_submit_is_ignored():
    rows = fold(Rows(), [ev(1, "WorkflowStarted", at="2026-01-01T00:00:01+00:00"),
                         ev(2, "TaskStarted", task="a", attempt=1, worker_id="w")])
    assert rows.runs == {} and rows.tasks == {} and not rows.dirty_runs
    rows = fold(Rows(), [ev(1, "WorkflowSubmitted", **SUBMITTED),
                         ev(2, "WorkflowSubmitted", **{**SUBMITTED, "workflow": "other"})])
    assert rows.runs[IID]["workflow"] == "w" and rows.runs[IID]["last_seq"] == 1


def test_a_success_without_a_worker_keeps_the_one_that_started_it():
    rows = fold(Rows(), [
        ev(1, "WorkflowSubmitted", **SUBMITTED),
        ev(2, "TaskDispatched", task="a", attempt=1, worker_group="g"),
        ev(3, "TaskStarted", task="a", attempt=1, worker_id="w1",
           reported_at="2026-01-01T00:00:01+00:00"),
        ev(4, "TaskSucceeded", task="a", attempt=1, exit_code=0, outputs={"x": "1"},
           reported_at="2026-01-01T00:00:03.2505+00:00")])
    t = rows.tasks[(IID, "a", 1)]
    assert (t["state"], t["worker_id"], t["worker_group"], t["duration_ms"], t["outputs"]) == \
        ("succeeded", "w1", "g", 2251, {"x": "1"})
    assert rows.runs[IID]["last_seq"] == 4


def test_the_audit_columns_follow_who_started_controlled_and_stopped_the_run():
    rows = fold(Rows(), [
        ev(1, "WorkflowSubmitted", **SUBMITTED, actor="alice"),
        ev(2, "WorkflowStarted", at="2026-01-01T00:00:01+00:00"),
        ev(3, "WorkflowPausing", at="2026-01-01T00:00:02+00:00", actor="bob"),
        ev(4, "WorkflowPaused", at="2026-01-01T00:00:03+00:00"),  # the drain: nobody
        ev(5, "WorkflowResumed", at="2026-01-01T00:00:04+00:00", actor="carol"),
    ])
    run = rows.runs[IID]
    assert (run["actor"], run["last_actor"], run["stopped_by"]) == ("alice", "carol", None)
    fold(rows, [ev(6, "WorkflowStopping", at="2026-01-01T00:00:05+00:00", outcome="stopped",
                   reason="stopped by request", actor="dave")])
    assert (run["last_actor"], run["stopped_by"]) == ("dave", "dave")
    fold(rows, [ev(7, "WorkflowStopped", at="2026-01-01T00:00:06+00:00"),
                ev(8, "WorkflowRestarted", at="2026-01-01T00:00:07+00:00", attempt=2,
                   mode="rerun", actor="erin")])
    assert (run["actor"], run["last_actor"], run["stopped_by"]) == ("alice", "erin", None)
    # A stop Shoal decides itself (a workflow timeout) names nobody and keeps the last actor.
    fold(rows, [ev(9, "WorkflowStopping", at="2026-01-01T00:00:08+00:00", outcome="failed",
                   reason="timed out")])
    assert (run["last_actor"], run["stopped_by"]) == ("erin", None)


def test_older_events_without_an_actor_still_fold():
    rows = fold(Rows(), [ev(1, "WorkflowSubmitted", **SUBMITTED),
                         ev(2, "WorkflowStopping", at="2026-01-01T00:00:05+00:00",
                            outcome="stopped", reason="stopped by request")])
    run = rows.runs[IID]
    assert (run["actor"], run["last_actor"], run["stopped_by"]) == (None, None, None)
