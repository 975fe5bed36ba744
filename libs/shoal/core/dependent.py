"""What a ``dependent`` task waits for: a business-date window of another workflow.

The task's ``date`` (default ``$[yyyyMMdd]``) is expanded at dispatch; its digits give the
window's start and its length: ``2026`` a year, ``202602`` a month, ``20260227`` a day,
``2026022713`` an hour, twelve digits a minute, fourteen a second. An upstream run counts
when it succeeded (or, with ``task`` set, that task succeeded in it) and its business time
— its ``schedule_time``, else the time it was submitted, as wall-clock time in its own
offset — falls in the window.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from shoal.core.timeexpr import add_months

_WIDTHS = {4: "%Y", 6: "%Y%m", 8: "%Y%m%d", 10: "%Y%m%d%H", 12: "%Y%m%d%H%M",
           14: "%Y%m%d%H%M%S"}


class DateInvalid(ValueError):
    """A date value that names no window."""


def date_window(value: str) -> tuple[datetime, datetime]:
    """[start, end) of the window ``value`` names, as naive wall-clock times."""
    digits = re.sub(r"[^0-9]", "", value)
    fmt = _WIDTHS.get(len(digits))
    if fmt is None or re.search(r"[A-Za-z]", value):
        raise DateInvalid(f"date {value!r} names no window: give 4 (year), 6 (month), "
                          "8 (day), 10 (hour), 12 (minute) or 14 (second) digits, "
                          "e.g. $[yyyyMMdd-1]")
    try:
        start = datetime.strptime(digits, fmt)  # noqa: DTZ007 - wall-clock on purpose
    except ValueError as exc:
        raise DateInvalid(f"date {value!r} is not a calendar date: {exc}") from None
    n = len(digits)
    if n == 4:
        return start, start.replace(year=start.year + 1)
    if n == 6:
        return start, add_months(start, 1)
    step = {8: timedelta(days=1), 10: timedelta(hours=1), 12: timedelta(minutes=1),
            14: timedelta(seconds=1)}[n]
    return start, start + step
