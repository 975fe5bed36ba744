"""Where function tasks' modules are: looked up on SHOAL_CODE_PATH without importing.

The API has no business running user code, so it only asks the import system's path
finder whether each module of ``function: "pkg.module:callable"`` exists under the
directories it can see. A missing module is a warning, not a refusal: workers may have
code the API does not (installed packages, another machine's SHOAL_CODE_PATH).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.machinery import PathFinder

from shoal.core.definition import WorkflowDefinition
from shoal.core.errors import Problem


def module_found(module: str, paths: Sequence[str]) -> bool:
    """Whether ``module`` (dotted) is found under ``paths``, package by package."""
    search: list[str] | None = list(paths)
    for part in module.split("."):
        if search is None:
            return False  # a plain module has no submodules
        spec = PathFinder.find_spec(part, search)
        if spec is None:
            return False
        locations = spec.submodule_search_locations
        search = list(locations) if locations is not None else None
    return True


def function_warnings(definition: WorkflowDefinition, paths: Sequence[str]) -> list[Problem]:
    """A warning for every function task whose module is not under ``paths`` (none when
    no code path is configured here)."""
    if not paths:
        return []
    out = []
    for i, t in enumerate(definition.tasks):
        fn = t.spec.get("function") if t.type == "python" else None
        if fn and not module_found(fn.partition(":")[0], paths):
            out.append(Problem(f"tasks[{i}].function",
                               f"module '{fn.partition(':')[0]}' is not under SHOAL_CODE_PATH "
                               f"({':'.join(paths)}); workers must have it"))
    return out
