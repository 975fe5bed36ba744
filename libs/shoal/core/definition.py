"""Workflow definitions: parse a plain mapping, validate it, name every problem's place.

Input is what YAML or JSON decoding produced (``dict``/``list``/scalars); output is a
frozen :class:`WorkflowDefinition` or :class:`DefinitionInvalid` listing all problems at
once, so a user fixes a file in one round trip instead of one error at a time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from shoal.core import expr
from shoal.core.errors import DefinitionInvalid, Problem
from shoal.core.params import references
from shoal.core.paramtypes import ParamType, parse_typed
from shoal.core.render import SECRET_NAME, SECRET_PREFIX
from shoal.core.timeexpr import TimeExpressionInvalid, expand_time, system_params

E = TypeVar("E", bound=StrEnum)

# Bounds on what one definition may hold (a bigger DAG composes sub_workflow tasks).
MAX_TASKS = 1000
MAX_PARAMS = 256                  # names in one params mapping
MAX_PARAM_BYTES = 64 * 1024       # one parameter value, as UTF-8
ALERT_EVENTS = ("failure", "success", "timeout", "failover")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*\Z")
TASK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
PARAM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*\Z")
# A python function task's callable: "package.module:callable" (the callable may be an
# attribute path, "module:Class.method").
FUNCTION_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
                         r":[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
ARG_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


class FailureStrategy(StrEnum):
    END = "end"
    CONTINUE = "continue"


class Priority(StrEnum):
    HIGHEST = "highest"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    LOWEST = "lowest"

    @property
    def rank(self) -> int:
        """0 for highest .. 4 for lowest: lower ranks are dispatched first."""
        return list(Priority).index(self)


# Task types (CONTRACT §1). Workers execute the first four; the orchestrator decides the
# logic tasks itself (branches, child runs, waits), without a worker slot.
WORKER_TYPES = frozenset({"shell", "python", "sql", "http"})
LOGIC_TYPES = frozenset({"conditions", "switch"})          # decided at once
HELD_TYPES = frozenset({"sub_workflow", "dependent"})      # run by the orchestrator
CONTRACT_TYPES = WORKER_TYPES | LOGIC_TYPES | HELD_TYPES
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

_WORKFLOW_FIELDS = frozenset(
    {"name", "description", "params", "failure_strategy", "priority", "worker_group", "tasks",
     "timeout", "timeout_strategy", "execution", "alerts"}
)
_WORKFLOW_LATER = frozenset({"schedule"})
_TASK_FIELDS = frozenset(
    {
        "name", "type", "depends_on", "outputs", "priority", "params",
        "worker_group", "env", "description", "retries", "retry_interval", "retry_backoff",
        "max_retry_interval", "timeout", "timeout_strategy", "delay", "disabled",
    }
)
# Fields of one task type only.
_TYPE_FIELDS: Mapping[str, frozenset[str]] = {
    "shell": frozenset({"command"}),
    "python": frozenset({"script", "function", "args"}),
    "sql": frozenset({"datasource", "sql"}),
    "http": frozenset({"method", "url", "headers", "body", "expected_status"}),
    "conditions": frozenset({"on_success", "on_failure", "condition"}),
    "switch": frozenset({"cases", "default"}),
    "sub_workflow": frozenset({"workflow"}),
    "dependent": frozenset({"depends_on_workflow", "check_interval"}),
}


class Execution(StrEnum):
    """What a new run does while another run of the same workflow is running."""

    PARALLEL = "parallel"              # runs alongside
    SERIAL_WAIT = "serial_wait"        # waits its turn, first come first served
    SERIAL_DISCARD = "serial_discard"  # is discarded (ends stopped)
    SERIAL_PRIORITY = "serial_priority"  # waits its turn, most urgent first

    @property
    def serial(self) -> bool:
        return self is not Execution.PARALLEL


class TimeoutStrategy(StrEnum):
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How a failed task is retried: ``retries`` more attempts after the first."""

    retries: int = 0
    interval: float = 0.0
    backoff: float = 1.0
    max_interval: float | None = None

    def delay(self, failed_tries: int) -> float:
        """Seconds to wait after the ``failed_tries``-th failed attempt (1-based)."""
        d = self.interval * self.backoff ** max(failed_tries - 1, 0)
        return min(d, self.max_interval) if self.max_interval is not None else d


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskDefinition:
    """One node of the DAG."""

    name: str
    type: str
    command: str = ""
    depends_on: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    priority: Priority = Priority.MEDIUM
    worker_group: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    retry: RetryPolicy = RetryPolicy()
    timeout: float | None = None
    timeout_strategy: TimeoutStrategy = TimeoutStrategy.FAIL
    delay: float = 0.0
    disabled: bool = False
    params: Mapping[str, str] = field(default_factory=dict)   # task-local
    param_types: Mapping[str, ParamType] = field(default_factory=dict)  # of typed params
    # The type's own fields, normalized (sql, url, cases, workflow, ...).
    spec: Mapping[str, Any] = field(default_factory=dict)

    @property
    def branches(self) -> tuple[str, ...]:
        """Tasks a conditions/switch task chooses between (each depends on it)."""
        s = self.spec
        names = [*s.get("on_success", ()), *s.get("on_failure", ()), *s.get("default", ())]
        for case in s.get("cases", ()):
            names.extend(case["then"])
        return tuple(dict.fromkeys(names))

    def texts(self) -> list[tuple[str, str]]:
        """(field path, text) of every field where ``${name}`` and ``$[...]`` expand."""
        out = [(f"params.{k}", v) for k, v in self.params.items()]
        if self.type == "shell" or (self.type == "python" and "function" not in self.spec):
            out.append(("script" if self.type == "python" else "command", self.command))
        s = self.spec
        out += list(_arg_texts(s.get("args", {}), "args"))
        for key in ("sql", "url", "body"):
            if key in s:
                out.append((key, s[key]))
        out += [(f"headers.{k}", v) for k, v in s.get("headers", {}).items()]
        if self.type == "dependent" and "any_of" in s:
            out += [(f"depends_on_workflow[{i}].date", a["date"])
                    for i, a in enumerate(s["any_of"])]
        elif self.type == "dependent":
            out.append(("depends_on_workflow.date", s["date"]))
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowDefinition:
    """A validated workflow: tasks in definition order, dependencies known to be acyclic."""

    name: str
    tasks: tuple[TaskDefinition, ...]
    description: str = ""
    params: Mapping[str, str] = field(default_factory=dict)
    param_types: Mapping[str, ParamType] = field(default_factory=dict)  # of typed params
    failure_strategy: FailureStrategy = FailureStrategy.END
    priority: Priority = Priority.MEDIUM
    worker_group: str = "default"
    timeout: float | None = None
    timeout_strategy: TimeoutStrategy = TimeoutStrategy.FAIL
    execution: Execution = Execution.PARALLEL
    # {"on": [failure|success|timeout|failover], "channels": [channel names]} or None
    alerts: Mapping[str, tuple[str, ...]] | None = None

    def task(self, name: str) -> TaskDefinition:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def worker_group_of(self, task: TaskDefinition) -> str:
        return task.worker_group or self.worker_group

    def to_dict(self) -> dict[str, Any]:
        """The normalized plain form, stored with each version and in WorkflowSubmitted."""
        return {
            "name": self.name,
            "description": self.description,
            "params": _typed_out(self.params, self.param_types),
            "failure_strategy": self.failure_strategy.value,
            "priority": self.priority.value,
            "worker_group": self.worker_group,
            "timeout": self.timeout,
            "timeout_strategy": self.timeout_strategy.value,
            "execution": self.execution.value,
            **({"alerts": {k: list(v) for k, v in self.alerts.items()}} if self.alerts else {}),
            "tasks": [
                {
                    "name": t.name,
                    "type": t.type,
                    **_type_fields(t),
                    "depends_on": list(t.depends_on),
                    "outputs": (dict(t.spec["output_paths"]) if t.type == "http"
                                else list(t.outputs)),
                    "params": _typed_out(t.params, t.param_types),
                    "priority": t.priority.value,
                    "worker_group": t.worker_group,
                    "env": dict(t.env),
                    "description": t.description,
                    "retries": t.retry.retries,
                    "retry_interval": t.retry.interval,
                    "retry_backoff": t.retry.backoff,
                    "max_retry_interval": t.retry.max_interval,
                    "timeout": t.timeout,
                    "timeout_strategy": t.timeout_strategy.value,
                    "delay": t.delay,
                    "disabled": t.disabled,
                }
                for t in self.tasks
            ],
        }


