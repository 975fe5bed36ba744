"""Cron schedules and backfill plans: pure functions of their inputs (no clock, no I/O).

Cron expressions come in two dialects, told apart by their field count:

* 5 fields — standard cron: ``minute hour day-of-month month day-of-week`` (0 or 7 = Sunday).
* 6 or 7 fields — Quartz, as DolphinScheduler writes them: ``second minute hour
  day-of-month month day-of-week [year]``, with ``?`` for "no specific value" and
  day-of-week numbered 1 = Sunday .. 7 = Saturday (so ``0 0 2 ? * 2`` is Monday 02:00).

Fire times are computed in the schedule's IANA time zone, on local wall-clock time, then
turned into instants. Daylight-saving rule (Quartz's, via Java's lenient calendar): a local
time skipped by a spring-forward change fires at the same wall-clock offset after the
change (02:30 on 2026-03-29 in Europe/Berlin fires at 03:30 CEST); when several local
times land on one instant it fires once. A local time that occurs twice (fall-back) fires
once, at its first occurrence.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from shoal.core.errors import Problem

# Enough to step over any daylight-saving change (the largest shift in use is 2 h).
_DST_SLACK = timedelta(hours=3)
# The most runs one backfill may plan.
MAX_BACKFILL_RUNS = 100_000
DEFAULT_BACKFILL_CRON = "0 0 * * *"
_QUARTZ_DOW_NAMES = re.compile(r"^[A-Za-z]{3}$")


class CronInvalid(ValueError):
    """A cron expression that cannot be used; the message says why."""


class Catchup(StrEnum):
    """What to do with fires missed while no scheduler owned the schedule (or while it
    was disabled): run them ``all`` in order, only the ``latest`` one, or ``none``."""

    ALL = "all"
    LATEST = "latest"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed expression: ``expr`` as written, ``native`` as croniter reads it."""

    expr: str
    native: str
    seconds: bool


def parse_cron(expr: object) -> Cron:
    """Parse a 5-field or a Quartz 6/7-field expression, or raise :class:`CronInvalid`."""
    if not isinstance(expr, str) or not expr.strip():
        raise CronInvalid("must be a non-empty string")
    fields = expr.split()
    if len(fields) == 5:
        native, seconds = " ".join(fields), False
    elif len(fields) in (6, 7):
        sec, minute, hour, dom, month, dow, *year = fields
        if dom != "?" and dow != "?" and "*" not in (dom, dow):
            raise CronInvalid("Quartz expressions give day-of-month or day-of-week, not both "
                              "(write '?' in one of them)")
        native_dow = _quartz_dow(dow)
        native = " ".join([sec, minute, hour, "*" if dom == "?" else dom, month, native_dow,
                           *year])
        seconds = True
    else:
        raise CronInvalid(f"expected 5 fields (standard) or 6-7 fields (Quartz, seconds "
                          f"first), got {len(fields)}")
    try:
        croniter(native, datetime(2026, 1, 1), second_at_beginning=seconds)  # noqa: DTZ001
    except (ValueError, KeyError, TypeError) as exc:
        raise CronInvalid(f"not a valid cron expression: {exc}") from None
    return Cron(expr=expr, native=native, seconds=seconds)


def _quartz_dow(field_: str) -> str:
    """Quartz numbers days 1 (Sunday) .. 7 (Saturday); croniter 0 .. 6."""
    if field_ in ("?", "*"):
        return "*"
    out = []
    for part in field_.split(","):
        day_spec, _, step = part.partition("/")
        step = "/" + step if step else ""
        if day_spec.upper().endswith("L") and day_spec.upper() != "L":
            raise CronInvalid("'nL' (last given weekday of the month) is not supported; "
                              "use day-of-month 'L' or 'n#k'")
        if "#" in day_spec:
            day, nth = day_spec.split("#", 1)
            out.append(f"{_quartz_day(day)}#{nth}{step}")
        elif "-" in day_spec:
            lo, hi = day_spec.split("-", 1)
            out.append(f"{_quartz_day(lo)}-{_quartz_day(hi)}{step}")
        elif day_spec == "*":
            out.append("*" + step)
        else:
            out.append(_quartz_day(day_spec) + step)
    return ",".join(out)


