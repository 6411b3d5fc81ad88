"""framework.control.cron: 5 and 6 fields, timezones, daylight-saving changes, and clear errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from framework.control import cron
from framework.control.cron import next_fire, parse

BERLIN = ZoneInfo("Europe/Berlin")


def test_five_fields_minute_resolution() -> None:
    after = datetime(2024, 1, 1, 10, 7, 30, tzinfo=UTC)
    assert next_fire("*/5 * * * *", "UTC", after) == datetime(2024, 1, 1, 10, 10, tzinfo=UTC)


def test_six_fields_seconds_last() -> None:
    after = datetime(2024, 1, 1, 10, 7, 3, 500_000, tzinfo=UTC)
    cron = parse("* * * * * */10")
    assert list(islice(cron.ticks(after), 3)) == [
        datetime(2024, 1, 1, 10, 7, s, tzinfo=UTC) for s in (10, 20, 30)
    ]
    every_second = list(islice(parse("* * * * * */1").ticks(after), 3))
    assert [t.second for t in every_second] == [4, 5, 6]


def test_strictly_after() -> None:
    on_tick = datetime(2024, 1, 1, 10, 10, tzinfo=UTC)
    assert next_fire("*/5 * * * *", "UTC", on_tick) == on_tick + timedelta(minutes=5)
    assert parse("*/5 * * * *").next(on_tick - timedelta(seconds=1)) == on_tick


def test_timezone_is_applied_and_result_is_aware() -> None:
    after = datetime(2024, 1, 15, 0, 0, tzinfo=UTC)
    fire = next_fire("0 9 * * *", "Europe/Berlin", after)
    assert fire.tzinfo is not None and fire.utcoffset() == timedelta(hours=1)
    assert fire.astimezone(UTC) == datetime(2024, 1, 15, 8, 0, tzinfo=UTC)
    assert next_fire("0 9 * * *", "America/New_York", after).astimezone(UTC).hour == 14


def test_naive_after_is_utc_and_default_is_now() -> None:
    assert next_fire("0 0 * * *", "UTC", datetime(2024, 1, 1, 12)) == datetime(2024, 1, 2, tzinfo=UTC)
    before = datetime.now(UTC)
    fire = next_fire("* * * * * *")
    assert before < fire <= before + timedelta(seconds=2)


def test_spring_forward_skipped_hour_fires_after_the_gap() -> None:
    """2024-03-31 Berlin: 02:00 jumps to 03:00. A 02:30 daily job runs at 03:00 that day (croniter)."""
    ticks = list(
        islice(parse("30 2 * * *", "Europe/Berlin").ticks(datetime(2024, 3, 30, 12, tzinfo=BERLIN)), 2)
    )
    assert ticks[0].astimezone(UTC) == datetime(2024, 3, 31, 1, 0, tzinfo=UTC)
    assert ticks[1] == datetime(2024, 4, 1, 2, 30, tzinfo=BERLIN)
    hourly = list(
        islice(parse("0 * * * *", "Europe/Berlin").ticks(datetime(2024, 3, 31, 0, 30, tzinfo=BERLIN)), 3)
    )
    utc = [t.astimezone(UTC).hour for t in hourly]
    assert utc == [0, 1, 2], "hourly ticks stay one real hour apart across the gap"


def test_fall_back_repeated_hour_fires_per_offset() -> None:
    """2024-10-27 Berlin: 03:00 goes back to 02:00. A 02:30 job fires at both 02:30s (croniter's choice)."""
    ticks = list(
        islice(parse("30 2 * * *", "Europe/Berlin").ticks(datetime(2024, 10, 26, 12, tzinfo=BERLIN)), 3)
    )
    assert [t.astimezone(UTC) for t in ticks] == [
        datetime(2024, 10, 27, 0, 30, tzinfo=UTC),
        datetime(2024, 10, 27, 1, 30, tzinfo=UTC),
        datetime(2024, 10, 28, 1, 30, tzinfo=UTC),
    ]
    utc = [t.astimezone(UTC) for t in ticks]
    assert utc == sorted(utc) and len(set(utc)) == 3, "ticks ascend in real time"


def test_aliases() -> None:
    after = datetime(2024, 1, 1, 10, 7, tzinfo=UTC)
    assert next_fire("@hourly", "UTC", after) == datetime(2024, 1, 1, 11, tzinfo=UTC)


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("", "empty cron"),
        ("   ", "empty cron"),
        ("* * *", "3 fields, expected 5"),
        ("* * * * * * *", "7 fields, expected 5"),
        ("61 * * * *", "bad cron '61 * * * *'"),
        ("* * * * * 99", "bad cron"),
        ("a b c d e", "bad cron 'a b c d e'"),
        ("0 0 31 2 *", "never fires"),
    ],
)
def test_bad_expression_is_a_clear_value_error(cron: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        parse(cron)


@pytest.mark.parametrize("tz", ["", "Mars/Olympus", "Europe/../etc", "not a zone"])
def test_bad_timezone_is_a_clear_value_error(tz: str) -> None:
    with pytest.raises(ValueError, match="timezone"):
        parse("* * * * *", tz)


def test_parse_exposes_expression_and_zone() -> None:
    cron = parse("  */5 * * * *  ", "Europe/Berlin")
    assert cron.expression == "*/5 * * * *" and cron.timezone == "Europe/Berlin"


def test_a_valid_expression_is_checked_once_a_bad_one_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every function's schedules are checked again each time a node works out what it serves: a valid
    expression is remembered (croniter was 60% of that with 1,000 functions); a bad one raises each time."""
    calls: list[str] = []

    def counted(expr: str, *args: Any) -> Any:
        calls.append(expr)
        return croniter(expr, *args)

    monkeypatch.setattr("framework.control.cron.croniter", counted)
    expression = "17 3 * * 2"  # no other test checks this one: not remembered yet
    for _ in range(3):
        cron.check_expression(expression)
    assert calls == [expression, expression]  # one check: its fields, then that it ever fires
    for _ in range(2):
        with pytest.raises(ValueError, match="never fires"):
            cron.check_expression("0 0 31 2 *")
