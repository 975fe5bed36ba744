"""Workflows written in Python (CONTRACT §7).

```python
from shoal.sdk import Workflow, shell, python

with Workflow("fibo-chain", params={"n": "10"}) as wf:
    a = shell("a", "echo '${setValue(x=1)}'", outputs=["x"])
    b = python("b", function="mypkg.tasks:fibo", args={"n": "${n}"}, outputs=["value"])
    a >> b
wf.to_dict()   # a §1 definition, checked by the same rules as YAML (DefinitionInvalid)
```

Builders create tasks inside the innermost open ``Workflow`` (or the one given as
``workflow=``); ``a >> b`` makes ``b`` depend on ``a``, and lists work on either side.
``to_dict`` holds only what was written, in the order the YAML would have it, so the
same workflow written as YAML and with the SDK gives equal mappings. ``shoal apply
FILE.py`` publishes every module-level ``Workflow`` of the file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from types import TracebackType
from typing import Any

from shoal.core.definition import WorkflowDefinition, parse_definition

__all__ = ["Task", "Workflow", "conditions", "dependent", "http", "param", "python", "shell",
           "sql", "sub_workflow", "switch", "workflows_in_file"]

# The `with Workflow(...)` blocks being executed (per thread and task), innermost last.
_open: ContextVar[tuple[Workflow, ...]] = ContextVar("shoal_sdk_open", default=())


def param(value: Any = "", type: str = "string", *,
          pattern: str | None = None, values: Sequence[Any] | None = None) -> dict[str, Any]:
    """A typed param, for ``params=`` of a workflow or a task: ``param("$[yyyyMMdd-1]",
    "date")``, ``param("eu", "enum", values=["eu", "us"])``, ``param("x", pattern="[a-z]+")``
    (types: string, int, float, bool, date, enum). Checked like YAML's ``{value, type}``."""
    out: dict[str, Any] = {"value": value, "type": type}
    if pattern is not None:
        out["pattern"] = pattern
    if values is not None:
        out["values"] = list(values)
    return out


class Task:
    """One task of a :class:`Workflow`; ``>>`` and ``<<`` add dependencies."""

    def __init__(self, workflow: Workflow, name: str, type_: str,
                 fields: Mapping[str, Any]) -> None:
        self.workflow = workflow
        self.name = name
        self.type = type_
        self.fields = {k: v for k, v in fields.items() if v is not None}
        given = self.fields.pop("depends_on", None) or ()
        self.depends_on: list[str] = []
        for dep in [given] if isinstance(given, str | Task) else given:
            self._add(dep.name if isinstance(dep, Task) else str(dep))

    def _add(self, upstream: str) -> None:
        if upstream not in self.depends_on:
            self.depends_on.append(upstream)

    def __rshift__(self, other: Task | Sequence[Task]) -> Task | Sequence[Task]:
        for t in _tasks(other):
            t._add(self.name)
        return other

    def __lshift__(self, other: Task | Sequence[Task]) -> Task | Sequence[Task]:
        for t in _tasks(other):
            self._add(t.name)
        return other

    def __rrshift__(self, other: Sequence[Task]) -> Task:  # [a, b] >> c
        for t in _tasks(other):
            self._add(t.name)
        return self

    def __rlshift__(self, other: Sequence[Task]) -> Task:  # [a, b] << c
        for t in _tasks(other):
            t._add(self.name)
        return self

    def __repr__(self) -> str:
        return f"Task({self.name!r}, type={self.type!r})"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        out.update(self.fields)
        if self.depends_on:
            out["depends_on"] = list(self.depends_on)
        return out


def _tasks(x: Task | Iterable[Task]) -> list[Task]:
    items = [x] if isinstance(x, Task) else list(x)
    for t in items:
        if not isinstance(t, Task):
            raise TypeError(f"dependencies are between tasks, not {type(t).__name__}")
    return items


