"""Fire times, pure: cron syntax, intervals, DST in Europe/Berlin, and the catch-up plan of one
tick, all with fixed times (no clock, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from app.models.schedule import MAX_CATCH_UP_FIRES, CatchUp, ScheduleCreate, ScheduleUpdate
from app.services.schedule_times import (
    CronCadence,
    IntervalCadence,
    fire_time_text,
    first_fire,
    plan_fires,
)

BERLIN = ZoneInfo("Europe/Berlin")
GRACE = timedelta(seconds=2)
TASK = {"task_type": "report"}


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def fires(cadence: CronCadence | IntervalCadence, since: datetime, count: int) -> list[datetime]:
    found, moment = [], since
    for _ in range(count):
        upcoming = cadence.after(moment)
        assert upcoming is not None
        found.append(upcoming)
        moment = upcoming
    return found


def refusal(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    with pytest.raises(ValidationError) as caught:
        ScheduleCreate.model_validate({"schedule_id": "s", "task": TASK} | body)
    return [error["loc"] for error in caught.value.errors()]


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * *"}, "cron"),
        ({"cron": "0 0 * * * *"}, "cron"),  # croniter's seconds field is not standard cron
        ({"cron": "0 0 31 2 *"}, "cron"),  # valid syntax, never fires
        ({"cron": "0 2 * * mon-fri", "timezone": "Mars/Olympus"}, "timezone"),
        ({"cron": "* * * * *", "interval_seconds": 5}, "interval_seconds"),
        ({}, "interval_seconds"),
        ({"interval_seconds": 0}, "interval_seconds"),
        ({"interval_seconds": 5, "catch_up": "some"}, "catch_up"),
        ({"interval_seconds": 5, "start_at": "2026-01-01T00:00:00"}, "start_at"),
        (
            {
                "interval_seconds": 5,
                "start_at": "2026-01-02T00:00:00Z",
                "end_at": "2026-01-01T00:00:00Z",
            },
            "end_at",
        ),
        ({"interval_seconds": 5, "max_concurrent_runs": 0}, "max_concurrent_runs"),
    ],
)
def test_invalid_schedules_are_refused_naming_the_field(body: dict[str, Any], field: str) -> None:
    assert refusal(body) == [(field,)]


def test_a_schedule_id_leaves_room_for_the_fire_time_in_the_task_id() -> None:
    assert refusal({"schedule_id": "x" * 56, "interval_seconds": 5}) == [("schedule_id",)]


def test_standard_cron_with_names_ranges_and_steps_is_accepted() -> None:
    spec = ScheduleCreate.model_validate(
        {"schedule_id": "s", "cron": "*/15 2-4 * jan,jul mon-fri", "task": TASK}
    )
    assert spec.timezone == "UTC" and spec.catch_up == CatchUp.ONE


def test_an_update_names_only_the_fields_it_changes() -> None:
    assert ScheduleUpdate.model_validate({"enabled": False}).changes() == {"enabled": False}
    with pytest.raises(ValidationError):
        ScheduleUpdate.model_validate({"cron": "* * * * *", "interval_seconds": 1})


# --- cadences ----------------------------------------------------------------------------------


def test_cron_fires_on_weekdays_at_two_in_its_zone() -> None:
    cadence = CronCadence("0 2 * * 1-5", ZoneInfo("America/New_York"))
    # Friday 2026-01-02 noon UTC: next Monday, Tuesday at 02:00 New York (07:00 UTC in winter).
    assert fires(cadence, utc(2026, 1, 2, 12), 2) == [utc(2026, 1, 5, 7), utc(2026, 1, 6, 7)]


def test_interval_counts_from_its_anchor_in_whole_seconds() -> None:
    cadence = IntervalCadence(utc(2026, 1, 1), timedelta(seconds=300))
    assert cadence.after(utc(2026, 1, 1, 0, 7)) == utc(2026, 1, 1, 0, 10)
    assert cadence.after(utc(2026, 1, 1, 0, 10)) == utc(2026, 1, 1, 0, 15)  # strictly after
    assert cadence.at_or_before(utc(2026, 1, 1, 0, 10)) == utc(2026, 1, 1, 0, 10)
    assert cadence.at_or_before(utc(2025, 12, 31)) is None
    assert cadence.after(utc(2025, 12, 31)) == utc(2026, 1, 1)


def test_cron_skipped_hour_fires_at_the_first_valid_time_after() -> None:
    # 2026-03-29: Berlin jumps from 02:00 CET to 03:00 CEST; 02:30 does not exist that day.
    cadence = CronCadence("30 2 * * *", BERLIN)
    assert fires(cadence, utc(2026, 3, 28, 12), 3) == [
        utc(2026, 3, 29, 1),  # 03:00 CEST, the first valid time after 02:30
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
        utc(2026, 3, 31, 0, 30),
    ]


def test_cron_repeated_hour_fires_once() -> None:
    # 2026-10-25: Berlin goes back from 03:00 CEST to 02:00 CET; 02:30 happens twice.
    cadence = CronCadence("30 2 * * *", BERLIN)
    assert fires(cadence, utc(2026, 10, 24, 12), 3) == [
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first occurrence
        utc(2026, 10, 26, 1, 30),  # 02:30 CET: the repeat at 01:30 UTC on the 25th is skipped
        utc(2026, 10, 27, 1, 30),
    ]
    assert cadence.at_or_before(utc(2026, 10, 25, 1, 45)) == utc(2026, 10, 25, 0, 30)


def test_an_hourly_cron_keeps_wall_clock_hours_across_the_autumn_change() -> None:
    cadence = CronCadence("0 * * * *", BERLIN)
    # 02:00 CEST, (02:00 CET repeated: skipped), 03:00 CET, 04:00 CET.
    assert fires(cadence, utc(2026, 10, 24, 23, 30), 3) == [
        utc(2026, 10, 25, 0),
        utc(2026, 10, 25, 2),
        utc(2026, 10, 25, 3),
    ]


def test_fire_time_text_is_iso_utc_and_fits_a_task_id() -> None:
    moment = datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN)
    assert fire_time_text(moment) == "2026-03-29T01:00:00Z"


def test_first_fire_respects_start_and_end() -> None:
    cadence = IntervalCadence(utc(2026, 1, 1), timedelta(hours=1))
    now = utc(2026, 1, 1, 0, 30)
    assert first_fire(cadence, now=now, start_at=None, end_at=None) == utc(2026, 1, 1, 1)
    assert first_fire(cadence, now=now, start_at=utc(2026, 1, 1, 5), end_at=None) == utc(
        2026, 1, 1, 5
    )
    assert first_fire(cadence, now=now, start_at=None, end_at=utc(2026, 1, 1, 0, 59)) is None


# --- catch-up --------------------------------------------------------------------------------

EVERY_10S = IntervalCadence(utc(2026, 1, 1), timedelta(seconds=10))
# The leader was away from 00:00:10 to 00:01:00.5: five fire times missed, 00:01:00 on time.
AWAY_SINCE, BACK_AT = (
    utc(2026, 1, 1, 0, 0, 10),
    utc(2026, 1, 1, 0, 1, 0) + timedelta(milliseconds=500),
)


def plan(catch_up: CatchUp, **overrides: Any) -> Any:
    options: dict[str, Any] = {"next_fire_at": AWAY_SINCE, "now": BACK_AT, "grace": GRACE}
    return plan_fires(EVERY_10S, catch_up=catch_up, **(options | overrides))


def test_catch_up_none_fires_only_what_is_on_time() -> None:
    result = plan(CatchUp.NONE)
    assert result.fire == [utc(2026, 1, 1, 0, 1)]
    assert result.missed_skipped
    assert result.next_fire_at == utc(2026, 1, 1, 0, 1, 10)


def test_catch_up_one_fires_the_latest_missed_time_once() -> None:
    assert plan(CatchUp.ONE).fire == [utc(2026, 1, 1, 0, 0, 50), utc(2026, 1, 1, 0, 1)]


def test_catch_up_all_fires_each_missed_time_in_order() -> None:
    result = plan(CatchUp.ALL)
    assert result.fire == [utc(2026, 1, 1, 0, 0, s) for s in (10, 20, 30, 40, 50)] + [
        utc(2026, 1, 1, 0, 1)
    ]
    assert not result.missed_skipped


def test_catch_up_all_is_bounded_after_a_long_outage() -> None:
    result = plan(CatchUp.ALL, now=utc(2026, 3, 1))
    assert len(result.fire) == MAX_CATCH_UP_FIRES + 1  # the latest missed ones, and now's
    assert result.fire[-1] == utc(2026, 3, 1)
    assert result.missed_skipped


def test_nothing_is_due_before_the_next_fire_time() -> None:
    result = plan(CatchUp.ALL, next_fire_at=utc(2026, 1, 1, 0, 1, 10))
    assert result.fire == []


def test_no_fire_after_end_at() -> None:
    result = plan(CatchUp.ALL, end_at=utc(2026, 1, 1, 0, 0, 25))
    assert result.fire == [utc(2026, 1, 1, 0, 0, 10), utc(2026, 1, 1, 0, 0, 20)]
    assert result.next_fire_at is None
