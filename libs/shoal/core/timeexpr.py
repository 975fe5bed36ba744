"""DolphinScheduler's built-in time expressions: ``$[yyyyMMdd-1]`` and friends.

Pure functions of the expression and a base time (the run's ``schedule_time``, else the
time it was submitted), following DolphinScheduler's ``TimePlaceholderUtils``:

* ``$[FORMAT]``, ``$[FORMAT+N]``, ``$[FORMAT-N]``: the base time shifted by N days, where
  N is integer arithmetic and ``N/24`` means hours, ``N/24/60`` minutes
  (``$[HHmmss-1/24]`` = one hour earlier). FORMAT uses Java's date letters
  (``yyyy MM dd HH mm ss`` …); other characters are copied.
* ``add_months(FORMAT,N)``; ``this_day(FORMAT)``; ``last_day(FORMAT)`` (the day before);
  ``month_first_day(FORMAT[,N])`` / ``month_last_day(FORMAT[,N])`` (N months away);
  ``week_first_day(FORMAT[,N])`` / ``week_last_day(FORMAT[,N])`` (Monday / Sunday, N weeks
  away); ``month_begin(FORMAT,N)`` / ``month_end(FORMAT,N)`` / ``week_begin(FORMAT,N)`` /
  ``week_end(FORMAT,N)`` (N days from the first/last day of the month/week);
  ``year_week(FORMAT[,D])`` (ISO-style week number, weeks starting on day D, 1 = Monday);
  ``timestamp(EXPR)`` (epoch seconds of EXPR's time).

System parameters (DolphinScheduler's names): ``system.biz.date`` (the day before the
base time, yyyyMMdd), ``system.biz.curdate`` (the base day), ``system.datetime``
(yyyyMMddHHmmss of the base time).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from datetime import datetime, timedelta

_EXPR = re.compile(r"\$\[([^\[\]]+)\]")
_FUNC = re.compile(r"^([a-z_]+)\((.*)\)$")
_LETTERS = re.compile(r"'[^']*'|([A-Za-z])\1*")


class TimeExpressionInvalid(ValueError):
    """An expression that cannot be evaluated; the message names it."""


def system_params(base: datetime) -> dict[str, str]:
    return {"system.biz.date": (base - timedelta(days=1)).strftime("%Y%m%d"),
            "system.biz.curdate": base.strftime("%Y%m%d"),
            "system.datetime": base.strftime("%Y%m%d%H%M%S")}


def expand_time(text: str, base: datetime) -> str:
    """Replace every ``$[...]`` in ``text``; raise TimeExpressionInvalid for a bad one."""
    return _EXPR.sub(lambda m: evaluate(m.group(1).strip(), base), text)


def expand_params(params: Mapping[str, str], base: datetime) -> dict[str, str]:
    """Parameter values with their time expressions evaluated (``day: $[yyyyMMdd-1]``)."""
    return {k: expand_time(v, base) for k, v in params.items()}


def evaluate(expr: str, base: datetime) -> str:
    """The value of one expression (without ``$[`` and ``]``) at ``base``."""
    try:
        m = _FUNC.match(expr)
        if m and m.group(1) == "timestamp":
            when, fmt = _shifted(m.group(2).strip(), base)
            moment = datetime.strptime(java_format(fmt, when), "%Y%m%d%H%M%S")  # noqa: DTZ007
            return str(int(moment.replace(tzinfo=base.tzinfo).timestamp()))
        if m and m.group(1) == "year_week":
            fmt, _, day = m.group(2).partition(",")
            return _year_week(base, fmt.strip(), _int(day) if day.strip() else 1)
        when, fmt = _function(m.group(1), m.group(2), base) if m else _shifted(expr, base)
        return java_format(fmt, when)
    except (ValueError, ZeroDivisionError, OverflowError) as exc:
        raise TimeExpressionInvalid(f"$[{expr}]: {exc}") from None


def _function(name: str, args: str, base: datetime) -> tuple[datetime, str]:
    fmt, _, n_expr = (a.strip() for a in args.partition(","))
    n = _int(n_expr) if n_expr else 0
    day = base
    match name:
        case "add_months":
            day = add_months(base, n)
        case "this_day":
            day = base
        case "last_day":
            day = base - timedelta(days=1)
        case "month_first_day":
            day = add_months(base.replace(day=1), n)
        case "month_last_day":
            shifted = add_months(base, n)
            day = shifted.replace(day=calendar.monthrange(shifted.year, shifted.month)[1])
        case "week_first_day":
            day = base - timedelta(days=base.weekday()) + timedelta(weeks=n)
        case "week_last_day":
            day = base + timedelta(days=6 - base.weekday()) + timedelta(weeks=n)
        case "month_begin":
            day = base.replace(day=1) + timedelta(days=n)
        case "month_end":
            last = calendar.monthrange(base.year, base.month)[1]
            day = base.replace(day=last) + timedelta(days=n)
        case "week_begin":
            day = base - timedelta(days=base.weekday()) + timedelta(days=n)
        case "week_end":
            day = base + timedelta(days=6 - base.weekday()) + timedelta(days=n)
        case _:
            raise ValueError(f"unknown function {name}")
    return day, fmt


def _shifted(expr: str, base: datetime) -> tuple[datetime, str]:
    """``FORMAT+N`` / ``FORMAT-N`` (N days, ``/24`` hours): DolphinScheduler splits at the
    last ``+`` (else the last ``-``) followed by a digit."""
    for sign in ("+", "-"):
        i = expr.rfind(sign)
        if i >= 0 and i + 1 < len(expr) and expr[i + 1].isdigit():
            head, slash, tail = expr[i + 1:].partition("/")
            minutes = _int(f"60*24*({head}){slash}{tail}")
            delta = timedelta(minutes=minutes)
            return (base + delta if sign == "+" else base - delta), expr[:i]
        if sign == "+" and i >= 0:
            break  # a '+' not followed by a digit: no shift (as DolphinScheduler)
    return base, expr


def add_months(d: datetime, n: int) -> datetime:
    """Java's addMonths: the same day, clamped to the target month's length."""
    month = d.month - 1 + n
    year = d.year + month // 12
    month = month % 12 + 1
    return d.replace(year=year, month=month, day=min(d.day, calendar.monthrange(year, month)[1]))


def java_format(pattern: str, d: datetime) -> str:
    """Format ``d`` with a Java SimpleDateFormat pattern (the letters schedules use)."""
    out = []
    pos = 0
    for m in _LETTERS.finditer(pattern):
        out.append(pattern[pos:m.start()])
        pos = m.end()
        token = m.group(0)
        if token.startswith("'"):
            out.append(token[1:-1] or "'")
            continue
        out.append(_field(token[0], len(token), d))
    out.append(pattern[pos:])
    return "".join(out)


def _field(letter: str, width: int, d: datetime) -> str:
    match letter:
        case "y":
            return f"{d.year % 100:02d}" if width == 2 else f"{d.year:0{width}d}"
        case "M":
            return d.strftime("%B" if width >= 4 else "%b") if width >= 3 else \
                f"{d.month:0{width}d}"
        case "d":
            return f"{d.day:0{width}d}"
        case "H":
            return f"{d.hour:0{width}d}"
        case "h":
            return f"{(d.hour % 12) or 12:0{width}d}"
        case "m":
            return f"{d.minute:0{width}d}"
        case "s":
            return f"{d.second:0{width}d}"
        case "S":
            return f"{d.microsecond // 1000:0{width}d}"
        case "E":
            return d.strftime("%A" if width >= 4 else "%a")
        case "a":
            return "AM" if d.hour < 12 else "PM"
    raise ValueError(f"unsupported date letter '{letter}' (use y M d H h m s S E a)")


def _year_week(d: datetime, fmt: str, first_day: int) -> str:
    """Week of year with weeks starting on ``first_day`` (1 = Monday .. 7 = Sunday) and at
    least 4 days of the new year in week 1 (Java's setMinimalDaysInFirstWeek(4))."""
    first_day = first_day if 1 <= first_day <= 7 else 1
    start = (d.weekday() - (first_day - 1)) % 7  # days since this week began
    week_start = d - timedelta(days=start)
    thursday_like = week_start + timedelta(days=3)  # the week belongs to this day's year
    year = thursday_like.year
    jan1 = thursday_like.replace(month=1, day=1)
    first_week_start = jan1 - timedelta(days=(jan1.weekday() - (first_day - 1)) % 7)
    if (first_week_start + timedelta(days=3)).year < year:
        first_week_start += timedelta(weeks=1)
    week = (week_start - first_week_start).days // 7 + 1
    sep = "-" if "-" in fmt else ""
    return f"{year}{sep}{week:02d}"


def _int(expr: str) -> int:
    """Integer arithmetic (+ - * / and parentheses; / truncates like Java's int)."""
    tokens = re.findall(r"\d+|[-+*/()]", expr.replace(" ", ""))
    if "".join(tokens) != expr.replace(" ", ""):
        raise ValueError(f"not integer arithmetic: {expr!r}")
    value, rest = _sum(tokens)
    if rest:
        raise ValueError(f"unexpected {''.join(rest)!r} in {expr!r}")
    return value


def _sum(t: list[str]) -> tuple[int, list[str]]:
    value, t = _product(t)
    while t and t[0] in "+-":
        op, (rhs, t) = t[0], _product(t[1:])
        value = value + rhs if op == "+" else value - rhs
    return value, t


def _product(t: list[str]) -> tuple[int, list[str]]:
    value, t = _unary(t)
    while t and t[0] in "*/":
        op, (rhs, t) = t[0], _unary(t[1:])
        if op == "*":
            value *= rhs
        else:
            q = abs(value) // abs(rhs)
            value = q if (value >= 0) == (rhs > 0) else -q
    return value, t


def _unary(t: list[str]) -> tuple[int, list[str]]:
    if not t:
        raise ValueError("missing a number")
    if t[0] in "+-":
        value, rest = _unary(t[1:])
        return (value if t[0] == "+" else -value), rest
    if t[0] == "(":
        value, rest = _sum(t[1:])
        if not rest or rest[0] != ")":
            raise ValueError("missing ')'")
        return value, rest[1:]
    if t[0].isdigit():
        return int(t[0]), t[1:]
    raise ValueError(f"unexpected {t[0]!r}")