def _type_fields(t: TaskDefinition) -> dict[str, Any]:
    """The type's own fields in their §1 form."""
    s = t.spec
    match t.type:
        case "shell":
            return {"command": t.command}
        case "python" if "function" in s:
            return {"function": s["function"], "args": dict(s["args"])}
        case "python":
            return {"script": t.command}
        case "sql":
            return {"datasource": s["datasource"], "sql": s["sql"]}
        case "http":
            return {"method": s["method"], "url": s["url"], "headers": dict(s["headers"]),
                    "body": s["body"], "expected_status": list(s["expected_status"])}
        case "conditions":
            return {"on_success": list(s["on_success"]), "on_failure": list(s["on_failure"]),
                    **({"condition": s["condition"]} if s.get("condition") else {})}
        case "switch":
            return {"cases": [{"when": c["when"], "then": list(c["then"])} for c in s["cases"]],
                    "default": list(s["default"])}
        case "sub_workflow":
            return {"workflow": s["workflow"]}
        case _:  # dependent
            window = ["workflow", "task", "date"]
            return {"depends_on_workflow": [{k: a[k] for k in window} for a in s["any_of"]]
                    if "any_of" in s else {k: s[k] for k in window},
                    "check_interval": s["check_interval"]}


_SAMPLE = datetime(2000, 1, 31, 12)  # noqa: DTZ001 - a fixed sample, not a clock read
SYSTEM_PARAMS = frozenset(system_params(_SAMPLE))


