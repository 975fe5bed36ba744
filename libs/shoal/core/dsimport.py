"""DolphinScheduler workflow definitions → Shoal definitions (CONTRACT §1). Pure.

Input is what DolphinScheduler itself produces or accepts, already JSON-decoded:

* its REST create-workflow body (``name``, ``description``, ``globalParams``,
  ``executionType``, ``timeout``, ``taskDefinitionJson``, ``taskRelationJson``; the last two
  a list or a string holding one, as its form fields are), optionally with the ``code`` the
  server gave the workflow and a ``schedule``;
* its UI export file: a list of ``{workflowDefinition | processDefinition,
  taskDefinitionList, workflowTaskRelationList | processTaskRelationList, schedule}``.

:func:`convert` returns the Shoal definitions (in an order where every sub-workflow comes
before the workflows that start it), the warnings (what was dropped or approximated) and,
per workflow, the code mapping kept for later imports; or raises :class:`ImportRefused`
naming every task of a type Shoal does not run and every reference it cannot resolve —
nothing is half-imported. Field by field reference: DolphinScheduler's task plugins'
parameter classes (``ShellParameters``, ``SqlParameters``, ``HttpParameters``,
``ConditionsParameters``, ``SwitchParameters``, ``SubWorkflowParameters``,
``DependentParameters``), ``Property`` and ``DependentDateUtils``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.core.definition import NAME_RE, PARAM_NAME_RE, TASK_NAME_RE
from shoal.core.dsdependent import (
    MAX_ALTERNATIVES,
    MAX_CLAUSES,
    Clauses,
    all_of,
    combine,
    date_expressions,
)
from shoal.core.paramtypes import ParamType, value_error

SUPPORTED = {"SHELL": "shell", "PYTHON": "python", "SQL": "sql", "HTTP": "http",
             "CONDITIONS": "conditions", "SWITCH": "switch", "SUB_PROCESS": "sub_workflow",
             "SUB_WORKFLOW": "sub_workflow", "DEPENDENT": "dependent"}
PRIORITIES = ("HIGHEST", "HIGH", "MEDIUM", "LOW", "LOWEST")
EXECUTIONS = ("PARALLEL", "SERIAL_WAIT", "SERIAL_DISCARD", "SERIAL_PRIORITY")
# DolphinScheduler's DataType → the type of a declared param (CONTRACT §1); FILE has none.
PARAM_TYPES = {"VARCHAR": "string", "INTEGER": "int", "LONG": "int", "FLOAT": "float",
               "DOUBLE": "float", "DATE": "date", "TIME": "string", "TIMESTAMP": "string",
               "BOOLEAN": "bool", "LIST": "string"}
class ImportRefused(ValueError):
    """The request cannot be imported; ``problems`` name each place and why."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p['path']}: {p['message']}" if p["path"] else
                                   p["message"] for p in problems)
                         + (f" (Shoal runs {', '.join(sorted(SUPPORTED))})"
                            if any(p.get("type") in (None, "") or p.get("type") not in SUPPORTED
                                   for p in problems if "type" in p) else ""))


@dataclass(frozen=True, slots=True)
class Known:
    """A workflow imported earlier: its Shoal name and its tasks' codes."""

    name: str
    tasks: Mapping[int, str] = field(default_factory=dict)


@dataclass(slots=True)
class Imported:
    """One converted workflow."""

    definition: dict[str, Any]
    source_name: str
    source_code: int | None
    task_codes: dict[int, str]
    schedule: dict[str, Any] | None = None


@dataclass(slots=True)
class Conversion:
    workflows: list[Imported]
    warnings: list[str]


# ------------------------------------------------------------------------------ names


def workflow_name(source: str, taken: set[str]) -> str:
    """A Shoal workflow name for DolphinScheduler's ``source`` (any text): lower case,
    other characters as ``-``, unique among ``taken`` (which it joins)."""
    base = re.sub(r"[^a-z0-9_-]+", "-", source.strip().lower()).strip("-_") or "workflow"
    if not NAME_RE.match(base):
        base = f"w{base}"
    return _unique(base[:100], taken)


