"""Logic tasks decided in the orchestrator's core: conditions, switch, sub_workflow,
dependent; skipping that propagates; parameter precedence."""

from __future__ import annotations

from typing import Any

from shoal.core.model import (
    ORCHESTRATOR,
    PauseWorkflow,
    ResumeWorkflow,
    RunState,
    StopWorkflow,
    TaskDecided,
    TaskDispatched,
    TaskFailed,
    TaskKilled,
    TaskSucceeded,
)
from tests.unit.test_workflow import Driver, dispatched


def routed(**extra: Any) -> dict[str, Any]:
    return {"name": "routed", "tasks": [
        {"name": "a", "command": "run-a"},
        {"name": "route", "type": "conditions", "depends_on": ["a"],
         "on_success": ["report"], "on_failure": ["alert"]},
        {"name": "report", "command": "report"},
        {"name": "publish", "command": "publish", "depends_on": ["report"]},
        {"name": "alert", "command": "alert"},
        {"name": "end", "command": "end", "depends_on": ["publish", "alert"]}], **extra}


def test_conditions_success_runs_the_success_branch_and_skips_the_other():
    d = Driver(routed())
    assert dispatched(d.start()) == ["a"]
    events = d.report(TaskSucceeded, "a", exit_code=0)
    decided = next(e for e in events if isinstance(e, TaskDecided))
    assert (decided.decision, list(decided.taken), list(decided.untaken)) == (
        "success", ["report"], ["alert"])
    assert dispatched(events) == ["report"]
    assert d.state("alert") == "skipped"
    d.report(TaskSucceeded, "report", exit_code=0)
    d.report(TaskSucceeded, "publish", exit_code=0)
    # end has one skipped and one succeeded predecessor: it runs.
    assert d.state("end") == "dispatched"
    d.report(TaskSucceeded, "end", exit_code=0)
    assert d.r.state is RunState.SUCCEEDED


def test_conditions_failure_runs_the_failure_branch_and_skipping_propagates():
    d = Driver(routed(failure_strategy="end"))
    d.start()
    events = d.report(TaskFailed, "a", exit_code=3)
    assert dispatched(events) == ["alert"], "a failure a conditions task handles kills nothing"
    assert d.state("report") == "skipped" and d.state("publish") == "skipped"
    assert d.r.tasks["publish"].branch_skipped
    d.report(TaskSucceeded, "alert", exit_code=0)
    d.report(TaskSucceeded, "end", exit_code=0)
    assert d.r.state is RunState.SUCCEEDED, "the handled failure does not fail the run"
    assert d.state("a") == "failed"


def test_conditions_failure_branch_failing_fails_the_run():
    d = Driver(routed())
    d.start()
    d.report(TaskFailed, "a", exit_code=3)
    d.report(TaskFailed, "alert", exit_code=1)
    assert d.r.state is RunState.FAILED
    assert "alert" in (d.r.failure or "")


def test_all_predecessors_skipped_skips_but_a_disabled_one_does_not():
    raw = routed()
    raw["tasks"][5]["depends_on"] = ["publish"]
    d = Driver(raw)
    d.start()
    d.report(TaskFailed, "a", exit_code=1)
    assert d.state("end") == "skipped"
    raw = routed()
    raw["tasks"][2]["disabled"] = True
    d = Driver(raw)
    d.start()
    events = d.report(TaskSucceeded, "a", exit_code=0)
    assert d.state("report") == "skipped" and not d.r.tasks["report"].branch_skipped
    assert "publish" in dispatched(events)


def switched(**extra: Any) -> dict[str, Any]:
    return {"name": "switched", "params": {"region": "eu", "n": "5"}, "tasks": [
        {"name": "pick", "type": "switch", "cases": [
            {"when": "${region} == 'eu' and ${n} > 3", "then": ["eu"]},
            {"when": "${region} in ['us', 'ca']", "then": ["us"]}], "default": ["other"]},
        {"name": "eu", "command": "eu"}, {"name": "us", "command": "us"},
        {"name": "other", "command": "other"}], **extra}


def test_switch_takes_the_first_case_that_holds_else_default():
    for params, taken in (({}, "eu"), ({"region": "ca"}, "us"), ({"n": "2"}, "other"),
                          ({"region": "jp"}, "other")):
        d = Driver(switched(), params=params)
        assert dispatched(d.start()) == [taken], params
        assert {n for n, t in d.r.tasks.items() if t.state.value == "skipped"} == (
            {"eu", "us", "other"} - {taken})


def test_switch_that_cannot_decide_fails_with_the_reason():
    raw = switched()
    raw["tasks"].append({"name": "late", "command": "echo '${setValue(x=1)}'",
                         "outputs": ["x"]})
    raw["tasks"][0]["cases"][0]["when"] = "${x} == '1'"
    d = Driver(raw)
    d.start()
    assert d.state("pick") == "failed"
    assert "parameter 'x' has no value" in d.r.tasks["pick"].error


