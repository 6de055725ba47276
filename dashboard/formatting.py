"""Pure helpers that turn API values into what a person reads: ages, durations, colours."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any, Literal

Zone = Literal["UTC", "local"]
ZONES: tuple[Zone, ...] = ("UTC", "local")
# One format for every time the dashboard prints: ISO order, 24-hour clock, no "T".
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
CLOCK_FORMAT = "%H:%M:%S"

STATUSES = ("pending", "running", "completed", "failed", "cancelled")
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
# One colour per status everywhere (tables, charts, the DAG), colour-blind safe (Okabe-Ito).
STATUS_COLORS = {
    "pending": "#999999",
    "running": "#0072B2",
    "completed": "#009E73",
    "failed": "#D55E00",
    "cancelled": "#CC79A7",
}
# An attempt's outcome in the colour of the status it leads to (app/models/task.py).
OUTCOME_COLORS = {
    "running": STATUS_COLORS["running"],
    "completed": STATUS_COLORS["completed"],
    "error": STATUS_COLORS["failed"],
    "timeout": "#E69F00",
    "worker_lost": "#E69F00",
    "released": STATUS_COLORS["pending"],
    "cancelled": STATUS_COLORS["cancelled"],
}
# The nearest of Streamlit's named badge colours, for legends written in Markdown.
STATUS_BADGES = {
    "pending": "gray",
    "running": "blue",
    "completed": "green",
    "failed": "red",
    "cancelled": "violet",
}
# Task types every worker can run (worker/builtin_tasks.py); workers may announce more.
BUILTIN_TYPES = ("echo", "sleep", "fail", "processing", "analysis", "cpu")


def parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def default_zone() -> Zone:
    """UTC unless DASHBOARD_TIMEZONE=local (the time zone of the machine running the
    dashboard, from its TZ); the sidebar can switch per session."""
    return "local" if os.environ.get("DASHBOARD_TIMEZONE", "").lower() == "local" else "UTC"


def zone_name(zone: Zone) -> str:
    """What a header says: "UTC", or the local zone's abbreviation ("CET")."""
    return "UTC" if zone == "UTC" else datetime.now().astimezone().tzname() or "local"


def in_zone(moment: datetime, zone: Zone) -> datetime:
    """The wall-clock time in `zone`, without tzinfo: what tables and charts draw as is (a chart
    given an aware time would redraw it in the browser's zone, a third one)."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return (aware.astimezone(UTC) if zone == "UTC" else aware.astimezone()).replace(tzinfo=None)


def timestamp(value: str | datetime | None, zone: Zone, *, suffix: bool = True) -> str:
    """2026-12-01 05:06:33 UTC; the suffix is left out where a header names the zone."""
    moment = parse_time(value) if isinstance(value, str) or value is None else value
    if moment is None:
        return "—"
    text = in_zone(moment, zone).strftime(TIME_FORMAT)
    return f"{text} {zone_name(zone)}" if suffix else text


def clock(value: str | datetime | None, zone: Zone) -> str:
    """05:06:33: a time of day for a line of a log or a caption."""
    moment = parse_time(value) if isinstance(value, str) or value is None else value
    return "—" if moment is None else in_zone(moment, zone).strftime(CLOCK_FORMAT)


def seconds_since(value: str | None, now: datetime | None = None) -> float | None:
    moment = parse_time(value)
    if moment is None:
        return None
    return ((now or datetime.now(UTC)) - moment).total_seconds()


def duration(seconds: float | None) -> str:
    """3 ms, 4.2 s, 5 min 3 s, 2 h 10 min; an em dash for no value."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def rate(per_second: float | None) -> str:
    """Tasks per second, or per minute when that reads better (0.27/min, not 0.00/s)."""
    if per_second is None:
        return "—"
    if per_second >= 1:
        return f"{per_second:.1f}/s"
    return f"{per_second * 60:.2g}/min" if per_second else "0/min"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def known_types(workers: list[dict[str, Any]], overview: dict[str, Any] | None = None) -> list[str]:
    """The built-in types, every capability a registered worker announced, and every type that
    has tasks (from the overview's counts)."""
    announced = {c for w in workers for c in w.get("capabilities", [])}
    used = {c["task_type"] for c in (overview or {}).get("tasks_by_type", [])}
    return sorted(announced | used | set(BUILTIN_TYPES))
