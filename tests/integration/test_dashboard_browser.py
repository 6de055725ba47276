"""The dashboard in a real headless Chromium against a live stack: API, one worker, Streamlit.
Each page must render its data, every chart must have drawn its marks and axes, and each page's
screenshot must look like its reviewed reference in docs/images/ (within the tolerance of
tests/test_dashboard_screenshots.py). UPDATE_SCREENSHOTS=1 rewrites the references instead:
review them (they are what the README shows) before committing.

Needs Debian's `chromium` (/usr/bin/chromium) and the pip package `playwright` (which drives it;
no `playwright install`). Missing locally: skipped. Missing under CI=true: a failure."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.utils.embedded_servers import free_port
from tests.integration.harness import ROOT, Stack, eventually
from tests.test_dashboard_screenshots import check_against_reference

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
# The README's pictures are refreshed with UPDATE_SCREENSHOTS=1; otherwise a run leaves the
# working tree alone and writes them to a scratch folder.
UPDATING = os.environ.get("UPDATE_SCREENSHOTS") == "1"
SCREENSHOTS = (
    ROOT / "docs" / "images"
    if UPDATING
    else Path(tempfile.gettempdir()) / "dts-dashboard-screenshots"
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDTH, HEIGHT = 1280, 900  # the README shows the screenshots at this size
RENDER_TIMEOUT_MS = 20_000


@pytest.fixture
def chromium() -> Path:
    """The browser, or a skip (a failure under CI) naming what to install."""
    reason = None
    if not CHROMIUM.exists():
        reason = "no /usr/bin/chromium: apt-get install chromium chromium-driver"
    else:
        try:
            import playwright  # noqa: F401
        except ImportError:
            reason = "the playwright package is not installed (requirements-dev.txt)"
    if reason is None:
        return CHROMIUM
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
async def dashboard_url(chromium: Path, stack: Stack, tmp_path: Path) -> AsyncIterator[str]:
    """The stack's API, and Streamlit serving streamlit_app.py against it."""
    await stack.start_api()
    port = free_port()
    log = (tmp_path / "streamlit.log").open("wb")
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "streamlit_app.py",
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
    ]  # the rest (the toolbar without Deploy) from .streamlit/config.toml: cwd is the root
    env = {**os.environ, "API_URL": stack.api_url, "DASHBOARD_QUEUE_DEPTH_ALERT": "1000"}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"

    async def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError((tmp_path / "streamlit.log").read_text())
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                return (await client.get(f"{url}/_stcore/health")).status_code == 200
        except httpx.TransportError:
            return False

    try:
        await eventually(healthy, timeout=60, what="Streamlit to answer /_stcore/health")
        yield url
    finally:
        process.kill()
        process.wait(10)
        log.close()


async def _seed(api: httpx.AsyncClient) -> dict[str, str]:
    """Finished, failed, running and unrunnable tasks, and a small dependency chain."""
    ids: dict[str, str] = {}
    for i in range(12):
        body = {
            "task_id": f"echo-{i}",
            "task_type": "echo",
            "priority": 1 + i % 10,
            "payload": {"data": f"item {i}"},
        }
        assert (await api.post("/api/tasks", json=body)).status_code == 201
    # A diamond whose last step also waits for the long sleeper, so the graph shows three states.
    graph = [
        ("extract", "processing", []),
        ("statistics", "analysis", ["extract"]),
        ("words", "processing", ["extract"]),
        ("report", "echo", ["statistics", "words"]),
    ]
    for task_id, task_type, deps in graph:
        body = {
            "task_id": task_id,
            "task_type": task_type,
            "dependencies": deps,
            "payload": {"data": "3 1 4 1 5 9 2 6"},
        }
        assert (await api.post("/api/tasks", json=body)).status_code == 201
    failing: dict[str, Any] = {
        "task_id": "broken",
        "task_type": "fail",
        "max_retries": 2,  # three attempts of milliseconds, a second or two apart: the timeline
        "payload": {"parameters": {"message": "input file missing"}},
    }
    slow = {
        "task_id": "long-sleep",
        "task_type": "sleep",
        "payload": {"parameters": {"seconds": 60}},
    }
    no_worker = {"task_id": "needs-gpu", "task_type": "gpu", "priority": 9}
    publish = {"task_id": "publish", "task_type": "echo", "dependencies": ["report", "long-sleep"]}
    for spec in (failing, slow, no_worker, publish):
        assert (await api.post("/api/tasks", json=spec)).status_code == 201
    ids.update(graph="report", failed="broken", running="long-sleep", stuck="needs-gpu")
    return ids


async def _settled(api: httpx.AsyncClient) -> bool:
    """Everything but the sleeper and the gpu task has ended, and the sleeper runs."""
    states = {
        t: (await api.get(f"/api/tasks/{t}")).json()["status"]
        for t in ("report", "broken", "echo-11", "long-sleep")
    }
    return states == {
        "report": "completed",
        "broken": "failed",
        "echo-11": "completed",
        "long-sleep": "running",
    }


