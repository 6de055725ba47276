"""Hard limits (issue 10): every bad input is a clear 4xx and nothing is half-written, on SQLite
and PostgreSQL alike (the `api` fixture runs each test on both), through the real app with its
middleware, and for the HTTP server's own bounds through a real uvicorn on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from redis.asyncio import Redis

from app.api.limits import bounded_http_protocol
from app.config import Settings
from app.main import create_app
from app.models.json_limits import MAX_JSON_DEPTH, MAX_RESULT_BYTES
from app.models.task import AttemptOutcome, TaskReport
from app.services.retry_policy import backoff_seconds
from app.services.scheduler import SLOW_REPORTS_PER_TRANSACTION, Scheduler
from worker.api_client import SchedulerClient
from worker.transport import HttpTransport, Rejected, Unavailable
from worker.worker_node import WorkerNode, WorkerOptions

JSON = {"content-type": "application/json"}


def scheduler_of(api: httpx.AsyncClient) -> Scheduler:
    return api.app.state.scheduler  # type: ignore[attr-defined,no-any-return]


def detail(response: httpx.Response) -> dict[str, Any]:
    item: dict[str, Any] = response.json()["detail"][0]
    return item


async def total_tasks(api: httpx.AsyncClient) -> int:
    total: int = (await api.get("/api/tasks")).json()["total"]
    return total


@contextlib.asynccontextmanager
async def api_with(settings: Settings, **changes: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app with some settings changed, in process, lifespan included."""
    app = create_app(settings.model_copy(update=changes))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


def nested(depth: int) -> Any:
    """A JSON document whose containers nest `depth` levels deep (a scalar is depth 0)."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# --- request bodies ------------------------------------------------------------------------


async def test_a_body_over_the_limit_is_413_from_its_content_length(
    api: httpx.AsyncClient,
) -> None:
    limit = api.app.state.settings.request_bytes_limit  # type: ignore[attr-defined]
    body = b'{"task_type": "echo", "payload": {"x": "' + b"a" * limit + b'"}}'
    response = await api.post("/api/tasks", content=body, headers=JSON)
    assert response.status_code == 413
    assert detail(response)["loc"] == ["body"]
    assert response.headers["connection"] == "close"
    assert await total_tasks(api) == 0


async def test_a_streamed_body_is_counted_as_it_arrives(api: httpx.AsyncClient) -> None:
    """No Content-Length (chunked): the body is refused once the bytes received pass the limit."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"task_type": "echo", "payload": {"x": "'
        for _ in range(64):
            yield b"a" * (64 * 1024)
        yield b'"}}'

    response = await api.post("/api/tasks", content=chunks(), headers=JSON)
    assert response.status_code == 413
    assert detail(response)["type"] == "too_large"
    assert await total_tasks(api) == 0


async def test_batches_have_the_larger_body_limit(api: httpx.AsyncClient) -> None:
    """Two payloads of 900 KB: over the single-task limit, within the batch one."""
    big = "a" * 900_000
    tasks = [{"task_type": "echo", "payload": {"x": big}} for _ in range(2)]
    response = await api.post("/api/tasks/batch", json={"tasks": tasks})
    assert response.status_code == 201
    assert response.json()["created"] == 2


async def test_a_body_that_does_not_arrive_in_time_is_408(settings: Settings) -> None:
    async def stalled() -> AsyncIterator[bytes]:
        yield b'{"task_type": "ec'
        await asyncio.sleep(5)  # the slow client under test, not a synchronisation
        yield b'ho"}'

    async with api_with(settings, request_body_timeout=0.2) as api:
        response = await api.post("/api/tasks", content=stalled(), headers=JSON)
        assert response.status_code == 408
        assert detail(response)["type"] == "timeout"
        assert await total_tasks(api) == 0


async def test_a_batch_caps_its_dependencies_in_total(settings: Settings) -> None:
    async with api_with(settings, max_batch_dependencies=5) as api:
        roots = [{"task_id": f"r{i}", "task_type": "echo"} for i in range(3)]
        deps = [f"r{i}" for i in range(3)]
        leaves = [{"task_type": "echo", "dependencies": deps} for _ in range(2)]
        response = await api.post("/api/tasks/batch", json={"tasks": roots + leaves})
        assert response.status_code == 422
        assert detail(response)["type"] == "too_many_dependencies"
        assert await total_tasks(api) == 0
        response = await api.post("/api/tasks/batch", json={"tasks": [*roots, leaves[0]]})
        assert response.status_code == 201


