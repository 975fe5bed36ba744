"""DolphinScheduler's dependent tasks in Shoal's terms. Pure.

A DolphinScheduler dependent task is a tree: a relation (AND/OR) over groups, each a
relation over items, each item holding when every window its ``dateValue`` names holds
(``DependentUtils.getDateIntervalList`` / ``DependentDateUtils``). Shoal's dependent task
waits for any one of a list of windows; so the tree becomes its conjunctive form, one
Shoal dependent task per clause (:func:`combine`), and a date value the ``$[...]`` date of
each of its windows (:func:`date_expressions`).
"""

from __future__ import annotations

import re

MAX_WINDOWS = 7  # dependent windows one item may expand to
MAX_CLAUSES = 16  # Shoal dependent tasks one DolphinScheduler dependent task becomes
MAX_ALTERNATIVES = 64  # windows one of them waits for (any one met)

Window = tuple[str, str | None, str]   # workflow, task (None = the whole run), date
Clauses = list[list[Window]]             # all of the clauses, any of each clause's windows


def all_of(parts: Clauses) -> Clauses:
    return [list(c) for c in parts]


def combine(relation: str, parts: list[Clauses]) -> Clauses:
    """``and``/``or`` of conjunctive forms, in conjunctive form (an ``or`` distributes:
    one clause per choice of a clause from each part, duplicates dropped). Clauses implied
    by another (a superset of its windows) are dropped too, which keeps the form small.
    When the form grows past :data:`MAX_CLAUSES` it is returned unfinished: the caller
    refuses a tree that long."""
    if relation == "and":
        return _reduced([c for part in parts for c in part])
    out: Clauses = [[]]
    for part in parts:
        out = _reduced([[*a, *(w for w in b if w not in a)] for a in out for b in part])
        if len(out) > MAX_CLAUSES:
            return out
    return out


def _reduced(clauses: Clauses) -> Clauses:
    """Without repeated windows in a clause, repeated clauses, and clauses that hold
    whenever a smaller one does (absorption); order kept."""
    sets = [frozenset(c) for c in clauses]
    out: Clauses = []
    kept: list[frozenset[Window]] = []
    for c, s in zip(clauses, sets, strict=True):
        if s in kept or any(o < s for o in sets):
            continue
        kept.append(s)
        out.append(list(dict.fromkeys(c)))
    return out


_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def date_expressions(value: str) -> list[str] | None:
    """DolphinScheduler's dependent ``dateValue`` as the ``$[...]`` date of each window it
    names (``DependentUtils.getDateIntervalList`` / ``DependentDateUtils``), oldest first;
    None for the values whose number of windows depends on the date (``thisWeek``,
    ``thisMonth``, ``lastMonth``) or that name more than :data:`MAX_WINDOWS` windows
    (``last24Hours``). A value that is already a ``$[...]`` expression is kept."""
    if value.startswith("$["):
        return [value]
    if value == "currentHour":
        return ["$[yyyyMMddHH]"]
    m = re.fullmatch(r"last(\d+)Hours?", value)
    if m and value != "last24Hours":
        n = int(m.group(1))
        return [f"$[yyyyMMddHH-{k}/24]" for k in range(n, 0, -1)]
    if value == "today":
        return ["$[yyyyMMdd]"]
    m = re.fullmatch(r"last(\d+)Days", value)
    if m:
        n = int(m.group(1))
        return [f"$[yyyyMMdd-{k}]" for k in range(n, 0, -1)] if n <= MAX_WINDOWS else None
    if value == "lastWeek":
        return [f"$[week_begin(yyyyMMdd,{k})]" for k in range(-7, 0)]
    for i, day in enumerate(_WEEKDAYS):
        if value == f"last{day}":
            return [f"$[week_begin(yyyyMMdd,{i - 7})]"]
    # DependentDateUtils.getNeededMonthBeginInterval: "thisMonthEnd" is the first day of the
    # month plus 0 days, i.e. the same day as thisMonthBegin (as DolphinScheduler computes it).
    return {"thisMonthBegin": ["$[month_first_day(yyyyMMdd,0)]"],
            "thisMonthEnd": ["$[month_first_day(yyyyMMdd,0)]"],
            "lastMonthBegin": ["$[month_first_day(yyyyMMdd,-1)]"],
            "lastMonthEnd": ["$[month_last_day(yyyyMMdd,-1)]"]}.get(value)


def date_value(expression: str) -> str:
    """The dateValue a ``$[...]`` window date reads as in DolphinScheduler (the inverse of
    :func:`date_expressions` for one window), or the expression itself."""
    for value in ("currentHour", "last1Hour", "today", "last1Days", "thisMonthBegin",
                  "lastMonthBegin", "lastMonthEnd", *(f"last{d}" for d in _WEEKDAYS)):
        if date_expressions(value) == [expression]:
            return value
    return expression