class Workflow:
    """A workflow definition being written; the §1 workflow fields as keyword arguments."""

    def __init__(self, name: str, *, description: str | None = None,
                 params: Mapping[str, Any] | None = None, **fields: Any) -> None:
        self.name = name
        self.fields: dict[str, Any] = {k: v for k, v in
                                       {"description": description, "params": params,
                                        **fields}.items() if v is not None}
        self.tasks: list[Task] = []

    def __enter__(self) -> Workflow:
        _open.set((*_open.get(), self))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _open.set(tuple(w for w in _open.get() if w is not self))

    def add(self, name: str, type_: str, fields: Mapping[str, Any]) -> Task:
        if any(t.name == name for t in self.tasks):
            raise ValueError(f"workflow {self.name!r} already has a task named {name!r}")
        task = Task(self, name, type_, fields)
        self.tasks.append(task)
        return task

    def __getitem__(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)

    def to_dict(self, *, validate: bool = True) -> dict[str, Any]:
        """The §1 definition; raises :class:`~shoal.core.errors.DefinitionInvalid` naming
        every problem, exactly as the API would (unless ``validate=False``)."""
        raw = self._raw()
        if validate:
            parse_definition(raw)
        return raw

    def definition(self) -> WorkflowDefinition:
        """The validated definition (what the API stores)."""
        return parse_definition(self._raw())

    def _raw(self) -> dict[str, Any]:
        return {"name": self.name, **self.fields, "tasks": [t.to_dict() for t in self.tasks]}

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, tasks={[t.name for t in self.tasks]})"


def workflows_in_file(path: Path) -> list[Workflow]:
    """Run a Python file (its own directory importable, as for ``python FILE``) and
    return every module-level :class:`Workflow` in it, in the order they were defined."""
    import runpy

    sys.path.insert(0, str(path.resolve().parent))
    try:
        found = runpy.run_path(str(path), run_name="__shoal_apply__")
    finally:
        sys.path.pop(0)
    return [v for v in found.values() if isinstance(v, Workflow)]


def _target(workflow: Workflow | None) -> Workflow:
    if workflow is not None:
        return workflow
    current = _open.get()
    if not current:
        raise RuntimeError("create tasks inside `with Workflow(...):` or pass workflow=")
    return current[-1]


def _build(type_: str, name: str, into: Workflow | None, **fields: Any) -> Task:
    return _target(into).add(name, type_, {k: _plain(v) for k, v in fields.items()})


def _plain(v: Any) -> Any:
    """Tasks named where names are expected (branches, depends_on) become their names."""
    if isinstance(v, Task):
        return v.name
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def shell(name: str, command: str | None = None, *, workflow: Workflow | None = None,
          **fields: Any) -> Task:
    """A shell task: ``command`` runs in bash."""
    return _build("shell", name, workflow, command=command, **fields)


def python(name: str, script: str | None = None, *, function: str | None = None,
           args: Mapping[str, Any] | None = None, workflow: Workflow | None = None,
           **fields: Any) -> Task:
    """A python task: a ``script``, or ``function="pkg.module:callable"`` with ``args``."""
    return _build("python", name, workflow, script=script, function=function, args=args,
                  **fields)


def sql(name: str, sql: str | None = None, *, datasource: str | None = None,
        workflow: Workflow | None = None, **fields: Any) -> Task:
    return _build("sql", name, workflow, datasource=datasource, sql=sql, **fields)


def http(name: str, url: str | None = None, *, method: str | None = None,
         workflow: Workflow | None = None, **fields: Any) -> Task:
    return _build("http", name, workflow, method=method, url=url, **fields)


def sub_workflow(name: str, workflow_name: str | None = None, *,
                 workflow: Workflow | None = None, **fields: Any) -> Task:
    """Runs another workflow as this task: ``sub_workflow("child", "other-workflow")``.
    (``workflow=`` is the enclosing Workflow, as for every builder.)"""
    return _build("sub_workflow", name, workflow, workflow=workflow_name, **fields)


def dependent(name: str,
              depends_on_workflow: Mapping[str, Any] | list[Mapping[str, Any]] | None = None,
              *, workflow: Workflow | None = None, **fields: Any) -> Task:
    """A dependent task; ``depends_on_workflow`` a window, or a list: any one met."""
    return _build("dependent", name, workflow, depends_on_workflow=depends_on_workflow,
                  **fields)


def conditions(name: str, *, workflow: Workflow | None = None, **fields: Any) -> Task:
    return _build("conditions", name, workflow, **fields)


def switch(name: str, *, workflow: Workflow | None = None, **fields: Any) -> Task:
    return _build("switch", name, workflow, **fields)
