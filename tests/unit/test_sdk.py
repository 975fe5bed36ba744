"""The Python SDK writes the same definitions as YAML, checked by the same rules."""

from __future__ import annotations

import pytest
import yaml

from shoal.core.definition import parse_definition
from shoal.core.errors import DefinitionInvalid
from shoal.sdk import (
    Workflow,
    conditions,
    dependent,
    http,
    python,
    shell,
    sql,
    sub_workflow,
    switch,
)

YAML = """
name: fibo-chain
description: two steps
params: {n: "10"}
failure_strategy: continue
tasks:
  - name: a
    type: shell
    command: echo '${setValue(x=1)}'
    outputs: [x]
  - name: b
    type: python
    function: mypkg.tasks:fibo
    args: {n: "${n}"}
    outputs: [value]
    retries: 1
    depends_on: [a]
"""


def fibo_chain() -> Workflow:
    with Workflow("fibo-chain", params={"n": "10"}, description="two steps",
                  failure_strategy="continue") as wf:
        a = shell("a", "echo '${setValue(x=1)}'", outputs=["x"])
        b = python("b", function="mypkg.tasks:fibo", args={"n": "${n}"}, outputs=["value"],
                   retries=1)
        a >> b
    return wf


def test_to_dict_equals_the_yaml_of_the_same_workflow():
    assert fibo_chain().to_dict() == yaml.safe_load(YAML)


def test_round_trip_sdk_dict_definition_dict():
    raw = fibo_chain().to_dict()
    normalized = parse_definition(raw).to_dict()
    assert parse_definition(normalized).to_dict() == normalized
    assert fibo_chain().definition().to_dict() == normalized


def test_dependency_operators_with_lists_on_either_side():
    with Workflow("ops") as wf:
        a, b, c, d, e = (shell(n, f"echo {n}") for n in "abcde")
        a >> [b, c]
        [b, c] >> d
        e << d
        [a] << e
    deps = {t["name"]: t.get("depends_on", []) for t in wf.to_dict(validate=False)["tasks"]}
    assert deps == {"a": ["e"], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["d"]}
    with pytest.raises(DefinitionInvalid, match="cycle"):
        wf.to_dict()


def test_every_builder_gives_its_types_fields():
    with Workflow("all", params={"region": "eu"}) as wf:
        s = shell("s", "echo ok", outputs=["rows"])
        q = sql("q", "select 1 as one", datasource="default", outputs=["one"], depends_on=[s])
        h = http("h", "http://127.0.0.1:1/x", method="POST", body="{}", depends_on=[q])
        report, alert = shell("report", "echo r"), shell("alert", "echo a")
        route = conditions("route", on_success=[report], on_failure=[alert], depends_on=[h])
        eu, us = shell("eu", "echo eu"), shell("us", "echo us")
        switch("pick", cases=[{"when": "${region} == 'eu'", "then": [eu]}], default=[us])
        sub_workflow("child", "other", params={"day": "${region}"})
        dependent("wait", {"workflow": "upstream", "task": None, "date": "$[yyyyMMdd-1]"})
        python("py", "print(1)")
    tasks = {t["name"]: t for t in wf.to_dict()["tasks"]}
    assert tasks["q"] == {"name": "q", "type": "sql", "datasource": "default",
                          "sql": "select 1 as one", "outputs": ["one"], "depends_on": ["s"]}
    assert tasks["route"]["on_success"] == ["report"] and route.depends_on == ["h"]
    assert tasks["pick"]["cases"][0]["then"] == ["eu"]
    assert tasks["child"] == {"name": "child", "type": "sub_workflow", "workflow": "other",
                              "params": {"day": "${region}"}}
    assert tasks["wait"]["depends_on_workflow"]["workflow"] == "upstream"
    assert tasks["py"] == {"name": "py", "type": "python", "script": "print(1)"}


def test_invalid_workflows_are_refused_by_the_same_rules_as_yaml():
    with Workflow("bad") as wf:
        shell("a", "echo ${nobody}")
        python("b", function="not a function")
    with pytest.raises(DefinitionInvalid) as info:
        wf.to_dict()
    assert {p.path for p in info.value.problems} == {"tasks[1].function"}
    with Workflow("dup") as wf2:
        shell("a", "echo")
        with pytest.raises(ValueError, match="already has a task named 'a'"):
            shell("a", "echo")
    assert len(wf2.tasks) == 1


def test_tasks_need_a_workflow():
    with pytest.raises(RuntimeError, match="inside `with Workflow"):
        shell("orphan", "echo")
    wf = Workflow("explicit")
    shell("a", "echo", workflow=wf)
    assert [t["name"] for t in wf.to_dict()["tasks"]] == ["a"]


def test_typed_params_are_written_like_yaml_and_checked():
    from shoal.core.errors import DefinitionInvalid
    from shoal.sdk import Workflow, param, shell

    with Workflow("typed", params={"day": param("$[yyyyMMdd-1]", "date"),
                                   "region": param("eu", "enum", values=["eu", "us"]),
                                   "plain": "x"}) as wf:
        shell("t", "echo ${day} ${region} ${plain}", params={"n": param(1, "int")})
    d = wf.definition()
    assert d.param_types["region"].values == ("eu", "us")
    assert d.task("t").param_types["n"].type == "int"
    assert wf.to_dict()["params"]["day"] == {"value": "$[yyyyMMdd-1]", "type": "date"}
    with Workflow("bad", params={"n": param("x", "int")}) as bad:
        shell("t", "echo ${n}")
    with pytest.raises(DefinitionInvalid, match=r"params\.n\.value"):
        bad.to_dict()
