"""Workflow definitions: parse a plain mapping, validate it, name every problem's place.

Input is what YAML or JSON decoding produced (``dict``/``list``/scalars); output is a
frozen :class:`WorkflowDefinition` or :class:`DefinitionInvalid` listing all problems at
once, so a user fixes a file in one round trip instead of one error at a time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from shoal.core.errors import DefinitionInvalid, Problem
from shoal.core.timeexpr import TimeExpressionInvalid, expand_time

E = TypeVar("E", bound=StrEnum)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
TASK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
PARAM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


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


# Task types the contract names. Those this release executes are EXECUTABLE; the others
# are refused with a message saying so rather than accepted and silently not honoured.
EXECUTABLE_TYPES = frozenset({"shell", "python"})
CONTRACT_TYPES = frozenset(
    {"shell", "python", "sql", "http", "sub_workflow", "dependent", "conditions", "switch"}
)

_WORKFLOW_FIELDS = frozenset(
    {"name", "description", "params", "failure_strategy", "priority", "worker_group", "tasks",
     "timeout", "timeout_strategy", "execution"}
)
_WORKFLOW_LATER = frozenset({"schedule"})
_TASK_FIELDS = frozenset(
    {
        "name", "type", "command", "script", "depends_on", "outputs", "priority",
        "worker_group", "env", "description", "retries", "retry_interval", "retry_backoff",
        "max_retry_interval", "timeout", "timeout_strategy", "delay", "disabled",
    }
)
_TASK_LATER: frozenset[str] = frozenset()


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


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkflowDefinition:
    """A validated workflow: tasks in definition order, dependencies known to be acyclic."""

    name: str
    tasks: tuple[TaskDefinition, ...]
    description: str = ""
    params: Mapping[str, str] = field(default_factory=dict)
    failure_strategy: FailureStrategy = FailureStrategy.END
    priority: Priority = Priority.MEDIUM
    worker_group: str = "default"
    timeout: float | None = None
    timeout_strategy: TimeoutStrategy = TimeoutStrategy.FAIL
    execution: Execution = Execution.PARALLEL

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
            "params": dict(self.params),
            "failure_strategy": self.failure_strategy.value,
            "priority": self.priority.value,
            "worker_group": self.worker_group,
            "timeout": self.timeout,
            "timeout_strategy": self.timeout_strategy.value,
            "execution": self.execution.value,
            "tasks": [
                {
                    "name": t.name,
                    "type": t.type,
                    ("script" if t.type == "python" else "command"): t.command,
                    "depends_on": list(t.depends_on),
                    "outputs": list(t.outputs),
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


def _check_time_expressions(params: Mapping[str, str], tasks: Sequence[TaskDefinition],
                            problems: list[Problem]) -> None:
    """Every ``$[...]`` must evaluate (at an arbitrary instant: only its form matters)."""
    sample = datetime(2000, 1, 31, 12)  # noqa: DTZ001 - a fixed sample, not a clock read
    places = [(f"params.{k}", v) for k, v in params.items()]
    for i, t in enumerate(tasks):
        places.append((f"tasks[{i}].{'script' if t.type == 'python' else 'command'}",
                       t.command))
        places += [(f"tasks[{i}].env.{k}", v) for k, v in t.env.items()]
    for path, text in places:
        try:
            expand_time(text, sample)
        except TimeExpressionInvalid as exc:
            problems.append(Problem(path, str(exc)))


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

    params = _params(raw.get("params", {}), "params", problems)
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

    declared = {t.get("name") for t in raw_tasks if isinstance(t, Mapping)}
    for i, task in enumerate(raw_tasks):
        deps = task.get("depends_on", []) if isinstance(task, Mapping) else []
        for j, dep in enumerate(deps if isinstance(deps, list) else []):
            if isinstance(dep, str) and dep not in declared:
                problems.append(Problem(f"tasks[{i}].depends_on[{j}]", f"unknown task '{dep}'"))

    _check_time_expressions(params, tasks, problems)
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
        params=params,
        failure_strategy=failure,
        priority=priority,
        worker_group=worker_group or "default",
        timeout=wf_timeout,
        timeout_strategy=wf_timeout_strategy,
        execution=execution,
    )


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
    if ttype in CONTRACT_TYPES and ttype not in EXECUTABLE_TYPES:
        # Its own fields are not known to this release: one clear message, not a list.
        problems.append(Problem(f"{where}.type",
                                f"task type {ttype!r} is not supported yet by this release "
                                f"(supported: {', '.join(sorted(EXECUTABLE_TYPES))})"))
        return None
    for key in raw:
        if key in _TASK_LATER:
            problems.append(Problem(f"{where}.{key}", "is not supported yet by this release"))
        elif key not in _TASK_FIELDS:
            problems.append(Problem(f"{where}.{key}", "unknown field"))
    name = raw.get("name")
    if not isinstance(name, str) or not TASK_NAME_RE.match(name):
        problems.append(Problem(f"{where}.name", "required; letters, digits, '_', '-' or '.'"))
        name = ""
    if ttype not in CONTRACT_TYPES:
        problems.append(Problem(f"{where}.type",
                                f"unknown task type {ttype!r} "
                                f"(one of: {', '.join(sorted(CONTRACT_TYPES))})"))
    body_key = "script" if ttype == "python" else "command"
    body = raw.get(body_key)
    if not isinstance(body, str) or not body.strip():
        problems.append(Problem(f"{where}.{body_key}", f"required for a {ttype} task"))
        body = ""
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
    outputs_raw = raw.get("outputs", [])
    if not isinstance(outputs_raw, list) or not all(
        isinstance(o, str) and PARAM_NAME_RE.match(o) for o in outputs_raw
    ):
        problems.append(Problem(f"{where}.outputs", "must be a list of parameter names"))
        outputs_raw = []
    priority = _enum(Priority, raw.get("priority", "medium"), f"{where}.priority", problems,
                     Priority.MEDIUM)
    group = raw.get("worker_group")
    if group is not None and (not isinstance(group, str) or not group):
        problems.append(Problem(f"{where}.worker_group", "must be a non-empty string"))
        group = None
    env = _params(raw.get("env", {}), f"{where}.env", problems)
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
        outputs=tuple(outputs_raw),
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
    )


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


def _params(raw: object, where: str, problems: list[Problem]) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(Problem(where, "must be a mapping of names to values"))
        return {}
    out: dict[str, str] = {}
    for k, v in raw.items():
        if not isinstance(k, str) or not PARAM_NAME_RE.match(k):
            problems.append(Problem(f"{where}.{k}", "invalid name"))
        elif isinstance(v, Mapping | list):
            problems.append(Problem(f"{where}.{k}", "must be a scalar value"))
        else:
            out[k] = "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
    return out


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
