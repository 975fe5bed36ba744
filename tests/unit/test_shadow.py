"""Shadow replay: inputs rebuilt from recorded batches, decided again, compared."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.core import workflow
from shoal.core.definition import RetryPolicy
from shoal.core.model import (
    AnyEvent,
    FireTimer,
    ForceTaskSuccess,
    PauseWorkflow,
    RecoverWorkflow,
    RerunWorkflow,
    ResumeWorkflow,
    StopWorkflow,
    TaskFailed,
    TaskStarted,
    TaskSucceeded,
    WakeWorkflow,
    event_data,
)
from shoal.core.shadow import Recorded, batches, shadow_run
from shoal.core.workflow import Context, decide, evolve
from tests.unit.test_workflow import IID, Driver, chain, dags, settle, step_randomly


class Recording(Driver):
    """A Driver that records what the orchestrator stores: each event with its seq and
    the applied input's message id as causation id (the Context's message id)."""

    def __init__(self, raw: dict[str, Any], **start: Any) -> None:
        super().__init__(raw, **start)
        self.recorded: list[Recorded] = []

    def msg(self) -> dict[str, str]:
        return {"message_id": f"m{self.n + 1}", "instance_id": IID, "sent_at":
                f"2026-01-01T01:00:{self.n % 60:02d}+00:00"}

    def feed(self, inp: Any, slot_free: bool = True) -> list[AnyEvent]:
        self.n += 1
        ctx = Context(now=f"2026-01-01T00:{self.n // 60 % 60:02d}:{self.n % 60:02d}+00:00",
                      message_id=inp.message_id, slot_free=slot_free,
                      actor=getattr(inp, "actor", None))
        d = decide(self.run, inp, ctx)
        assert d.dead_letter is None, d.dead_letter
        for e in d.events:
            self.run = evolve(self.run, e, instance_id=IID)
            self.recorded.append(Recorded(
                seq=len(self.recorded) + 1, type=e.type, causation_id=inp.message_id,
                data=json.loads(json.dumps(event_data(e))), recorded_at=ctx.now))
        self.log.extend(d.events)
        return list(d.events)


REFUSED_REPORT = "records neither its attempt nor its dispatch id"


def test_batches_are_runs_of_one_causation_id():
    rec = [Recorded(seq=i, type="X", data={}, causation_id=c)
           for i, c in enumerate(["a", "a", "b", None, None, "a"], start=1)]
    assert [[e.seq for e in b] for b in batches(rec)] == [[1, 2], [3], [4], [5], [6]]


def test_a_history_this_build_recorded_replays_identically():
    d = Recording(chain("a", "b"), actor="alice")
    d.start()
    d.report(TaskStarted, "a")
    d.report(TaskFailed, "a", exit_code=2)
    d.command(RecoverWorkflow, actor="bob")
    d.report(TaskStarted, "a")
    d.command(PauseWorkflow, actor="carol")
    d.report(TaskSucceeded, "a", exit_code=0, outputs={"x": "1"})
    d.command(ResumeWorkflow, actor="carol")
    d.command(ResumeWorkflow, actor="erin")  # refused: running
    d.report(TaskSucceeded, "b", exit_code=0)
    d.command(ForceTaskSuccess, task="a")     # refused by the state alone
    report = shadow_run(IID, d.recorded)
    assert report.differences == [] and report.unreconstructed == []
    assert report.compared == report.identical == 11
    assert report.workflow == "chain"


def test_timers_retries_timeouts_and_stops_replay_identically():
    d = Recording({"name": "w", "timeout": 100, "tasks": [
        {"name": "a", "command": "x", "retries": 2, "retry_interval": 1, "timeout": 5,
         "timeout_strategy": "fail"},
        {"name": "b", "command": "y", "depends_on": ["a"], "delay": 1}]})
    d.start()
    d.report(TaskStarted, "a")
    d.fire("task_timeout", "a")                   # kill requested
    d.report(TaskFailed, "a", exit_code=137)      # failed: timed out, retry armed
    d.fire("retry", "a")
    d.feed(FireTimer(**d.msg(), timer_id="retry:a:1"))  # no longer armed: refused
    d.report(TaskSucceeded, "a", exit_code=0)
    d.fire("delay", "b")
    d.report(TaskStarted, "b")
    d.command(StopWorkflow, actor="ops")
    d.report(TaskFailed, "b", exit_code=143)      # confirms the kill
    d.command(RerunWorkflow, actor="ops")
    report = shadow_run(IID, d.recorded)
    assert report.differences == [] and report.unreconstructed == []
    assert report.compared == 12


def test_serial_slots_are_read_off_the_recorded_decision():
    d = Recording(chain("a", execution="serial_wait"))
    d.start(slot_free=False)
    d.command(WakeWorkflow)
    d.report(TaskSucceeded, "a", exit_code=0)
    d.feed(RerunWorkflow(**d.msg()), slot_free=False)  # refused: another run holds it
    d.feed(RecoverWorkflow(**d.msg()))                 # refused: succeeded
    d.feed(RerunWorkflow(**d.msg()))
    report = shadow_run(IID, d.recorded)
    assert report.differences == [] and report.unreconstructed == []
    d = Recording(chain("a", execution="serial_discard"))
    d.start(slot_free=False)
    assert shadow_run(IID, d.recorded).identical == 1


def _as_before_0_2(recorded: list[Recorded]) -> list[Recorded]:
    """The log as release 0.1.0 wrote it: a refusal kept only the report's reason."""
    return [dataclasses.replace(r, data={k: v for k, v in r.data.items() if k != "report"})
            if r.type == "InputRejected" else r for r in recorded]


