"""Declared and typed params (issue 22, item 2): which names a run may set, and types."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.core.definition import parse_definition
from shoal.core.errors import DefinitionInvalid
from shoal.core.paramtypes import ParamType, definition_param_problems, value_error

TYPED = {"name": "typed", "params": {
    "day": {"value": "$[yyyyMMdd-1]", "type": "date"},
    "n": {"value": 10, "type": "int"},
    "ratio": {"value": "0.5", "type": "float"},
    "flag": {"value": True, "type": "bool"},
    "region": {"value": "eu", "type": "enum", "values": ["eu", "us"]},
    "code": {"value": "ab", "type": "string", "pattern": "[a-z]+"},
    "plain": "x"},
    "tasks": [{"name": "t", "command": "echo ${day} ${n} ${ratio} ${flag} ${region} ${code}",
               "params": {"local": {"value": "1", "type": "int"}}}]}


def problems(params):
    return {p.path: p.message for p in
            definition_param_problems(parse_definition(TYPED), params)}


def test_the_typed_form_is_read_and_round_trips():
    d = parse_definition(TYPED)
    assert d.params["n"] == "10" and d.params["flag"] == "true"
    assert d.param_types["region"] == ParamType("enum", None, ("eu", "us"))
    assert "plain" not in d.param_types
    assert d.task("t").param_types["local"].type == "int"
    assert parse_definition(d.to_dict()) == d


@pytest.mark.parametrize(("spec", "where"), [
    ({"value": "x", "type": "integer"}, "params.p.type"),
    ({"value": "x", "type": "int"}, "params.p.value"),
    ({"value": "x", "type": "enum"}, "params.p.values"),
    ({"value": "x", "type": "enum", "values": ["a"]}, "params.p.value"),
    ({"value": "x", "type": "string", "pattern": "("}, "params.p.pattern"),
    ({"value": "x", "type": "int", "pattern": "x"}, "params.p.pattern"),
    ({"value": "x", "kind": "int"}, "params.p"),
    ({"value": "$[yyyyMMdd", "type": "date"}, "params.p.value"),
])
def test_a_bad_type_spec_is_refused_naming_the_place(spec, where):
    with pytest.raises(DefinitionInvalid) as exc:
        parse_definition({"name": "w", "params": {"p": spec},
                          "tasks": [{"name": "t", "command": "echo ${p}"}]})
    assert where in {p.path for p in exc.value.problems}


def test_run_params_may_only_set_declared_names_of_their_type():
    assert problems({"day": "2024-01-31", "n": "-3", "ratio": "1e3", "flag": "no",
                     "region": "us", "code": "zz", "plain": "anything", "local": "7"}) == {}
    assert problems({"day": "$[yyyyMMdd-2]"}) == {}
    found = problems({"rows": "1", "n": "1; drop", "day": "31/01/2024", "region": "fr",
                      "code": "ab1", "flag": "maybe", "ratio": "nan", "plain": "a\x00b"})
    assert set(found) == {"params.rows", "params.n", "params.day", "params.region",
                          "params.code", "params.flag", "params.ratio", "params.plain"}
    assert "'rows' is not a parameter the definition declares" in found["params.rows"]
    assert "not a valid int" in found["params.n"]
    assert "NUL" in found["params.plain"]


@given(st.integers())
def test_every_integer_is_an_int(n):
    assert value_error(ParamType("int"), str(n)) is None
    assert value_error(ParamType("float"), str(n)) is None


@given(st.text(max_size=20))
def test_a_value_is_an_enum_member_or_refused(v):
    t = ParamType("enum", None, ("eu", "us"))
    assert (value_error(t, v) is None) == (v in ("eu", "us"))


@given(st.dates())
def test_dates_in_both_written_forms(d):
    assert value_error(ParamType("date"), d.isoformat()) is None
    assert value_error(ParamType("date"), d.strftime("%Y%m%d")) is None or d.year < 1000


def test_a_start_with_an_undeclared_param_is_a_dead_letter_naming_it():
    from shoal.core.model import ResolvedStart, StartWorkflow
    from shoal.core.workflow import Context, decide

    d = parse_definition({"name": "w", "params": {"day": "x"},
                          "tasks": [{"name": "t", "command": "echo ${day}"}]})
    cmd = StartWorkflow(message_id="m", instance_id="00000000-0000-4000-8000-000000000001",
                        sent_at="t", workflow="w", params={"rows": "$(id)"})
    out = decide(None, ResolvedStart(command=cmd, definition=d, version=1),
                 Context(now="2026-01-01T00:00:00+00:00", message_id="m"))
    assert out.dead_letter and "'rows' is not a parameter the definition declares" in \
        out.dead_letter and not out.events


def test_a_run_param_no_longer_overrides_an_upstream_output_unless_the_task_declares_it():
    from shoal.core.model import TaskDispatched, TaskSucceeded
    from tests.unit.test_workflow import Driver

    raw = {"name": "w", "params": {"rows": "0"}, "tasks": [
        {"name": "up", "command": "x", "outputs": ["rows"]},
        {"name": "down", "command": "echo ${rows}", "depends_on": ["up"]},
        {"name": "own", "command": "echo ${rows}", "depends_on": ["up"],
         "params": {"rows": "1"}}]}
    d = Driver(raw, params={"rows": "$(id)"})
    d.start()
    events = d.report(TaskSucceeded, "up", exit_code=0, outputs={"rows": "42"})
    commands = {e.task: e.command for e in events if isinstance(e, TaskDispatched)}
    # The output wins over the global value the run replaced; a task that declares the
    # name itself takes the run's value, as data.
    assert commands == {"down": "echo '42'", "own": "echo '$(id)'"}
