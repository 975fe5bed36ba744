"""Declared parameters: optional types, and which names a run may set.

A definition declares a parameter in its global ``params`` or in a task's ``params``, either
plainly (``{day: "$[yyyyMMdd-1]"}``, a string) or with a type::

    params:
      day: {value: "$[yyyyMMdd-1]", type: date}
      n: {value: "10", type: int}
      region: {value: eu, type: enum, values: [eu, us]}
      code: {value: ab, type: string, pattern: "[a-z]+"}

Run-time params (a start, a fork, a schedule, a backfill) may only set declared names, and a
value given for a typed name must be of its type. A value holding a ``$[...]`` time expression
is checked as the text it gives. Everything here is pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from shoal.core.errors import Problem
from shoal.core.timeexpr import TimeExpressionInvalid, expand_time

if TYPE_CHECKING:
    from shoal.core.definition import WorkflowDefinition

TYPES = ("string", "int", "float", "bool", "date", "enum")
BOOL_TEXTS = {"true", "false", "1", "0", "yes", "no", "t", "f", "y", "n", "on", "off"}
_INT = re.compile(r"[+-]?[0-9]+")
_SAMPLE = datetime(2024, 1, 15, 10, 30, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ParamType:
    """A declared type: ``type`` one of :data:`TYPES`; ``pattern`` (string) a regular
    expression the whole value must match; ``values`` (enum) the allowed values."""

    type: str = "string"
    pattern: str | None = None
    values: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.pattern is not None:
            out["pattern"] = self.pattern
        if self.values:
            out["values"] = list(self.values)
        return out


def _text(v: object) -> str:
    return "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))


def parse_typed(raw: Mapping[str, Any], where: str,
                problems: list[Problem]) -> tuple[str, ParamType] | None:
    """``{value, type, pattern?, values?}`` → (the value as text, its type); a bad spec is a
    problem naming the place."""
    extra = set(raw) - {"value", "type", "pattern", "values"}
    if extra:
        problems.append(Problem(where, f"unknown field(s) {', '.join(sorted(map(str, extra)))}"
                                       " (a typed param has value, type, pattern, values)"))
        return None
    kind = raw.get("type", "string")
    if kind not in TYPES:
        problems.append(Problem(f"{where}.type", f"must be one of {', '.join(TYPES)}"))
        return None
    value = raw.get("value", "")
    if isinstance(value, Mapping | list):
        problems.append(Problem(f"{where}.value", "must be a scalar value"))
        return None
    pattern = raw.get("pattern")
    if pattern is not None:
        if kind != "string" or not isinstance(pattern, str):
            problems.append(Problem(f"{where}.pattern", "only a string param has a pattern "
                                                         "(a regular expression)"))
            return None
        try:
            re.compile(pattern)
        except re.error as exc:
            problems.append(Problem(f"{where}.pattern", f"not a regular expression: {exc}"))
            return None
    values = raw.get("values")
    if kind == "enum":
        if not isinstance(values, list) or not values or any(
                isinstance(v, Mapping | list) for v in values):
            problems.append(Problem(f"{where}.values", "an enum needs a non-empty list of "
                                                        "values"))
            return None
    elif values is not None:
        problems.append(Problem(f"{where}.values", "only an enum param has values"))
        return None
    ptype = ParamType(kind, pattern, tuple(_text(v) for v in values or ()))
    text = _text(value)
    error = value_error(ptype, text)
    if error and "${" not in text:
        problems.append(Problem(f"{where}.value", error))
        return None
    return text, ptype


def value_error(ptype: ParamType, value: str) -> str | None:
    """Why ``value`` is not of ``ptype`` (None when it is). ``$[...]`` is checked as the
    text it gives for a sample time."""
    if "\x00" in value:
        return "contains a NUL character"
    if "$[" in value:
        try:
            value = expand_time(value, _SAMPLE)
        except TimeExpressionInvalid as exc:
            return f"bad time expression: {exc}"
    match ptype.type:
        case "int":
            ok = bool(_INT.fullmatch(value.strip()))
        case "float":
            try:
                float(value)
                ok = value.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity",
                                                   "-infinity", "+infinity")
            except ValueError:
                ok = False
        case "bool":
            ok = value.strip().lower() in BOOL_TEXTS
        case "date":
            ok = _is_date(value.strip())
        case "enum":
            if value not in ptype.values:
                return f"{value!r} is not one of {', '.join(ptype.values)}"
            ok = True
        case _:
            if ptype.pattern is not None and not re.fullmatch(ptype.pattern, value):
                return f"{value!r} does not match the pattern {ptype.pattern!r}"
            ok = True
    return None if ok else f"{value!r} is not a valid {ptype.type}"


def _is_date(value: str) -> bool:
    """yyyy-MM-dd, yyyyMMdd, or a date and time (ISO 8601, ``T`` or a space)."""
    for parse in (date.fromisoformat, datetime.fromisoformat):
        try:
            parse(value)
        except ValueError:
            continue
        return True
    return False


def declared(global_params: Mapping[str, str],
             task_params: Mapping[str, Mapping[str, str]]) -> set[str]:
    """Every name a run may set: the global params and every task's own params."""
    names = set(global_params)
    for local in task_params.values():
        names |= set(local)
    return names


def run_param_problems(params: Mapping[str, str], names: set[str],
                       types: Mapping[str, list[ParamType]], where: str = "params"
                       ) -> list[Problem]:
    """What is wrong with run-time ``params``: a name the definition does not declare, a NUL
    character, a value not of its declared type (``types``: every type the name is
    declared with, globally or in a task)."""
    problems: list[Problem] = []
    for k, v in params.items():
        if k not in names:
            problems.append(Problem(f"{where}.{k}", f"'{k}' is not a parameter the definition "
                                    "declares (declared: "
                                    f"{', '.join(sorted(names)) or 'none'})"))
            continue
        if "\x00" in v:
            problems.append(Problem(f"{where}.{k}", "contains a NUL character"))
            continue
        for t in types.get(k, ()):
            error = value_error(t, v)
            if error:
                problems.append(Problem(f"{where}.{k}", f"{error} (declared {t.type})"))
                break
    return problems


def definition_param_problems(definition: WorkflowDefinition, params: Mapping[str, str],
                              where: str = "params") -> list[Problem]:
    """:func:`run_param_problems` against what ``definition`` declares."""
    names = declared(definition.params, {t.name: t.params for t in definition.tasks})
    types: dict[str, list[ParamType]] = {}
    for k, t in definition.param_types.items():
        types.setdefault(k, []).append(t)
    for task in definition.tasks:
        for k, t in task.param_types.items():
            types.setdefault(k, []).append(t)
    return run_param_problems(params, names, types, where)
