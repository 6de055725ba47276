"""Periodic schedule schemas: the body of POST/PATCH /api/schedules and what the API answers.

Validation that needs no I/O lives here (cron syntax, time zone name, exactly one of cron and
interval), so a bad request is a 422 naming the field before anything is written."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)

from app.models.task import MAX_TIMEOUT_SECONDS, JsonObject, Name, Priority, TaskStatus

# A fire's task id is "{schedule_id}:{fire time}" and a task id holds at most 100 characters; the
# longest fire time is a manual trigger's "2026-12-01T02:00:00.123456Z" (27); the correlation id
# "schedule:{schedule_id}" must fit its 64 characters, hence 55.
SCHEDULE_ID_MAX_LENGTH = 55
# An interval of up to a year: longer ones are cron's business ("0 0 1 1 *").
MAX_INTERVAL_SECONDS = 366 * 24 * 3600
# The catch-up "all" replays at most this many missed fires per tick, so a schedule paused for
# a month at 1 s does not flood the queue in one go.
MAX_CATCH_UP_FIRES = 100
# Where a new cron expression is tried from, to refuse one that never fires.
NEVER_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)


class CatchUp(StrEnum):
    """What a leader does with fire times that passed while no leader was firing."""

    NONE = "none"  # skip them; fire again from the next time in the future
    ONE = "one"  # fire the latest missed time once
    ALL = "all"  # fire each missed time (at most MAX_CATCH_UP_FIRES per tick)


def _check_cron(expression: str) -> str:
    """Five standard fields only: croniter also accepts a sixth (seconds) and a seventh (year)
    field, which would make a schedule that other cron tools read differently."""
    if len(expression.split()) != 5:
        raise ValueError("a cron expression has exactly 5 fields: minute hour day month weekday")
    if not croniter.is_valid(expression):
        raise ValueError(f"not a valid cron expression: {expression!r}")
    try:
        croniter(expression, NEVER_REFERENCE).get_next(datetime)
    except CroniterBadDateError as exc:  # '0 0 31 2 *': valid syntax, no such day
        raise ValueError(f"cron expression {expression!r} never fires") from exc
    return expression


def _check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {name!r} (an IANA name such as Europe/Berlin)"
        ) from exc
    return name


def _aware(moment: datetime | None) -> datetime | None:
    """A time without an offset is refused: guessing UTC or the server's zone would shift it."""
    if moment is not None and moment.tzinfo is None:
        raise ValueError("a time must carry its offset (for example 2026-12-01T02:00:00Z)")
    return moment


ScheduleId = Annotated[Name, Field(max_length=SCHEDULE_ID_MAX_LENGTH)]
CronExpression = Annotated[StrictStr, Field(max_length=200), AfterValidator(_check_cron)]
TimeZoneName = Annotated[StrictStr, Field(max_length=64), AfterValidator(_check_timezone)]
IntervalSeconds = Annotated[StrictInt, Field(ge=1, le=MAX_INTERVAL_SECONDS)]
AwareTime = Annotated[datetime, AfterValidator(_aware)]
MaxConcurrentRuns = Annotated[StrictInt, Field(ge=1, le=10_000)]


class ScheduleTask(BaseModel):
    """The task each fire creates (its id and correlation id are set by the schedule)."""

    model_config = ConfigDict(extra="forbid")

    task_type: Name
    payload: JsonObject = Field(default_factory=dict)
    priority: Priority = 1
    timeout: StrictInt | None = Field(
        default=None, ge=1, le=MAX_TIMEOUT_SECONDS, description="seconds"
    )
    max_retries: StrictInt | None = Field(default=None, ge=0, le=100)


def _interval_beside_cron(
    interval: int | None, info: ValidationInfo, *, required: bool
) -> int | None:
    """Checked on `interval_seconds` (declared after `cron`, so `cron` is already in info.data)
    rather than on the whole model, so the 422 names a field instead of the whole body."""
    if "cron" not in info.data:
        return interval  # cron itself was refused: that error says enough
    cron = info.data["cron"]
    if cron is not None and interval is not None:
        raise ValueError("give either cron or interval_seconds, not both")
    if required and cron is None and interval is None:
        raise ValueError("give one of cron and interval_seconds")
    return interval


def _end_after_start(end_at: datetime | None, info: ValidationInfo) -> datetime | None:
    start_at = info.data.get("start_at")
    if start_at is not None and end_at is not None and end_at <= start_at:
        raise ValueError("end_at must be after start_at")
    return end_at


class ScheduleCreate(BaseModel):
    """Body of POST /api/schedules: exactly one of `cron` and `interval_seconds`."""

    model_config = ConfigDict(extra="forbid")

    schedule_id: ScheduleId
    cron: CronExpression | None = None
    interval_seconds: IntervalSeconds | None = Field(default=None, validate_default=True)
    timezone: TimeZoneName = "UTC"
    task: ScheduleTask
    enabled: StrictBool = True
    catch_up: CatchUp = CatchUp.ONE
    start_at: AwareTime | None = None
    end_at: AwareTime | None = None
    max_concurrent_runs: MaxConcurrentRuns | None = None

    @field_validator("interval_seconds")
    @classmethod
    def _one_of_cron_interval(cls, interval: int | None, info: ValidationInfo) -> int | None:
        return _interval_beside_cron(interval, info, required=True)

    _end_after_start = field_validator("end_at")(_end_after_start)


class ScheduleUpdate(BaseModel):
    """Body of PATCH /api/schedules/{id}: only the fields given change. Giving `cron` switches an
    interval schedule to cron (and the reverse); `null` clears an optional field."""

    model_config = ConfigDict(extra="forbid")

    cron: CronExpression | None = None
    interval_seconds: IntervalSeconds | None = None
    timezone: TimeZoneName | None = None
    task: ScheduleTask | None = None
    enabled: StrictBool | None = None
    catch_up: CatchUp | None = None
    start_at: AwareTime | None = None
    end_at: AwareTime | None = None
    max_concurrent_runs: MaxConcurrentRuns | None = None

    @field_validator("timezone", "task", "enabled", "catch_up", mode="before")
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        """These may be left out, not cleared: a schedule always has them."""
        if value is None:
            raise ValueError(f"{info.field_name} cannot be null; leave it out to keep it")
        return value

    @field_validator("interval_seconds")
    @classmethod
    def _not_both(cls, interval: int | None, info: ValidationInfo) -> int | None:
        return _interval_beside_cron(interval, info, required=False)

    _end_after_start = field_validator("end_at")(_end_after_start)

    def changes(self) -> dict[str, Any]:
        """The fields the request named, `null` included (it clears start_at, end_at or
        max_concurrent_runs)."""
        return self.model_dump(exclude_unset=True)


class ScheduleFire(BaseModel):
    """One fire time of a schedule: the task it created, or `skipped` (max_concurrent_runs)."""

    fire_at: datetime
    task_id: str | None
    status: TaskStatus | None
    skipped: bool


class SchedulePublic(BaseModel):
    schedule_id: str
    cron: str | None
    interval_seconds: int | None
    timezone: str
    task: ScheduleTask
    enabled: bool
    catch_up: CatchUp
    start_at: datetime | None
    end_at: datetime | None
    max_concurrent_runs: int | None
    next_fire_at: datetime | None
    created_at: datetime
    updated_at: datetime
    # Newest first: the latest few on GET and in lists (LAST_FIRES*, app/services/schedules.py).
    last_fires: list[ScheduleFire] = Field(default_factory=list)


class ScheduleList(BaseModel):
    schedules: list[SchedulePublic]
