"""The Streamlit dashboard under Streamlit's AppTest, against a real API process (SQLite and the
session's private Valkey). Work is finished by speaking the worker protocol from the test (claim
in Redis, start, report), so every status and timestamp the pages show is known.

The pure parts (alerts, form parsing, the DAG source) have plain unit tests at the end."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import streamlit as st
from redis.asyncio import Redis
from streamlit.testing.v1 import AppTest

from app.services.message_queue import RedisQueue
from app.utils.embedded_servers import ValkeyServer, free_port
from dashboard.alerts import Snapshot, Thresholds, evaluate
from dashboard.views.dag import to_dot
from dashboard.views.submit import parse_batch, parse_ids, parse_payload
from dashboard.views.workers import remember_heartbeats
from tests.integration.harness import Stack

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")
PAGES = {
    "overview": "dashboard/views/overview.py",
    "queue": "dashboard/views/task_queue.py",
    "detail": "dashboard/views/task_detail.py",
    "submit": "dashboard/views/submit.py",
    "workers": "dashboard/views/workers.py",
    "history": "dashboard/views/history.py",
    "dag": "dashboard/views/dag.py",
}
PREFIX = "dash"


@pytest.fixture(scope="module")
async def live_api(
    tmp_path_factory: pytest.TempPathFactory, valkey: ValkeyServer
) -> AsyncIterator[Stack]:
    """One API process for the module; each test works on its own task types and ids."""
    client = Redis.from_url(valkey.url)
    await client.flushall()
    await client.aclose()
    tmp = tmp_path_factory.mktemp("dashboard")
    stack = Stack(
        tmp=tmp,
        database_url=f"sqlite:///{tmp / 'x.db'}",
        redis_url=valkey.url,
        env={"REDIS_PREFIX": PREFIX, "LOG_LEVEL": "WARNING"},
    )
    try:
        await stack.start_api()
        yield stack
    finally:
        stack.stop_all()


@pytest.fixture
def api(live_api: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    """An HTTP client on the live API, with API_URL pointing the dashboard at it."""
    monkeypatch.setenv("API_URL", live_api.api_url)
    with httpx.Client(base_url=live_api.api_url, timeout=10) as client:
        yield client


def dashboard(page: str, **query: str) -> AppTest:
    """The app on one page, run once. Cached reads are dropped so the test sees what it wrote."""
    st.cache_data.clear()
    at = AppTest.from_file(APP, default_timeout=30)
    at.query_params.update(query)
    at.run()
    if page != "overview":
        at.switch_page(PAGES[page]).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def submit(api: httpx.Client, **spec: Any) -> dict[str, Any]:
    response = api.post("/api/tasks", json=spec)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def run_as_worker(
    api: httpx.Client, redis_url: str, task_type: str, reports: dict[str, Any]
) -> None:
    """Register a worker for `task_type`, claim every ready task of it and report each as
    `reports[task_id]` gives: a result dict to complete it, an exception to fail it."""
    worker_id = unique("w")
    api.post("/api/workers/register", json={"worker_id": worker_id, "capabilities": [task_type]})

    async def claim() -> list[str]:
        redis = Redis.from_url(redis_url)
        try:
            return await RedisQueue(redis, prefix=PREFIX).claim(worker_id, [task_type], 100)
        finally:
            await redis.aclose()

    claimed = asyncio.run(claim())
    assert sorted(claimed) == sorted(reports)
    started = api.post(f"/api/workers/{worker_id}/start", json={"task_ids": claimed}).json()
    outcomes = []
    for job in started["started"]:
        value = reports[job["task_id"]]
        if isinstance(value, Exception):
            outcomes.append({"outcome": "error", "error": str(value)})
        else:
            outcomes.append({"outcome": "completed", "result": value})
        outcomes[-1] |= {"task_id": job["task_id"], "attempt": job["attempt"]}
    answer = api.post(f"/api/workers/{worker_id}/reports", json={"reports": outcomes}).json()
    assert sorted(answer["accepted"]) == sorted(reports)
    api.post(f"/api/workers/{worker_id}/deregister", json={})


def texts(elements: Any) -> str:
    return "\n".join(str(e.value) for e in elements)


# --- pages --------------------------------------------------------------------------------------


def test_overview_shows_health_counts_charts_and_alerts(
    api: httpx.Client, valkey: ValkeyServer
) -> None:
    kind = unique("lonely")  # a type no worker runs: the page must say so
    submit(api, task_type=kind)
    done = unique("done")
    ids = [submit(api, task_type=done, max_retries=0)["task_id"] for _ in range(3)]
    run_as_worker(
        api, valkey.url, done, {ids[0]: {"ok": 1}, ids[1]: {"ok": 2}, ids[2]: RuntimeError("x")}
    )

    at = dashboard("overview")
    assert at.title[0].value == "Overview"
    badges = texts(at.markdown)
    for part in ("API: up", "Database: up", "Redis: up"):
        assert part in badges
    assert f"no live worker runs '{kind}'" in texts(at.error)
    metrics = {m.label: m.value for m in at.metric}
    counts = api.get("/api/stats/overview").json()["tasks_by_status"]
    assert metrics["Pending"] == str(counts["pending"])
    assert metrics["Running"] == str(counts["running"])
    charts = at.get("vega_lite_chart")
    assert len(charts) >= 4  # queue depth by type, throughput, latency, error rate
    assert any(kind in c.proto.spec or kind in str(c.proto.datasets) for c in charts)


def test_api_down_is_a_message_on_every_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_URL", f"http://127.0.0.1:{free_port()}")
    for page in PAGES:
        at = dashboard(page, task_id="some-task")
        assert "scheduler API is unavailable" in texts(at.error), page
        assert not at.exception


def test_task_queue_filters_searches_and_pages(api: httpx.Client) -> None:
    kind = unique("queue")
    ids = [submit(api, task_type=kind, priority=1 + i % 2)["task_id"] for i in range(30)]
    at = dashboard("queue")
    at.selectbox(key="queue_type").set_value(kind)
    at.selectbox(key="queue_size").set_value(25).run()
    first = list(at.dataframe[0].value["ID"])
    assert len(first) == 25 and set(first) <= set(ids)
    assert first == sorted(first, key=ids.index, reverse=True)  # newest first
    at.button(key="queue_pages_older").click().run()
    second = list(at.dataframe[0].value["ID"])
    assert sorted(first + second) == sorted(ids)
    assert at.button(key="queue_pages_older").disabled
    at.button(key="queue_pages_newer").click().run()
    assert list(at.dataframe[0].value["ID"]) == first

    at.selectbox(key="queue_priority").set_value(2).run()
    assert set(at.dataframe[0].value["Priority"]) == {2}
    at.multiselect(key="queue_status").set_value(["completed"]).run()
    assert "No task matches" in texts(at.info)

    at.text_input(key="queue_lookup").set_value(ids[3]).run()
    assert f"pending · {kind}" in texts(at.success)
    at.text_input(key="queue_lookup").set_value("no-such-task").run()
    assert "No task has the id" in texts(at.info)


def test_task_detail_shows_fields_payload_result_attempts_and_relations(
    api: httpx.Client, valkey: ValkeyServer
) -> None:
    kind = unique("detail")
    parent = submit(api, task_type=kind, payload={"data": "in"})["task_id"]
    child = submit(api, task_type=unique("child"), dependencies=[parent])["task_id"]
    run_as_worker(api, valkey.url, kind, {parent: {"answer": 42}})

    at = dashboard("detail", task_id=parent)
    assert parent in at.subheader[0].value and "completed" in at.subheader[0].value
    payload, result = (j.value for j in at.json)
    assert json.loads(payload) == {"data": "in"}
    assert json.loads(result) == {"answer": 42}
    tables = [d.value for d in at.dataframe]
    fields = dict(zip(tables[0]["field"], tables[0]["value"], strict=True))
    assert (fields["task_type"], fields["attempt"]) == (kind, "1")
    attempts = next(t for t in tables if "outcome" in t.columns)
    assert list(attempts["outcome"]) == ["completed"]
    assert any(link.proto.label == child for link in at.get("page_link"))
    assert at.button(key="task_cancel").disabled  # a completed task cannot be cancelled

    at = dashboard("detail", task_id="no-such-task")
    assert "No task has the id" in texts(at.warning)


def test_task_detail_cancel_and_retry(api: httpx.Client) -> None:
    task_id = submit(api, task_type=unique("cancel"))["task_id"]
    at = dashboard("detail", task_id=task_id)
    # Nothing happens without the tick: the buttons are disabled until it is given.
    assert at.button(key="task_cancel").disabled and at.button(key="task_retry").disabled
    assert at.checkbox(key="task_confirm").label == f"Yes, cancel '{task_id}'"
    at.checkbox(key="task_confirm").check().run()
    at.button(key="task_cancel").click().run()
    assert "the task is now cancelled" in texts(at.success)
    assert api.get(f"/api/tasks/{task_id}").json()["status"] == "cancelled"
    # The tick is spent: retrying asks again.
    assert not at.checkbox(key="task_confirm").value
    assert at.button(key="task_retry").disabled
    at.checkbox(key="task_confirm").check().run()
    at.button(key="task_retry").click().run()
    assert "the task is now pending" in texts(at.success)


def test_submit_form_validates_and_creates_a_task(api: httpx.Client) -> None:
    task_id = unique("form")
    at = dashboard("submit")
    at.selectbox[0].set_value("echo")
    at.text_input[0].set_value(task_id)
    at.text_area[0].set_value('{"data": [1, 2')  # broken JSON: refused before the API sees it
    at.button[0].click().run()
    assert "payload is not valid JSON" in texts(at.error)
    assert api.get(f"/api/tasks/{task_id}").status_code == 404

    at.text_area[0].set_value('{"data": [1, 2]}')
    at.slider[0].set_value(7)
    at.number_input[0].set_value(60)
    at.button[0].click().run()
    assert f"Submitted task `{task_id}`" in texts(at.success)
    task = api.get(f"/api/tasks/{task_id}").json()
    assert (task["task_type"], task["priority"], task["timeout"]) == ("echo", 7, 60)
    assert task["payload"] == {"data": [1, 2]}


def test_submit_batch_upload(api: httpx.Client) -> None:
    ids = [unique("batch") for _ in range(3)]
    batch = {"tasks": [{"task_id": i, "task_type": "echo", "priority": 5} for i in ids]}
    at = dashboard("submit")
    at.file_uploader[0].set_value(("batch.json", json.dumps(batch).encode(), "application/json"))
    at.run()
    assert list(at.dataframe[0].value["task_id"]) == ids
    at.button(key="batch_submit").click().run()
    assert "Submitted 3 tasks" in texts(at.success)
    assert all(api.get(f"/api/tasks/{i}").status_code == 200 for i in ids)


def test_workers_page_shows_resources_and_marks_offline(api: httpx.Client) -> None:
    alive, gone = unique("alive"), unique("gone")
    for worker_id in (alive, gone):
        spec = {"worker_id": worker_id, "capabilities": ["echo", "cpu"], "max_concurrent_tasks": 4}
        api.post("/api/workers/register", json=spec)
    beat = {
        "status": "busy",
        "current_tasks": ["t1"],
        "system_info": {"cpu_usage": 42.5, "memory_usage": 61.0, "disk_usage": 20.0},
    }
    api.post(f"/api/workers/{alive}/heartbeat", json=beat)
    api.post(f"/api/workers/{gone}/deregister", json={})

    at = dashboard("workers")
    table = at.dataframe[0].value.set_index("Worker")
    assert table.loc[alive, "State"] == "busy"
    assert table.loc[alive, "CPU %"] == 42.5
    assert table.loc[alive, "Slots"] == "1 / 4"
    assert table.loc[gone, "State"] == "OFFLINE"
    assert at.get("vega_lite_chart"), "resource history chart"


def test_history_lists_finished_tasks_with_durations(
    api: httpx.Client, valkey: ValkeyServer
) -> None:
    kind = unique("hist")
    ok, bad = (submit(api, task_type=kind, max_retries=0)["task_id"] for _ in range(2))
    run_as_worker(api, valkey.url, kind, {ok: {"n": 1}, bad: ValueError("broken input")})
    at = dashboard("history")
    at.selectbox(key="history_type").set_value(kind).run()
    table = at.dataframe[-1].value.set_index("ID")
    assert table.loc[ok, "Status"] == "completed" and '"n"' in table.loc[ok, "Result"]
    assert table.loc[bad, "Status"] == "failed" and table.loc[bad, "Error"] == "broken input"
    assert table.loc[ok, "Run time"] != "—"
    # One histogram, of this type only (the filter), on its own axis in the unit that suits it.
    assert f"**{kind}** (2)" in [m.value for m in at.markdown]
    (histogram,) = at.get("vega_lite_chart")
    assert "run time (ms" in histogram.proto.spec or "run time (s" in histogram.proto.spec


def test_dag_page_draws_the_dependency_graph(api: httpx.Client) -> None:
    first = submit(api, task_type="echo", task_id=unique("a"))["task_id"]
    middle = submit(api, task_type="echo", task_id=unique("b"), dependencies=[first])["task_id"]
    last = submit(api, task_type="echo", task_id=unique("c"), dependencies=[middle])["task_id"]
    at = dashboard("dag", task_id=middle)
    dot = at.get("graphviz_chart")[0].proto.spec
    for task_id in (first, middle, last):
        assert f'"{task_id}" [' in dot
    assert f'"{first}" -> "{middle}"' in dot and f'"{middle}" -> "{last}"' in dot
    assert "3 tasks, 2 edges" in texts(at.markdown)


# --- pure parts ---------------------------------------------------------------------------------


def overview(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "queue": {"available": True, "ready_by_type": {"cpu": 4, "echo": 2}},
        "tasks_by_type": [{"task_type": "cpu", "pending": 9}],
        "workers": {"live_capabilities": ["echo"], "offline_after": 90.0},
    }
    return body | changes


HEALTHY = {"status": "ok", "database": "ok", "redis": "ok"}


def test_alert_for_queued_types_no_live_worker_runs() -> None:
    alerts = evaluate(Snapshot(health=HEALTHY, overview=overview()), Thresholds())
    assert [a.level for a in alerts] == ["error"]
    assert "4 'cpu' task(s) are waiting but no live worker runs 'cpu'" in alerts[0].message
    # Redis down: the database's pending counts stand in for the queue depth.
    down = overview(queue={"available": False, "ready_by_type": {}})
    alerts = evaluate(
        Snapshot(health=HEALTHY | {"redis": "error: ConnectionError"}, overview=down), Thresholds()
    )
    assert alerts[0].message.startswith("Redis is down (error: ConnectionError)")
    assert "9 'cpu' task(s)" in alerts[1].message


def test_alerts_for_lost_and_recently_offline_workers() -> None:
    now = datetime.now(UTC)

    def worker(name: str, status: str, age: float) -> dict[str, Any]:
        beat = (now - timedelta(seconds=age)).isoformat()
        return {"worker_id": name, "status": status, "last_heartbeat": beat}

    found = [
        worker("ok", "active", 5),
        worker("lost", "busy", 120),
        worker("went", "offline", 60),
        worker("ancient", "offline", 86_400),
    ]
    snapshot = Snapshot(
        health=HEALTHY,
        overview=overview(queue={"available": True, "ready_by_type": {}}),
        workers=found,
        now=now,
    )
    messages = [a.message for a in evaluate(snapshot, Thresholds())]
    assert len(messages) == 2
    assert messages[0].startswith("Worker 'lost' has sent no heartbeat for 2 min 0 s")
    assert messages[1] == "Worker 'went' is offline (last heartbeat 1 min 0 s ago)."


def test_alerts_for_error_rate_and_queue_depth_thresholds() -> None:
    now = datetime.now(UTC)
    recent = (now - timedelta(seconds=30)).isoformat()
    old = (now - timedelta(hours=1)).isoformat()
    series = {
        "bucket_seconds": 60,
        "buckets": [
            {"start": old, "completed": 0, "failed": 50},  # long ago: does not count
            {"start": recent, "completed": 6, "failed": 4},
        ],
    }
    busy = overview(workers={"live_capabilities": ["cpu", "echo"], "offline_after": 90.0})
    snapshot = Snapshot(health=HEALTHY, overview=busy, timeseries=series, now=now)
    messages = [a.message for a in evaluate(snapshot, Thresholds(error_rate=0.3, queue_depth=5))]
    assert messages == [
        "Error rate 40% over the last 5 minutes (4 of 10 tasks failed), above the 30% threshold.",
        "6 tasks are waiting in the queue, above the 5 threshold: add workers or capacity.",
    ]
    quiet = evaluate(snapshot, Thresholds(error_rate=0.5, queue_depth=6))
    assert quiet == []


def test_submit_parsers_explain_what_is_wrong() -> None:
    assert parse_payload('{"a": 1}') == {"a": 1}
    assert parse_payload("") == {}
    with pytest.raises(ValueError, match="line 1, column 6"):
        parse_payload('{"a":')
    with pytest.raises(ValueError, match="must be a JSON object"):
        parse_payload("[1, 2]")
    assert parse_ids(" a-1, b.2\nc:3 ") == ["a-1", "b.2", "c:3"]
    with pytest.raises(ValueError, match="'bad/id' is not a task id"):
        parse_ids("ok bad/id")
    assert parse_batch(b'[{"task_type": "echo"}]') == [{"task_type": "echo"}]
    for raw, reason in [
        (b"{", "not valid JSON"),
        (b"[]", "non-empty list"),
        (b'{"tasks": [{"priority": 1}]}', "task #1 is not an object with a task_type"),
    ]:
        with pytest.raises(ValueError, match=reason):
            parse_batch(raw)


def test_dot_source_colours_by_status_and_marks_the_focus() -> None:
    graph = {
        "nodes": [
            {"task_id": "a", "status": "completed", "task_type": "echo"},
            {"task_id": "b", "status": "failed", "task_type": "cpu"},
        ],
        "edges": [{"from": "a", "to": "b"}],
    }
    dot = to_dot(graph, focus="b")
    assert '"a" [label="a\\necho · completed", fillcolor="#009E73"];' in dot
    assert '"b" [label="b\\ncpu · failed", fillcolor="#D55E00", penwidth=3];' in dot
    assert '"a" -> "b";' in dot


def test_resource_history_keeps_one_row_per_heartbeat() -> None:
    beat = {
        "worker_id": "w",
        "status": "active",
        "last_heartbeat": "2024-01-01T00:00:00Z",
        "system_info": {"cpu_usage": 10.0, "memory_usage": 20.0},
    }
    history: list[dict[str, Any]] = []
    remember_heartbeats(history, [beat])
    remember_heartbeats(history, [beat])  # the same heartbeat seen on the next refresh
    assert sorted((r["resource"], r["percent"]) for r in history) == [
        ("CPU", 10.0),
        ("memory", 20.0),
    ]
    remember_heartbeats(history, [beat | {"last_heartbeat": "2024-01-01T00:00:05Z"}])
    assert len(history) == 4


def test_task_queue_cancels_the_selected_task_after_confirmation(api: httpx.Client) -> None:
    kind = unique("qcancel")
    task_id = submit(api, task_type=kind)["task_id"]
    at = dashboard("queue")
    at.selectbox(key="queue_type").set_value(kind).run()
    # What a click on the row sends (AppTest has no row clicks): the selection state.
    at.session_state["queue_table"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    assert at.checkbox(key="queue_confirm").label == f"Yes, cancel '{task_id}'"
    assert at.button(key="queue_cancel").disabled
    at.checkbox(key="queue_confirm").check().run()
    at.button(key="queue_cancel").click().run()
    assert f"Cancel `{task_id}`: the task is now cancelled" in texts(at.success)
    assert api.get(f"/api/tasks/{task_id}").json()["status"] == "cancelled"
