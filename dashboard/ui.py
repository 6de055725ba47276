"""Streamlit glue shared by the pages: the API client, cached reads, live refresh, error display,
links between pages and keyset paging."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import streamlit as st

from dashboard.api_client import ApiClient, ApiError, ApiUnavailable, NotSupported, api_url
from dashboard.formatting import ZONES, Zone, clock, default_zone, known_types, zone_name

T = TypeVar("T")

DETAIL_PAGE = "dashboard/views/task_detail.py"
DAG_PAGE = "dashboard/views/dag.py"
REFRESH_CHOICES = (2, 5, 10, 30, 60)
DEFAULT_REFRESH = 5
# Aggregates are shared by every open dashboard for this long: ten operators watching cost the
# API what one does. Short enough to look live.
SHARED_TTL_SECONDS = 2


@st.cache_resource(show_spinner=False)
def _client_for(base_url: str) -> ApiClient:
    return ApiClient(base_url)


def client() -> ApiClient:
    return _client_for(api_url())


# --- cached reads (shared across sessions; the URL is part of every key) -----------------------


@st.cache_data(ttl=SHARED_TTL_SECONDS, show_spinner=False)
def _overview(base_url: str) -> dict[str, Any]:
    return _client_for(base_url).overview()


@st.cache_data(ttl=SHARED_TTL_SECONDS, show_spinner=False)
def _timeseries(base_url: str, minutes: int, bucket_seconds: int) -> dict[str, Any]:
    return _client_for(base_url).timeseries(minutes=minutes, bucket_seconds=bucket_seconds)


@st.cache_data(ttl=SHARED_TTL_SECONDS, show_spinner=False)
def _workers(base_url: str) -> list[dict[str, Any]]:
    return _client_for(base_url).workers()


@st.cache_data(ttl=SHARED_TTL_SECONDS, show_spinner=False)
def _durations(base_url: str, minutes: int) -> dict[str, Any]:
    return _client_for(base_url).durations(minutes=minutes)


@st.cache_data(ttl=SHARED_TTL_SECONDS, show_spinner=False)
def _schedules(base_url: str) -> list[dict[str, Any]]:
    return _client_for(base_url).schedules()


def overview() -> dict[str, Any]:
    return _overview(api_url())


def schedules() -> list[dict[str, Any]]:
    """Every schedule with its last fires: read by the overview on every refresh, so shared."""
    return _schedules(api_url())


def timeseries(minutes: int, bucket_seconds: int) -> dict[str, Any]:
    return _timeseries(api_url(), minutes, bucket_seconds)


def workers() -> list[dict[str, Any]]:
    return _workers(api_url())


def durations(minutes: int) -> dict[str, Any]:
    return _durations(api_url(), minutes)


def task_types() -> list[str]:
    """Every task type worth offering in a filter; the built-ins when the API is down."""
    try:
        return known_types(workers(), overview())
    except ApiError:
        return known_types([])


def forget_cached_reads() -> None:
    """After an action (submit, cancel, retry) the next read must show its effect."""
    st.cache_data.clear()


# --- errors -------------------------------------------------------------------------------------


def unreachable(exc: ApiUnavailable) -> None:
    st.error(
        f"**The scheduler API is unavailable.** {exc}.\n\n"
        f"Check that it runs (`uvicorn app.main:app`) and that `API_URL` points to it "
        f"(now `{api_url()}`). This page tries again on its own.",
        icon=":material/cloud_off:",
    )


def show_error(exc: ApiError, action: str) -> None:
    if isinstance(exc, ApiUnavailable):
        unreachable(exc)
    elif isinstance(exc, NotSupported):
        st.warning(f"Cannot {action}: this version of the API does not offer it ({exc}).")
    else:
        st.error(f"Cannot {action}: {exc}")


@contextmanager
def api_errors(action: str) -> Iterator[None]:
    """Show an API failure inside the block as a message, never as a stack trace."""
    try:
        yield
    except ApiError as exc:
        show_error(exc, action)


def attempt(read: Callable[[], T], action: str) -> T | None:
    """The value of `read`, or None after showing why it failed."""
    try:
        return read()
    except ApiError as exc:
        show_error(exc, action)
        return None


# --- live refresh -------------------------------------------------------------------------------


def refresh_controls() -> None:
    """Sidebar switches every page reads: pause, and how often to refresh."""
    st.toggle("Pause live refresh", key="paused", help="Freeze the page while you read it.")
    st.select_slider(
        "Refresh every",
        options=REFRESH_CHOICES,
        value=DEFAULT_REFRESH,
        key="refresh_seconds",
        format_func=lambda s: f"{s} s",
        disabled=bool(st.session_state.get("paused")),
    )


def live(body: Callable[[], None]) -> None:
    """Draw `body` now and redraw it every refresh interval without reloading the page (a
    fragment rerun), unless refresh is paused."""
    every = None if st.session_state.get("paused") else st.session_state.get("refresh_seconds")
    st.fragment(body, run_every=every or None)()


def updated_caption() -> None:
    paused = " (paused)" if st.session_state.get("paused") else ""
    now = clock(datetime.now(UTC), zone())
    st.caption(f"Updated {now} {zone_name(zone())}{paused} · API {api_url()}")


def color_legend(colors: dict[str, str]) -> None:
    """A legend in the exact colours the charts and the graph use (a Markdown badge has only
    Streamlit's few named colours, which differ)."""
    swatches = " ".join(
        f'<span style="white-space:nowrap;margin-right:0.8em"><span style="display:inline-block;'
        f'width:0.8em;height:0.8em;border-radius:2px;background:{color};margin-right:0.3em">'
        f"</span>{name}</span>"
        for name, color in colors.items()
    )
    st.markdown(f'<div style="font-size:0.875rem">{swatches}</div>', unsafe_allow_html=True)


# --- time zone ----------------------------------------------------------------------------------


def zone() -> Zone:
    """The zone every time on every page is shown in (the sidebar's choice)."""
    chosen = st.session_state.get("time_zone")
    return chosen if chosen in ZONES else default_zone()


def time_zone_control() -> None:
    st.segmented_control(
        "Times in",
        ZONES,
        default=default_zone(),
        key="time_zone",
        format_func=lambda z: "UTC" if z == "UTC" else f"local ({zone_name(z)})",
        help="Every time on every page; the default comes from DASHBOARD_TIMEZONE (UTC|local).",
    )


# --- navigation -------------------------------------------------------------------------------


def task_link(task_id: str, *, label: str | None = None) -> None:
    st.page_link(
        DETAIL_PAGE,
        label=label or task_id,
        icon=":material/arrow_forward:",
        query_params={"task_id": task_id},
    )


class Pager:
    """Keyset paging: a stack of cursors, one per page visited. Changing the filters starts over
    at the newest page (an old cursor would page through the wrong set)."""

    def __init__(self, key: str, filters: tuple[Any, ...]) -> None:
        self.key = key
        state = st.session_state.setdefault(key, {"filters": filters, "cursors": [None]})
        if state["filters"] != filters:
            state.update(filters=filters, cursors=[None])
        self.cursors: list[str | None] = state["cursors"]

    @property
    def cursor(self) -> str | None:
        return self.cursors[-1]

    @property
    def number(self) -> int:
        return len(self.cursors)

    def _newer(self) -> None:
        self.cursors.pop()

    def _older(self, cursor: str) -> None:
        self.cursors.append(cursor)

    def controls(self, next_cursor: str | None) -> None:
        newer, label, older = st.columns([1, 2, 1])
        newer.button(
            "← Newer", key=f"{self.key}_newer", disabled=self.number == 1, on_click=self._newer
        )
        label.caption(f"Page {self.number}")
        older.button(
            "Older →",
            key=f"{self.key}_older",
            disabled=next_cursor is None,
            on_click=self._older,
            args=(next_cursor,),
        )
