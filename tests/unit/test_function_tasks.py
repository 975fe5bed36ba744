"""Python function tasks in the core: the definition's fields, and how args expand at
dispatch (a whole ``${name}`` keeps its JSON value)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.core.definition import parse_definition
from shoal.core.errors import DefinitionInvalid
from shoal.core.model import TaskDispatched, TaskSucceeded
from shoal.core.params import json_value, output_text
from shoal.core.render import render_args
from tests.unit.test_workflow import Driver


def flow(**fn_fields: Any) -> dict[str, Any]:
    return {"name": "fn", "params": {"n": "10", "region": "eu"}, "tasks": [
        {"name": "extract", "command": "echo", "outputs": ["rows", "meta"]},
        {"name": "add", "type": "python", "function": "mypkg.tasks:add",
         "args": {"rows": "${rows}", "n": "${n}", "region": "${region}",
                  "label": "day ${n}", "nested": {"items": ["${n}", 3]}, "flag": True},
         "outputs": ["total"], "depends_on": ["extract"], **fn_fields}]}


def problems(raw: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(DefinitionInvalid) as info:
        parse_definition(raw)
    return {p.path: p.message for p in info.value.problems}


def test_function_and_args_survive_the_normalized_form():
    t = parse_definition(flow()).to_dict()["tasks"][1]
    assert t["function"] == "mypkg.tasks:add" and "script" not in t
    assert t["args"]["nested"] == {"items": ["${n}", 3]}
    assert parse_definition(parse_definition(flow()).to_dict()).to_dict() == \
        parse_definition(flow()).to_dict()


def test_bad_function_fields_are_named():
    raw = flow(function="no-colon")
    raw["tasks"][1]["args"] = {"1x": 1, "ok": "${nobody}"}
    found = problems(raw)
    assert found["tasks[1].function"] == "must be 'package.module:callable'"
    assert found["tasks[1].args.1x"] == "must be a Python identifier"
    raw = flow(script="print(1)")
    assert "not both" in problems(raw)["tasks[1].function"]
    raw = flow()
    raw["tasks"][1]["args"]["x"] = "${nobody}"
    assert "${nobody} is not a declared parameter" in problems(raw)["tasks[1].args.x"]
    assert "(or a function)" in problems({"name": "p", "tasks": [
        {"name": "p", "type": "python"}]})["tasks[0].script"]
    assert "args are for a function" in problems({"name": "p", "tasks": [
        {"name": "p", "type": "python", "script": "pass", "args": {"a": 1}}]})["tasks[0].args"]


def test_args_expand_with_json_values_for_whole_references():
    d = Driver(flow())
    d.start()
    events = d.report(TaskSucceeded, "extract", exit_code=0,
                      outputs={"rows": "42", "meta": '{"k": [1]}'})
    dispatch = next(e for e in events if isinstance(e, TaskDispatched))
    args = {"rows": 42, "n": 10, "region": "eu", "label": "day 10",
            "nested": {"items": [10, 3]}, "flag": True}
    assert {k: dispatch.spec[k] for k in ("function", "args")} == {
        "function": "mypkg.tasks:add", "args": args}
    # The worker renders the same arguments from the template and the values.
    assert dispatch.spec["args_template"]["label"] == "day ${n}"
    values = dispatch.spec["values"]
    assert render_args(dispatch.spec["args_template"], values.get,
                       lambda n: json_value(values[n])) == args
    assert dispatch.command.startswith("mypkg.tasks:add(rows=42, n=10, region='eu'")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                          allow_infinity=False)
    | st.text(), lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(), kids,
                                                                         max_size=3),
    max_leaves=8)


@given(json_values)
def test_returned_values_come_back_as_the_same_json_value(value):
    text = output_text(value)
    assert isinstance(text, str)
    if isinstance(value, str):
        assert text == value  # strings enter the var pool as they are
    else:
        back = json_value(text)
        assert back == value or (isinstance(value, float) and math.isclose(back, value))