# --- text a store cannot hold --------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"payload": {"text": "a\u0000b"}}, ["body", "payload"]),
        ({"payload": {"deep": [{"k": ["\u0000"]}]}}, ["body", "payload"]),
        ({"payload": {"k\u0000": 1}}, ["body", "payload"]),
        ({"task_id": "a\u0000"}, ["body", "task_id"]),
        ({"task_type": "echo\u0000"}, ["body", "task_type"]),
        ({"dependencies": ["x\u0000"]}, ["body", "dependencies", 0]),
    ],
)
async def test_nul_in_a_submission_is_422_and_nothing_is_written(
    api: httpx.AsyncClient, change: dict[str, Any], loc: list[Any]
) -> None:
    body = {"task_type": "echo"} | change
    response = await api.post("/api/tasks", json=body)
    assert response.status_code == 422
    assert detail(response)["loc"] == loc
    batch = await api.post("/api/tasks/batch", json={"tasks": [{"task_type": "echo"}, body]})
    assert batch.status_code == 422
    assert detail(batch)["loc"] == ["body", "tasks", 1, *loc[1:]]
    assert await total_tasks(api) == 0


async def test_nul_in_a_path_or_query_is_422(api: httpx.AsyncClient) -> None:
    for path in (
        "/api/tasks/a%00b",
        "/api/tasks?task_type=a%00b",
        "/api/stats/tasks?worker_id=%00",
        "/api/workers/w%00/heartbeat",
    ):
        method = "POST" if path.endswith("heartbeat") else "GET"
        response = await api.request(method, path, json={} if method == "POST" else None)
        assert response.status_code == 422, path
        assert detail(response)["loc"][0] in ("path", "query"), path


async def test_control_characters_in_the_correlation_id_are_refused(
    api: httpx.AsyncClient,
) -> None:
    transport = httpx.ASGITransport(app=api.app)  # type: ignore[attr-defined]
    raw = [(b"content-type", b"application/json"), (b"x-correlation-id", b"a\x00b")]
    request = httpx.Request("POST", "http://test/api/tasks", content=b'{"task_type": "echo"}')
    request.headers = httpx.Headers(raw)
    response = await transport.handle_async_request(request)
    await response.aread()
    assert response.status_code == 422
    assert orjson.loads(response.content)["detail"][0]["loc"] == ["header", "x-correlation-id"]
    assert await total_tasks(api) == 0


async def test_nul_in_worker_registration_and_heartbeat_is_422(api: httpx.AsyncClient) -> None:
    spec = {"worker_id": "w1", "capabilities": ["echo"], "hostname": "host\u0000"}
    response = await api.post("/api/workers/register", json=spec)
    assert (response.status_code, detail(response)["loc"]) == (422, ["body", "hostname"])
    spec["hostname"] = "host"
    assert (await api.post("/api/workers/register", json=spec)).status_code == 201
    beat = {"current_tasks": ["t\u0000"]}
    response = await api.post("/api/workers/w1/heartbeat", json=beat)
    assert (response.status_code, detail(response)["loc"][:3]) == (
        422,
        ["body", "current_tasks", 0],
    )
    listed = (await api.get("/api/workers")).json()["workers"]
    assert listed[0]["current_tasks"] == []


# --- reports -------------------------------------------------------------------------------


async def start(api: httpx.AsyncClient, task_ids: Sequence[str]) -> dict[str, int]:
    """Submit and start tasks as worker 'w' would; their attempt numbers."""
    for task_id in task_ids:
        response = await api.post("/api/tasks", json={"task_id": task_id, "task_type": "echo"})
        assert response.status_code == 201
    claims = await scheduler_of(api).queue.claim("w", ["echo"], len(task_ids))
    response = await api.post("/api/workers/w/exchange", json={"claims": claims})
    assert response.status_code == 200
    return {t["task_id"]: t["attempt"] for t in response.json()["started"]}