def test_sub_workflow_runs_in_the_orchestrator_and_finishes_with_the_child():
    raw = {"name": "parent", "params": {"bizdate": "20260301"}, "tasks": [
        {"name": "child", "type": "sub_workflow", "workflow": "other",
         "params": {"day": "${bizdate}"}, "outputs": ["total"]},
        {"name": "use", "command": "echo ${total}", "depends_on": ["child"]}]}
    d = Driver(raw)
    events = d.start()
    disp = next(e for e in events if isinstance(e, TaskDispatched))
    assert disp.spec is not None
    assert disp.spec["workflow"] == "other" and disp.spec["params"] == {"day": "20260301"}
    assert disp.spec["child_instance_id"]
    assert d.state("child") == "running" and d.r.tasks["child"].worker_id == ORCHESTRATOR
    # Pausing the parent does not wait for the child run.
    d.command(PauseWorkflow)
    assert d.r.state is RunState.PAUSED
    d.command(ResumeWorkflow)
    events = d.report(TaskSucceeded, "child", exit_code=0, outputs={"total": "84"})
    use = next(e for e in events if isinstance(e, TaskDispatched))
    assert use.command == "echo '84'"


def test_stopping_the_parent_stops_the_child_and_waits_for_it():
    d = Driver({"name": "parent", "tasks": [
        {"name": "child", "type": "sub_workflow", "workflow": "other"}]})
    d.start()
    events = d.command(StopWorkflow)
    kill = [e for e in events if e.type == "TaskKillRequested"]
    assert kill and kill[0].worker_id == ORCHESTRATOR
    assert d.r.state is RunState.READY_STOP
    d.report(TaskKilled, "child", error="child run stopped")
    assert d.r.state is RunState.STOPPED


def dependent(**task: Any) -> dict[str, Any]:
    return {"name": "waits", "tasks": [
        {"name": "wait", "type": "dependent",
         "depends_on_workflow": {"workflow": "upstream", "task": None,
                                 "date": "$[yyyyMMdd-1]"}, **task},
        {"name": "after", "command": "after", "depends_on": ["wait"]}]}


def test_dependent_waits_for_a_window_and_fails_at_its_timeout():
    d = Driver(dependent(timeout=60), schedule_time="2026-03-01T02:00:00+01:00")
    events = d.start()
    spec = next(e for e in events if isinstance(e, TaskDispatched)).spec
    assert spec == {"workflow": "upstream", "task": None, "date": "20260228",
                    "window_start": "2026-02-28T00:00:00", "window_end": "2026-03-01T00:00:00"}
    d.fire("task_timeout", "wait")
    assert d.state("wait") == "failed"
    assert d.r.tasks["wait"].error.startswith("timed out after 60s: waiting for a successful "
                                              "run of upstream for 20260228")
    assert d.r.state is RunState.FAILED


def test_dependent_met_proceeds_and_a_stop_ends_the_wait_at_once():
    d = Driver(dependent())
    d.start()
    events = d.report(TaskSucceeded, "wait", exit_code=0)
    assert dispatched(events) == ["after"]
    d = Driver(dependent())
    d.start()
    d.command(StopWorkflow)
    assert d.state("wait") == "killed" and d.r.state is RunState.STOPPED


def test_parameter_precedence_startup_then_local_then_outputs_then_global():
    raw = {"name": "prec", "params": {"g": "global", "o": "global", "l": "global",
                                      "s": "global"}, "tasks": [
        {"name": "up", "command": "x", "outputs": ["o", "l", "s"]},
        {"name": "t", "command": "echo ${g} ${o} ${l} ${s} ${both}", "depends_on": ["up"],
         "params": {"l": "local", "s": "local", "both": "${g}+$[yyyy]"}}]}
    d = Driver(raw, params={"s": "startup"}, schedule_time="2026-03-01T00:00:00+00:00")
    d.start()
    events = d.report(TaskSucceeded, "up", exit_code=0,
                      outputs={"o": "out", "l": "out", "s": "out"})
    t = next(e for e in events if isinstance(e, TaskDispatched))
    assert t.command == "echo 'global' 'out' 'local' 'startup' 'global+2026'"


def test_business_date_expressions_of_a_scheduled_run():
    raw = {"name": "dates", "params": {"a": "$[yyyyMMdd-1]", "b": "$[add_months(yyyyMMdd,-1)]",
                                       "c": "$[month_last_day(yyyyMMdd,-1)]"},
           "tasks": [{"name": "t", "type": "python", "script": "print('${a} ${b} ${c}')"}]}
    d = Driver(raw, schedule_time="2026-03-01T00:00:00+08:00")
    t = next(e for e in d.start() if isinstance(e, TaskDispatched))
    assert t.command == "print('20260228 20260201 20260228')"
