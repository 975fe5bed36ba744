"""next_fires and friends with an injected clock: crons, DST, windows, catch-up policies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shoal.core.schedule import (
    BACKFILL_CONFIRM_ABOVE,
    BackfillInvalid,
    BackfillMode,
    Catchup,
    CronInvalid,
    Schedule,
    backfill_admissions,
    backfill_times,
    fire_times,
    following_fire,
    next_fires,
    parse_cron,
    parse_timezone,
    plan_backfill,
    scheduled_instance_id,
    upcoming,
    validate_schedule_fields,
)

UTC_TZ = parse_timezone("UTC")
BERLIN = parse_timezone("Europe/Berlin")
T0 = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)


def at(s: str) -> datetime:
    return datetime.fromisoformat(s)


def sched(cron: str = "* * * * *", tz: str = "UTC", **kw: object) -> Schedule:
    base: dict[str, object] = {"id": "5f0c5ad2-6f0e-4a39-8d43-3c5a4d3f0b61",
                               "workflow": "w", "cron": cron, "timezone": tz,
                               "epoch": T0 - timedelta(days=365),
                               "enabled_at": T0 - timedelta(days=365)}
    base.update(kw)
    return Schedule(**base)  # type: ignore[arg-type]


def local(times: list[datetime], tz: object = BERLIN) -> list[str]:
    return [t.astimezone(tz).isoformat() for t in times]  # type: ignore[arg-type]


# ------------------------------------------------------------------ cron dialects

@pytest.mark.parametrize(("expr", "after", "expected"), [
    # standard 5-field
    ("*/15 * * * *", "2026-06-01T10:00:00+00:00",
     ["2026-06-01T10:15:00+00:00", "2026-06-01T10:30:00+00:00"]),
    ("0 2 * * 1", "2026-06-01T00:00:00+00:00",  # Monday in cron numbering
     ["2026-06-01T02:00:00+00:00", "2026-06-08T02:00:00+00:00"]),
    # Quartz, as DolphinScheduler writes them
    ("0 0 2 * * ?", "2026-06-01T00:00:00+00:00",
     ["2026-06-01T02:00:00+00:00", "2026-06-02T02:00:00+00:00"]),
    ("0/2 * * * * ?", "2026-06-01T10:00:00+00:00",
     ["2026-06-01T10:00:02+00:00", "2026-06-01T10:00:04+00:00"]),
    ("0 0 2 ? * 2", "2026-06-01T03:00:00+00:00",  # Quartz 2 = Monday
     ["2026-06-08T02:00:00+00:00", "2026-06-15T02:00:00+00:00"]),
    ("0 0 2 ? * MON-FRI", "2026-06-05T03:00:00+00:00",
     ["2026-06-08T02:00:00+00:00", "2026-06-09T02:00:00+00:00"]),
    ("0 0 2 ? * 6#1", "2026-06-01T00:00:00+00:00",  # first Friday
     ["2026-06-05T02:00:00+00:00", "2026-07-03T02:00:00+00:00"]),
    ("0 0 2 L * ?", "2026-06-01T00:00:00+00:00",
     ["2026-06-30T02:00:00+00:00", "2026-07-31T02:00:00+00:00"]),
    ("0 30 1 1 1 ? 2027-2028", "2026-06-01T00:00:00+00:00",  # 7 fields: with years
     ["2027-01-01T01:30:00+00:00", "2028-01-01T01:30:00+00:00"]),
    ("0 0 * * * ? *", "2026-06-01T10:30:00+00:00",  # DolphinScheduler's hourly default
     ["2026-06-01T11:00:00+00:00", "2026-06-01T12:00:00+00:00"]),
])
def test_cron_dialects(expr: str, after: str, expected: list[str]) -> None:
    got = fire_times(parse_cron(expr), UTC_TZ, at(after), None, 2)
    assert [t.isoformat() for t in got] == expected


@pytest.mark.parametrize(("expr", "says"), [
    ("", "non-empty"),
    ("* * *", "expected 5 fields"),
    ("0 0 25 * * ?", "not a valid cron"),
    ("0 0 2 ? * 9", "out of range"),
    ("0 0 2 1 * 2", "not both"),
    ("0 0 2 ? * 6L", "not supported"),
    ("0 0 2 15W * ?", "not a valid cron"),
    ("61 * * * *", "not a valid cron"),
])
def test_invalid_crons_say_why(expr: str, says: str) -> None:
    with pytest.raises(CronInvalid, match=says):
        parse_cron(expr)


def test_validation_names_the_field() -> None:
    problems = validate_schedule_fields({"workflow": "w", "cron": "nope", "timezone": "Mars/Base",
                                         "catchup": "some"})
    assert {p.path for p in problems} == {"cron", "timezone", "catchup"}
    assert validate_schedule_fields({"workflow": "w", "cron": "0 0 2 * * ?",
                                     "timezone": "Europe/Berlin"}) == []


# ------------------------------------------------------------------ daylight saving

def test_spring_forward_daily_in_the_gap_fires_once_after_it() -> None:
    # 2026-03-29 02:30 does not exist in Berlin: it fires at 03:30 CEST, the same day.
    got = fire_times(parse_cron("0 30 2 * * ?"), BERLIN, at("2026-03-27T00:00:00+00:00"),
                     None, 4)
    assert local(got) == ["2026-03-27T02:30:00+01:00", "2026-03-28T02:30:00+01:00",
                          "2026-03-29T03:30:00+02:00", "2026-03-30T02:30:00+02:00"]


def test_spring_forward_hourly_has_no_double_fire() -> None:
    got = fire_times(parse_cron("0 * * * *"), BERLIN, at("2026-03-28T23:30:00+00:00"), None, 4)
    assert local(got) == ["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00",
                          "2026-03-29T04:00:00+02:00", "2026-03-29T05:00:00+02:00"]


def test_fall_back_repeated_time_fires_once() -> None:
    got = fire_times(parse_cron("0 30 2 * * ?"), BERLIN, at("2026-10-23T12:00:00+00:00"),
                     None, 3)
    assert local(got) == ["2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00",
                          "2026-10-26T02:30:00+01:00"]
    hourly = fire_times(parse_cron("0 * * * *"), BERLIN, at("2026-10-24T23:30:00+00:00"),
                        None, 3)
    assert local(hourly) == ["2026-10-25T02:00:00+02:00", "2026-10-25T03:00:00+01:00",
                             "2026-10-25T04:00:00+01:00"]


def test_fall_back_cursor_in_the_second_hour_does_not_fire_again() -> None:
    # The repeated hour's local times fired in their first occurrence (CEST); from a
    # cursor inside the second one (02:15 CET) the next fire is the first new local time.
    cursor = at("2026-10-25T02:15:00+01:00")
    got = fire_times(parse_cron("*/15 * * * *"), BERLIN, cursor, None, 3)
    assert local(got) == ["2026-10-25T03:00:00+01:00", "2026-10-25T03:15:00+01:00",
                          "2026-10-25T03:30:00+01:00"]


def test_last_day_across_dst_is_a_normal_fire() -> None:
    got = fire_times(parse_cron("0 0 0 * * ?"), BERLIN, at("2026-03-28T12:00:00+00:00"), None, 2)
    assert local(got) == ["2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00"]


# ------------------------------------------------------------------ windows

def test_start_and_end_window_are_inclusive() -> None:
    s = sched("0 * * * *", start=at("2026-06-01T12:00:00+00:00"),
              end=at("2026-06-01T14:00:00+00:00"))
    plan = next_fires(s, after=None, until=at("2026-06-02T00:00:00+00:00"),
                      owned_since=T0 - timedelta(days=1))
    assert [t.hour for t in plan.fire] == [12, 13, 14]
    assert following_fire(s, plan.cursor) is None
    assert upcoming(s, at("2026-06-01T12:30:00+00:00")) == [
        at("2026-06-01T13:00:00+00:00"), at("2026-06-01T14:00:00+00:00")]


def test_epoch_hides_the_past_of_a_new_timetable() -> None:
    s = sched("0 * * * *", epoch=at("2026-06-01T09:30:00+00:00"),
              enabled_at=at("2026-06-01T09:30:00+00:00"))
    plan = next_fires(s, after=None, until=at("2026-06-01T11:00:00+00:00"),
                      owned_since=at("2026-06-01T09:00:00+00:00"))
    assert [t.hour for t in plan.fire] == [10, 11]


# ------------------------------------------------------------------ catch-up policies

CURSOR = at("2026-06-01T10:00:00+00:00")
OWNED = at("2026-06-01T10:05:30+00:00")   # a new owner took over at 10:05:30
NOW = at("2026-06-01T10:07:10+00:00")


@pytest.mark.parametrize(("catchup", "minutes", "skipped"), [
    (Catchup.ALL, [1, 2, 3, 4, 5, 6, 7], 0),
    (Catchup.LATEST, [5, 6, 7], 0),
    (Catchup.NONE, [6, 7], 1),
])
def test_catchup_policies(catchup: Catchup, minutes: list[int], skipped: int) -> None:
    plan = next_fires(sched(catchup=catchup), after=CURSOR, until=NOW, owned_since=OWNED)
    assert [t.minute for t in plan.fire] == minutes
    assert plan.skipped == skipped
    assert plan.cursor == at("2026-06-01T10:07:00+00:00")
    assert not plan.more


def test_catchup_none_with_nothing_on_time_still_moves_the_cursor() -> None:
    plan = next_fires(sched(catchup=Catchup.NONE), after=CURSOR,
                      until=at("2026-06-01T10:05:40+00:00"), owned_since=OWNED)
    assert plan.fire == ()
    assert plan.cursor == at("2026-06-01T10:05:00+00:00")


def test_fires_while_disabled_are_missed_and_follow_catchup() -> None:
    switched_on = at("2026-06-01T10:05:30+00:00")
    for catchup, expected in [(Catchup.ALL, 7), (Catchup.LATEST, 3), (Catchup.NONE, 2)]:
        s = sched(catchup=catchup, enabled_at=switched_on)
        plan = next_fires(s, after=CURSOR, until=NOW, owned_since=T0 - timedelta(days=1))
        assert len(plan.fire) == expected, catchup


def test_disabled_schedule_fires_nothing_and_keeps_its_cursor() -> None:
    plan = next_fires(sched(enabled=False), after=CURSOR, until=NOW, owned_since=OWNED)
    assert plan == type(plan)((), 0, CURSOR, more=False)
    assert following_fire(sched(enabled=False), CURSOR) is None


def test_on_time_fire_is_not_missed() -> None:
    # The owner wakes 3 ms after the fire time: that fire is on time for every policy.
    for catchup in Catchup:
        plan = next_fires(sched(catchup=catchup), after=CURSOR,
                          until=at("2026-06-01T10:01:00.003+00:00"), owned_since=CURSOR)
        assert [t.minute for t in plan.fire] == [1]


def test_long_catchup_comes_in_pages() -> None:
    s = sched("0/2 * * * * ?")
    plan = next_fires(s, after=CURSOR, until=CURSOR + timedelta(hours=1), owned_since=OWNED,
                      limit=100)
    assert len(plan.fire) == 100 and plan.more
    plan2 = next_fires(s, after=plan.cursor, until=CURSOR + timedelta(hours=1),
                       owned_since=OWNED, limit=100)
    assert plan2.fire[0] == plan.fire[-1] + timedelta(seconds=2)


def test_latest_over_a_year_does_not_expand_the_gap() -> None:
    s = sched("0/2 * * * * ?", catchup=Catchup.LATEST)
    plan = next_fires(s, after=CURSOR - timedelta(days=365), until=NOW, owned_since=NOW)
    # the latest missed fire, then the one due at the moment of taking over (on time)
    assert plan.fire == (at("2026-06-01T10:07:08+00:00"), at("2026-06-01T10:07:10+00:00"))


# ------------------------------------------------------------------ properties

CRONS = ["*/7 * * * *", "0 * * * *", "30 2 * * *", "0 */20 * * * ?", "0 15 1-3 * * ?",
         "0 0 0 ? * 1", "*/15 2-3 * * *"]
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
instants = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31),
                        timezones=st.just(UTC))


@settings(max_examples=150, deadline=None)
@given(cron=st.sampled_from(CRONS), zone=st.sampled_from(ZONES), a=instants,
       span=st.integers(1, 3 * 24 * 3600), cut=st.floats(0, 1))
def test_resuming_from_any_cursor_loses_and_repeats_nothing(cron: str, zone: str, a: datetime,
                                                            span: int, cut: float) -> None:
    """Fires of (a, c] == fires of (a, b] then of (b, c] from the cursor they left: a
    scheduler that stops anywhere and resumes from its cursor fires each time once."""
    c = a + timedelta(seconds=span)
    b = a + timedelta(seconds=span * cut)
    parsed, tz = parse_cron(cron), parse_timezone(zone)
    whole = fire_times(parsed, tz, a, c, 10_000)
    first = fire_times(parsed, tz, a, b, 10_000)
    cursor = first[-1] if first else a
    rest = fire_times(parsed, tz, cursor, c, 10_000)
    assert first + rest == whole
    assert whole == sorted(set(whole))
    assert all(a < t <= c for t in whole)


@settings(max_examples=100, deadline=None)
@given(cron=st.sampled_from(CRONS), zone=st.sampled_from(ZONES), a=instants,
       steps=st.lists(st.integers(1, 6 * 3600), min_size=1, max_size=8))
def test_passes_at_any_times_fire_exactly_the_timetable(cron: str, zone: str, a: datetime,
                                                        steps: list[int]) -> None:
    """A schedule evaluated at arbitrary wake-up times, keeping only its cursor, fires
    exactly the fires of its timetable (catchup all, one owner throughout)."""
    s = sched(cron, zone, epoch=a, enabled_at=a)
    now, cursor, fired = a, None, []
    for step in steps:
        now += timedelta(seconds=step)
        more = True
        while more:
            plan = next_fires(s, after=cursor, until=now, owned_since=a, limit=50)
            fired += plan.fire
            cursor, more = plan.cursor, plan.more
    assert fired == fire_times(parse_cron(cron), parse_timezone(zone), a, now, 10_000)


def test_instance_ids_are_deterministic_per_owner_and_time() -> None:
    sid = "5f0c5ad2-6f0e-4a39-8d43-3c5a4d3f0b61"
    t = at("2026-06-01T10:00:00+00:00")
    assert scheduled_instance_id(sid, t) == scheduled_instance_id(
        sid, at("2026-06-01T12:00:00+02:00"))
    assert scheduled_instance_id(sid, t) != scheduled_instance_id(sid, t + timedelta(seconds=2))


# ------------------------------------------------------------------ backfills

def test_backfill_days_inclusive_and_reverse() -> None:
    days = backfill_times(cron=parse_cron("0 0 * * *"), tz=UTC_TZ,
                          start=at("2026-01-01T00:00:00+00:00"),
                          end=at("2026-01-05T00:00:00+00:00"))
    assert [d.day for d in days] == [1, 2, 3, 4, 5]
    rev = backfill_times(cron=parse_cron("0 0 * * *"), tz=UTC_TZ,
                         start=at("2026-01-01T00:00:00+00:00"),
                         end=at("2026-01-05T00:00:00+00:00"), reverse=True)
    assert [d.day for d in rev] == [5, 4, 3, 2, 1]


def test_backfill_explicit_dates_are_sorted_and_unique() -> None:
    got = backfill_times(cron=parse_cron("0 0 * * *"), tz=UTC_TZ, dates=[
        at("2026-01-03T00:00:00+00:00"), at("2026-01-01T00:00:00+00:00"),
        at("2026-01-03T00:00:00+00:00")])
    assert [d.day for d in got] == [1, 3]


def test_backfill_is_bounded() -> None:
    with pytest.raises(ValueError, match="more than 10"):
        backfill_times(cron=parse_cron("* * * * *"), tz=UTC_TZ,
                       start=at("2026-01-01T00:00:00+00:00"),
                       end=at("2026-01-02T00:00:00+00:00"), limit=10)


def test_backfill_plan_says_where_its_timetable_comes_from() -> None:
    """The issue's surprise: a schedule firing every 5 s plans 34,561 runs over two days;
    the plan names the schedule as its source and asks for a confirmation."""
    start, end = datetime(2026, 1, 1), datetime(2026, 1, 3)
    plan = plan_backfill(cron=None, timezone=None, schedule=("*/5 * * * * ?", "UTC"),
                         start=start, end=end)
    assert (plan.source, plan.count, plan.needs_confirmation) == ("schedule", 34_561, True)
    summary = plan.summary()
    assert (summary["first"], summary["last"]) == ("2026-01-01T00:00:00+00:00",
                                                    "2026-01-03T00:00:00+00:00")
    assert summary["confirm_above"] == BACKFILL_CONFIRM_ABOVE == 1_000
    assert plan.describe() == ("34,561 runs: the fires of the workflow's schedule "
                               "'*/5 * * * * ?' (UTC), from 2026-01-01 00:00:00 to "
                               "2026-01-03 00:00:00")
    own = plan_backfill(cron="0 6 * * *", timezone="Europe/Berlin",
                        schedule=("*/5 * * * * ?", "UTC"), start=start, end=end)
    assert (own.source, own.count, own.timezone) == ("cron", 2, "Europe/Berlin")
    assert own.summary()["first"] == "2026-01-01T05:00:00+00:00"
    daily = plan_backfill(cron=None, timezone=None, schedule=None, start=start, end=end)
    assert (daily.source, daily.count, daily.needs_confirmation) == ("daily", 3, False)
    assert daily.describe().startswith("3 runs: one run per day at midnight (UTC")
    dates = plan_backfill(cron=None, timezone=None, schedule=("*/5 * * * * ?", "UTC"),
                          dates=[datetime(2026, 1, 2)])
    assert (dates.source, dates.count) == ("dates", 1)
    assert dates.describe() == "1 run: the dates given, on 2026-01-02 00:00:00"


def test_backfill_plan_confirmation_threshold() -> None:
    """1,000 runs go ahead; 1,001 ask first (one run per minute from 00:00)."""
    start = datetime(2026, 1, 1)
    at_limit = plan_backfill(cron="* * * * *", timezone="UTC", schedule=None, start=start,
                             end=start + timedelta(minutes=BACKFILL_CONFIRM_ABOVE - 1))
    over = plan_backfill(cron="* * * * *", timezone="UTC", schedule=None, start=start,
                         end=start + timedelta(minutes=BACKFILL_CONFIRM_ABOVE))
    assert (at_limit.count, at_limit.needs_confirmation) == (1_000, False)
    assert (over.count, over.needs_confirmation) == (1_001, True)


@pytest.mark.parametrize(("kw", "path"), [
    ({"cron": "nope", "start": datetime(2026, 1, 1), "end": datetime(2026, 1, 2)}, "cron"),
    ({"timezone": "Mars/Base", "start": datetime(2026, 1, 1), "end": datetime(2026, 1, 2)},
     "timezone"),
    ({"start": datetime(2026, 1, 1)}, "start"),
    ({"cron": "* * * * *", "start": datetime(2026, 1, 1), "end": datetime(2030, 1, 1)}, "end"),
    ({"cron": "0 0 1 1 *", "start": datetime(2026, 2, 1), "end": datetime(2026, 3, 1)},
     "start"),
])
def test_backfill_plan_names_the_field_at_fault(kw: dict[str, object], path: str) -> None:
    args: dict[str, object] = {"cron": None, "timezone": None, "schedule": None, **kw}
    with pytest.raises(BackfillInvalid) as exc:
        plan_backfill(**args)  # type: ignore[arg-type]
    assert exc.value.path == path


@pytest.mark.parametrize(("mode", "par", "admitted", "finished", "prev_ok", "expected"), [
    (BackfillMode.SERIAL, 1, 0, 0, False, 1),     # the first one
    (BackfillMode.SERIAL, 1, 1, 0, False, 0),     # previous still running
    (BackfillMode.SERIAL, 1, 1, 1, True, 1),      # previous succeeded
    (BackfillMode.SERIAL, 1, 2, 2, False, 0),     # previous failed: held
    (BackfillMode.PARALLEL, 2, 0, 0, False, 2),
    (BackfillMode.PARALLEL, 2, 2, 1, False, 1),
    (BackfillMode.PARALLEL, 2, 4, 3, False, 1),   # only one left of 5
    (BackfillMode.PARALLEL, 3, 5, 5, True, 0),    # all admitted
])
def test_backfill_admissions(mode: BackfillMode, par: int, admitted: int, finished: int,
                             prev_ok: bool, expected: int) -> None:
    assert backfill_admissions(mode=mode, parallelism=par, admitted=admitted, total=5,
                               finished=finished, previous_succeeded=prev_ok) == expected


@settings(max_examples=200, deadline=None)
@given(par=st.integers(1, 8), total=st.integers(0, 40), data=st.data())
def test_parallel_backfill_never_exceeds_its_parallelism(par: int, total: int,
                                                         data: st.DataObject) -> None:
    admitted = finished = 0
    while finished < total:
        n = backfill_admissions(mode=BackfillMode.PARALLEL, parallelism=par,
                                admitted=admitted, total=total, finished=finished,
                                previous_succeeded=True)
        admitted += n
        assert 0 < admitted - finished <= par
        finished += data.draw(st.integers(1, admitted - finished))
    assert admitted == total


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
       st.integers(min_value=0, max_value=3 * 24 * 3600),
       st.sampled_from([None, "UTC", "Asia/Tokyo", "America/New_York", "Pacific/Kiritimati",
                        "Pacific/Pago_Pago"]),
       st.sampled_from([None, "0 0 * * *", "0 */6 * * *"]))
@example(datetime(1, 1, 1), 3600, "Asia/Tokyo", None)
@example(datetime(1, 1, 2), 0, "Pacific/Kiritimati", None)
@example(datetime(9999, 12, 30, 12), 24 * 3600, "Pacific/Pago_Pago", "0 */6 * * *")
def test_a_backfill_anywhere_in_the_calendar_is_planned_or_refused_never_crashes(
        start, seconds, zone, cron):
    """At the calendar's ends (year 1, year 9999) planning used to overflow (a 500 from
    the API, found by the OpenAPI fuzzer): now it is a problem naming the field."""
    try:
        end = start + timedelta(seconds=seconds)
    except OverflowError:
        end = datetime(9999, 12, 31, 23, 59)
    try:
        plan = plan_backfill(cron=cron, timezone=zone, schedule=None, start=start, end=end)
    except BackfillInvalid as exc:
        assert exc.path in ("start", "end"), exc
        return
    assert list(plan.times) == sorted(plan.times)


def test_a_backfill_from_the_first_day_of_the_calendar_names_start():
    with pytest.raises(BackfillInvalid, match=r"^start: 0001-01-01T00:00:00 is outside"):
        plan_backfill(cron=None, timezone=None, schedule=None, start=datetime(1, 1, 1),
                      end=datetime(357, 9, 19, tzinfo=UTC))
