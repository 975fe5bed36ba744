"""A Shoal definition (its normalized form) → DolphinScheduler's UI export form. Pure.

The inverse of :mod:`shoal.core.dsimport` for what DolphinScheduler can express: importing
the export again gives the same definition. Codes are the ones the workflow was imported
with, else stable numbers derived from the names (so two exports agree).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from shoal.core.dsdependent import date_value


def stable_code(*parts: str) -> int:
    """A 13-digit code from names (DolphinScheduler's codes are 13-digit snowflakes)."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return 1_000_000_000_000 + int(digest[:12], 16) % 9_000_000_000_000


def _minutes(seconds: Any) -> int:
    return round(float(seconds) / 60) if seconds else 0


# A declared param's type → DolphinScheduler's DataType (enum and pattern have none: text).
_DATA_TYPES = {"int": "LONG", "float": "DOUBLE", "bool": "BOOLEAN", "date": "DATE"}


def _props(params: Mapping[str, Any], outputs: list[str] | None = None) -> list[dict[str, Any]]:
    out = [{"prop": k, "direct": "IN",
            "type": _DATA_TYPES.get(v.get("type", ""), "VARCHAR") if isinstance(v, Mapping)
            else "VARCHAR",
            "value": str(v.get("value", "")) if isinstance(v, Mapping) else str(v)}
           for k, v in params.items()]
    out += [{"prop": k, "direct": "OUT", "type": "VARCHAR", "value": ""}
            for k in outputs or ()]
    return out


def to_dolphinscheduler(d: Mapping[str, Any], *, code: int | None = None,
                        task_codes: Mapping[str, int] | None = None,
                        workflow_codes: Mapping[str, int] | None = None,
                        foreign_tasks: Mapping[str, Mapping[str, int]] | None = None,
                        schedule: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One export item: ``{workflowDefinition, taskDefinitionList,
    workflowTaskRelationList, schedule}``. ``workflow_codes``: the codes of other workflows
    (sub-workflow and dependent targets); ``foreign_tasks``: their tasks' codes."""
    name = d["name"]
    wf_code = code or stable_code("workflow", name)
    codes = {t["name"]: (task_codes or {}).get(t["name"]) or stable_code("task", name, t["name"])
             for t in d["tasks"]}
    others = dict(workflow_codes or {})

    def other(wf: str) -> int:
        return others.get(wf) or stable_code("workflow", wf)

    tasks, rels = [], []
    for t in d["tasks"]:
        params: dict[str, Any] = {"localParams": _props(t.get("params") or {}, list(
            t.get("outputs") or []) if t["type"] in ("shell", "python", "sql") else None),
            "resourceList": []}
        match t["type"]:
            case "shell":
                params["rawScript"] = t["command"]
            case "python":
                params["rawScript"] = t.get("script", "")
            case "sql":
                params |= {"type": "POSTGRESQL", "datasource": t["datasource"],
                           "sql": t["sql"], "sqlType": 1, "preStatements": [],
                           "postStatements": []}
            case "http":
                params |= {"url": t["url"], "httpRequestMethod": t["method"],
                           "httpRequestParams": [
                               {"prop": k, "httpParametersType": "HEADERS", "value": v}
                               for k, v in (t.get("headers") or {}).items()],
                           "httpRequestBody": t.get("body") or "",
                           "httpCheckCondition": "STATUS_CODE_CUSTOM",
                           "condition": ",".join(str(s) for s in t.get("expected_status")
                                                 or [200])}
            case "sub_workflow":
                params["workflowDefinitionCode"] = other(t["workflow"])
            case "switch":
                params["switchResult"] = {
                    "dependTaskList": [{"condition": c["when"], "nextNode": codes[c["then"][0]]}
                                       for c in t["cases"] if c["then"]],
                    "nextNode": codes[t["default"][0]] if t.get("default") else None}
            case "conditions":
                params["conditionResult"] = {
                    "successNode": [codes[n] for n in t.get("on_success") or ()],
                    "failedNode": [codes[n] for n in t.get("on_failure") or ()]}
                cond: Mapping[str, Any] | None = t.get("condition")
                groups: list[Mapping[str, Any]] = cond["groups"] if cond else [
                    {"relation": "and", "items": [{"task": p, "status": "success"}
                                                  for p in t.get("depends_on") or ()]}]
                params["dependence"] = {
                    "relation": (cond or {}).get("relation", "and").upper(),
                    "dependTaskList": [{"relation": g["relation"].upper(), "dependItemList": [
                        {"depTaskCode": codes[i["task"]], "status": i["status"].upper()}
                        for i in g["items"]]} for g in groups]}
            case "dependent":
                deps = t["depends_on_workflow"]
                alternatives = deps if isinstance(deps, list) else [deps]
                params["dependence"] = {
                    "relation": "AND", "checkInterval": int(t.get("check_interval") or 10),
                    "failurePolicy": "DEPENDENT_FAILURE_WAITING",
                    "dependTaskList": [{"relation": "OR" if len(alternatives) > 1 else "AND",
                                        "dependItemList": [
                                            _item(a, other, foreign_tasks or {})
                                            for a in alternatives]}]}
        timeout = _minutes(t.get("timeout"))
        tasks.append({
            "code": codes[t["name"]], "name": t["name"], "version": 1,
            "description": t.get("description") or "", "taskType": _TYPES[t["type"]],
            "taskParams": params, "flag": "NO" if t.get("disabled") else "YES",
            "taskPriority": str(t.get("priority") or "medium").upper(),
            "workerGroup": t.get("worker_group") or d.get("worker_group") or "default",
            "environmentCode": -1, "failRetryTimes": int(t.get("retries") or 0),
            "failRetryInterval": _minutes(t.get("retry_interval")),
            "timeoutFlag": "OPEN" if timeout else "CLOSE",
            "timeoutNotifyStrategy": ("WARN" if t.get("timeout_strategy") == "warn"
                                      else "FAILED") if timeout else None,
            "timeout": timeout, "delayTime": _minutes(t.get("delay")), "taskGroupId": 0,
            "cpuQuota": -1, "memoryMax": -1, "isCache": "NO", "taskExecuteType": "BATCH"})
        deps = t.get("depends_on") or []
        rels += [{"preTaskCode": codes[p], "postTaskCode": codes[t["name"]],
                  "preTaskVersion": 1, "postTaskVersion": 1, "conditionType": "NONE",
                  "conditionParams": {}} for p in deps]
        if not deps:
            rels.append({"preTaskCode": 0, "postTaskCode": codes[t["name"]], "preTaskVersion": 0,
                         "postTaskVersion": 1, "conditionType": "NONE", "conditionParams": {}})
    head = {"code": wf_code, "name": name, "version": 1,
            "description": d.get("description") or "",
            "globalParams": json.dumps(_props(d.get("params") or {})),
            "timeout": _minutes(d.get("timeout")),
            "executionType": str(d.get("execution") or "parallel").upper(),
            "releaseState": "ONLINE", "flag": "YES"}
    sched = None
    if schedule:
        sched = {"workflowDefinitionCode": wf_code, "crontab": schedule["cron"],
                 "timezoneId": schedule.get("timezone") or "UTC",
                 "startTime": (schedule.get("start") or "1970-01-01T00:00:00")[:19]
                 .replace("T", " "),
                 "endTime": (schedule.get("end") or "9999-12-31T23:59:59")[:19]
                 .replace("T", " "),
                 "releaseState": "ONLINE" if schedule.get("enabled") else "OFFLINE"}
    return {"workflowDefinition": head, "taskDefinitionList": tasks,
            "workflowTaskRelationList": rels, "schedule": sched}


def _item(window: Mapping[str, Any], code_of: Any,
          foreign: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """One dependItem for a window ``{workflow, task, date}``."""
    target, task = window["workflow"], window.get("task")
    return {"projectCode": 0, "definitionCode": code_of(target),
            "depTaskCode": (foreign.get(target, {}).get(task) or stable_code("task", target, task))
            if task else 0,
            "cycle": "day", "dateValue": date_value(window.get("date") or "$[yyyyMMdd]")}


_TYPES = {"shell": "SHELL", "python": "PYTHON", "sql": "SQL", "http": "HTTP",
          "conditions": "CONDITIONS", "switch": "SWITCH", "sub_workflow": "SUB_WORKFLOW",
          "dependent": "DEPENDENT"}