async def task(api: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    body: dict[str, Any] = (await api.get(f"/api/tasks/{task_id}")).json()
    return body


async def test_an_unstorable_result_fails_its_attempt_and_spares_the_batch(
    api: httpx.AsyncClient,
) -> None:
    attempts = await start(api, ["nul", "big", "fine"])
    reports: list[dict[str, Any]] = [
        {"task_id": "nul", "outcome": "completed", "result": {"text": "a\u0000b"}},
        {"task_id": "big", "outcome": "completed", "result": "x" * (MAX_RESULT_BYTES + 1)},
        {"task_id": "fine", "outcome": "completed", "result": {"n": 2**63 - 1}},
    ]
    for report in reports:
        report["attempt"] = attempts[str(report["task_id"])]
    response = await api.post("/api/workers/w/reports", json={"reports": reports})
    assert response.status_code == 200
    assert sorted(response.json()["accepted"]) == ["big", "fine", "nul"]
    fine = await task(api, "fine")
    assert (fine["status"], fine["result"]) == ("completed", {"n": 2**63 - 1})
    for task_id, reason in (("nul", "NUL"), ("big", "bytes; the limit is")):
        body = await task(api, task_id)
        assert body["status"] in ("pending", "failed"), body  # an error: retried, then failed
        assert body["result"] is None
        assert body["attempts"][0]["outcome"] == "error"
        assert body["attempts"][0]["error"].startswith("result refused:")
        assert reason in body["attempts"][0]["error"]


async def test_an_error_message_is_cleaned_and_cut_not_refused(api: httpx.AsyncClient) -> None:
    attempts = await start(api, ["e"])
    report = {
        "task_id": "e",
        "attempt": attempts["e"],
        "outcome": "error",
        "error": "x\u0000" * 10**5,
    }
    response = await api.post("/api/workers/w/reports", json={"reports": [report]})
    assert (response.status_code, response.json()["accepted"]) == (200, ["e"])
    error = (await task(api, "e"))["attempts"][0]["error"]
    assert "\u0000" not in error
    assert error.startswith("x\\u0000x") and error.endswith("[truncated]")


@pytest.mark.parametrize("attempt", [2**31, 2**63, 2**64])
async def test_an_attempt_beyond_the_column_is_422(api: httpx.AsyncClient, attempt: int) -> None:
    await start(api, ["t"])
    report = {"task_id": "t", "attempt": attempt, "outcome": "error", "error": "boom"}
    response = await api.post("/api/workers/w/reports", json={"reports": [report]})
    assert response.status_code == 422
    assert detail(response)["loc"] == ["body", "reports", 0, "attempt"]
    assert (await task(api, "t"))["status"] == "running"


async def test_a_huge_attempt_number_is_refused_as_stale_not_an_overflow(
    api: httpx.AsyncClient,
) -> None:
    await start(api, ["t"])
    report = {"task_id": "t", "attempt": 2**31 - 1, "outcome": "error", "error": "boom"}
    response = await api.post("/api/workers/w/reports", json={"reports": [report]})
    assert (response.status_code, response.json()["refused"]) == (200, ["t"])
    assert backoff_seconds(2**31 - 1, base=1.0, cap=300.0) <= 300.0


async def test_many_failures_are_applied_in_bounded_transactions(
    api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """25 failures and 10 completions in one request: recorded, in transactions of at most 10
    failures each (the completions ride with the first, the claims with the last), so no
    request holds SQLite's write lock for long."""
    assert SLOW_REPORTS_PER_TRANSACTION == 10
    attempts = await start(api, [f"t{i:02}" for i in range(35)])
    scheduler = scheduler_of(api)
    chunks: list[tuple[int, int, int]] = []
    exchange_once = scheduler._exchange_once

    async def counted(worker_id: str, reports: Any, claims: Any) -> Any:
        done = sum(r.outcome == AttemptOutcome.COMPLETED for r in reports)
        chunks.append((done, len(reports) - done, len(claims)))
        return await exchange_once(worker_id, reports, claims)

    monkeypatch.setattr(scheduler, "_exchange_once", counted)
    reports = [
        {"task_id": t, "attempt": a, "outcome": "completed" if i < 10 else "error", "error": "x"}
        for i, (t, a) in enumerate(sorted(attempts.items()))
    ]
    await api.post("/api/tasks", json={"task_id": "next", "task_type": "echo"})
    claims = await scheduler.queue.claim("w", ["echo"], 1)
    body = {"reports": reports, "claims": claims}
    answer = (await api.post("/api/workers/w/exchange", json=body)).json()
    assert len(answer["accepted"]) == 35 and answer["refused_reports"] == []
    assert [t["task_id"] for t in answer["started"]] == ["next"]
    assert chunks == [(10, 10, 0), (0, 10, 0), (0, 5, 1)]


async def test_report_batches_are_capped(api: httpx.AsyncClient) -> None:
    reports = [{"task_id": f"t{i}", "attempt": 1, "outcome": "error"} for i in range(1001)]
    response = await api.post("/api/workers/w/reports", json={"reports": reports})
    assert response.status_code == 422
    assert detail(response)["loc"] == ["body", "reports"]


# --- numbers and nesting -------------------------------------------------------------------


@pytest.mark.parametrize("number", [2**63, -(2**63) - 1, 2**64, 10**30])
async def test_integers_beyond_64_bits_are_422(api: httpx.AsyncClient, number: int) -> None:
    body = b'{"task_type": "echo", "payload": {"n": [%d]}}' % number
    response = await api.post("/api/tasks", content=body, headers=JSON)
    assert response.status_code == 422
    assert "64-bit" in detail(response)["msg"]
    assert await total_tasks(api) == 0


@pytest.mark.parametrize("number", [b"1e20", b"-1.5e308", b"9.3e18", b"1.5767663294177371e+146"])
async def test_floats_beyond_the_64_bit_range_are_422(
    api: httpx.AsyncClient, number: bytes
) -> None:
    # PostgreSQL's JSONB hands them back as integers beyond 64 bits, which could not be
    # encoded again (found by the OpenAPI fuzz test: a schedule read back answered 500).
    body = b'{"task_type": "echo", "payload": {"n": {"x": %s}}}' % number
    response = await api.post("/api/tasks", content=body, headers=JSON)
    assert response.status_code == 422
    assert "64-bit" in detail(response)["msg"]
    assert await total_tasks(api) == 0


async def test_the_64_bit_range_round_trips_exactly(api: httpx.AsyncClient) -> None:
    # (PostgreSQL gives a float written with a positive exponent, 1.5e3, back as the integer
    # of the same decimal value; docs/api_reference.md says so.)
    payload = {"max": 2**63 - 1, "min": -(2**63), "float": 2.25e-10, "tiny": -1.5}
    response = await api.post(
        "/api/tasks", json={"task_id": "n", "task_type": "e", "payload": payload}
    )
    assert response.status_code == 201
    assert (await task(api, "n"))["payload"] == payload


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (b'{"task_type": "echo", "payload": {"x": NaN}}', "body"),
        (b'{"task_type": "echo", "payload": {"x": Infinity}}', "body"),
        (b'{"task_type": "echo", "payload": {"x": 1e309}}', "payload"),
        (b'{"task_type": "echo", "payload": {"x": -1e309}}', "payload"),
        (b'{"task_type": "echo", "delay_seconds": 1e309}', "delay_seconds"),
        (b'{"task_type": "echo", "priority": 1e309}', "priority"),
    ],
)
async def test_non_finite_numbers_are_a_422_that_serialises(
    api: httpx.AsyncClient, body: bytes, loc: str
) -> None:
    response = await api.post("/api/tasks", content=body, headers=JSON)
    assert response.status_code == 422
    assert loc in detail(response)["loc"]
    assert await total_tasks(api) == 0