def task_name(source: str, taken: set[str]) -> str:
    """A Shoal task name for ``source``: letters, digits, ``_ . -``; unique in ``taken``."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", source.strip()).strip("-_.") or "task"
    if not TASK_NAME_RE.match(base):
        base = f"t{base}"
    return _unique(base[:100], taken)


def _unique(base: str, taken: set[str]) -> str:
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    taken.add(name)
    return name


# ------------------------------------------------------------------------------ input forms


@dataclass(slots=True)
class _Source:
    """One DolphinScheduler workflow, whatever form it came in."""

    where: str
    name: str
    code: int | None
    head: Mapping[str, Any]
    tasks: list[Mapping[str, Any]]
    relations: list[Mapping[str, Any]]
    schedule: Mapping[str, Any] | None


def _json_list(value: Any, where: str, problems: list[dict[str, Any]]) -> list[Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except ValueError as exc:
            problems.append(_problem(where, f"is not JSON: {exc}"))
            return []
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(_problem(where, "must be a list"))
        return []
    return value


def _json_obj(value: Any) -> Mapping[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError:
            return {}
    return value if isinstance(value, Mapping) else {}


def _code_of(value: Any) -> int | None:
    """A code (DolphinScheduler's are positive longs); anything else is no code."""
    try:
        code = int(value) if value not in (None, "") and not isinstance(value, bool) else None
    except (TypeError, ValueError, OverflowError):
        return None
    return code if code is not None and 0 <= code < 2**63 else None


def sources(raw: Any) -> tuple[list[_Source], list[dict[str, Any]]]:
    """The workflows of a request body (one workflow or a list, either form)."""
    problems: list[dict[str, Any]] = []
    items = raw if isinstance(raw, list) else [raw]
    out: list[_Source] = []
    for i, item in enumerate(items):
        where = f"[{i}]" if isinstance(raw, list) else ""
        if not isinstance(item, Mapping):
            problems.append(_problem(where, "a workflow must be an object"))
            continue
        head = item.get("workflowDefinition") or item.get("processDefinition")
        if isinstance(head, Mapping):  # the UI export form
            tasks = _json_list(item.get("taskDefinitionList"), f"{where}.taskDefinitionList",
                               problems)
            rels = _json_list(item.get("workflowTaskRelationList")
                              or item.get("processTaskRelationList"),
                              f"{where}.workflowTaskRelationList", problems)
            schedule = item.get("schedule")
        else:  # the REST create-workflow body
            head = item
            tasks = _json_list(item.get("taskDefinitionJson"), f"{where}.taskDefinitionJson",
                               problems)
            rels = _json_list(item.get("taskRelationJson"), f"{where}.taskRelationJson",
                              problems)
            schedule = item.get("schedule")
        name = head.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append(_problem(f"{where}.name", "a workflow needs a name"))
            continue
        if not tasks:
            problems.append(_problem(where, f"workflow '{name}' has no task definitions"))
        out.append(_Source(where=name, name=name, code=_code_of(head.get("code")),
                           head=head, tasks=[t for t in tasks if isinstance(t, Mapping)],
                           relations=[r for r in rels if isinstance(r, Mapping)],
                           schedule=_json_obj(schedule) or None))
    return out, problems


def _problem(where: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"path": where, "message": message, **extra}


# ------------------------------------------------------------------------------ convert


def convert(raw: Any, known: Mapping[int, Known] | None = None, *,
            taken: set[str] | None = None, names: Mapping[int, str] | None = None,
            datasources: Mapping[str, str] | None = None) -> Conversion:
    """Convert a request body; raise :class:`ImportRefused` with every problem found.

    ``known``: workflows imported earlier, by DolphinScheduler code (references resolve
    against them). ``taken``: Shoal workflow names already used by other workflows (a new
    name avoids them). ``names``: the Shoal name already given to a code (re-imports keep
    it). ``datasources``: DolphinScheduler datasource id → Shoal datasource name."""
    known = dict(known or {})
    srcs, problems = sources(raw)
    used = set(taken or ())
    names = dict(names or {})
    # Names first, so references between the request's workflows resolve.
    mapped: list[str] = []
    for s in srcs:
        given = names.get(s.code) if s.code is not None else None
        if given is not None:
            used.add(given)
            mapped.append(given)
        else:
            mapped.append(workflow_name(s.name, used))
    wf_codes: dict[int, Known] = dict(known)
    task_maps: list[dict[int, str]] = []
    for s, name in zip(srcs, mapped, strict=True):
        tmap: dict[int, str] = {}
        tnames: set[str] = set()
        for t in s.tasks:
            code = _code_of(t.get("code"))
            tname = task_name(str(t.get("name") or code or "task"), tnames)
            if code is not None:
                tmap[code] = tname
        task_maps.append(tmap)
        if s.code is not None:
            wf_codes[s.code] = Known(name=name, tasks=tmap)
    warnings: list[str] = []
    out: list[Imported] = []
    for s, name, tmap in zip(srcs, mapped, task_maps, strict=True):
        conv = _Workflow(s, name, tmap, wf_codes, problems, warnings,
                         dict(datasources or {}))
        definition = conv.definition()
        schedule = _schedule(s.schedule, s.where, warnings) if s.schedule else None
        if s.name != name:
            warnings.append(f"workflow '{s.name}' is named '{name}' in Shoal")
        renamed = [f"'{t.get('name')}' -> '{tmap[c]}'" for t in s.tasks
                   if (c := _code_of(t.get("code"))) in tmap and t.get("name") != tmap[c]]
        if renamed:
            warnings.append(f"{s.name}: tasks renamed to Shoal's name rules: "
                            + ", ".join(renamed))
        out.append(Imported(definition=definition, source_name=s.name, source_code=s.code,
                            task_codes=conv.task_codes, schedule=schedule))
    if problems:
        raise ImportRefused(problems)
    return Conversion(workflows=_publish_order(out), warnings=warnings)


def _publish_order(items: list[Imported]) -> list[Imported]:
    """Sub-workflows before the workflows that start them (a cycle keeps input order;
    publishing then names it)."""
    by_name = {i.definition["name"]: i for i in items}
    done: list[Imported] = []
    seen: set[str] = set()

    def visit(item: Imported, path: tuple[str, ...]) -> None:
        name = item.definition["name"]
        if name in seen or name in path:
            return
        for t in item.definition["tasks"]:
            child = by_name.get(t.get("workflow", "")) if t["type"] == "sub_workflow" else None
            if child is not None:
                visit(child, (*path, name))
        seen.add(name)
        done.append(item)

    for item in items:
        visit(item, ())
    return done


def _schedule(raw: Mapping[str, Any], where: str, warnings: list[str]) -> dict[str, Any] | None:
    cron = raw.get("crontab")
    if not isinstance(cron, str) or not cron.strip():
        warnings.append(f"{where}: schedule without a crontab, not imported")
        return None
    out: dict[str, Any] = {"cron": cron.strip(), "timezone": raw.get("timezoneId") or "UTC"}
    for key, ours in (("startTime", "start"), ("endTime", "end")):
        value = raw.get(key)
        if isinstance(value, str) and value.strip() and not value.startswith("9999"):
            out[ours] = value.strip().replace(" ", "T")
    for key in ("failureStrategy", "warningType", "warningGroupId", "workerGroup",
                "environmentCode", "workflowInstancePriority", "processInstancePriority"):
        value = raw.get(key)
        if value not in (None, "", 0, -1, "NONE", "CONTINUE", "END", "MEDIUM", "default"):
            warnings.append(f"{where}: schedule {key}={value!r} is not imported")
    return out


class _Workflow:
    """One workflow's conversion."""

    def __init__(self, s: _Source, name: str, tmap: dict[int, str],
                 codes: Mapping[int, Known], problems: list[dict[str, Any]],
                 warnings: list[str], datasources: dict[str, str]) -> None:
        self.s, self.name, self.tmap, self.codes = s, name, tmap, codes
        self.problems, self.warnings, self.datasources = problems, warnings, datasources
        self.task_codes: dict[int, str] = dict(tmap)
        self.extra: list[dict[str, Any]] = []       # tasks added (dependent windows)
        self.fanout: dict[str, list[str]] = {}      # a task's name -> names standing for it

    def warn(self, where: str, message: str) -> None:
        self.warnings.append(f"{self.s.name}: {where}: {message}")

    def refuse(self, where: str, message: str, **extra: Any) -> None:
        self.problems.append(_problem(f"{self.s.where}.{where}" if where else self.s.where,
                                      message, workflow=self.s.name, **extra))

    def definition(self) -> dict[str, Any]:
        h = self.s.head
        out: dict[str, Any] = {"name": self.name}
        if h.get("description"):
            out["description"] = str(h["description"])
        params = self.properties(h.get("globalParams"), "globalParams", is_global=True)[0]
        if params:
            out["params"] = params
        timeout = _number(h.get("timeout"))
        if timeout:
            out["timeout"] = timeout * 60
        execution = str(h.get("executionType") or "PARALLEL").upper()
        if execution in EXECUTIONS:
            out["execution"] = execution.lower()
        else:
            self.warn("executionType", f"{execution!r} unknown, runs parallel")
        tasks = [t for t in (self.task(t) for t in self.s.tasks) if t is not None]
        self.edges(tasks)
        out["tasks"] = tasks + self.extra
        return out

    # -- params ----------------------------------------------------------------------
    def properties(self, raw: Any, where: str, *,
                   is_global: bool = False) -> tuple[dict[str, Any], list[str]]:
        """``[{prop, direct, type, value}]`` → IN params and OUT names. An IN param of a
        type other than text becomes a typed param (``{value, type}``) when its value is of
        that type or refers to other params or time expressions; otherwise it stays text,
        with a warning (DolphinScheduler does not check a default against its type)."""
        ins: dict[str, Any] = {}
        outs: list[str] = []
        for i, p in enumerate(_json_list(raw, where, self.problems)):
            if not isinstance(p, Mapping) or not isinstance(p.get("prop"), str):
                continue
            prop, direct = p["prop"], str(p.get("direct") or "IN").upper()
            dtype = str(p.get("type") or "VARCHAR").upper()
            if dtype == "FILE":
                self.refuse(f"{where}[{i}]", f"param '{prop}' has type FILE: Shoal passes no "
                                             "files between tasks", type="FILE")
                continue
            if dtype not in PARAM_TYPES:
                self.warn(f"{where}[{i}]", f"param '{prop}' type {dtype} taken as text")
            if not PARAM_NAME_RE.match(prop):
                self.refuse(f"{where}[{i}]", f"param name {prop!r} is not valid in Shoal")
                continue
            if direct == "OUT":
                if is_global:
                    self.warn(f"{where}[{i}]", f"global OUT param '{prop}' ignored")
                else:
                    outs.append(prop)
                continue
            value = p.get("value")
            text = ("" if value is None else
                    str(value).lower() if isinstance(value, bool) else str(value))
            ptype = PARAM_TYPES.get(dtype, "string")
            if ptype == "string":
                ins[prop] = text
            elif "${" in text or "$[" in text or value_error(ParamType(type=ptype), text) is None:
                ins[prop] = {"value": text, "type": ptype}
            else:
                self.warn(f"{where}[{i}]", f"param '{prop}' of type {dtype} has the value "
                                           f"{text!r}, not a {ptype}: taken as text")
                ins[prop] = text
        return ins, outs

    # -- one task ----------------------------------------------------------------------
    def task(self, t: Mapping[str, Any]) -> dict[str, Any] | None:
        code = _code_of(t.get("code"))
        name = self.tmap.get(code) if code is not None else None
        ttype = str(t.get("taskType") or "").upper()
        where = f"tasks[{name or t.get('name')}]"
        if ttype not in SUPPORTED:
            self.refuse(where, f"task '{t.get('name')}' has type {ttype or '?'}, which "
                               "Shoal does not run", task=t.get("name"), type=ttype)
            return None
        if name is None:
            self.refuse(where, "task without a code")
            return None
        params = _json_obj(t.get("taskParams"))
        ins, outs = self.properties(params.get("localParams"), f"{where}.localParams")
        out: dict[str, Any] = {"name": name, "type": SUPPORTED[ttype]}
        if t.get("description"):
            out["description"] = str(t["description"])
        self.common(t, out, where)
        if ins:
            out["params"] = ins
        if outs and ttype in ("SHELL", "PYTHON", "SQL"):
            out["outputs"] = outs
        elif outs:
            self.warn(where, f"OUT params {outs} of a {ttype} task are not produced in Shoal")
        getattr(self, f"t_{SUPPORTED[ttype]}")(params, out, where)
        for key in ("resourceList",):
            if params.get(key):
                self.warn(where, f"{key} dropped: Shoal tasks get no DolphinScheduler "
                                 "resources (put files on the workers)")
        return out

    def common(self, t: Mapping[str, Any], out: dict[str, Any], where: str) -> None:
        retries = _number(t.get("failRetryTimes"))
        if retries:
            out["retries"] = min(int(retries), 100)
            interval = _number(t.get("failRetryInterval"))
            if interval:
                out["retry_interval"] = interval * 60
        if str(t.get("timeoutFlag") or "CLOSE").upper() == "OPEN" and _number(t.get("timeout")):
            out["timeout"] = _number(t.get("timeout")) * 60
            strategy = str(t.get("timeoutNotifyStrategy") or "WARN").upper()
            out["timeout_strategy"] = "warn" if strategy == "WARN" else "fail"
            if strategy == "WARNFAILED":
                self.warn(where, "timeout strategy WARNFAILED: fails, and alerts only where "
                                 "the workflow's alerts include timeout")
        delay = _number(t.get("delayTime"))
        if delay:
            out["delay"] = delay * 60
        priority = str(t.get("taskPriority") or "MEDIUM").upper()
        if priority in PRIORITIES and priority != "MEDIUM":
            out["priority"] = priority.lower()
        group = t.get("workerGroup")
        if isinstance(group, str) and group and group != "default":
            out["worker_group"] = group
        if str(t.get("flag") or "YES").upper() == "NO":
            out["disabled"] = True
        if _number(t.get("taskGroupId")):
            self.warn(where, f"task group {t.get('taskGroupId')} not imported: Shoal has no "
                             "task groups (limit concurrency with worker slots)")
        env = t.get("environmentCode")
        if env not in (None, "", -1, 0, "-1"):
            self.warn(where, f"environment {env} not imported: set the task's env instead")
        for key in ("cpuQuota", "memoryMax"):
            if t.get(key) not in (None, -1, "-1", 0):
                self.warn(where, f"{key}={t.get(key)} not imported: Shoal sets no resource "
                                 "limits")
        if str(t.get("isCache") or "NO").upper() == "YES":
            self.warn(where, "isCache not imported: every run runs the task")

    # -- per type ----------------------------------------------------------------------
    def t_shell(self, p: Mapping[str, Any], out: dict[str, Any], where: str) -> None:
        out["command"] = str(p.get("rawScript") or "").strip("\n") or "true"

    def t_python(self, p: Mapping[str, Any], out: dict[str, Any], where: str) -> None:
        out["script"] = str(p.get("rawScript") or "").strip("\n") or "pass"

    def t_sql(self, p: Mapping[str, Any], out: dict[str, Any], where: str) -> None:
        ds = str(p.get("datasource") if p.get("datasource") is not None else "")
        # DolphinScheduler names a datasource by id; Shoal's own export writes its name.
        out["datasource"] = self.datasources.get(ds) or (
            f"ds{ds}" if ds.isdigit() else ds or "default")
        if ds.isdigit() and ds not in self.datasources:
            self.warn(where, f"datasource id {ds or '?'} is named '{out['datasource']}': "
                             "configure it in SHOAL_DATASOURCES (or pass datasource=ID:NAME)")
        parts = [*_strings(p.get("preStatements")), str(p.get("sql") or "").strip(),
                 *_strings(p.get("postStatements"))]
        out["sql"] = ";\n".join(s.rstrip().rstrip(";") for s in parts if s.strip())
        if p.get("sendEmail"):
            self.warn(where, "sendEmail not imported: use the workflow's alerts")

    def t_http(self, p: Mapping[str, Any], out: dict[str, Any], where: str) -> None:
        method = str(p.get("httpRequestMethod") or p.get("httpMethod") or "GET").upper()
        if method not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            self.refuse(f"{where}.httpMethod", f"HTTP method {method} is not supported",
                        type="HTTP")
        out["method"] = method
        url = str(p.get("url") or "")
        query: list[str] = []
        headers: dict[str, str] = {}
        body: dict[str, Any] = {}
        for prop in _json_list(p.get("httpRequestParams", p.get("httpParams")),
                               f"{where}.httpParams", self.problems):
            if not isinstance(prop, Mapping) or not prop.get("prop"):
                continue
            kind = str(prop.get("httpParametersType") or "PARAMETER").upper()
            key, value = str(prop["prop"]), str(prop.get("value") or "")
            if kind == "HEADERS":
                headers[key] = value
            elif kind == "BODY":
                body[key] = value
            else:
                query.append(f"{key}={value}")
        if query:
            url += ("&" if "?" in url else "?") + "&".join(query)
        out["url"] = url
        if headers:
            out["headers"] = headers
        raw_body = p.get("httpRequestBody") or p.get("httpBody")
        if raw_body:
            out["body"] = str(raw_body)
        elif body:
            out["body"] = json.dumps(body)
        check = str(p.get("httpCheckCondition") or "STATUS_CODE_DEFAULT").upper()
        condition = str(p.get("condition") or "").strip()
        if check == "STATUS_CODE_CUSTOM" and condition:
            codes = [int(c) for c in re.split(r"[,\s]+", condition) if c.isdigit()]
            if codes:
                out["expected_status"] = codes
        elif check in ("BODY_CONTAINS", "BODY_NOT_CONTAINS"):
            self.warn(where, f"httpCheckCondition {check} not imported: only the status is "
                             "checked (200)")

    def t_sub_workflow(self, p: Mapping[str, Any], out: dict[str, Any], where: str) -> None:
        code = _code_of(p.get("workflowDefinitionCode") or p.get("processDefinitionCode"))
        target = self.codes.get(code) if code is not None else None
        if target is None:
            self.refuse(f"{where}.processDefinitionCode",
                        f"sub-process workflow code {code} is neither in this request nor "
                        "imported earlier", task=out["name"])
            out["workflow"] = "missing"
            return
        out["workflow"] = target.name

    def t_switch(self, p: Mapping[str, Any], out: dict[str, Any], where: str) -> None:
        sr = _json_obj(p.get("switchResult"))
        cases = []
        for i, c in enumerate(_json_list(sr.get("dependTaskList"), f"{where}.switchResult",
                                         self.problems)):
            if not isinstance(c, Mapping):
                continue
            nxt = self.local_task(c.get("nextNode"), f"{where}.switchResult[{i}].nextNode")
            cond = switch_condition(str(c.get("condition") or ""))
            if nxt and cond:
                cases.append({"when": cond, "then": [nxt]})
        default = self.local_task(sr.get("nextNode"), f"{where}.switchResult.nextNode")
        if not cases:  # a switch with a default only: one case that never holds
            cases.append({"when": "false", "then": [default] if default else []})
            default = None
        out["cases"] = cases
        out["default"] = [default] if default else []

    def t_conditions(self, p: Mapping[str, Any], out: dict[str, Any], where: str) -> None:
        res = _json_obj(p.get("conditionResult"))
        for key, ours in (("successNode", "on_success"), ("failedNode", "on_failure")):
            names = [self.local_task(c, f"{where}.conditionResult.{key}")
                     for c in _json_list(res.get(key), f"{where}.{key}", self.problems)
                     if c not in ("", None)]
            out[ours] = [n for n in names if n]
        dep = _json_obj(p.get("dependence"))
        groups = []
        for g in _json_list(dep.get("dependTaskList"), f"{where}.dependence", self.problems):
            if not isinstance(g, Mapping):
                continue
            items = []
            for it in _json_list(g.get("dependItemList"), f"{where}.dependItemList",
                                 self.problems):
                if not isinstance(it, Mapping):
                    continue
                tname = self.local_task(it.get("depTaskCode"), f"{where}.depTaskCode")
                status = str(it.get("status") or "SUCCESS").upper()
                if tname:
                    items.append({"task": tname,
                                  "status": "failure" if status == "FAILURE" else "success"})
            if items:
                groups.append({"relation": _relation(g.get("relation")), "items": items})
        if groups:
            out["condition"] = {"relation": _relation(dep.get("relation")), "groups": groups}

    def t_dependent(self, p: Mapping[str, Any], out: dict[str, Any], where: str) -> None:
        """DolphinScheduler's tree (relation over groups, relation over items, each item
        every window of its date value) in conjunctive form: one Shoal dependent task per
        clause, waiting for any one of the clause's windows."""
        dep = _json_obj(p.get("dependence"))
        interval = _number(dep.get("checkInterval"))
        groups: list[Clauses] = []
        for g in _json_list(dep.get("dependTaskList"), f"{where}.dependence", self.problems):
            if not isinstance(g, Mapping):
                continue
            items: list[Clauses] = []
            for it in _json_list(g.get("dependItemList"), f"{where}.dependItemList",
                                 self.problems):
                resolved = self.dependent_item(it, where) if isinstance(it, Mapping) else None
                if resolved is not None:
                    items.append(all_of([[w] for w in resolved]))
            if items:
                groups.append(combine(_relation(g.get("relation")), items))
        clauses = combine(_relation(dep.get("relation")), groups) if groups else []
        if len(clauses) > MAX_CLAUSES or any(len(c) > MAX_ALTERNATIVES for c in clauses):
            self.refuse(where, f"dependent task '{out['name']}' combines too many windows "
                               f"({len(clauses)} conjunctive clauses; at most {MAX_CLAUSES} "
                               f"of at most {MAX_ALTERNATIVES} windows)", task=out["name"],
                        type="DEPENDENT")
            clauses = []
        if not clauses:
            if not any(p.get("task") == out["name"] for p in self.problems) and not any(
                    p["path"].startswith(f"{self.s.where}.{where}") for p in self.problems):
                self.refuse(where, f"dependent task '{out['name']}' depends on nothing",
                            task=out["name"])
            out["depends_on_workflow"] = {"workflow": "missing"}
            return
        if dep.get("failurePolicy") not in (None, "DEPENDENT_FAILURE_WAITING"):
            self.warn(where, "a failed upstream run does not fail the dependent task at "
                             "once: it waits until a success or its timeout")
        base = {k: v for k, v in out.items() if k != "name"}
        names = [out["name"]]
        for k, clause in enumerate(clauses):
            specs = [{"workflow": wf, "task": task, "date": date} for wf, task, date in clause]
            spec: Any = specs[0] if len(specs) == 1 else specs
            if k == 0:
                out["depends_on_workflow"] = spec
                if interval:
                    out["check_interval"] = interval
                continue
            taken = {t["name"] for t in self.extra} | set(self.tmap.values())
            extra_name = task_name(f"{out['name']}.{k + 1}", taken)
            self.extra.append({**base, "name": extra_name, "depends_on_workflow": spec,
                               **({"check_interval": interval} if interval else {})})
            names.append(extra_name)
        if len(names) > 1:
            self.fanout[out["name"]] = names
            self.warn(where, f"dependent task '{out['name']}' waits for {len(names)} groups "
                             f"of windows: tasks {', '.join(names)}")

    def dependent_item(self, it: Mapping[str, Any],
                       where: str) -> list[tuple[str, str | None, str]] | None:
        code = _code_of(it.get("definitionCode") or it.get("workflowDefinitionCode"))
        target = self.codes.get(code) if code is not None else None
        if target is None:
            self.refuse(f"{where}.definitionCode", f"dependent item's workflow code {code} is "
                                                  "neither in this request nor imported earlier")
            return None
        # 0 = the workflow run, -1 = all its tasks (a Shoal run succeeds when they do)
        tcode = _code_of(it.get("depTaskCode")) or 0
        if it.get("parameterPassing"):
            self.warn(where, "parameterPassing not imported: the upstream run's var pool does "
                             "not reach a dependent task")
        task = None
        if tcode:
            task = target.tasks.get(tcode)
            if task is None:
                self.refuse(f"{where}.depTaskCode", f"task code {tcode} is not a task of "
                                                    f"'{target.name}'")
                return None
        value = str(it.get("dateValue") or "today")
        dates = date_expressions(value)
        if dates is None:
            self.refuse(f"{where}.dateValue", f"dateValue {value!r} is not supported (its "
                                              "number of windows depends on the date)",
                        type="DEPENDENT")
            return None
        return [(target.name, task, d) for d in dates]

    def local_task(self, code: Any, where: str) -> str | None:
        c = _code_of(code)
        if c is None or c not in self.tmap:
            self.refuse(where, f"task code {code} is not a task of this workflow")
            return None
        return self.tmap[c]

    # -- edges -------------------------------------------------------------------------
    def edges(self, tasks: list[dict[str, Any]]) -> None:
        by_name = {t["name"]: t for t in tasks}
        for r in self.s.relations:
            pre, post = _code_of(r.get("preTaskCode")), _code_of(r.get("postTaskCode"))
            if not pre:
                continue
            a, b = self.tmap.get(pre), self.tmap.get(post) if post else None
            if a is None or b is None:
                self.refuse("taskRelationJson", f"relation {pre} -> {post} names a task code "
                                                "this workflow does not have")
                continue
            if b in by_name:
                deps = by_name[b].setdefault("depends_on", [])
                for name in self.fanout.get(a, [a]):
                    if name not in deps:
                        deps.append(name)
        for t in self.extra:  # the windows of a dependent task wait after the same tasks
            first = next(n for n, names in self.fanout.items() if t["name"] in names)
            if by_name.get(first, {}).get("depends_on"):
                t["depends_on"] = list(by_name[first]["depends_on"])


def switch_condition(text: str) -> str:
    """A DolphinScheduler switch condition (JavaScript, evaluated after its placeholders
    are replaced as text) in Shoal's expression language: a quoted placeholder
    (``"${var}" == "a"``) is the param's text, ``===`` / ``!==`` are ``==`` / ``!=``."""
    text = re.sub(r"""(['"])\$\{([A-Za-z_][A-Za-z0-9_.]*)\}\1""", r"${\2}", text.strip())
    return text.replace("===", "==").replace("!==", "!=")


def _relation(value: Any) -> str:
    return "or" if str(value or "AND").upper() == "OR" else "and"


def _number(value: Any) -> float:
    try:
        n = float(value)
    except (TypeError, ValueError):
        return 0.0
    if not math.isfinite(n):  # "inf", "nan", 1e999: no count or duration DolphinScheduler has
        return 0.0
    return int(n) if n.is_integer() else n


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    return [str(v) for v in value if isinstance(v, str) and v.strip()] if isinstance(
        value, list) else []