def test_refused_reports_are_rebuilt_from_what_they_said_and_strays_from_their_kill():
    d = Recording(chain("a", "b"))
    d.start()
    first = d.r.tasks["a"].dispatch_id
    d.report(TaskStarted, "a")
    d.report(TaskSucceeded, "a", exit_code=0)
    d.report(TaskSucceeded, "a", attempt=1, dispatch_id=first, exit_code=0)  # duplicate
    d.report(TaskStarted, "a", attempt=1, dispatch_id="other")               # stray: killed
    report = shadow_run(IID, d.recorded)
    assert report.differences == [] and report.unreconstructed == []
    assert report.compared == 5
    # Written before refusals kept the report: the duplicate cannot be rebuilt (listed,
    # not hidden); the stray still can, from the kill it caused.
    old = shadow_run(IID, _as_before_0_2(d.recorded))
    assert [(u.seq, u.event_type) for u in old.unreconstructed] == [(len(d.recorded) - 2,
                                                                     "InputRejected")]
    assert REFUSED_REPORT in old.unreconstructed[0].reason
    assert old.compared == 4 and old.differences == []


def test_a_changed_retry_rule_is_named_with_its_run_and_event(monkeypatch):
    d = Recording({"name": "w", "tasks": [{"name": "a", "command": "x", "retries": 1,
                                           "retry_interval": 60}]})
    d.start()
    d.report(TaskStarted, "a")
    failed_at = len(d.recorded) + 1
    d.report(TaskFailed, "a", exit_code=1)
    d.fire("retry", "a")
    d.report(TaskSucceeded, "a", exit_code=0)
    assert shadow_run(IID, d.recorded).differences == []
    monkeypatch.setattr(RetryPolicy, "delay", lambda self, tries: 30.0)
    diffs = shadow_run(IID, d.recorded).differences
    assert [(x.instance_id, x.seq, x.event_type, x.input_type) for x in diffs] == [
        (IID, failed_at + 1, "TaskRetryScheduled", "TaskFailed")]
    assert "fire_at" in diffs[0].diff


def test_since_folds_earlier_decisions_without_comparing_them():
    d = Recording(chain("a"))
    d.start()
    d.report(TaskSucceeded, "a", exit_code=0)
    report = shadow_run(IID, d.recorded, since=d.recorded[-1].recorded_at)
    assert (report.skipped, report.compared, report.identical) == (1, 1, 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.data())