def _check_texts(params: Mapping[str, str], tasks: Sequence[TaskDefinition],
                 where: Mapping[str, int], problems: list[Problem]) -> None:
    """Every ``$[...]`` must evaluate (at a sample instant: only its form matters), and
    every ``${name}`` must be a parameter declared somewhere: a global or task-local
    param, an output of a task, or a system parameter. Shell commands and env values may
    also name environment variables (``${HOME}``), so they are not checked for names."""
    declared = set(params) | SYSTEM_PARAMS
    for t in tasks:
        declared |= set(t.params) | set(t.outputs)
    places: list[tuple[str, str, bool]] = [(f"params.{k}", v, True) for k, v in params.items()]
    named: list[tuple[str, set[str]]] = []  # where, the ${names} read there
    for t in tasks:
        i = where[t.name]
        places += [(f"tasks[{i}].{path}", text, t.type != "shell" or path != "command")
                   for path, text in t.texts()]
        places += [(f"tasks[{i}].env.{k}", v, False) for k, v in t.env.items()]
        named += [(f"tasks[{i}].cases[{j}].when", expr.references(expr.parse(case["when"])))
                  for j, case in enumerate(t.spec.get("cases", ()))]
    for path, text, check_names in places:
        try:
            expand_time(text, _SAMPLE)
        except TimeExpressionInvalid as exc:
            problems.append(Problem(path, str(exc)))
        if check_names:
            named.append((path, references(text)))
    for path, names in named:
        secrets = {n for n in names if n.startswith(SECRET_PREFIX)}
        problems += [Problem(path, f"${{{name}}}: a secret's name is letters, digits and '_'")
                     for name in sorted(secrets)
                     if not SECRET_NAME.fullmatch(name[len(SECRET_PREFIX):])]
        problems += [Problem(path, f"${{{name}}} is not a declared parameter (declare it in "
                                   "params, a task's params or a task's outputs)")
                     for name in sorted(names - declared - secrets)]


def parse_definition(raw: object) -> WorkflowDefinition:
    """Validate ``raw`` and build the definition, or raise :class:`DefinitionInvalid`."""
    problems: list[Problem] = []
    if not isinstance(raw, Mapping):
        raise DefinitionInvalid([Problem("", "a definition must be a mapping (object)")])

    for key in raw:
        if key in _WORKFLOW_LATER:
            problems.append(Problem(str(key), "is not supported yet by this release"))
        elif key not in _WORKFLOW_FIELDS:
            problems.append(Problem(str(key), "unknown field"))

    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        problems.append(Problem("name", "required; lowercase letters, digits, '_' or '-'"))
        name = ""

    param_types: dict[str, ParamType] = {}
    params = _params(raw.get("params", {}), "params", problems, types=param_types)
    failure = _enum(FailureStrategy, raw.get("failure_strategy", "end"), "failure_strategy",
                    problems, FailureStrategy.END)
    priority = _enum(Priority, raw.get("priority", "medium"), "priority", problems,
                     Priority.MEDIUM)
    worker_group = _string(raw.get("worker_group", "default"), "worker_group", problems)
    wf_timeout = _seconds(raw.get("timeout"), "timeout", problems, positive=True)
    wf_timeout_strategy = _enum(TimeoutStrategy, raw.get("timeout_strategy", "fail"),
                                "timeout_strategy", problems, TimeoutStrategy.FAIL)
    execution = _enum(Execution, raw.get("execution", "parallel"), "execution", problems,
                      Execution.PARALLEL)

    raw_tasks = raw.get("tasks")
    tasks: list[TaskDefinition] = []
    if not isinstance(raw_tasks, Sequence) or isinstance(raw_tasks, str | bytes) or not raw_tasks:
        problems.append(Problem("tasks", "required; a non-empty list of tasks"))
        raw_tasks = []
    if len(raw_tasks) > MAX_TASKS:
        raise DefinitionInvalid([Problem("tasks", f"{len(raw_tasks)} tasks; a definition "
                                                  f"holds at most {MAX_TASKS} (compose bigger "
                                                  "DAGs with sub_workflow tasks)")])
    alerts = _alerts(raw.get("alerts"), problems)
    seen: dict[str, int] = {}
    for i, raw_task in enumerate(raw_tasks):
        task = _task(raw_task, f"tasks[{i}]", problems)
        if task is None:
            continue
        if task.name in seen:
            problems.append(Problem(f"tasks[{i}].name",
                                    f"duplicate task name '{task.name}' "
                                    f"(first at tasks[{seen[task.name]}])"))
            continue
        seen[task.name] = i
        tasks.append(task)

    declared = {t.get("name") for t in raw_tasks
                if isinstance(t, Mapping) and isinstance(t.get("name"), str)}
    for i, task in enumerate(raw_tasks):
        deps = task.get("depends_on", []) if isinstance(task, Mapping) else []
        for j, dep in enumerate(deps if isinstance(deps, list) else []):
            if isinstance(dep, str) and dep not in declared:
                problems.append(Problem(f"tasks[{i}].depends_on[{j}]", f"unknown task '{dep}'"))

    tasks = _with_branch_edges(tasks, seen, problems)
    for t in tasks:
        if t.type == "sub_workflow" and t.spec["workflow"] == name:
            problems.append(Problem(f"tasks[{seen[t.name]}].workflow",
                                    f"a workflow cannot run itself as a sub-workflow ('{name}')"))
    _check_texts(params, tasks, seen, problems)
    if not problems:
        cycle = find_cycle({t.name: t.depends_on for t in tasks})
        if cycle:
            problems.append(Problem("tasks", "cycle: " + " -> ".join(cycle)))
    if problems:
        raise DefinitionInvalid(problems)
    return WorkflowDefinition(
        name=name,
        description=str(raw.get("description", "") or ""),
        tasks=tuple(tasks),
        params=params, param_types=param_types,
        failure_strategy=failure,
        priority=priority,
        worker_group=worker_group or "default",
        timeout=wf_timeout,
        timeout_strategy=wf_timeout_strategy,
        execution=execution,
        alerts=alerts,
    )


