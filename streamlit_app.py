"""Operator dashboard for the task scheduler: `streamlit run streamlit_app.py`.

It talks to the scheduler only through its HTTP API, at the URL in the API_URL variable
(default http://localhost:8000). Each page is a module in dashboard/views/."""

from __future__ import annotations

import streamlit as st

from dashboard import ui
from dashboard.api_client import api_mismatch, api_url

# (module in dashboard/views, title, Material icon, URL path). Material icons are drawn with a
# font Streamlit ships, so they show in any browser; emoji need a system font many servers lack.
VIEWS = (
    ("overview", "Overview", "monitoring", ""),  # the default page, served at /
    ("task_queue", "Task queue", "list", "tasks"),
    ("task_detail", "Task detail", "search", "task"),
    ("submit", "Submit", "add_circle", "submit"),
    ("workers", "Workers", "dns", "workers"),
    ("history", "Task history", "history", "history"),
    ("dag", "DAG", "account_tree", "dag"),
    ("schedules", "Schedules", "event_repeat", "schedules"),
)


def page(module: str, title: str, icon: str, url_path: str) -> st.Page:
    return st.Page(
        f"dashboard/views/{module}.py",
        title=title,
        icon=f":material/{icon}:",
        url_path=url_path or None,
        default=not url_path,
    )


st.set_page_config(page_title="Task scheduler", page_icon=":material/schedule:", layout="wide")
current = st.navigation([page(*view) for view in VIEWS])
with st.sidebar:
    ui.refresh_controls()
    ui.time_zone_control()
    st.caption(f"API: `{api_url()}`")
    if notice := api_mismatch():
        st.warning(notice, icon=":material/warning:")
current.run()
