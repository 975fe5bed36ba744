"""The DolphinScheduler converter (pure): forms, types, refusals, references, dates."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from shoal.core.definition import NAME_RE, TASK_NAME_RE, condition_holds, parse_definition
from shoal.core.dsdependent import MAX_CLAUSES, all_of, combine, date_expressions, date_value
from shoal.core.dsimport import ImportRefused, Known, convert, task_name, workflow_name
from shoal.core.timeexpr import expand_time

FIXTURES = Path(__file__).parent.parent / "fixtures" / "dolphinscheduler"


def _task(code: int, name: str, ttype: str = "SHELL", **params: Any) -> dict[str, Any]:
    return {"code": code, "name": name, "taskType": ttype, "flag": "YES",
            "taskPriority": "MEDIUM", "workerGroup": "default", "failRetryTimes": 0,
            "failRetryInterval": 1, "timeoutFlag": "CLOSE", "timeout": 0, "delayTime": 0,
            "taskParams": params or {"localParams": [], "rawScript": f"echo {name}"}}


def _rel(pre: int, post: int) -> dict[str, Any]:
    return {"preTaskCode": pre, "postTaskCode": post, "conditionType": "NONE"}


def _body(name: str, tasks: list[dict[str, Any]], rels: list[dict[str, Any]], *,
          code: int | None = None, as_strings: bool = False, **head: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "globalParams": "[]", "executionType": "PARALLEL",
                           "timeout": 0, **head,
                           "taskDefinitionJson": json.dumps(tasks) if as_strings else tasks,
                           "taskRelationJson": json.dumps(rels) if as_strings else rels}
    if code is not None:
        out["code"] = code
    return out


def test_the_api_test_fixture_imports_as_a_valid_definition() -> None:
    raw = json.loads((FIXTURES / "api-test-workflow.json").read_text())
    conv = convert(raw)
    (wf,) = conv.workflows
    d = parse_definition(wf.definition)
    assert (wf.source_name, wf.source_code) == ("test", 9752686452032)
    assert d.task("test").command == 'echo "hello world"'
    assert wf.task_codes == {9752684723008: "test"}


@pytest.mark.parametrize("as_strings", [False, True])
def test_rest_body_fields_map(as_strings: bool) -> None:
    t = _task(2, "b")
    t |= {"failRetryTimes": 3, "failRetryInterval": 2, "timeoutFlag": "OPEN", "timeout": 5,
          "timeoutNotifyStrategy": "FAILED", "delayTime": 1, "taskPriority": "HIGH",
          "workerGroup": "etl", "flag": "NO", "taskGroupId": 4, "environmentCode": 77}
    body = _body("My Flow", [_task(1, "a"), t], [_rel(0, 1), _rel(1, 2)],
                 as_strings=as_strings, timeout=10, executionType="SERIAL_WAIT",
                 globalParams=json.dumps([{"prop": "day", "direct": "IN", "type": "VARCHAR",
                                           "value": "${system.biz.date}"}]))
    conv = convert(body)
    d = parse_definition(conv.workflows[0].definition)
    assert d.name == "my-flow" and d.timeout == 600 and d.execution.value == "serial_wait"
    assert d.params == {"day": "${system.biz.date}"}
    b = d.task("b")
    assert (b.retry.retries, b.retry.interval, b.timeout, b.timeout_strategy.value, b.delay,
            b.priority.value, b.worker_group, b.disabled, b.depends_on) == (
        3, 120.0, 300.0, "fail", 60.0, "high", "etl", True, ("a",))
    text = " ".join(conv.warnings)
    assert "task group 4" in text and "environment 77" in text and "named 'my-flow'" in text


def test_local_params_in_and_out() -> None:
    shell = _task(1, "a", localParams=[
        {"prop": "n", "direct": "IN", "type": "INTEGER", "value": 123},
        {"prop": "ok", "direct": "IN", "type": "BOOLEAN", "value": True},
        {"prop": "rows", "direct": "OUT", "type": "VARCHAR", "value": ""}],
        rawScript="echo '#{setValue(rows=${n})}'")
    d = parse_definition(convert(_body("p", [shell], [_rel(0, 1)])).workflows[0].definition)
    assert d.task("a").params == {"n": "123", "ok": "true"}
    assert d.task("a").outputs == ("rows",)


def test_unsupported_types_and_file_params_refuse_the_whole_request_naming_each() -> None:
    good = _body("good", [_task(1, "a")], [_rel(0, 1)])
    bad = _body("bad", [_task(2, "spark", "SPARK"), _task(3, "flink", "FLINK"),
                        _task(4, "f", localParams=[{"prop": "x", "direct": "OUT",
                                                    "type": "FILE", "value": ""}],
                              rawScript="true")], [])
    with pytest.raises(ImportRefused) as exc:
        convert([good, bad])
    found = {(p.get("task"), p.get("type")) for p in exc.value.problems}
    assert {("spark", "SPARK"), ("flink", "FLINK")} <= found
    assert any("FILE" in p["message"] for p in exc.value.problems)


def test_conditions_with_a_nested_and_or_tree() -> None:
    cond = _task(9, "cond", "CONDITIONS", localParams=[], dependence={
        "relation": "AND", "dependTaskList": [{"relation": "AND", "dependItemList": [
            {"depTaskCode": 1, "status": "SUCCESS"}, {"depTaskCode": 2, "status": "FAILURE"}]}]},
        conditionResult={"successNode": [3], "failedNode": [4]})
    tasks = [_task(1, "p1"), _task(2, "p2"), _task(3, "ok"), _task(4, "ko"), cond]
    rels = [_rel(0, 1), _rel(0, 2), _rel(1, 9), _rel(2, 9), _rel(9, 3), _rel(9, 4)]
    d = parse_definition(convert(_body("c", tasks, rels)).workflows[0].definition)
    c = d.task("cond").spec["condition"]
    assert condition_holds(c, {"p1": "success", "p2": "failure"})
    assert not condition_holds(c, {"p1": "success", "p2": "success"})
    assert d.task("cond").spec["on_failure"] == ("ko",)


def test_switch_cases_and_default() -> None:
    sw = _task(5, "sw", "SWITCH", localParams=[], switchResult={
        "dependTaskList": [{"condition": "${var} > 1", "nextNode": 6}], "nextNode": 7})
    body = _body("s", [_task(1, "parent"), sw, _task(6, "one"), _task(7, "two")],
                 [_rel(0, 1), _rel(1, 5), _rel(5, 6), _rel(5, 7)],
                 globalParams=[{"prop": "var", "direct": "IN", "type": "VARCHAR",
                                "value": "1"}])
    d = parse_definition(convert(body).workflows[0].definition)
    assert d.task("sw").spec["cases"] == [{"when": "${var} > 1", "then": ("one",)}]
    assert d.task("sw").spec["default"] == ("two",)


def test_references_by_code_within_the_request_and_to_earlier_imports() -> None:
    child = _body("child", [_task(11, "c")], [_rel(0, 11)], code=100)
    sub = _task(21, "run-child", "SUB_PROCESS", localParams=[], processDefinitionCode=100)
    dep = _task(22, "wait", "DEPENDENT", localParams=[], dependence={
        "relation": "AND", "checkInterval": 5, "dependTaskList": [{"relation": "AND",
            "dependItemList": [{"definitionCode": 300, "depTaskCode": 31, "cycle": "day",
                                "dateValue": "last2Days"}]}]})
    parent = _body("parent", [dep, sub, _task(23, "after")],
                   [_rel(0, 22), _rel(22, 21), _rel(21, 23)], code=200)
    conv = convert([parent, child], {300: Known(name="upstream", tasks={31: "load"})})
    assert [w.definition["name"] for w in conv.workflows] == ["child", "parent"]
    d = parse_definition(conv.workflows[1].definition)
    assert d.task("run-child").spec["workflow"] == "child"
    # last2Days: two windows, one dependent task each; their successors wait for both.
    assert [d.task(n).spec["date"] for n in ("wait", "wait.2")] == [
        "$[yyyyMMdd-2]", "$[yyyyMMdd-1]"]
    assert set(d.task("run-child").depends_on) == {"wait", "wait.2"}
    assert d.task("wait").spec["task"] == "load"
    assert d.task("wait").spec["check_interval"] == 5
    with pytest.raises(ImportRefused, match="code 300"):
        convert([parent, child])


def test_dependent_or_waits_for_any_window_and_and_for_all() -> None:
    """The SDK's task_dependent_example: And(Or(item task_1, item task_2)); plus an AND
    group beside it."""
    dep = _task(22, "wait", "DEPENDENT", localParams=[], dependence={
        "relation": "AND", "dependTaskList": [
            {"relation": "OR", "dependItemList": [
                {"definitionCode": 300, "depTaskCode": 31, "cycle": "day", "dateValue": "today"},
                {"definitionCode": 300, "depTaskCode": 32, "cycle": "day",
                 "dateValue": "today"}]},
            {"relation": "AND", "dependItemList": [
                {"definitionCode": 300, "depTaskCode": 0, "dateValue": "last1Days"}]}]})
    conv = convert(_body("p", [dep, _task(23, "after")], [_rel(0, 22), _rel(22, 23)]),
                   {300: Known(name="up", tasks={31: "t1", 32: "t2"})})
    d = parse_definition(conv.workflows[0].definition)
    assert [dict(a) for a in d.task("wait").spec["any_of"]] == [
        {"workflow": "up", "task": "t1", "date": "$[yyyyMMdd]"},
        {"workflow": "up", "task": "t2", "date": "$[yyyyMMdd]"}]
    assert d.task("wait.2").spec["date"] == "$[yyyyMMdd-1]"
    assert "any_of" not in d.task("wait.2").spec
    assert set(d.task("after").depends_on) == {"wait", "wait.2"}


def _ds_holds(top: str, groups: list[tuple[str, list[list[int]]]], true: set[int]) -> bool:
    """DolphinScheduler's evaluation: an item holds when all its windows do; a group by its
    relation over items; the whole by the top relation over groups."""
    def rel(r: str, xs: list[bool]) -> bool:
        return all(xs) if r == "and" else any(xs)
    return rel(top, [rel(r, [all(w in true for w in item) for item in items])
                     for r, items in groups])


_windows = st.lists(st.integers(0, 5), min_size=1, max_size=3)
_groups = st.lists(st.tuples(st.sampled_from(["and", "or"]),
                             st.lists(_windows, min_size=1, max_size=3)),
                   min_size=1, max_size=3)


@given(st.sampled_from(["and", "or"]), _groups, st.sets(st.integers(0, 5)))
def test_the_conjunctive_form_holds_exactly_when_dolphinschedulers_tree_does(
        top: str, groups: list[tuple[str, list[list[int]]]], true: set[int]) -> None:
    def lit(w: int) -> tuple[str, str | None, str]:
        return ("wf", None, str(w))
    cnf = combine(top, [combine(r, [all_of([[lit(w)] for w in item]) for item in items])
                        for r, items in groups])
    assume(len(cnf) <= MAX_CLAUSES)  # a longer form is unfinished: the import refuses it
    holds = all(any(w[2] in {str(t) for t in true} for w in clause) for clause in cnf)
    assert holds == _ds_holds(top, groups, true)


# DependentDateUtilsTest's business date 2019-04-09 (a Tuesday), as DependentUtilsTest uses.
BIZ = datetime(2019, 4, 9, 10, 30)


@pytest.mark.parametrize(("value", "days"), [
    ("today", ["20190409"]),
    ("last1Days", ["20190408"]),
    ("last3Days", ["20190406", "20190407", "20190408"]),
    ("last7Days", [f"2019040{d}" for d in range(2, 9)]),
    ("lastWeek", ["20190401", "20190402", "20190403", "20190404", "20190405", "20190406",
                  "20190407"]),
    ("lastMonday", ["20190401"]), ("lastSunday", ["20190407"]),
    ("lastMonthBegin", ["20190301"]), ("lastMonthEnd", ["20190331"]),
    ("thisMonthBegin", ["20190401"]),
    ("currentHour", ["2019040910"]), ("last1Hour", ["2019040909"]),
    ("last3Hours", ["2019040907", "2019040908", "2019040909"]),
])
def test_date_values_follow_dependent_date_utils(value: str, days: list[str]) -> None:
    exprs = date_expressions(value)
    assert exprs is not None
    assert [expand_time(e, BIZ) for e in exprs] == days


@pytest.mark.parametrize("value", ["thisWeek", "thisMonth", "lastMonth", "last24Hours"])
def test_date_values_with_a_variable_count_are_not_expressible(value: str) -> None:
    assert date_expressions(value) is None


@given(st.sampled_from(["today", "last1Days", "currentHour", "last1Hour", "lastMonthEnd",
                        "lastFriday", "thisMonthBegin"]))
def test_one_window_date_values_read_back(value: str) -> None:
    (expr,) = date_expressions(value) or []
    assert date_expressions(date_value(expr)) == [expr]


@given(st.lists(st.text(min_size=0, max_size=20), min_size=1, max_size=8))
def test_mapped_names_are_valid_unique_and_keep_valid_names(sources: list[str]) -> None:
    wf_taken: set[str] = set()
    t_taken: set[str] = set()
    wfs = [workflow_name(s, wf_taken) for s in sources]
    ts = [task_name(s, t_taken) for s in sources]
    assert all(NAME_RE.match(n) for n in wfs) and len(set(wfs)) == len(wfs)
    assert all(TASK_NAME_RE.match(n) for n in ts) and len(set(ts)) == len(ts)
    if NAME_RE.match(sources[0]) and len(sources[0]) <= 100:
        assert wfs[0] == sources[0]


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]),
                          st.sampled_from(["success", "failure"])), min_size=1, max_size=4),
       st.sampled_from(["and", "or"]),
       st.dictionaries(st.sampled_from(["a", "b", "c"]),
                       st.sampled_from(["success", "failure", None])))
def test_condition_group_is_all_or_any_of_its_items(items: list[tuple[str, str]],
                                                     relation: str,
                                                     outcome: dict[str, str | None]) -> None:
    cond = {"relation": "and", "groups": [{"relation": relation, "items": [
        {"task": t, "status": s} for t, s in items]}]}
    hits = [outcome.get(t) == s for t, s in items]
    assert condition_holds(cond, outcome) == (all(hits) if relation == "and" else any(hits))


def test_a_condition_over_several_predecessors_takes_the_failed_branch_when_all_succeed() -> None:
    """DolphinScheduler's task_condition_example: SUCCESS(p1, p2) and FAILURE(p3); all
    three succeed, so the condition does not hold and the failed branch runs."""
    from shoal.core.model import RunState, TaskDecided, TaskSucceeded
    from tests.unit.test_workflow import Driver, dispatched

    raw = {"name": "cond", "tasks": [
        {"name": "p1", "command": "x"}, {"name": "p2", "command": "x"},
        {"name": "p3", "command": "x"},
        {"name": "c", "type": "conditions", "depends_on": ["p1", "p2", "p3"],
         "on_success": ["ok"], "on_failure": ["ko"],
         "condition": {"relation": "and", "groups": [{"relation": "and", "items": [
             {"task": "p1", "status": "success"}, {"task": "p2", "status": "success"},
             {"task": "p3", "status": "failure"}]}]}},
        {"name": "ok", "command": "x"}, {"name": "ko", "command": "x"}]}
    d = Driver(raw)
    d.start()
    d.report(TaskSucceeded, "p1", exit_code=0)
    d.report(TaskSucceeded, "p2", exit_code=0)
    events = d.report(TaskSucceeded, "p3", exit_code=0)
    decided = next(e for e in events if isinstance(e, TaskDecided))
    assert list(decided.taken) == ["ko"] and dispatched(events) == ["ko"]
    assert d.state("ok") == "skipped"
    d.report(TaskSucceeded, "ko", exit_code=0)
    assert d.r.state is RunState.SUCCEEDED


def test_a_condition_may_only_read_predecessors() -> None:
    from shoal.core.errors import DefinitionInvalid

    with pytest.raises(DefinitionInvalid, match="not in depends_on"):
        parse_definition({"name": "x", "tasks": [
            {"name": "a", "command": "x"}, {"name": "b", "command": "x"},
            {"name": "c", "type": "conditions", "depends_on": ["a"], "on_success": ["b"],
             "condition": {"relation": "and", "groups": [{"relation": "or", "items": [
                 {"task": "b", "status": "success"}]}]}}]})


def test_system_params_resolve_inside_a_global_param() -> None:
    from shoal.core.model import TaskDispatched
    from tests.unit.test_workflow import Driver

    d = Driver({"name": "g", "params": {"day": "${system.biz.date}-x"},
                "tasks": [{"name": "a", "command": "echo ${day}"}]})
    events = d.start()
    (sent,) = [e for e in events if isinstance(e, TaskDispatched)]
    assert "${system" not in sent.command and sent.command == "echo '20251231-x'"


def test_a_dependent_task_with_alternatives_dispatches_every_window() -> None:
    from shoal.core.model import TaskDispatched
    from tests.unit.test_workflow import Driver

    d = Driver({"name": "w", "tasks": [{"name": "wait", "type": "dependent",
                                        "depends_on_workflow": [
                                            {"workflow": "up", "task": "t1", "date": "$[yyyyMMdd]"},
                                            {"workflow": "up", "task": "t2",
                                             "date": "$[yyyyMMdd-1]"}]}]})
    (sent,) = [e for e in d.start() if isinstance(e, TaskDispatched)]
    assert sent.spec is not None
    alts = sent.spec["any_of"]
    assert [(a["task"], a["window_end"] > a["window_start"]) for a in alts] == [
        ("t1", True), ("t2", True)]
    assert alts[0]["window_start"] > alts[1]["window_start"]
    assert " or " in sent.command


_task_fields = st.fixed_dictionaries({}, optional={
    "retries": st.integers(1, 5), "retry_interval": st.sampled_from([60, 120, 600]),
    "timeout": st.sampled_from([60, 3600]), "timeout_strategy": st.sampled_from(["warn", "fail"]),
    "delay": st.sampled_from([60, 300]), "priority": st.sampled_from(["highest", "low"]),
    "worker_group": st.sampled_from(["etl", "gpu"]), "disabled": st.just(True),
    "params": st.dictionaries(st.sampled_from(["a", "b", "day"]),
                              st.sampled_from(["1", "x y", "$[yyyyMMdd-1]"]), max_size=2),
    "description": st.sampled_from(["loads", "a task"])})


@st.composite
def _definitions(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 5))
    tasks: list[dict[str, Any]] = []
    for i in range(n):
        t = {"name": f"t{i}", "type": draw(st.sampled_from(["shell", "python"])),
             **draw(_task_fields)}
        t["command" if t["type"] == "shell" else "script"] = f"echo {i}"
        deps = draw(st.lists(st.sampled_from([f"t{j}" for j in range(i)]), unique=True,
                             max_size=2)) if i else []
        if deps:
            t["depends_on"] = deps
        if "retry_interval" in t and "retries" not in t:
            del t["retry_interval"]
        if "timeout_strategy" in t and "timeout" not in t:
            del t["timeout_strategy"]
        tasks.append(t)
    if draw(st.booleans()):
        windows = draw(st.lists(st.sampled_from([
            {"workflow": "up", "task": "t1", "date": "$[yyyyMMdd]"},
            {"workflow": "up", "task": None, "date": "$[yyyyMMdd-1]"},
            {"workflow": "up", "task": "t1", "date": "$[week_begin(yyyyMMdd,-3)]"}]),
            min_size=1, max_size=3, unique_by=lambda w: (w["task"], w["date"])))
        tasks.append({"name": "wait", "type": "dependent", "depends_on": ["t0"],
                      "depends_on_workflow": windows if len(windows) > 1 else windows[0]})
    if n >= 3 and draw(st.booleans()):
        tasks.append({"name": "cond", "type": "conditions", "depends_on": ["t0", "t1"],
                      "on_success": ["t2"], "on_failure": [],
                      "condition": {"relation": "or", "groups": [{"relation": "and", "items": [
                          {"task": "t0", "status": "success"},
                          {"task": "t1", "status": "failure"}]}]}})
        tasks[2].pop("depends_on", None)
    return {"name": draw(st.sampled_from(["daily", "etl_2"])), "tasks": tasks,
            **draw(st.fixed_dictionaries({}, optional={
                "params": st.dictionaries(st.sampled_from(["region", "bizdate"]),
                                          st.sampled_from(["eu", "$[yyyyMMdd-1]"]),
                                          min_size=1),
                "timeout": st.sampled_from([600, 7200]),
                "execution": st.sampled_from(["serial_wait", "serial_priority"]),
                "description": st.just("nightly")}))}


@given(_definitions())
def test_export_then_import_gives_the_same_definition(raw: dict[str, Any]) -> None:
    from shoal.core.dsexport import stable_code, to_dolphinscheduler

    original = parse_definition(raw).to_dict()
    exported = to_dolphinscheduler(original, workflow_codes={"up": 500},
                                   foreign_tasks={"up": {"t1": 501}})
    code = stable_code("workflow", raw["name"])
    conv = convert(json.loads(json.dumps([exported])), {500: Known("up", {501: "t1"})},
                   names={code: raw["name"]})
    assert parse_definition(conv.workflows[0].definition).to_dict() == original


# DolphinScheduler's DependentUtilsTest.getDateIntervalList, case by case (its business
# dates and the first/last interval it asserts).
@pytest.mark.parametrize(("base", "value", "first", "last"), [
    (datetime(2019, 2, 5), "last1Days", "20190204", "20190204"),
    (datetime(2019, 2, 5), "last2Days", "20190203", "20190204"),
    (datetime(2019, 2, 5), "today", "20190205", "20190205"),
    (datetime(2019, 2, 4, 10), "last1Hour", "2019020409", "2019020409"),
    (datetime(2019, 2, 4, 10), "last2Hours", "2019020408", "2019020409"),
    (datetime(2019, 2, 4, 10), "last3Hours", "2019020407", "2019020409"),
    (datetime(2019, 2, 10, 7), "last3Days", "20190207", "20190209"),
    (datetime(2019, 2, 10, 7), "last7Days", "20190203", "20190209"),
    (datetime(2019, 2, 10, 7), "lastWeek", "20190128", "20190203"),
    (datetime(2019, 2, 10, 7), "lastMonday", "20190128", "20190128"),
    (datetime(2019, 2, 10, 7), "lastTuesday", "20190129", "20190129"),
    (datetime(2019, 2, 10, 7), "lastWednesday", "20190130", "20190130"),
    (datetime(2019, 2, 10, 7), "lastThursday", "20190131", "20190131"),
    (datetime(2019, 2, 10, 7), "lastFriday", "20190201", "20190201"),
    (datetime(2019, 2, 10, 7), "lastSaturday", "20190202", "20190202"),
    (datetime(2019, 2, 10, 7), "lastSunday", "20190203", "20190203"),
    (datetime(2019, 2, 10, 7), "lastMonthBegin", "20190101", "20190101"),
    (datetime(2019, 2, 10, 7), "lastMonthEnd", "20190131", "20190131"),
])
def test_date_values_as_dolphinschedulers_own_tests_assert(base: datetime, value: str,
                                                            first: str, last: str) -> None:
    days = [expand_time(e, base) for e in date_expressions(value) or []]
    assert (days[0], days[-1]) == (first, last)


def test_sql_task_statements_and_datasource() -> None:
    sql = _task(1, "load", "SQL", localParams=[], type="POSTGRESQL", datasource=3,
                sql="insert into t values (1);", sqlType=1,
                preStatements=["delete from t"], postStatements=["analyze t;"])
    conv = convert(_body("s", [sql], [_rel(0, 1)]), datasources={"3": "warehouse"})
    d = parse_definition(conv.workflows[0].definition)
    assert d.task("load").spec == {"datasource": "warehouse",
                                   "sql": "delete from t;\ninsert into t values (1);\nanalyze t"}
    unnamed = convert(_body("s", [sql], [_rel(0, 1)]))
    assert unnamed.workflows[0].definition["tasks"][0]["datasource"] == "ds3"
    assert any("SHOAL_DATASOURCES" in w for w in unnamed.warnings)


@pytest.mark.parametrize("new_names", [True, False])
def test_http_task_params_headers_body_and_status(new_names: bool) -> None:
    method, params, body = (("httpRequestMethod", "httpRequestParams", "httpRequestBody")
                            if new_names else ("httpMethod", "httpParams", "httpBody"))
    http = _task(1, "call", "HTTP", localParams=[], url="http://h/x", **{
        method: "POST", params: [
            {"prop": "day", "httpParametersType": "PARAMETER", "value": "${bizdate}"},
            {"prop": "X-Token", "httpParametersType": "HEADERS", "value": "t"}],
        body: '{"a": 1}'}, httpCheckCondition="STATUS_CODE_CUSTOM", condition="201")
    conv = convert(_body("h", [http], [_rel(0, 1)], globalParams=[
        {"prop": "bizdate", "direct": "IN", "type": "VARCHAR", "value": "$[yyyyMMdd]"}]))
    spec = parse_definition(conv.workflows[0].definition).task("call").spec
    assert (spec["method"], spec["url"], dict(spec["headers"]), spec["body"],
            list(spec["expected_status"])) == (
        "POST", "http://h/x?day=${bizdate}", {"X-Token": "t"}, '{"a": 1}', [201])


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2**64) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from([
        "name", "code", "taskType", "taskParams", "taskDefinitionJson", "taskRelationJson",
        "preTaskCode", "postTaskCode", "localParams", "rawScript", "dependence",
        "dependTaskList", "dependItemList", "definitionCode", "depTaskCode", "dateValue",
        "switchResult", "nextNode", "conditionResult", "successNode", "relation", "prop",
        "direct", "type", "value", "workflowDefinition", "taskDefinitionList",
        "workflowTaskRelationList", "schedule", "crontab", "globalParams", "timeout",
        "failRetryTimes", "timeoutFlag", "flag", "processDefinitionCode"]), inner,
        max_size=6), max_leaves=30)


@given(_json)
def test_any_json_is_converted_or_refused_never_a_crash(raw: Any) -> None:
    from shoal.core.errors import DefinitionInvalid

    try:
        conv = convert(raw)
    except ImportRefused as exc:
        assert exc.problems and all(p["message"] for p in exc.problems)
        return
    for w in conv.workflows:
        try:
            parse_definition(w.definition)
        except DefinitionInvalid as exc:
            assert exc.problems


_scalar = st.none() | st.booleans() | st.integers(-2, 3) | st.sampled_from(
    ["", "x", "SHELL", "OR", "AND", "today", "last3Days", "thisWeek", "OUT", "FILE", "NO",
     "OPEN", "1", "${a}", "$[yyyyMMdd-1]"]) | st.floats(allow_nan=True)
_fieldish = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["relation", "dependTaskList", "dependItemList", "depTaskCode", "status",
                     "definitionCode", "dateValue", "nextNode", "condition", "successNode",
                     "failedNode", "prop", "direct", "type", "value"]), inner, max_size=4),
    max_leaves=12)


@st.composite
def _near_valid(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 4))
    tasks = [{"code": i + 1, "name": draw(st.sampled_from([f"t{i}", "a b", ""])),
              "taskType": draw(st.sampled_from(["SHELL", "PYTHON", "SQL", "HTTP", "SWITCH",
                                                "CONDITIONS", "DEPENDENT", "SUB_PROCESS"])),
              "taskParams": draw(st.dictionaries(st.sampled_from([
                  "rawScript", "localParams", "dependence", "switchResult", "conditionResult",
                  "processDefinitionCode", "url", "sql", "datasource", "httpParams"]),
                  _fieldish, max_size=4)),
              **draw(st.dictionaries(st.sampled_from([
                  "failRetryTimes", "failRetryInterval", "timeoutFlag", "timeout",
                  "delayTime", "flag", "taskPriority", "workerGroup"]), _scalar, max_size=3))}
             for i in range(n)]
    rels = draw(st.lists(st.fixed_dictionaries({"preTaskCode": st.integers(0, n + 1),
                                                "postTaskCode": st.integers(0, n + 1)}),
                         max_size=5))
    return {"name": draw(st.sampled_from(["w", "W x", "9"])), "code": 7,
            "globalParams": draw(_fieldish), "timeout": draw(_scalar),
            "taskDefinitionJson": tasks, "taskRelationJson": rels}


@given(_near_valid())
def test_near_valid_bodies_are_converted_or_refused_never_a_crash(raw: dict[str, Any]) -> None:
    test_any_json_is_converted_or_refused_never_a_crash.hypothesis.inner_test(raw)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("condition", "var", "holds"), [
    ('"${var}" == "a"', "a", True), ("'${var}' == 'a'", "b", False),
    ("${var} === 2", "2", True), ("${var} !== 2", "2", False), ("${var} > 1", "1", False)])
def test_switch_conditions_read_as_dolphinscheduler_evaluates_them(condition: str, var: str,
                                                                   holds: bool) -> None:
    from shoal.core import expr
    from shoal.core.dsimport import switch_condition

    assert expr.holds(expr.parse(switch_condition(condition)), {"var": var}) is holds
