"""Pure helpers that turn API values into what a person reads: ages, durations, colours."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

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