async def test_a_non_finite_heartbeat_figure_is_422(api: httpx.AsyncClient) -> None:
    await api.post("/api/workers/register", json={"worker_id": "w1", "capabilities": ["echo"]})
    body = b'{"system_info": {"cpu_usage": 1e999}}'
    response = await api.post("/api/workers/w1/heartbeat", content=body, headers=JSON)
    assert response.status_code == 422
    assert detail(response)["input"] == "inf"


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 300, 900, 2000])
async def test_payloads_nested_too_deep_are_422(api: httpx.AsyncClient, depth: int) -> None:
    body = b'{"task_type": "echo", "payload": {"x": %s}}' % orjson.dumps(nested(1)).replace(
        b"[1]", b"[" * depth + b"1" + b"]" * depth
    )
    response = await api.post("/api/tasks", content=body, headers=JSON)
    assert response.status_code == 422
    assert await total_tasks(api) == 0


async def test_a_payload_at_the_depth_limit_is_accepted(api: httpx.AsyncClient) -> None:
    payload = {"x": nested(MAX_JSON_DEPTH - 1)}
    response = await api.post(
        "/api/tasks", json={"task_id": "d", "task_type": "e", "payload": payload}
    )
    assert response.status_code == 201
    assert (await task(api, "d"))["payload"] == payload