def test_every_random_history_replays_identically(raw, data):
    d = Recording(raw)
    d.start()
    sent: list[tuple] = []
    for _ in range(data.draw(st.integers(0, 50))):
        step_randomly(d, data, sent)
    settle(d, data)
    report = shadow_run(IID, d.recorded)
    assert report.differences == []
    assert all(REFUSED_REPORT in u.reason for u in report.unreconstructed), \
        report.unreconstructed
    assert report.compared + len(report.unreconstructed) == len(list(batches(d.recorded)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.data())
def test_a_reversed_dispatch_order_is_found_only_where_tasks_start_together(raw, data):
    """No false alarm: reversing ready_tasks changes nothing in a history where no
    decision started two tasks (where one did, see test_golden's fan-out)."""
    d = Recording(raw)
    d.start()
    for _ in range(data.draw(st.integers(0, 30))):
        step_randomly(d, data, [])
    settle(d, data)
    original = workflow.ready_tasks
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(workflow, "ready_tasks", lambda run: list(reversed(original(run))))
        report = shadow_run(IID, d.recorded)
    orders_matter = any(
        sum(1 for e in b if e.type in ("TaskDispatched", "TaskSkipped", "TaskDecided",
                                       "TaskDelayed", "TaskDryRun")) > 1 for b in
        batches(d.recorded))
    if not orders_matter:
        assert report.differences == []
    for x in report.differences:
        assert x.instance_id == IID and x.seq >= 1


def test_an_event_this_build_cannot_read_is_a_difference():
    d = Recording(chain("a"))
    d.start()
    d.report(TaskSucceeded, "a", exit_code=0)
    future = Recorded(seq=len(d.recorded) + 1, type="TaskTeleported", data={"at": "x"},
                      causation_id="m99")
    report = shadow_run(IID, [*d.recorded, future])
    assert [(x.seq, x.event_type) for x in report.differences] == [(future.seq,
                                                                    "TaskTeleported")]
    assert "cannot read" in report.differences[0].diff and report.identical == 2


def test_the_cli_text_names_each_difference_and_counts_many_unrebuilt_by_reason(capsys):
    from shoal.cli import _shadow_text
    from shoal.infra.shadow import Summary

    d = Recording(chain("a"))
    d.start()
    d.report(TaskSucceeded, "a", exit_code=0)
    for _ in range(25):
        d.report(TaskSucceeded, "a", exit_code=0)  # late duplicates: refused
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(workflow, "ready_tasks", lambda run: [])
        report = shadow_run(IID, _as_before_0_2(d.recorded))
    assert len(report.unreconstructed) == 25
    summary = Summary(runs=[report])
    _shadow_text(summary)
    out = capsys.readouterr().out.splitlines()
    # Nothing ever ready: this build cannot even decide the start.
    assert out[0] == (f"DIFFERENT  run {IID} (chain) seq 1 WorkflowSubmitted  "
                      "[input StartWorkflow, causation m1]")
    assert out[1].startswith("  this build raises deciding it: ")
    assert sum(ln.startswith("NOT REBUILT  run ") for ln in out) == 20
    assert (f"  5 x a refused TaskSucceeded {REFUSED_REPORT} (only its reason; releases "
            "before 0.2.0 kept no more)") in out
    assert out[-1] == ("shadow replay: 1 run(s), 2 decision(s) compared: 1 differ, "
                       "25 input(s) could not be rebuilt from the log")


def test_an_event_of_a_later_schema_version_is_a_difference():
    d = Recording(chain("a"))
    d.start()
    d.report(TaskSucceeded, "a", exit_code=0)
    last = d.recorded[-1]
    later = Recorded(seq=last.seq, type=last.type, data=last.data,
                     causation_id=last.causation_id, schema_version=99)
    report = shadow_run(IID, [*d.recorded[:-1], later])
    assert [(x.seq, x.event_type) for x in report.differences] == [(last.seq, last.type)]
    assert "schema_version 99 is newer" in report.differences[0].diff
