"""DolphinScheduler's Python SDK without a DolphinScheduler server.

The SDK (``apache-dolphinscheduler``) talks to DolphinScheduler's Java gateway; here the
gateway entry point's methods are replaced by a recorder that gives out codes and keeps
the body each ``workflow.submit()`` would send (its REST create-workflow form, plus the
``code`` the server would have answered), so the SDK's own examples become the JSON a
DolphinScheduler API receives.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest


def _code(*parts: str) -> int:
    """A stable 13-digit code (DolphinScheduler's codes are snowflake longs)."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return 1_000_000_000_000 + int(digest[:12], 16) % 9_000_000_000_000


class Recorder:
    """Stands in for ``pydolphinscheduler.java_gateway.gateway``'s methods."""

    def __init__(self) -> None:
        self.workflows: list[dict[str, Any]] = []
        self.started: list[str] = []

    # -- the gateway's methods the SDK calls ------------------------------------------
    def get_gateway_version(self) -> str:
        return "4.1.0"

    def create_or_grant_project(self, *args: Any) -> None:
        return None

    def create_tenant(self, name: str, *args: Any) -> Any:
        return SimpleNamespace(getId=lambda: 1, getTenantCode=lambda: name)

    def create_user(self, name: str, *args: Any) -> Any:
        return SimpleNamespace(getId=lambda: 1, getUserName=lambda: name)

    def query_environment_info(self, name: str) -> int:
        return _code("environment", name)

    def get_code_and_version(self, project: str, workflow: str, task: str) -> dict[str, int]:
        return {"code": _code("task", project, workflow, task), "version": 1}

    def get_workflow_info(self, user: str, project: str, name: str) -> dict[str, Any]:
        return {"id": 1, "name": name, "code": _code("workflow", project, name)}

    def get_dependent_info(self, project: str, workflow: str,
                           task: str | None = None) -> dict[str, Any]:
        return {"projectCode": _code("project", project),
                "workflowDefinitionCode": _code("workflow", project, workflow),
                "processDefinitionCode": _code("workflow", project, workflow),
                "taskDefinitionCode": _code("task", project, workflow, task) if task else 0}

    def get_datasource(self, name: str, type_: str | None = None) -> dict[str, Any]:
        return {"id": 1, "type": type_ or "POSTGRESQL", "name": name}

    def get_resources_file_info(self, program_type: str, main_package: str) -> dict[str, Any]:
        return {"id": 1, "name": main_package}

    def query_resources_file_info(self, user: str, name: str) -> dict[str, Any]:
        return {"id": 1, "name": name}

    def create_or_update_resource(self, *args: Any) -> None:
        return None

    def create_or_update_workflow(self, user: str, project: str, name: str, description: str,
                                  global_params: str, warning_type: str, warning_group_id: int,
                                  execution_type: str, timeout: int, worker_group: str,
                                  release_state: int, task_relation_json: str,
                                  task_definition_json: str, schedule: str | None = None,
                                  online_schedule: bool | None = None,
                                  other_params_json: str | None = None) -> int:
        code = _code("workflow", project, name)
        body: dict[str, Any] = {
            "code": code, "name": name, "description": description,
            "globalParams": global_params, "executionType": execution_type,
            "timeout": timeout, "taskRelationJson": task_relation_json,
            "taskDefinitionJson": task_definition_json}
        if schedule:
            body["schedule"] = schedule
        self.workflows = [w for w in self.workflows if w["name"] != name] + [body]
        return code

    def exec_workflow_instance(self, user: str, project: str, name: str, *args: Any) -> None:
        self.started.append(name)


GATEWAY_METHODS = [m for m in vars(Recorder) if not m.startswith("_")
                   and callable(getattr(Recorder, m))]


def record_examples(monkeypatch: pytest.MonkeyPatch,
                    modules: list[str]) -> tuple[Recorder, dict[str, str]]:
    """Import each SDK example module (which builds and submits its workflows) with the
    gateway recorded; the errors of the examples that cannot be built, by module."""
    from pydolphinscheduler import java_gateway

    rec = Recorder()
    for m in GATEWAY_METHODS:
        monkeypatch.setattr(java_gateway.gateway, m, getattr(rec, m))
    errors: dict[str, str] = {}
    for module in modules:
        name = f"pydolphinscheduler.examples.{module}"
        sys.modules.pop(name, None)
        try:
            mod = importlib.import_module(name)
            if hasattr(mod, "main"):
                mod.main()
        except Exception as exc:
            errors[module] = f"{type(exc).__name__}: {exc}"
    return rec, errors


def examples_dir() -> Path:
    import pydolphinscheduler.examples as ex

    return Path(ex.__file__).parent


def dump(rec: Recorder) -> str:
    return json.dumps(rec.workflows, indent=1)