# --- ids -----------------------------------------------------------------------------------


@pytest.mark.parametrize("task_id", [".", "..", "...."])
async def test_ids_made_only_of_dots_are_refused(api: httpx.AsyncClient, task_id: str) -> None:
    response = await api.post("/api/tasks", json={"task_id": task_id, "task_type": "echo"})
    assert (response.status_code, detail(response)["loc"]) == (422, ["body", "task_id"])
    response = await api.post("/api/tasks", json={"task_type": task_id})
    assert (response.status_code, detail(response)["loc"]) == (422, ["body", "task_type"])


async def test_ids_with_dots_are_reachable_at_their_url(api: httpx.AsyncClient) -> None:
    for task_id in ("a.b", ".hidden", "v1..2", "x."):
        response = await api.post("/api/tasks", json={"task_id": task_id, "task_type": "echo"})
        assert response.status_code == 201
        assert (await task(api, task_id))["task_id"] == task_id


# --- cross-site requests and CORS ----------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}],
)
async def test_state_changes_need_json_or_a_key_header(
    api: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    await api.post("/api/tasks", json={"task_id": "t", "task_type": "echo"})
    for action in ("cancel", "retry"):
        response = await api.post(f"/api/tasks/t/{action}", content=b"x=1", headers=headers)
        assert response.status_code == 415
        assert detail(response)["loc"] == ["header", "content-type"]
    assert (await task(api, "t"))["status"] == "pending"
    response = await api.post("/api/tasks/t/cancel", headers=JSON)
    assert (response.status_code, response.json()["status"]) == (200, "cancelled")


async def test_cors_is_off_unless_configured(settings: Settings) -> None:
    preflight = {
        "origin": "https://elsewhere.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type",
    }
    async with api_with(settings) as api:
        response = await api.options("/api/tasks", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    async with api_with(settings, cors_origins=["https://elsewhere.example"]) as api:
        response = await api.options("/api/tasks", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://elsewhere.example"


# --- rate limits ---------------------------------------------------------------------------


async def test_rate_limits_answer_429_with_retry_after_per_key_and_scope(
    settings: Settings, redis_client: Redis
) -> None:
    async with api_with(settings, rate_limit_submit=2.0, rate_limit_burst=1.0) as api:
        codes = [
            (await api.post("/api/tasks", json={"task_type": "e"})).status_code for _ in range(3)
        ]
        assert codes == [201, 201, 429]
        refused = await api.post("/api/tasks", json={"task_type": "e"})
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert detail(refused)["type"] == "rate_limited"
        # Reads are another scope (unlimited here); another caller has a bucket of its own.
        assert (await api.get("/api/tasks")).status_code == 200
        other = await api.post(
            "/api/tasks", json={"task_type": "e"}, headers={"x-api-key": "another-key"}
        )
        assert other.status_code != 429
        assert await redis_client.keys("dts:ratelimit:submit:*")


async def test_no_rate_limit_means_no_redis_call(settings: Settings, redis_client: Redis) -> None:
    async with api_with(settings) as api:
        assert not api.app.state.rate_limiter.enabled  # type: ignore[attr-defined]
        for _ in range(5):
            assert (await api.post("/api/tasks", json={"task_type": "e"})).status_code == 201
        assert await redis_client.keys("dts:ratelimit:*") == []


# --- the OpenAPI document ------------------------------------------------------------------


async def test_every_error_status_is_declared(api: httpx.AsyncClient) -> None:
    schema = (await api.get("/openapi.json")).json()
    assert "ErrorBody" in schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method, operation in operations.items():
            declared = set(operation["responses"])
            assert {"401", "403", "413", "422", "503"} <= declared, (method, path)
            if not path.startswith("/api/keys"):
                assert "429" in declared, (method, path)
            if method == "post":
                assert {"400", "408", "415"} <= declared, (method, path)
            if "{" in path:
                assert "404" in declared, (method, path)
    cancel = schema["paths"]["/api/tasks/{task_id}/cancel"]["post"]["responses"]
    assert "409" in cancel


# --- the worker never retries what cannot pass ---------------------------------------------


def _answering(status: int) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(status, json={"detail": []}))


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(400, Rejected), (413, Rejected), (422, Rejected), (500, Rejected), (503, Unavailable)],
)
async def test_the_worker_retries_only_outages(status: int, outcome: type[Exception]) -> None:
    client = SchedulerClient("http://api")
    await client.http.aclose()
    client.http = httpx.AsyncClient(base_url="http://api", transport=_answering(status))
    transport = HttpTransport(client)
    report = TaskReport(task_id="t", attempt=1, outcome=AttemptOutcome.COMPLETED, result=1)
    with pytest.raises(outcome):
        await transport.exchange("w", [report], [])
    await client.close()


