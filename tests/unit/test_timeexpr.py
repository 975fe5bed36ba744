"""Time expressions, table-driven from DolphinScheduler's documented examples and its own
unit tests (TimePlaceholderUtilsTest: base 2022-08-26 00:00)."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.core.timeexpr import (
    TimeExpressionInvalid,
    add_months,
    evaluate,
    expand_params,
    expand_time,
    system_params,
)

DS_TEST_BASE = datetime(2022, 8, 26)
ISSUE_BASE = datetime(2026, 3, 1)


@pytest.mark.parametrize(("expr", "expected"), [
    ("this_day(yyyy-MM-dd)", "2022-08-26"),
    ("this_day(yyyyMMdd)", "20220826"),
    ("last_day(yyyy-MM-dd)", "2022-08-25"),
    ("last_day(yyyyMMdd)", "20220825"),
    ("year_week(yyyy-MM-dd)", "2022-34"),
    ("year_week(yyyyMMdd)", "202234"),
    ("year_week(yyyy-MM-dd,5)", "2022-35"),
    ("year_week(yyyyMMdd,5)", "202235"),
    ("month_first_day(yyyy-MM-dd,-1)", "2022-07-01"),
    ("month_first_day(yyyyMMdd,-1)", "20220701"),
    ("month_last_day(yyyy-MM-dd,-1)", "2022-07-31"),
    ("month_last_day(yyyyMMdd,-1)", "20220731"),
    ("week_first_day(yyyy-MM-dd,0)", "2022-08-22"),
    ("week_first_day(yyyyMMdd,0)", "20220822"),
    ("week_last_day(yyyy-MM-dd,0)", "2022-08-28"),
    ("week_last_day(yyyyMMdd,0)", "20220828"),
])
def test_dolphinscheduler_unit_test_examples(expr: str, expected: str) -> None:
    assert evaluate(expr, DS_TEST_BASE) == expected


@pytest.mark.parametrize(("expr", "expected"), [
    ("yyyyMMdd-1", "20260228"),                     # the issue's acceptance 6
    ("add_months(yyyyMMdd,-1)", "20260201"),
    ("month_last_day(yyyyMMdd,-1)", "20260228"),
    ("yyyyMMdd", "20260301"),                       # the documented forms
    ("yyyy-MM-dd+7", "2026-03-08"),
    ("yyyy-MM-dd-1", "2026-02-28"),
    ("yyyy-MM-dd", "2026-03-01"),
    ("HHmmss-1/24", "230000"),
    ("yyyyMMddHHmmss", "20260301000000"),
    ("yyyyMMddHHmmss+1/24/60", "20260301000100"),
    ("add_months(yyyyMMdd,12*2)", "20280301"),
    ("add_months(yyyyMMdd,-12)", "20250301"),
    ("month_first_day(yyyyMMdd,0)", "20260301"),
    ("month_first_day(yyyyMMdd)", "20260301"),
    ("month_last_day(yyyyMMdd,0)", "20260331"),
    ("week_first_day(yyyyMMdd,-1)", "20260216"),
    ("week_last_day(yyyyMMdd,1)", "20260308"),
    ("month_begin(yyyyMMdd,1)", "20260302"),
    ("month_end(yyyyMMdd,-1)", "20260330"),
    ("week_begin(yyyyMMdd,0)", "20260223"),
    ("week_end(yyyyMMdd,0)", "20260301"),
    ("yyyy/MM/dd 'at' HH:mm", "2026/03/01 at 00:00"),
])
def test_documented_forms(expr: str, expected: str) -> None:
    assert evaluate(expr, ISSUE_BASE) == expected


def test_timestamp_is_epoch_seconds_of_the_time() -> None:
    from datetime import UTC
    base = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert evaluate("timestamp(yyyyMMddHHmmss)", base) == str(int(base.timestamp()))
    assert evaluate("timestamp(yyyyMMdd000000-1)", base) == str(
        int(datetime(2026, 2, 28, tzinfo=UTC).timestamp()))


def test_expand_in_text_and_params_and_system_params() -> None:
    assert expand_time("load $[yyyyMMdd-1] into p_$[yyyyMM]", ISSUE_BASE) == \
        "load 20260228 into p_202603"
    assert expand_time("no expression ${x} here", ISSUE_BASE) == "no expression ${x} here"
    assert expand_params({"day": "$[yyyyMMdd-1]", "n": "3"}, ISSUE_BASE) == {
        "day": "20260228", "n": "3"}
    assert system_params(datetime(2026, 3, 1, 2, 30)) == {
        "system.biz.date": "20260228", "system.biz.curdate": "20260301",
        "system.datetime": "20260301023000"}


@pytest.mark.parametrize("bad", ["nope_fn(yyyyMMdd,1)", "yyyyMMdd+1/0", "add_months(yyyyMMdd,x)",
                                 "qqqq", "month_last_day(yyyyMMdd,(1)"])
def test_bad_expressions_name_themselves(bad: str) -> None:
    with pytest.raises(TimeExpressionInvalid, match=r"\$\["):
        evaluate(bad, ISSUE_BASE)


@given(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 12, 31)),
       st.integers(-600, 600))
def test_add_months_clamps_like_java(d: datetime, n: int) -> None:
    got = add_months(d, n)
    assert (got.year * 12 + got.month) - (d.year * 12 + d.month) == n
    assert got.day == d.day or (got.day < d.day and (got + __import__("datetime").timedelta(
        days=1)).day == 1)
