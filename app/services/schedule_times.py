"""When a schedule fires: its cadence (cron in a time zone, or a fixed interval) and the plan of
one leader tick (which fire times to fire, which to skip by the catch-up policy). Pure: no I/O,
no clock of its own, so tests drive every case with fixed times.

DST (docs/schedules.md): a cron fires at wall-clock times of its zone. A time that does not exist
(the skipped hour in spring) fires at the first valid time after it, which is what croniter does.
A wall-clock time that occurs twice (the repeated hour in autumn) fires once, at its first
occurrence: croniter would fire both, and a job set for 02:30 is meant to run once a day."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

from app.models.schedule import MAX_CATCH_UP_FIRES, CatchUp

TICK = timedelta(microseconds=1)
# A cron whose fire times are all repeated wall-clock times (none is, in practice) must not make
# the search run for ever.
MAX_CRON_STEPS = 1000


class Cadence(Protocol):
    def after(self, moment: datetime) -> datetime | None:
        """The first fire time strictly after `moment` (UTC)."""

    def at_or_before(self, moment: datetime) -> datetime | None:
        """The last fire time at or before `moment` (UTC); None when there is none."""


def _repeated(local: datetime) -> bool:
    """The second occurrence of a wall-clock time that the autumn change repeats."""
    if local.fold == 0:
        return False
    return local.replace(fold=0).utcoffset() != local.utcoffset()


@dataclass(frozen=True)
class CronCadence:
    expression: str
    zone: ZoneInfo

    def _walk(self, moment: datetime, *, forward: bool) -> datetime | None:
        times = croniter(self.expression, moment.astimezone(self.zone))
        try:
            for _ in range(MAX_CRON_STEPS):
                local = times.get_next(datetime) if forward else times.get_prev(datetime)
                if not _repeated(local.astimezone(self.zone)):
                    return local.astimezone(UTC)
        except CroniterBadDateError:  # no such time within croniter's search (years apart)
            return None
        return None

    def after(self, moment: datetime) -> datetime | None:
        return self._walk(moment, forward=True)

    def at_or_before(self, moment: datetime) -> datetime | None:
        # croniter's get_prev is strictly before its start: start just after `moment`.
        return self._walk(moment + TICK, forward=False)


@dataclass(frozen=True)
class IntervalCadence:
    """anchor, anchor + step, anchor + 2 step, ...: the zone plays no part."""

    anchor: datetime
    step: timedelta

    def after(self, moment: datetime) -> datetime:
        if moment < self.anchor:
            return self.anchor
        return self.anchor + ((moment - self.anchor) // self.step + 1) * self.step

    def at_or_before(self, moment: datetime) -> datetime | None:
        if moment < self.anchor:
            return None
        return self.anchor + ((moment - self.anchor) // self.step) * self.step


def cadence(
    *, cron: str | None, interval_seconds: int | None, timezone: str, anchor: datetime
) -> Cadence:
    """The cadence of a schedule; `anchor` (its start_at, else when it was created) is where an
    interval counts from, in whole seconds so that fire times (and task ids) are too."""
    if cron is not None:
        return CronCadence(cron, ZoneInfo(timezone))
    assert interval_seconds is not None
    return IntervalCadence(anchor.replace(microsecond=0), timedelta(seconds=interval_seconds))


def first_fire(
    times: Cadence, *, now: datetime, start_at: datetime | None, end_at: datetime | None
) -> datetime | None:
    """The next fire time of a schedule created, changed or resumed at `now`: strictly after
    now (a resumed schedule does not replay its pause), not before start_at, not after end_at."""
    if start_at is not None and start_at > now:
        upcoming = times.after(start_at - TICK)
    else:
        upcoming = times.after(now)
    return _within(upcoming, end_at)


def _within(moment: datetime | None, end_at: datetime | None) -> datetime | None:
    return None if moment is None or (end_at is not None and moment > end_at) else moment


@dataclass
class FirePlan:
    fire: list[datetime] = field(default_factory=list)  # oldest first
    missed_skipped: bool = False  # some missed fire times were skipped by the catch-up policy
    next_fire_at: datetime | None = None


def _due_newest_first(times: Cadence, since: datetime, until: datetime) -> Iterator[datetime]:
    moment = times.at_or_before(until)
    while moment is not None and moment >= since:
        yield moment
        moment = times.at_or_before(moment - TICK)


def plan_fires(
    times: Cadence,
    *,
    next_fire_at: datetime,
    now: datetime,
    catch_up: CatchUp,
    grace: timedelta,
    end_at: datetime | None = None,
) -> FirePlan:
    """The fire times due at `now`: those from next_fire_at to now (and to end_at). A time within
    `grace` of now is on time and always fires; older ones were missed (no leader fired them)
    and follow `catch_up`: none skips them, one fires the latest of them, all fires each (the
    latest MAX_CATCH_UP_FIRES). Walks back from now, so a long outage costs no more than that."""
    until = now if end_at is None else min(now, end_at)
    keep_missed = {CatchUp.NONE: 0, CatchUp.ONE: 1, CatchUp.ALL: MAX_CATCH_UP_FIRES}[catch_up]
    fire: list[datetime] = []
    missed = 0
    for moment in _due_newest_first(times, next_fire_at, until):
        if moment < now - grace:
            if missed == keep_missed:
                return FirePlan(fire[::-1], True, _within(times.after(now), end_at))
            missed += 1
        fire.append(moment)
        if len(fire) > MAX_CATCH_UP_FIRES + keep_missed:
            break  # an interval shorter than the grace: on time, but bounded all the same
    return FirePlan(fire[::-1], False, _within(times.after(now), end_at))


def fire_time_text(moment: datetime) -> str:
    """A fire time as it appears in a task id: ISO 8601 UTC to the second, 'Z' for the offset
    ('+' is not allowed in task ids)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def trigger_time_text(moment: datetime) -> str:
    """A manual trigger's time, to the microsecond: two triggers never share a task id."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