def _with_branch_edges(tasks: list[TaskDefinition], where: Mapping[str, int],
                       problems: list[Problem]) -> list[TaskDefinition]:
    """Each branch of a conditions/switch task depends on it (added when not written)."""
    chooser: dict[str, str] = {}
    for t in tasks:
        for b in t.branches:
            i = where[t.name]
            if b not in where:
                problems.append(Problem(f"tasks[{i}]", f"branch names unknown task '{b}'"))
            elif b == t.name:
                problems.append(Problem(f"tasks[{i}]", f"task '{b}' cannot be its own branch"))
            elif b in chooser and chooser[b] != t.name:
                problems.append(Problem(f"tasks[{i}]", f"task '{b}' is already a branch of "
                                                       f"'{chooser[b]}'"))
            else:
                chooser[b] = t.name
    return [replace(t, depends_on=(*t.depends_on, chooser[t.name]))
            if t.name in chooser and chooser[t.name] not in t.depends_on else t for t in tasks]


def find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Return one cycle as ``[a, b, ..., a]`` (following depends_on edges), or None.

    Iterative depth-first search, so a 10,000-task chain does not hit the recursion limit.
    """
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(graph, white)
    for root in graph:
        if colour[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = [root]
        colour[root] = grey
        while stack:
            node, idx = stack[-1]
            deps = graph.get(node, ())
            if idx < len(deps):
                stack[-1] = (node, idx + 1)
                nxt = deps[idx]
                if nxt not in colour:
                    continue
                if colour[nxt] == grey:
                    start = path.index(nxt)
                    # depends_on points backwards in time; report in execution order.
                    cycle = [*path[start:], nxt]
                    return list(reversed(cycle))
                if colour[nxt] == white:
                    colour[nxt] = grey
                    stack.append((nxt, 0))
                    path.append(nxt)
            else:
                colour[node] = black
                stack.pop()
                path.pop()
    return None


def _task(raw: object, where: str, problems: list[Problem]) -> TaskDefinition | None:
    if not isinstance(raw, Mapping):
        problems.append(Problem(where, "a task must be a mapping (object)"))
        return None
    before = len(problems)
    ttype = raw.get("type", "shell")
    if not isinstance(ttype, str):
        ttype = repr(ttype)  # reported below as an unknown type
    own = _TYPE_FIELDS.get(ttype, frozenset())
    for key in raw:
        if key not in _TASK_FIELDS and key not in own and (
                ttype in CONTRACT_TYPES or not any(key in f for f in _TYPE_FIELDS.values())):
            other = [t for t, f in _TYPE_FIELDS.items() if key in f]
            problems.append(Problem(f"{where}.{key}", f"is a field of {other[0]} tasks" if other
                                    else "unknown field"))
    name = raw.get("name")
    if not isinstance(name, str) or not TASK_NAME_RE.match(name):
        problems.append(Problem(f"{where}.name", "required; letters, digits, '_', '-' or '.'"))
        name = ""
    if ttype not in CONTRACT_TYPES:
        problems.append(Problem(f"{where}.type",
                                f"unknown task type {ttype!r} "
                                f"(one of: {', '.join(sorted(CONTRACT_TYPES))})"))
    body = ""
    if ttype == "python" and "function" in raw:
        if "script" in raw:
            problems.append(Problem(f"{where}.function", "a python task has either a script "
                                                         "or a function, not both"))
    elif ttype in ("shell", "python"):
        body_key = "script" if ttype == "python" else "command"
        raw_body = raw.get(body_key)
        if isinstance(raw_body, str) and raw_body.strip():
            body = raw_body
        else:
            problems.append(Problem(f"{where}.{body_key}", f"required for a {ttype} task"
                                    + (" (or a function)" if ttype == "python" else "")))
    spec, outputs = _spec(str(ttype), raw, where, problems)
    deps_raw = raw.get("depends_on", [])
    deps: list[str] = []
    if not isinstance(deps_raw, list) or not all(isinstance(d, str) for d in deps_raw):
        problems.append(Problem(f"{where}.depends_on", "must be a list of task names"))
    else:
        for j, d in enumerate(deps_raw):
            if d == name:
                problems.append(Problem(f"{where}.depends_on[{j}]",
                                        f"cycle: task '{name}' depends on itself"))
            elif d in deps:
                problems.append(Problem(f"{where}.depends_on[{j}]", f"'{d}' listed twice"))
            else:
                deps.append(d)
    priority = _enum(Priority, raw.get("priority", "medium"), f"{where}.priority", problems,
                     Priority.MEDIUM)
    group = raw.get("worker_group")
    if group is not None and (not isinstance(group, str) or not group):
        problems.append(Problem(f"{where}.worker_group", "must be a non-empty string"))
        group = None
    env = _params(raw.get("env", {}), f"{where}.env", problems)
    local_types: dict[str, ParamType] = {}
    local = _params(raw.get("params", {}), f"{where}.params", problems, types=local_types)
    retries = raw.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 100:
        problems.append(Problem(f"{where}.retries", "must be an integer from 0 to 100"))
        retries = 0
    interval = _seconds(raw.get("retry_interval", 0), f"{where}.retry_interval", problems) or 0.0
    backoff = raw.get("retry_backoff", 1.0)
    if not isinstance(backoff, int | float) or isinstance(backoff, bool) or not 1 <= backoff <= 10:
        problems.append(Problem(f"{where}.retry_backoff", "must be a number from 1 to 10"))
        backoff = 1.0
    max_interval = _seconds(raw.get("max_retry_interval"), f"{where}.max_retry_interval",
                            problems, positive=True)
    timeout = _seconds(raw.get("timeout"), f"{where}.timeout", problems, positive=True)
    timeout_strategy = _enum(TimeoutStrategy, raw.get("timeout_strategy", "fail"),
                             f"{where}.timeout_strategy", problems, TimeoutStrategy.FAIL)
    delay = _seconds(raw.get("delay", 0), f"{where}.delay", problems) or 0.0
    disabled = raw.get("disabled", False)
    if not isinstance(disabled, bool):
        problems.append(Problem(f"{where}.disabled", "must be true or false"))
        disabled = False
    if len(problems) > before:
        return None
    return TaskDefinition(
        name=name,
        type=str(ttype),
        command=body,
        depends_on=tuple(deps),
        outputs=outputs,
        priority=priority,
        worker_group=group,
        env=env,
        description=str(raw.get("description", "") or ""),
        retry=RetryPolicy(retries=retries, interval=interval, backoff=float(backoff),
                          max_interval=max_interval),
        timeout=timeout,
        timeout_strategy=timeout_strategy,
        delay=delay,
        disabled=disabled,
        params=local, param_types=local_types,
        spec=spec,
    )


def _names(raw: object, where: str, problems: list[Problem], *, required: bool = False,
           pattern: re.Pattern[str] = TASK_NAME_RE) -> tuple[str, ...]:
    if raw is None and not required:
        return ()
    if not isinstance(raw, list) or not all(isinstance(x, str) and pattern.match(x)
                                            for x in raw) or (required and not raw):
        problems.append(Problem(where, "must be a " + ("non-empty " if required else "")
                                + "list of " + ("task" if pattern is TASK_NAME_RE
                                                 else "parameter") + " names"))
        return ()
    return tuple(dict.fromkeys(raw))


def _text(raw: Mapping[str, Any], key: str, where: str, problems: list[Problem], *,
          default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or (default is None and not value.strip()):
        problems.append(Problem(f"{where}.{key}", "required; a non-empty string"
                                if default is None else "must be a string"))
        return ""
    return value


def _spec(ttype: str, raw: Mapping[str, Any], where: str,
          problems: list[Problem]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The type's own fields, validated, and the task's declared outputs."""
    out_raw = raw.get("outputs")
    if ttype == "http":
        paths: dict[str, str] = {}
        if out_raw is not None:
            if not isinstance(out_raw, Mapping) or not all(
                    isinstance(k, str) and PARAM_NAME_RE.match(k) and isinstance(v, str)
                    for k, v in out_raw.items()):
                problems.append(Problem(f"{where}.outputs", "must map output names to JSON "
                                                            "paths, e.g. {ticket: '$.id'}"))
            else:
                for k, v in out_raw.items():
                    try:
                        jsonpath_check(v)
                    except ValueError as exc:
                        problems.append(Problem(f"{where}.outputs.{k}", str(exc)))
                paths = dict(out_raw)
        outputs: tuple[str, ...] = tuple(paths)
    else:
        outputs = _names(out_raw, f"{where}.outputs", problems, pattern=PARAM_NAME_RE)
    match ttype:
        case "sql":
            ds = raw.get("datasource", "default")
            if not isinstance(ds, str) or not ds:
                problems.append(Problem(f"{where}.datasource", "must be a datasource name"))
            return {"datasource": ds, "sql": _text(raw, "sql", where, problems)}, outputs
        case "http":
            method = raw.get("method", "GET")
            if method not in HTTP_METHODS:
                problems.append(Problem(f"{where}.method",
                                        f"must be one of {' | '.join(HTTP_METHODS)}"))
            url = _text(raw, "url", where, problems)
            headers = _params(raw.get("headers", {}), f"{where}.headers", problems,
                              names=re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z"))
            body = _text(raw, "body", where, problems, default="")
            status = raw.get("expected_status", [200])
            if isinstance(status, int):
                status = [status]
            if not isinstance(status, list) or not status or not all(
                    isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599
                    for c in status):
                problems.append(Problem(f"{where}.expected_status",
                                        "must be a list of HTTP status codes"))
                status = [200]
            return {"method": method, "url": url, "headers": headers, "body": body,
                    "expected_status": status, "output_paths": paths}, outputs
        case "conditions":
            if not raw.get("depends_on"):
                problems.append(Problem(f"{where}.depends_on", "a conditions task branches on "
                                        "the outcome of its predecessors: name at least one"))
            spec: dict[str, Any] = {k: _names(raw.get(k), f"{where}.{k}", problems)
                                    for k in ("on_success", "on_failure")}
            if not spec["on_success"] and not spec["on_failure"]:
                problems.append(Problem(where, "a conditions task needs on_success or "
                                               "on_failure"))
            if raw.get("condition") is not None:
                spec["condition"] = _condition(raw["condition"], raw.get("depends_on"),
                                               f"{where}.condition", problems)
            return spec, outputs
        case "switch":
            return _switch(raw, where, problems), outputs
        case "sub_workflow":
            wf = raw.get("workflow")
            if not isinstance(wf, str) or not NAME_RE.match(wf):
                problems.append(Problem(f"{where}.workflow", "required; a workflow name"))
            return {"workflow": wf}, outputs
        case "dependent":
            return _dependent(raw, where, problems), outputs
        case "python" if "function" in raw:
            return _function(raw, where, problems), outputs
        case "python" if "args" in raw:
            problems.append(Problem(f"{where}.args", "args are for a function; a script "
                                                     "reads params as ${name}"))
            return {}, outputs
        case _:
            return {}, outputs


def _condition(raw: object, deps: object, where: str,
               problems: list[Problem]) -> dict[str, Any] | None:
    """DolphinScheduler's conditions dependence: ``{relation: and|or, groups: [{relation,
    items: [{task, status: success|failure}]}]}`` over the task's predecessors."""
    shape = "must be {relation: and|or, groups: [{relation, items: [{task, status}]}]}"
    if not isinstance(raw, Mapping) or set(raw) - {"relation", "groups"} or not isinstance(
            raw.get("groups"), list) or not raw["groups"]:
        problems.append(Problem(where, shape))
        return None
    before = len(problems)
    preds = set(deps) if isinstance(deps, list) else set()
    relations = ("and", "or")
    if raw.get("relation", "and") not in relations:
        problems.append(Problem(f"{where}.relation", "must be and | or"))
    groups = []
    for i, g in enumerate(raw["groups"]):
        at = f"{where}.groups[{i}]"
        if not isinstance(g, Mapping) or set(g) - {"relation", "items"} or not isinstance(
                g.get("items"), list) or not g["items"] or g.get(
                    "relation", "and") not in relations:
            problems.append(Problem(at, shape))
            continue
        for j, item in enumerate(g["items"]):
            if not isinstance(item, Mapping) or set(item) != {"task", "status"} or item[
                    "status"] not in ("success", "failure"):
                problems.append(Problem(f"{at}.items[{j}]", "must be {task, status: success "
                                                            "| failure}"))
            elif item["task"] not in preds:
                problems.append(Problem(f"{at}.items[{j}].task", f"'{item['task']}' is not in "
                                        "depends_on (a condition reads its predecessors)"))
        groups.append({"relation": g.get("relation", "and"),
                       "items": [dict(x) for x in g["items"] if isinstance(x, Mapping)]})
    if len(problems) > before:
        return None
    return {"relation": raw.get("relation", "and"), "groups": groups}


def condition_holds(condition: Mapping[str, Any], outcome: Mapping[str, str | None]) -> bool:
    """Whether a condition holds, given each predecessor's outcome (``success``,
    ``failure`` or None when it did not run), as DolphinScheduler's conditions task
    combines its dependItemList statuses."""
    def group(g: Mapping[str, Any]) -> bool:
        hits = [outcome.get(i["task"]) == i["status"] for i in g["items"]]
        return any(hits) if g["relation"] == "or" else all(hits)

    results = [group(g) for g in condition["groups"]]
    return any(results) if condition["relation"] == "or" else all(results)


def _function(raw: Mapping[str, Any], where: str, problems: list[Problem]) -> dict[str, Any]:
    """``function: "pkg.module:callable"`` and its keyword ``args`` (any JSON values;
    strings expand ``${name}`` and ``$[...]`` at dispatch)."""
    fn = raw.get("function")
    if not isinstance(fn, str) or not FUNCTION_RE.match(fn):
        problems.append(Problem(f"{where}.function", "must be 'package.module:callable'"))
        fn = ""
    args = raw.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        problems.append(Problem(f"{where}.args", "must be a mapping of argument names to "
                                                 "values"))
        return {"function": fn, "args": {}}
    if len(args) > MAX_PARAMS:
        problems.append(Problem(f"{where}.args", f"{len(args)} entries; at most {MAX_PARAMS}"))
    for k, v in args.items():
        if not isinstance(k, str) or not ARG_NAME_RE.match(k):
            problems.append(Problem(f"{where}.args.{k}", "must be a Python identifier"))
        elif len(_json_text(v).encode()) > MAX_PARAM_BYTES:
            problems.append(Problem(f"{where}.args.{k}", f"larger than {MAX_PARAM_BYTES} bytes"))
    return {"function": fn, "args": dict(args)}


def _json_text(v: Any) -> str:
    """A rough size measure of a JSON value (no encoder in the core)."""
    if isinstance(v, Mapping):
        return "".join(str(k) + _json_text(x) for k, x in v.items())
    if isinstance(v, list | tuple):
        return "".join(_json_text(x) for x in v)
    return str(v)


def _arg_texts(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(path, text) of every string inside a function task's args."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _arg_texts(v, f"{path}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _arg_texts(v, f"{path}[{i}]")


def _switch(raw: Mapping[str, Any], where: str, problems: list[Problem]) -> dict[str, Any]:
    cases_raw = raw.get("cases")
    cases: list[dict[str, Any]] = []
    if not isinstance(cases_raw, list) or not cases_raw:
        problems.append(Problem(f"{where}.cases", "required; a list of {when, then}"))
        cases_raw = []
    for j, c in enumerate(cases_raw):
        at = f"{where}.cases[{j}]"
        if not isinstance(c, Mapping) or set(c) - {"when", "then"}:
            problems.append(Problem(at, "must be {when: EXPRESSION, then: [tasks]}"))
            continue
        when = c.get("when")
        if not isinstance(when, str) or not when.strip():
            problems.append(Problem(f"{at}.when", "required; an expression"))
            continue
        try:
            expr.parse(when)
        except expr.ExpressionInvalid as exc:
            problems.append(Problem(f"{at}.when", str(exc)))
            continue
        cases.append({"when": when, "then": _names(c.get("then"), f"{at}.then", problems,
                                                   required=True)})
    return {"cases": cases, "default": _names(raw.get("default"), f"{where}.default",
                                              problems)}


def _dependent(raw: Mapping[str, Any], where: str, problems: list[Problem]) -> dict[str, Any]:
    """``depends_on_workflow: {workflow, task, date}``, or a list of them: any one of the
    windows met is enough (DolphinScheduler's OR between dependent items)."""
    dep = raw.get("depends_on_workflow")
    at = f"{where}.depends_on_workflow"
    many = isinstance(dep, list) and 0 < len(dep) <= MAX_ALTERNATIVES
    alternatives = ([_window(d, f"{at}[{i}]", problems) for i, d in enumerate(dep)]
                    if many and isinstance(dep, list) else [_window(dep, at, problems)])
    interval = _seconds(raw.get("check_interval", 10), f"{where}.check_interval", problems,
                        positive=True)
    first = alternatives[0]
    return {**first, "check_interval": interval,
            **({"any_of": alternatives} if many else {})}


MAX_ALTERNATIVES = 64


def _window(dep: object, at: str, problems: list[Problem]) -> dict[str, Any]:
    if not isinstance(dep, Mapping) or set(dep) - {"workflow", "task", "date"}:
        problems.append(Problem(at, "required; {workflow, task, date} or a list of them "
                                    f"(any one met; at most {MAX_ALTERNATIVES})"))
        dep = {}
    wf = dep.get("workflow")
    if not isinstance(wf, str) or not NAME_RE.match(wf):
        problems.append(Problem(f"{at}.workflow", "required; a workflow name"))
    task = dep.get("task")
    if task is not None and (not isinstance(task, str) or not TASK_NAME_RE.match(task)):
        problems.append(Problem(f"{at}.task", "must be a task name or null"))
    date = dep.get("date") or "$[yyyyMMdd]"
    if not isinstance(date, str):
        problems.append(Problem(f"{at}.date", "must be a date expression such as "
                                              "$[yyyyMMdd-1]"))
        date = "$[yyyyMMdd]"
    return {"workflow": wf, "task": task, "date": date}


def jsonpath_check(path: str) -> None:
    """The core cannot import the jsonpath library: check the form only (``$`` first);
    the worker parses it fully and fails the task with the library's message."""
    if not path.startswith("$"):
        raise ValueError(f"JSON path {path!r} must start with '$'")


def _seconds(raw: object, where: str, problems: list[Problem], *,
             positive: bool = False) -> float | None:
    """A duration in seconds; None when absent."""
    if raw is None:
        return None
    if not isinstance(raw, int | float) or isinstance(raw, bool) or raw < 0 or (
            positive and raw == 0) or raw > 366 * 86400:
        problems.append(Problem(where, "must be a number of seconds"
                                + (" greater than 0" if positive else " (0 or more)")))
        return None
    return float(raw)


def param_problems(raw: Mapping[str, Any], where: str = "params") -> list[Problem]:
    """What is wrong with run parameters given to a start, schedule or backfill."""
    problems: list[Problem] = []
    _params(raw, where, problems)
    return problems


def _typed_out(params: Mapping[str, str], types: Mapping[str, ParamType]) -> dict[str, Any]:
    """Params in their written form: a typed one as ``{value, type, ...}``."""
    return {k: ({"value": v, **types[k].to_dict()} if k in types else v)
            for k, v in params.items()}


def _params(raw: object, where: str, problems: list[Problem],
            names: re.Pattern[str] = PARAM_NAME_RE,
            types: dict[str, ParamType] | None = None) -> dict[str, str]:
    """A mapping of names to scalar values; with ``types``, a value may also be a typed
    param ``{value, type, pattern?, values?}`` whose type goes into ``types``."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(Problem(where, "must be a mapping of names to values"))
        return {}
    if len(raw) > MAX_PARAMS:
        problems.append(Problem(where, f"{len(raw)} entries; at most {MAX_PARAMS}"))
        return {}
    out: dict[str, str] = {}
    for k, v in raw.items():
        if isinstance(v, str) and len(v.encode()) > MAX_PARAM_BYTES:
            problems.append(Problem(f"{where}.{k}", f"larger than {MAX_PARAM_BYTES} bytes"))
        elif not isinstance(k, str) or not names.match(k):
            problems.append(Problem(f"{where}.{k}", "invalid name"))
        elif types is not None and isinstance(v, Mapping):
            typed = parse_typed(v, f"{where}.{k}", problems)
            if typed is not None:
                out[k], types[k] = typed
        elif isinstance(v, Mapping | list):
            problems.append(Problem(f"{where}.{k}", "must be a scalar value"))
        else:
            out[k] = "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
    return out


def _alerts(raw: object, problems: list[Problem]) -> Mapping[str, tuple[str, ...]] | None:
    """``alerts: {on: [...], channels: [...]}``: which run outcomes alert which channels."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) - {"on", "channels"}:
        problems.append(Problem("alerts", "must be {on: [failure, success, timeout, "
                                          "failover], channels: [channel names]}"))
        return None
    on, channels = raw.get("on", ["failure"]), raw.get("channels")
    if not isinstance(on, list) or not on or any(e not in ALERT_EVENTS for e in on):
        problems.append(Problem("alerts.on", "a non-empty list of " + ", ".join(ALERT_EVENTS)))
        on = []
    if not isinstance(channels, list) or not channels or not all(
            isinstance(c, str) and NAME_RE.match(c) for c in channels):
        problems.append(Problem("alerts.channels", "a non-empty list of channel names "
                                                   "(SHOAL_ALERT_CHANNELS)"))
        channels = []
    return {"on": tuple(dict.fromkeys(on)), "channels": tuple(dict.fromkeys(channels))}


def _enum(cls: type[E], raw: Any, where: str, problems: list[Problem], default: E) -> E:
    try:
        return cls(raw)
    except ValueError:
        choices = " | ".join(m.value for m in cls)
        problems.append(Problem(where, f"must be one of {choices}, not {raw!r}"))
        return default


def _string(raw: object, where: str, problems: list[Problem]) -> str:
    if not isinstance(raw, str) or not raw:
        problems.append(Problem(where, "must be a non-empty string"))
        return ""
    return raw
