"""Pure helpers of the new task types: switch expressions, SQL splitting, date windows,
definition checks of the new fields."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.core import expr
from shoal.core.definition import parse_definition
from shoal.core.dependent import DateInvalid, date_window
from shoal.core.errors import DefinitionInvalid
from shoal.core.params import MAX_OUTPUT_BYTES, MAX_OUTPUT_LINES, OutputParser, parse_outputs
from shoal.core.sqlsplit import split_sql

P = {"region": "eu", "n": "12", "flag": "true", "empty": ""}


@pytest.mark.parametrize(("text", "expected"), [
    ("${region} == 'eu'", True),
    ("${region} != 'eu'", False),
    ("${n} > 9", True),            # numeric: 12 > 9
    ("${n} > '9'", True),
    ("${region} in ['us', 'eu']", True),
    ("${region} not in ('us', 'eu')", False),
    ("${region} == 'eu' and ${n} < 10", False),
    ("${region} == 'us' or ${n} >= 12", True),
    ("not (${region} == 'us')", True),
    ("!${flag}", False),
    ("${flag}", True),
    ("${empty} == ''", True),
    ("${region} == \"eu\" && true", True),
])
def test_expressions(text, expected):
    assert expr.holds(expr.parse(text), P) is expected


@pytest.mark.parametrize(("text", "message"), [
    ("region == 'eu'", "unknown word 'region'"),
    ("${region} ==", "expected a value"),
    ("${region} = 'eu'", "unexpected character '='"),
    ("(${n} > 1", "expected ')'"),
    ("${n} in 'a'", "'in' needs a list"),
    ("__import__('os')", "unknown word '__import__'"),
    ("", "empty expression"),
])
def test_bad_expressions_name_the_problem(text, message):
    with pytest.raises(expr.ExpressionInvalid, match=message.replace("(", r"\(")
                       .replace(")", r"\)")):
        expr.parse(text)


def test_missing_parameter_at_evaluation():
    with pytest.raises(expr.ExpressionInvalid, match="'nope' has no value"):
        expr.holds(expr.parse("${nope} == 1"), P)
    assert expr.references(expr.parse("${a} == 1 or ${b} in [${c}]")) == {"a", "b", "c"}


def test_sql_split_respects_strings_comments_and_dollar_quotes():
    script = """
    create table t(x text);  -- a comment; with a semicolon
    insert into t values ('a;b'), ('it''s; fine'), (E'back\\'slash;');
    /* block ; /* nested ; */ still comment ; */ select 1;
    create function f() returns int as $body$ begin return 1; end; $body$ language plpgsql;
    select "odd;name" from t;;
    """
    parts = split_sql(script)
    assert len(parts) == 5
    assert "insert into t values ('a;b')" in parts[1]
    assert parts[1].endswith("(E'back\\'slash;')")
    assert parts[2].endswith("select 1")
    assert "return 1; end;" in parts[3]
    assert parts[4] == 'select "odd;name" from t'
    assert split_sql("-- only a comment") == []


@given(st.lists(st.text(alphabet="abc ;'$", max_size=8).map(
    lambda s: "select '" + s.replace("'", "''") + "'"), min_size=1, max_size=5))
def test_sql_split_never_cuts_inside_a_string(statements):
    assert split_sql(";\n".join(statements)) == statements


@pytest.mark.parametrize(("value", "start", "end"), [
    ("20260228", datetime(2026, 2, 28), datetime(2026, 3, 1)),
    ("2026-02-28", datetime(2026, 2, 28), datetime(2026, 3, 1)),
    ("202602", datetime(2026, 2, 1), datetime(2026, 3, 1)),
    ("2026", datetime(2026, 1, 1), datetime(2027, 1, 1)),
    ("2026022813", datetime(2026, 2, 28, 13), datetime(2026, 2, 28, 14)),
])
def test_date_windows(value, start, end):
    assert date_window(value) == (start, end)


@pytest.mark.parametrize("value", ["2026022", "20261301", "$[yyyyMMdd]", "abc"])
def test_bad_date_windows(value):
    with pytest.raises(DateInvalid):
        date_window(value)


def problems(*tasks, **extra):
    with pytest.raises(DefinitionInvalid) as exc:
        parse_definition({"name": "w", "tasks": list(tasks), **extra})
    return [str(p) for p in exc.value.problems]


def test_an_undeclared_parameter_is_refused_naming_task_and_name():
    msgs = problems({"name": "a", "type": "sql", "sql": "select ${nope}"},
                    {"name": "b", "command": "echo ${HOME} ${rows}", "outputs": ["rows"]},
                    {"name": "c", "type": "python", "script": "print('${missing}')"})
    assert msgs == [
        "tasks[0].sql: ${nope} is not a declared parameter (declare it in params, a task's "
        "params or a task's outputs)",
        "tasks[2].script: ${missing} is not a declared parameter (declare it in params, a "
        "task's params or a task's outputs)"]


def test_new_task_types_check_their_fields():
    msgs = problems(
        {"name": "h", "type": "http", "method": "FETCH", "url": "", "expected_status": [99],
         "outputs": {"id": "id"}},
        {"name": "s", "type": "switch", "cases": [{"when": "${x} ==", "then": ["h"]}]},
        {"name": "c", "type": "conditions", "on_success": ["ghost"]},
        {"name": "c2", "type": "conditions", "depends_on": ["h"], "on_success": ["ghost"]},
        {"name": "sub", "type": "sub_workflow", "workflow": "w"},
        {"name": "d", "type": "dependent", "depends_on_workflow": {"workflow": "Up!"}})
    joined = "\n".join(msgs)
    for part in ("tasks[0].method: must be one of GET | POST | PUT | PATCH | DELETE",
                 "tasks[0].url: required", "tasks[0].expected_status: must be a list",
                 "tasks[0].outputs.id: JSON path 'id' must start with '$'",
                 "tasks[1].cases[0].when: expected a value",
                 "tasks[2].depends_on: a conditions task branches",
                 "tasks[3]: branch names unknown task 'ghost'",
                 "tasks[4].workflow: a workflow cannot run itself",
                 "tasks[5].depends_on_workflow.workflow: required"):
        assert part in joined, part


def test_branches_depend_on_their_chooser_and_the_form_round_trips():
    d = parse_definition({"name": "w", "params": {"r": "eu"}, "tasks": [
        {"name": "pick", "type": "switch", "cases": [{"when": "${r} == 'eu'", "then": ["a"]}],
         "default": ["b"]},
        {"name": "a", "command": "a"}, {"name": "b", "command": "b", "depends_on": ["pick"]},
        {"name": "h", "type": "http", "url": "http://x", "outputs": {"id": "$.id"}}]})
    assert d.task("a").depends_on == ("pick",) and d.task("b").depends_on == ("pick",)
    assert d.task("h").outputs == ("id",)
    assert parse_definition(d.to_dict()) == d


def test_set_value_both_forms_multi_line_values():
    lines = ["x ${setValue(a=1)} #{setValue(b=two words)}", "#{setValue(c=line one",
             "line two)}", "${setValue(other=9)}", "${setValue(a=2)} tail"]
    assert parse_outputs(lines, ["a", "b", "c"]) == {"a": "2", "b": "two words",
                                                      "c": "line one\nline two"}


def test_an_output_over_the_size_cap_is_named():
    parser = OutputParser(["big", "small"])
    parser.feed("${setValue(big=")
    for _ in range(MAX_OUTPUT_LINES + 5):
        parser.feed("x")
    parser.feed(")}")
    parser.feed("${setValue(small=ok)}")
    assert parser.outputs == {"small": "ok"}
    assert parser.errors == [f"output 'big' is larger than the cap ({MAX_OUTPUT_LINES} lines "
                             f"or {MAX_OUTPUT_BYTES} bytes)"]