async def _show(
    page: Any,
    url: str,
    *,
    name: str,
    texts: tuple[str, ...] = (),
    cells: tuple[str, ...] = (),
    charts: int = 0,
) -> None:
    """Open a page, wait until every expected text, table cell and chart is on it and the app is
    idle, and save its screenshot. Tables draw on a canvas: their cells are found in the
    (invisible) accessible grid that mirrors it. A chart counts once Vega has drawn its SVG."""
    await page.goto(url)
    for text in texts:
        await page.get_by_text(text).first.wait_for(timeout=RENDER_TIMEOUT_MS)
    for text in cells:
        cell = page.locator(f'td[role="gridcell"]:text-is("{text}")').first
        await cell.wait_for(state="attached", timeout=RENDER_TIMEOUT_MS)
    if charts:
        drawn = page.locator('[data-testid="stVegaLiteChart"] svg.marks')
        await drawn.nth(charts - 1).wait_for(state="attached", timeout=RENDER_TIMEOUT_MS)
        await _charts_drawn(page, name, charts)
    # Placeholders stand in for elements not drawn yet, and the running-man widget is there while
    # a rerun is in progress: the screenshot waits for both to go.
    for busy in ("stSkeleton", "stStatusWidget"):
        await page.locator(f'[data-testid="{busy}"]').first.wait_for(
            state="detached", timeout=RENDER_TIMEOUT_MS
        )
    # Streamlit scrolls an inner element, not the document: a "full page" screenshot would stop
    # at the fold. A window as tall as the page's content shows all of it.
    tall = await page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    await page.set_viewport_size({"width": WIDTH, "height": max(HEIGHT, int(tall))})
    await page.screenshot(path=SCREENSHOTS / f"{name}.png")
    masks = await _plot_areas(page)
    await page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
    if not UPDATING:
        check_against_reference(name, SCREENSHOTS / f"{name}.png", masks)


async def _plot_areas(page: Any) -> list[tuple[float, float, float, float]]:
    """The plotting area and the tick labels of every chart: live data moves the bars, lines
    and points there and changes the scales (a time axis slides with the clock), so the
    screenshot comparison leaves them out. The axis titles, legends and headings around them,
    and the size of every chart, are compared; _charts_drawn checks that axes and marks are
    there."""
    found = []
    chart = '[data-testid="stVegaLiteChart"]'
    volatile = f"{chart} g.role-frame.root > g > path.background, {chart} g.role-axis-label"
    for area in await page.locator(volatile).all():
        box = await area.bounding_box()
        if box:
            found.append((box["x"], box["y"], box["width"], box["height"]))
    return found


async def _charts_drawn(page: Any, name: str, expected: int) -> None:
    """Every chart has an axis and at least one mark with something in it. A chart whose spec
    Vega cannot evaluate still gets its SVG and grid lines, and nothing else."""
    charts = page.locator('[data-testid="stVegaLiteChart"] svg.marks')
    found = await charts.count()
    assert found == expected, f"{name}: {found} charts, expected {expected}"
    for i in range(found):
        chart = charts.nth(i)
        axes = await chart.locator("g.role-axis").count()
        marks = await chart.locator("g.role-mark > path, g.role-mark > text").count()
        assert axes and marks, f"{name}: chart {i + 1} drew {axes} axes and {marks} marks"


async def test_every_page_renders_its_data_in_chromium(
    chromium: Path, stack: Stack, dashboard_url: str
) -> None:
    from playwright.async_api import async_playwright

    stack.start_worker("w-browser")
    await stack.wait_for_workers("w-browser", timeout=30)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as api:
        ids = await _seed(api)
        await eventually(lambda: _settled(api), timeout=30, what="the seeded tasks to settle")
        graph = (await api.get(f"/api/tasks/{ids['graph']}/graph")).json()
    assert len(graph["nodes"]) >= 5  # the diamond and the task waiting on it
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch_persistent_context(
            str(stack.tmp / "chromium-profile"),
            executable_path=str(chromium),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": WIDTH, "height": HEIGHT},
        )
        try:
            page = await browser.new_page()
            await _pages(page, dashboard_url, ids, graph)
        finally:
            await browser.close()


async def _pages(page: Any, url: str, ids: dict[str, str], graph: dict[str, Any]) -> None:
    overview = ("Database: up", "Redis: up", "no live worker runs 'gpu'")
    await _show(page, url, name="overview", texts=overview, charts=5)
    # .streamlit/config.toml (toolbarMode "viewer"): operators get no Deploy button.
    assert await page.locator('[data-testid="stAppDeployButton"]').count() == 0
    await _show(page, f"{url}/tasks", name="task_queue", cells=(ids["running"], ids["stuck"]))
    detail = ("input file missing", "Attempts (3)")
    await _show(
        page,
        f"{url}/task?task_id={ids['failed']}",
        name="task_detail",
        texts=detail,
        cells=("w-browser",),
        charts=1,  # the attempts timeline
    )
    await _show(page, f"{url}/workers", name="workers", cells=("w-browser",), charts=3)
    # A run-time histogram per type that ran: echo, processing, analysis and fail.
    await _show(page, f"{url}/history", name="history", cells=(ids["failed"],), charts=4)
    drawn = f"{len(graph['nodes'])} tasks, {len(graph['edges'])} edges"
    await _show(page, f"{url}/dag?task_id={ids['graph']}", name="dag", texts=(drawn,))
    for node in graph["nodes"]:
        assert await page.locator("svg text", has_text=node["task_id"]).count() >= 1
    await _show(page, f"{url}/submit", name="submit", texts=("Payload (JSON object)",))