async def test_a_refused_batch_is_sent_again_report_by_report(api: httpx.AsyncClient) -> None:
    """A batch the API refuses as a whole costs only its bad report: the worker sends each
    report once on its own, then drops the one refused again, and never loops."""
    attempts = await start(api, ["good1", "good2", "bad"])
    node = WorkerNode(WorkerOptions(worker_id="w", api_url="http://test"))
    await node.api.http.aclose()
    node.api.http = api  # the worker's client, talking to the app in process
    node.queue = api.app.state.queue  # type: ignore[attr-defined]
    node.transport = HttpTransport(node.api)
    reports = [
        TaskReport(task_id=t, attempt=attempts[t], outcome=AttemptOutcome.COMPLETED, result=t)
        for t in ("good1", "good2")
    ]
    # What an older or broken worker might send: an attempt number no column can hold.
    bad = TaskReport.model_construct(
        task_id="bad", attempt=2**31, outcome=AttemptOutcome.COMPLETED, result=None, error=None
    )
    await node._exchange([*reports, bad], [])
    for task_id in ("good1", "good2"):
        body = await task(api, task_id)
        assert (body["status"], body["result"]) == ("completed", task_id)
    assert (await task(api, "bad"))["status"] == "running"  # its lease will lapse; re-run
    assert node.outbox == {} and node.sending == {}
    node.executor.shutdown()


# --- the HTTP server's own bounds ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[int]:
    """The app under uvicorn with the protocol app.main.main uses; yields the port."""
    port = _free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        http=bounded_http_protocol(settings),
        log_level="warning",
    )
    server = uvicorn.Server(config)
    running = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:
                await asyncio.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        await running


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(10):
        return await reader.read()


async def test_headers_over_the_limit_are_431(settings: Settings) -> None:
    async with served(settings.model_copy(update={"max_header_bytes": 8192})) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # 10 KB of headers, and no end to them: refused once past the limit, not buffered on.
        head = b"".join(b"x-filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(10))
        writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\n" + head)
        await writer.drain()
        answer = await _read_all(reader)
        assert answer.startswith(b"HTTP/1.1 431")
        writer.close()
        # Within the limit, the same server answers.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/health")).status_code == 200


async def test_a_request_head_that_never_ends_is_closed(settings: Settings) -> None:
    async with served(settings.model_copy(update={"header_timeout": 0.5})) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nhost: x\r\n")  # and never the blank line
        await writer.drain()
        assert (await _read_all(reader)).startswith(b"HTTP/1.1 408")
        writer.close()
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await _read_all(idle_reader)).startswith(b"HTTP/1.1 408")  # sent nothing at all
        idle_writer.close()
