from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.core.definition import find_cycle, parse_definition
from shoal.core.errors import DefinitionInvalid


def wf(*tasks: dict, **extra: object) -> dict:
    return {"name": "wf", "tasks": list(tasks), **extra}


def sh(name: str, *deps: str, **extra: object) -> dict:
    return {"name": name, "type": "shell", "command": f"echo {name}", "depends_on": list(deps),
            **extra}


def problems(raw: object) -> list[str]:
    with pytest.raises(DefinitionInvalid) as exc:
        parse_definition(raw)
    return [str(p) for p in exc.value.problems]


def test_diamond_parses_and_round_trips():
    d = parse_definition(wf(sh("a"), sh("b", "a"), sh("c", "a"), sh("d", "b", "c"),
                            params={"region": "eu", "n": 3, "flag": True}))
    assert d.task_names == ("a", "b", "c", "d")
    assert d.task("d").depends_on == ("b", "c")
    assert d.params == {"region": "eu", "n": "3", "flag": "true"}
    assert parse_definition(d.to_dict()) == d


def test_cycle_is_refused_naming_every_task_of_the_cycle():
    msgs = problems(wf(sh("a", "c"), sh("b", "a"), sh("c", "b"), sh("x")))
    assert len(msgs) == 1
    assert msgs[0].startswith("tasks: cycle: ")
    path = msgs[0].removeprefix("tasks: cycle: ").split(" -> ")
    assert set(path) == {"a", "b", "c"} and path[0] == path[-1]


def test_self_dependency_is_a_cycle():
    assert problems(wf(sh("a", "a"))) == [
        "tasks[0].depends_on[0]: cycle: task 'a' depends on itself"]


def test_unknown_dependency_names_its_place():
    assert problems(wf(sh("a"), sh("b", "a", "nope"))) == [
        "tasks[1].depends_on[1]: unknown task 'nope'"]


def test_duplicate_name_names_both_places():
    assert problems(wf(sh("a"), sh("a"))) == [
        "tasks[1].name: duplicate task name 'a' (first at tasks[0])"]


def test_unknown_type_and_a_field_of_another_type_are_named():
    msgs = problems(wf({"name": "a", "type": "spark", "command": "x"},
                       {"name": "b", "type": "sql", "sql": "select 1", "url": "http://x"}))
    assert msgs[0].startswith("tasks[0].type: unknown task type 'spark'")
    assert msgs[1] == "tasks[1].url: is a field of http tasks"


def test_all_problems_reported_at_once():
    msgs = problems({"name": "Bad Name", "tasks": [{"name": "a"}], "failure_strategy": "x",
                     "retries_typo": 1})
    joined = "\n".join(msgs)
    assert "name: required" in joined
    assert "tasks[0].command: required" in joined
    assert "failure_strategy: must be one of end | continue" in joined
    assert "retries_typo: unknown field" in joined


def test_not_yet_supported_fields_are_refused_not_ignored():
    assert problems(wf(sh("a"), schedule="0 0 * * *")) == [
        "schedule: is not supported yet by this release"]
    assert problems(wf(sh("a"), execution="serial")) == [
        "execution: must be one of parallel | serial_wait | serial_discard | serial_priority, "
        "not 'serial'"]


def test_policies_are_validated():
    msgs = problems(wf(sh("a", retries=-1, retry_backoff=0.5, timeout=0, delay="x",
                          timeout_strategy="explode", disabled="yes")))
    for where in ("retries", "retry_backoff", "timeout", "delay", "timeout_strategy",
                  "disabled"):
        assert any(m.startswith(f"tasks[0].{where}:") for m in msgs), where


@pytest.mark.parametrize("raw", [None, [], "x", {"name": "wf", "tasks": []},
                                 {"name": "wf", "tasks": "a"}, {"name": "wf", "tasks": [1]}])
def test_garbage_is_refused_with_a_message(raw):
    assert problems(raw)


def test_find_cycle_handles_a_long_chain_without_recursion():
    graph = {f"t{i}": ([f"t{i-1}"] if i else []) for i in range(20_000)}
    assert find_cycle(graph) is None
    graph["t0"] = ["t19999"]
    cycle = find_cycle(graph)
    assert cycle is not None and len(cycle) == 20_001


@given(st.integers(2, 12), st.data())
def test_find_cycle_agrees_with_topological_sort(n, data):
    names = [f"n{i}" for i in range(n)]
    graph = {m: data.draw(st.lists(st.sampled_from(names), unique=True, max_size=3))
             for m in names}
    # Kahn's algorithm as the oracle.
    indeg = {m: len(set(graph[m])) for m in names}
    users: dict[str, list[str]] = {m: [] for m in names}
    for m, deps in graph.items():
        for d in set(deps):
            users[d].append(m)
    queue = [m for m in names if indeg[m] == 0]
    seen = 0
    while queue:
        m = queue.pop()
        seen += 1
        for u in users[m]:
            indeg[u] -= 1
            if indeg[u] == 0:
                queue.append(u)
    cycle = find_cycle(graph)
    assert (cycle is None) == (seen == n)
    if cycle:
        for later, earlier in zip(cycle[1:], cycle[:-1], strict=True):
            assert earlier in graph[later]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=12)
_field = st.sampled_from(["name", "type", "command", "depends_on", "params", "outputs", "url",
                          "when", "branches", "workflow", "retries", "timeout", "alerts", "sql",
                          "if", "x"])


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(st.dictionaries(st.sampled_from(["name", "tasks", "params", "alerts", "timeout",
                                        "priority", "x"]),
                       _json | st.lists(st.dictionaries(_field, _json, max_size=6), max_size=3),
                       max_size=5))
def test_any_json_is_a_definition_or_named_problems_never_a_crash(raw):
    try:
        parse_definition(raw)
    except DefinitionInvalid as exc:
        assert exc.problems and all(isinstance(p.message, str) for p in exc.problems)


def test_alerts_and_bounds_are_validated():
    d = parse_definition(wf(sh("a"), alerts={"on": ["failure", "timeout"], "channels": ["ops"]}))
    assert d.alerts == {"on": ("failure", "timeout"), "channels": ("ops",)}
    assert d.to_dict()["alerts"] == {"on": ["failure", "timeout"], "channels": ["ops"]}
    assert "alerts" not in parse_definition(wf(sh("a"))).to_dict()
    assert problems(wf(sh("a"), alerts={"on": ["sometimes"], "channels": ["ops"]})) == [
        "alerts.on: a non-empty list of failure, success, timeout, failover"]
    assert problems(wf(*[sh(f"t{i}") for i in range(1001)]))[0].startswith(
        "tasks: 1001 tasks; a definition holds at most 1000")
    assert problems(wf(sh("a"), params={"big": "x" * 70_000})) == [
        "params.big: larger than 65536 bytes"]
    assert problems(wf(sh("a", type={}))) == [
        "tasks[0].type: unknown task type '{}' (one of: conditions, dependent, http, python, "
        "shell, sql, sub_workflow, switch)"]