def _quartz_day(token: str) -> str:
    if _QUARTZ_DOW_NAMES.match(token):
        return token  # MON, TUE, ... mean the same in both dialects
    try:
        n = int(token)
    except ValueError:
        raise CronInvalid(f"day-of-week {token!r} is not a day (1-7 or SUN-SAT)") from None
    if not 1 <= n <= 7:
        raise CronInvalid(f"Quartz day-of-week {n} is out of range 1 (SUN) - 7 (SAT)")
    return str(n - 1)


def parse_timezone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise ValueError("must be an IANA time zone name such as Europe/Berlin")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (expected an IANA name such as "
                         "Europe/Berlin or UTC)") from None


def _to_instant(local: datetime, tz: ZoneInfo) -> datetime:
    # fold=0: a repeated local time means its first occurrence; a skipped one is read
    # with the offset in force before the change, i.e. it lands after the gap.
    return local.replace(tzinfo=tz, fold=0).astimezone(UTC)


def _local(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def _slack(tz: ZoneInfo, instant: datetime) -> timedelta:
    """How far local times and instants can disagree in order near ``instant``: the size
    of a daylight-saving change within a few hours of it, else nothing. (Far from a
    change, local time and instants are in the same order, so no margin is needed —
    and none is paid: a per-second cron would otherwise walk hours of candidates.)"""
    before = (instant - _DST_SLACK).astimezone(tz).utcoffset() or timedelta(0)
    after = (instant + _DST_SLACK).astimezone(tz).utcoffset() or timedelta(0)
    return abs(after - before)


def fire_times(cron: Cron, tz: ZoneInfo, after: datetime, until: datetime | None,
               limit: int) -> list[datetime]:
    """The instants (UTC) in ``(after, until]`` at which ``cron`` fires, ascending, each
    once, at most ``limit`` of them. ``until=None`` means no upper bound."""
    if limit <= 0 or (until is not None and until <= after):
        return []
    start_local = _local(after, tz) - _slack(tz, after)
    end_local = None if until is None else _local(until, tz) + _slack(tz, until)
    it = croniter(cron.native, start_local, second_at_beginning=cron.seconds)
    found: set[datetime] = set()
    stop_local: datetime | None = None
    while True:
        try:
            local = it.get_next(datetime)
        except (StopIteration, ValueError):
            break  # a year field that has no more matches
        if (stop_local is not None and local > stop_local) or (
                end_local is not None and local > end_local):
            break
        instant = _to_instant(local, tz)
        if instant <= after or (until is not None and instant > until):
            continue
        found.add(instant)
        if len(found) >= limit and stop_local is None:
            # Around a DST change later local times can map to earlier instants: look a
            # little further before trusting the first ``limit`` found.
            stop_local = local + _slack(tz, instant)
    return sorted(found)[:limit]


def last_fire_before(cron: Cron, tz: ZoneInfo, before: datetime,
                     after: datetime) -> datetime | None:
    """The latest instant in ``(after, before)`` at which ``cron`` fires, if any."""
    start_local = _local(before, tz) + _slack(tz, before)
    floor_local = _local(after, tz) - _slack(tz, after)
    it = croniter(cron.native, start_local, second_at_beginning=cron.seconds)
    best: datetime | None = None
    while True:
        try:
            local = it.get_prev(datetime)
        except (StopIteration, ValueError):
            break
        if local < floor_local:
            break
        instant = _to_instant(local, tz)
        if after < instant < before and (best is None or instant > best):
            best = instant
        if best is not None and local < _local(best, tz) - _slack(tz, best):
            break
    return best


# --------------------------------------------------------------------------- schedules


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """A cron schedule of a workflow, as the API publishes it on ``<prefix>.schedules``.

    ``epoch``: no fire at or before it ever happens (set when the schedule is created and
    when its cron or time zone changes, so an edit never fires the old timetable's past).
    ``enabled_at``: when it was last switched on; fires before it were missed while it
    was off and follow ``catchup``.
    """

    id: str
    workflow: str
    cron: str
    timezone: str = "UTC"
    start: datetime | None = None
    end: datetime | None = None
    enabled: bool = True
    params: Mapping[str, str] = field(default_factory=dict)
    catchup: Catchup = Catchup.ALL
    priority: str | None = None
    epoch: datetime
    enabled_at: datetime

    @property
    def parsed_cron(self) -> Cron:
        return parse_cron(self.cron)

    @property
    def zone(self) -> ZoneInfo:
        return parse_timezone(self.timezone)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "schedule", "id": self.id, "workflow": self.workflow,
                "cron": self.cron, "timezone": self.timezone, "start": _iso(self.start),
                "end": _iso(self.end), "enabled": self.enabled, "params": dict(self.params),
                "catchup": self.catchup.value, "priority": self.priority,
                "epoch": _iso(self.epoch), "enabled_at": _iso(self.enabled_at)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Schedule:
        return cls(id=str(d["id"]), workflow=str(d["workflow"]), cron=str(d["cron"]),
                   timezone=str(d.get("timezone") or "UTC"), start=_dt(d.get("start")),
                   end=_dt(d.get("end")), enabled=bool(d.get("enabled", True)),
                   params={str(k): str(v) for k, v in (d.get("params") or {}).items()},
                   catchup=Catchup(d.get("catchup") or "all"), priority=d.get("priority"),
                   epoch=_require_dt(d["epoch"]), enabled_at=_require_dt(d["enabled_at"]))


@dataclass(frozen=True, slots=True)
class FirePlan:
    """What one pass over a schedule does: ``fire`` these, pass over ``skipped`` (missed
    and not caught up), then store ``cursor``; ``more`` = call again, there is more due."""

    fire: tuple[datetime, ...]
    skipped: int
    cursor: datetime | None
    more: bool


def next_fires(schedule: Schedule, *, after: datetime | None, until: datetime,
               owned_since: datetime, limit: int = 500) -> FirePlan:
    """The fires due in ``(after, until]`` (``after`` = the stored cursor, the last fire
    already handled; ``None`` = never fired).

    Fires earlier than ``max(owned_since, enabled_at)`` were missed — no scheduler owned
    the schedule, or it was off — and follow ``catchup``; later ones are on time and
    always fire. ``all`` catches up in pages of ``limit`` (``more`` says another is due).
    """
    if not schedule.enabled:
        return FirePlan((), 0, after, more=False)
    cron, tz = schedule.parsed_cron, schedule.zone
    lower = _window_start(schedule, after)
    upper = until if schedule.end is None else min(until, schedule.end)
    if upper <= lower:
        return FirePlan((), 0, after, more=False)
    resume = max(owned_since, schedule.enabled_at)
    if schedule.catchup is Catchup.ALL or resume <= lower:
        times = fire_times(cron, tz, lower, upper, limit + 1)
        more = len(times) > limit
        times = times[:limit]
        return FirePlan(tuple(times), 0, times[-1] if times else after, more=more)
    # latest / none: the missed stretch is never expanded, however long it is.
    missed_until = min(resume, upper + timedelta(microseconds=1))
    latest_missed = last_fire_before(cron, tz, missed_until, lower)
    fire: list[datetime] = []
    skipped = 0
    cursor = after
    if latest_missed is not None:
        cursor = latest_missed
        if schedule.catchup is Catchup.LATEST:
            fire.append(latest_missed)
        else:
            skipped = 1  # at least one; the exact count is not worth expanding
    on_time_from = max(lower, cursor) if cursor else lower
    on_time = fire_times(cron, tz, on_time_from, upper, limit + 1)
    more = len(on_time) > limit
    fire += on_time[:limit]
    if fire:
        cursor = fire[-1]
    return FirePlan(tuple(fire), skipped, cursor, more=more)


def upcoming(schedule: Schedule, now: datetime, n: int = 5) -> list[datetime]:
    """The next ``n`` fire times after ``now`` (for display: ignores ``enabled``)."""
    return fire_times(schedule.parsed_cron, schedule.zone, _window_start(schedule, now),
                      schedule.end, n)


def following_fire(schedule: Schedule, after: datetime | None) -> datetime | None:
    """The first fire after the cursor ``after`` (None: the schedule never fires again)."""
    if not schedule.enabled:
        return None
    found = fire_times(schedule.parsed_cron, schedule.zone, _window_start(schedule, after),
                       schedule.end, 1)
    return found[0] if found else None


def _window_start(schedule: Schedule, after: datetime | None) -> datetime:
    """The exclusive lower bound of fires still to come after ``after``: never at or
    before the epoch, never before ``start`` (which itself may fire)."""
    lower = max(after or schedule.epoch, schedule.epoch)
    if schedule.start is not None:
        lower = max(lower, schedule.start - timedelta(microseconds=1))
    return lower


def scheduled_instance_id(owner_id: str, fire: datetime) -> str:
    """The run id of one fire of a schedule or one date of a backfill: the same inputs
    always give the same id, so a repeated fire is a no-op at the orchestrator."""
    return str(uuid.uuid5(uuid.UUID(owner_id), fire.astimezone(UTC).isoformat()))


def validate_schedule_fields(d: Mapping[str, Any]) -> list[Problem]:
    """Problems with the user-given fields of a schedule, each naming its field."""
    problems: list[Problem] = []
    if not isinstance(d.get("workflow"), str) or not d.get("workflow"):
        problems.append(Problem("workflow", "required: the name of a workflow"))
    try:
        parse_cron(d.get("cron"))
    except CronInvalid as exc:
        problems.append(Problem("cron", str(exc)))
    try:
        parse_timezone(d.get("timezone") or "UTC")
    except ValueError as exc:
        problems.append(Problem("timezone", str(exc)))
    if d.get("catchup") is not None and d.get("catchup") not in {c.value for c in Catchup}:
        problems.append(Problem("catchup", "must be one of all, latest, none"))
    start, end = d.get("start"), d.get("end")
    if isinstance(start, datetime) and isinstance(end, datetime) and (
            (start.tzinfo is None) == (end.tzinfo is None)) and end < start:
        problems.append(Problem("end", "is before start"))
    return problems


# --------------------------------------------------------------------------- backfills


# Namespace of backfill ids derived from their content (re-submitting is harmless).
BACKFILL_NAMESPACE = uuid.UUID("7b0e0e3c-52f8-4d0c-9c38-6a1f4d8e2b11")


class BackfillMode(StrEnum):
    SERIAL = "serial"
    PARALLEL = "parallel"


def backfill_times(*, cron: Cron, tz: ZoneInfo, start: datetime | None = None,
                   end: datetime | None = None, dates: Sequence[datetime] | None = None,
                   reverse: bool = False, limit: int = MAX_BACKFILL_RUNS) -> list[datetime]:
    """The schedule times of a backfill, in the order runs are admitted: the explicit
    ``dates`` (de-duplicated), else the fires of ``cron`` in ``[start, end]``.
    Raises ValueError when there are more than ``limit``."""
    if dates:
        times = sorted({d.astimezone(UTC) for d in dates})
    else:
        if start is None or end is None:
            raise ValueError("give start and end, or dates")
        times = fire_times(cron, tz, start - timedelta(microseconds=1), end, limit + 1)
    if len(times) > limit:
        raise ValueError(f"more than {limit} runs; split the range")
    return times[::-1] if reverse else times


# Above this many runs a backfill is confirmed first (the CLI's --yes, the console's
# dialog): a cron taken from the workflow's schedule can plan far more than one expects.
BACKFILL_CONFIRM_ABOVE = 1_000


class TimetableSource(StrEnum):
    """Where a backfill's run times come from."""

    CRON = "cron"          # the request's own cron
    SCHEDULE = "schedule"  # the workflow's schedule (CONTRACT's default)
    DAILY = "daily"        # neither: daily at midnight
    DATES = "dates"        # the explicit dates


class BackfillInvalid(ValueError):
    """A backfill request that plans nothing; ``path`` names the field at fault."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True)
class BackfillPlan:
    """What a backfill will do, before it is created: its run times (in admission order)
    and where they come from."""

    source: TimetableSource
    cron: str
    timezone: str
    times: tuple[datetime, ...]

    @property
    def count(self) -> int:
        return len(self.times)

    @property
    def needs_confirmation(self) -> bool:
        return self.count > BACKFILL_CONFIRM_ABOVE

    def summary(self) -> dict[str, Any]:
        return {"source": self.source.value, "cron": self.cron, "timezone": self.timezone,
                "count": self.count, "first": _iso(min(self.times)),
                "last": _iso(max(self.times)), "confirm_above": BACKFILL_CONFIRM_ABOVE,
                "needs_confirmation": self.needs_confirmation,
                "description": self.describe()}

    def describe(self) -> str:
        """One sentence for people: how many runs, from which timetable, over which span."""
        zone = self.timezone
        timetable = {
            TimetableSource.CRON: f"the fires of '{self.cron}' ({zone})",
            TimetableSource.SCHEDULE: f"the fires of the workflow's schedule '{self.cron}' "
                                      f"({zone})",
            TimetableSource.DAILY: f"one run per day at midnight ({zone}; no schedule, "
                                   "no cron given)",
            TimetableSource.DATES: "the dates given",
        }[self.source]
        first, last = min(self.times), max(self.times)
        zi = parse_timezone(zone)
        span = (f"on {_local(first, zi).isoformat(' ')}" if first == last else
                f"from {_local(first, zi).isoformat(' ')} to {_local(last, zi).isoformat(' ')}")
        return f"{self.count:,} run{'s' if self.count != 1 else ''}: {timetable}, {span}"


# A day's margin from datetime's own ends: zone offsets and the planner's look-around
# (a microsecond before start, a DST slack) never step outside what datetime holds.
_FIRST_DAY, _LAST_DAY = date(1, 1, 2), date(9999, 12, 30)


def plan_backfill(*, cron: str | None, timezone: str | None,
                  schedule: tuple[str, str] | None, start: datetime | None = None,
                  end: datetime | None = None, dates: Sequence[datetime] | None = None,
                  reverse: bool = False) -> BackfillPlan:
    """The plan of a backfill request. The timetable is ``cron`` when given, else the
    workflow's ``schedule`` (its cron and zone), else daily at midnight; the zone is
    ``timezone``, else the schedule's, else UTC. Naive times are wall-clock times in that
    zone. Raises :class:`BackfillInvalid` naming the field at fault."""
    if cron:
        source = TimetableSource.CRON
    elif schedule is not None:
        source, cron = TimetableSource.SCHEDULE, schedule[0]
    else:
        source, cron = TimetableSource.DAILY, DEFAULT_BACKFILL_CRON
    if dates:
        source = TimetableSource.DATES
    zone = timezone or (schedule[1] if schedule is not None else "UTC")
    try:
        parsed = parse_cron(cron)
    except CronInvalid as exc:
        raise BackfillInvalid("cron", str(exc)) from None
    try:
        tz = parse_timezone(zone)
    except ValueError as exc:
        raise BackfillInvalid("timezone", str(exc)) from None
    if not dates and (start is None or end is None):
        raise BackfillInvalid("start", "give start and end, or dates")
    for path, value in (("start", start), ("end", end), *(("dates", d) for d in dates or ())):
        if value is not None and not (_FIRST_DAY <= value.date() <= _LAST_DAY):
            raise BackfillInvalid(path, f"{value.isoformat()} is outside the calendar "
                                        f"backfills plan in ({_FIRST_DAY} to {_LAST_DAY})")
    try:
        times = backfill_times(
            cron=parsed, tz=tz, start=localize(start, tz) if start else None,
            end=localize(end, tz) if end else None,
            dates=[localize(d, tz) for d in dates] if dates else None, reverse=reverse)
    except ValueError as exc:
        raise BackfillInvalid("end", str(exc)) from None
    if not times:
        raise BackfillInvalid("start", f"no fire of '{cron}' ({zone}) between start and end")
    return BackfillPlan(source=source, cron=cron, timezone=zone, times=tuple(times))


def backfill_admissions(*, mode: BackfillMode, parallelism: int, admitted: int, total: int,
                        finished: int, previous_succeeded: bool) -> int:
    """How many more runs a backfill may start now.

    serial: one at a time, in order; the next starts once the previous one *succeeded*
    (a failed or stopped run holds the backfill until it is recovered, as
    DolphinScheduler's serial complement stops at a failure). parallel: keep
    ``parallelism`` runs unfinished at most.
    """
    left = total - admitted
    if left <= 0:
        return 0
    if mode is BackfillMode.SERIAL:
        return 1 if admitted == 0 or previous_succeeded else 0
    return max(0, min(parallelism - (admitted - finished), left))


# --------------------------------------------------------------------------- helpers


def _iso(v: datetime | None) -> str | None:
    return v.astimezone(UTC).isoformat() if v is not None else None


def _dt(v: Any) -> datetime | None:
    if v is None or v == "":
        return None
    if isinstance(v, datetime):
        return v
    d = datetime.fromisoformat(str(v))
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return d


def _require_dt(v: Any) -> datetime:
    d = _dt(v)
    if d is None:
        raise ValueError("a time is required")
    return d


def localize(value: datetime, tz: ZoneInfo) -> datetime:
    """A user-given time: naive means wall-clock time in the schedule's zone."""
    return _to_instant(value, tz) if value.tzinfo is None else value.astimezone(UTC)

