"""Keys and scopes (docs/security.md): the scope x endpoint matrix with keys required, the open
mode on loopback, the ADMIN_API_KEY bootstrap, the key lifecycle (shown once, listed without
secret, revoked, expired), worker keys bound to a worker id, the Redis password withheld from the
register answer, and the audit trail of operator actions. The last test runs a real API process
with keys required and a real worker process holding a worker key."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError
from sqlalchemy import select, update

from app.config import Settings, is_loopback, uvicorn_host
from app.database.tables import api_keys, task_events
from app.main import create_app
from app.models.auth import Scope
from app.services.auth import BOOTSTRAP_KEY_ID, KeyStore
from app.utils.embedded_servers import ValkeyServer
from app.utils.redact import mask_url
from tests.conftest import running, seed_example
from tests.integration.harness import Stack, wait_for_status

ADMIN = "bootstrap-admin-key-for-tests-0123456789abcdef"
NON_ADMIN = [s for s in Scope if s != Scope.ADMIN]


@pytest.fixture
def secured_settings(settings: Settings) -> Settings:
    """Keys required, the bootstrap admin key set, no verification cache (revocation at once)."""
    return settings.model_copy(
        update={
            "auth_required": True,
            "admin_api_key": SecretStr(ADMIN),
            "api_key_cache_seconds": 0.0,
        }
    )


@pytest.fixture
async def secured(
    secured_settings: Settings, redis_client: Redis
) -> AsyncIterator[httpx.AsyncClient]:
    async with running(secured_settings) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def new_key(
    api: httpx.AsyncClient, *scopes: Scope | str, worker_id: str | None = None, **extra: Any
) -> dict[str, Any]:
    body = {"name": f"test {'+'.join(scopes)}", "scopes": list(scopes), **extra}
    if worker_id is not None:
        body["worker_id"] = worker_id
    response = await api.post("/api/keys", json=body, headers=bearer(ADMIN))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


# --- the matrix -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # the route's template; ids are filled in by `url`
    scope: Scope
    body: dict[str, Any] | None = None
    ok: int = 200

    def url(self, ids: dict[str, str]) -> str:
        return self.path.format(**ids)


# In order: the calls made with the right scope change state that later rows rely on (the task is
# cancelled before it is retried, the worker registered before its heartbeat).
MATRIX = [
    Route("POST", "/api/tasks", Scope.SUBMIT, seed_example(task_id="m-2"), 201),
    Route("POST", "/api/tasks/batch", Scope.SUBMIT, {"tasks": [{"task_type": "echo"}]}, 201),
    Route("GET", "/api/tasks", Scope.READ),
    Route("GET", "/api/tasks/{task_id}", Scope.READ),
    Route("GET", "/api/tasks/{task_id}/graph", Scope.READ),
    Route("GET", "/api/tasks/{task_id}/logs", Scope.READ),
    Route("POST", "/api/tasks/{task_id}/cancel", Scope.OPERATE, {}),
    Route("POST", "/api/tasks/{task_id}/retry", Scope.OPERATE, {}),
    Route("GET", "/api/queues", Scope.READ),
    Route("GET", "/api/stats/overview", Scope.READ),
    Route("GET", "/api/stats/timeseries", Scope.READ),
    Route("GET", "/api/stats/durations", Scope.READ),
    Route("GET", "/api/stats/tasks", Scope.READ),
    Route(
        "POST",
        "/api/workers/register",
        Scope.WORKER,
        {"worker_id": "w-1", "capabilities": ["echo"]},
        201,
    ),
    Route("GET", "/api/workers", Scope.READ),
    Route("POST", "/api/workers/{worker_id}/heartbeat", Scope.WORKER, {}),
    Route("POST", "/api/workers/{worker_id}/start", Scope.WORKER, {"task_ids": []}),
    Route("POST", "/api/workers/{worker_id}/reports", Scope.WORKER, {"reports": []}),
    Route("POST", "/api/workers/{worker_id}/exchange", Scope.WORKER, {}),
    Route("POST", "/api/workers/{worker_id}/deregister", Scope.WORKER, {}, 204),
    Route("POST", "/api/keys", Scope.ADMIN, {"name": "another", "scopes": ["read"]}, 201),
    Route("GET", "/api/keys", Scope.ADMIN),
    Route("DELETE", "/api/keys/{key_id}", Scope.ADMIN, None, 204),
    Route(
        "POST",
        "/api/schedules",
        Scope.SUBMIT,
        {"schedule_id": "m-s", "interval_seconds": 3600, "task": {"task_type": "echo"}},
        201,
    ),
    Route("GET", "/api/schedules", Scope.READ),
    Route("GET", "/api/schedules/{schedule_id}", Scope.READ),
    Route("PATCH", "/api/schedules/{schedule_id}", Scope.SUBMIT, {"enabled": False}),
    Route("POST", "/api/schedules/{schedule_id}/trigger", Scope.SUBMIT, {}, 201),
    Route("DELETE", "/api/schedules/{schedule_id}", Scope.OPERATE, None, 204),
]


async def call(
    api: httpx.AsyncClient, route: Route, ids: dict[str, str], headers: dict[str, str]
) -> httpx.Response:
    # Always JSON, so that the refusal of keyless form posts (a 415, tests/test_limits.py) does
    # not answer before the key check this matrix is about.
    headers = {"content-type": "application/json", **headers}
    return await api.request(route.method, route.url(ids), json=route.body, headers=headers)


def test_the_matrix_covers_every_api_route() -> None:
    """A new route under /api must take a row (and so declare a scope) to pass."""
    paths = create_app(Settings(_env_file=None)).openapi()["paths"]
    routes = {
        (method.upper(), path)
        for path, operations in paths.items()
        if path.startswith("/api")
        for method in operations
    }
    assert routes == {(r.method, r.path) for r in MATRIX}


async def test_scope_matrix_401_403_and_2xx(secured: httpx.AsyncClient) -> None:
    one = {s: (await new_key(secured, s))["key"] for s in Scope}
    others = {s: (await new_key(secured, *[o for o in NON_ADMIN if o != s]))["key"] for s in Scope}
    doomed = await new_key(secured, Scope.READ)
    submitted = await secured.post(
        "/api/tasks", json=seed_example(task_id="m-1"), headers=bearer(ADMIN)
    )
    assert submitted.status_code == 201
    ids = {"task_id": "m-1", "worker_id": "w-1", "key_id": doomed["key_id"], "schedule_id": "m-s"}
    wrong: list[str] = []
    for route in MATRIX:
        outcomes = {
            "no key": (await call(secured, route, ids, {})).status_code,
            "bad key": (await call(secured, route, ids, bearer("dts_not-a-key"))).status_code,
            "wrong scope": (
                await call(secured, route, ids, bearer(others[route.scope]))
            ).status_code,
            "right scope": (await call(secured, route, ids, bearer(one[route.scope]))).status_code,
        }
        expected = {"no key": 401, "bad key": 401, "wrong scope": 403, "right scope": route.ok}
        if outcomes != expected:
            wrong.append(f"{route.method} {route.path}: {outcomes}")
    assert wrong == []


async def test_401_says_bearer_and_403_names_the_scope(secured: httpx.AsyncClient) -> None:
    missing = await secured.get("/api/tasks")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["detail"][0]["type"] == "unauthorized"
    reader = (await new_key(secured, Scope.READ))["key"]
    refused = await secured.post("/api/tasks", json=seed_example(), headers=bearer(reader))
    assert refused.status_code == 403
    assert "'submit'" in refused.json()["detail"][0]["msg"]


async def test_x_api_key_header_and_admin_implies_every_scope(secured: httpx.AsyncClient) -> None:
    reader = (await new_key(secured, Scope.READ))["key"]
    assert (await secured.get("/api/tasks", headers={"X-API-Key": reader})).status_code == 200
    for route in MATRIX:
        if route.method == "GET" and "{" not in route.path:
            assert (await secured.get(route.path, headers=bearer(ADMIN))).status_code == 200


async def test_health_and_metrics_stay_open_unless_metrics_are_closed(
    secured_settings: Settings, redis_client: Redis
) -> None:
    async with running(secured_settings) as api:
        assert (await api.get("/health")).status_code == 200
        assert (await api.get("/metrics")).status_code == 200
    closed = secured_settings.model_copy(update={"metrics_public": False})
    async with running(closed) as api:
        assert (await api.get("/health")).status_code == 200
        assert (await api.get("/metrics")).status_code == 401
        worker = (await new_key(api, Scope.WORKER))["key"]
        assert (await api.get("/metrics", headers=bearer(worker))).status_code == 403
        reader = (await new_key(api, Scope.READ))["key"]
        assert (await api.get("/metrics", headers=bearer(reader))).status_code == 200


# --- modes ----------------------------------------------------------------------------------------


def test_keys_are_required_unless_the_api_listens_on_loopback() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
        assert not Settings(_env_file=None, api_host=host).auth_enforced
    for host in ("0.0.0.0", "::", "10.1.2.3", "scheduler.example.com", ""):
        assert not is_loopback(host), host
        assert Settings(_env_file=None, api_host=host).auth_enforced
    assert Settings(_env_file=None).auth_enforced  # the default API_HOST is 0.0.0.0
    assert Settings(_env_file=None, api_host="127.0.0.1", auth_required=True).auth_enforced
    assert not Settings(_env_file=None, api_host="0.0.0.0", auth_required=False).auth_enforced


def test_under_uvicorn_its_host_decides() -> None:
    module = str(Path(sys.prefix) / "lib" / "uvicorn" / "__main__.py")
    assert uvicorn_host([module, "app.main:app", "--port", "8000"], {}) == "127.0.0.1"
    assert uvicorn_host(["/venv/bin/uvicorn", "app.main:app", "--host", "0.0.0.0"], {}) == "0.0.0.0"
    assert uvicorn_host(["/venv/bin/uvicorn", "app.main:app", "--host=::1"], {}) == "::1"
    assert uvicorn_host(["/venv/bin/uvicorn", "app.main:app"], {"UVICORN_HOST": "10.0.0.1"}) == (
        "10.0.0.1"
    )
    assert uvicorn_host(["/venv/bin/uvicorn", "app.main:app", "--uds", "/run/api.sock"], {}) == ""
    assert uvicorn_host(["/venv/bin/gunicorn", "app.main:app"], {}) is None


async def test_open_mode_on_loopback_warns_and_needs_no_key(
    settings: Settings, redis_client: Redis, capfd: pytest.CaptureFixture[str]
) -> None:
    loud = settings.model_copy(update={"log_level": "INFO"})
    async with running(loud) as api:
        assert (await api.post("/api/tasks", json=seed_example())).status_code == 201
        assert (await api.post("/api/tasks/unique-task-id/cancel", json={})).status_code == 200
        assert (await api.get("/api/tasks")).status_code == 200
        # A key that is sent is still checked, and key management always needs an admin key.
        assert (await api.get("/api/tasks", headers=bearer("dts_wrong"))).status_code == 401
        assert (await api.get("/api/keys")).status_code == 401
        # Through a reverse proxy a loopback API is as exposed as the proxy: keys again.
        proxied = await api.get("/api/tasks", headers={"X-Forwarded-For": "203.0.113.9"})
        assert proxied.status_code == 401
    err = capfd.readouterr().err
    assert '"event": "auth.open"' in err
    assert '"reason": "loopback host"' in err


async def test_admin_api_key_bootstraps_and_is_never_stored(
    secured: httpx.AsyncClient,
) -> None:
    created = await new_key(secured, Scope.SUBMIT, Scope.READ)
    listed = (await secured.get("/api/keys", headers=bearer(ADMIN))).json()
    assert [k["key_id"] for k in listed["keys"]] == [created["key_id"]]  # not the bootstrap key
    async with secured.app.state.db.read() as conn:  # type: ignore[attr-defined]
        rows = [dict(r._mapping) for r in await conn.execute(select(api_keys))]
    stored = repr(rows)
    assert ADMIN not in stored and created["key"] not in stored
    assert rows[0]["key_hash"] == hashlib.sha256(created["key"].encode()).hexdigest()


# --- the key lifecycle ----------------------------------------------------------------------------


async def test_key_is_shown_once_listed_without_secret_and_revoked(
    secured: httpx.AsyncClient,
) -> None:
    created = await new_key(secured, Scope.READ, Scope.SUBMIT, Scope.READ)
    assert created["key"].startswith("dts_") and len(created["key"]) >= 4 + 43  # 256 bits
    assert created["scopes"] == ["read", "submit"]
    key = created["key"]
    assert (await secured.get("/api/tasks", headers=bearer(key))).status_code == 200

    listing = (await secured.get("/api/keys", headers=bearer(ADMIN))).json()
    (listed,) = listing["keys"]
    assert key not in str(listing) and "key" not in listed and "key_hash" not in listed
    assert listed["revoked"] is False and listed["last_used_at"] is not None

    gone = await secured.delete(f"/api/keys/{created['key_id']}", headers=bearer(ADMIN))
    assert gone.status_code == 204
    assert (await secured.get("/api/tasks", headers=bearer(key))).status_code == 401
    again = await secured.delete(f"/api/keys/{created['key_id']}", headers=bearer(ADMIN))
    assert again.status_code == 204
    unknown = await secured.delete("/api/keys/key_nope", headers=bearer(ADMIN))
    assert unknown.status_code == 404
    (listed,) = (await secured.get("/api/keys", headers=bearer(ADMIN))).json()["keys"]
    assert listed["revoked"] is True and listed["revoked_at"] is not None


async def test_revocation_elsewhere_holds_within_the_cache_bound(
    secured_settings: Settings, redis_client: Redis
) -> None:
    """Revoked by another API process (here: in the database directly), a cached key is accepted
    until its cache entry lapses, then refused. The lapse is made by editing the cache's clock
    instead of sleeping API_KEY_CACHE_SECONDS."""
    cached = secured_settings.model_copy(update={"api_key_cache_seconds": 3600.0})
    async with running(cached) as api:
        created = await new_key(api, Scope.READ)
        assert (await api.get("/api/tasks", headers=bearer(created["key"]))).status_code == 200
        app: Any = api.app  # type: ignore[attr-defined]
        async with app.state.db.transaction() as conn:
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.key_id == created["key_id"])
                .values(revoked_at=datetime.now(UTC))
            )
        assert (await api.get("/api/tasks", headers=bearer(created["key"]))).status_code == 200
        store: KeyStore = app.state.keys
        for digest, entry in list(store.cache.items()):
            store.cache[digest] = type(entry)(entry.caller, entry.expires_at, until=0.0)
        assert (await api.get("/api/tasks", headers=bearer(created["key"]))).status_code == 401


async def test_expired_key_is_refused(secured: httpx.AsyncClient) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    refused = await secured.post(
        "/api/keys",
        json={"name": "x", "scopes": ["read"], "expires_at": past},
        headers=bearer(ADMIN),
    )
    assert refused.status_code == 422
    soon = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    created = await new_key(secured, Scope.READ, expires_at=soon)
    assert (await secured.get("/api/tasks", headers=bearer(created["key"]))).status_code == 200
    async with secured.app.state.db.transaction() as conn:  # type: ignore[attr-defined]
        await conn.execute(
            update(api_keys)
            .where(api_keys.c.key_id == created["key_id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert (await secured.get("/api/tasks", headers=bearer(created["key"]))).status_code == 401


async def test_bad_key_bodies_are_422(secured: httpx.AsyncClient) -> None:
    for body in (
        {"name": "x", "scopes": []},
        {"name": "x", "scopes": ["everything"]},
        {"name": "", "scopes": ["read"]},
        {"name": "x", "scopes": ["worker"], "worker_id": "a*b"},
        {"name": "x", "scopes": ["read"], "expires_at": "2099-01-01T00:00:00"},  # no zone
    ):
        response = await secured.post("/api/keys", json=body, headers=bearer(ADMIN))
        assert response.status_code == 422, body


# --- workers --------------------------------------------------------------------------------------


async def test_a_bound_worker_key_cannot_act_as_another_worker(secured: httpx.AsyncClient) -> None:
    exact = (await new_key(secured, Scope.WORKER, worker_id="w-a"))["key"]
    pool = (await new_key(secured, Scope.WORKER, worker_id="pool-*"))["key"]
    for key, mine, theirs in ((exact, "w-a", "w-ab"), (pool, "pool-7", "w-a")):
        spec = {"worker_id": theirs, "capabilities": ["echo"]}
        response = await secured.post("/api/workers/register", json=spec, headers=bearer(key))
        assert response.status_code == 403
        spec = {"worker_id": mine, "capabilities": ["echo"]}
        response = await secured.post("/api/workers/register", json=spec, headers=bearer(key))
        assert response.status_code == 201
        for action in ("heartbeat", "exchange", "deregister"):
            url = f"/api/workers/{theirs}/{action}"
            assert (await secured.post(url, json={}, headers=bearer(key))).status_code == 403
            url = f"/api/workers/{mine}/{action}"
            assert (await secured.post(url, json={}, headers=bearer(key))).status_code < 300


async def test_a_report_for_another_workers_attempt_is_refused_and_logged(
    secured_settings: Settings, redis_client: Redis, capfd: pytest.CaptureFixture[str]
) -> None:
    async with running(secured_settings) as api:
        worker = bearer((await new_key(api, Scope.WORKER))["key"])
        for worker_id in ("w-a", "w-b"):
            spec = {"worker_id": worker_id, "capabilities": ["echo"]}
            await api.post("/api/workers/register", json=spec, headers=worker)
        await api.post(
            "/api/tasks", json={"task_id": "t-1", "task_type": "echo"}, headers=bearer(ADMIN)
        )
        started = await api.post(
            "/api/workers/w-a/start", json={"task_ids": ["t-1"]}, headers=worker
        )
        assert [t["task_id"] for t in started.json()["started"]] == ["t-1"]
        report = {"task_id": "t-1", "attempt": 1, "outcome": "completed", "result": {"forged": 1}}
        answer = await api.post(
            "/api/workers/w-b/reports", json={"reports": [report]}, headers=worker
        )
        assert answer.json() == {"accepted": [], "refused": ["t-1"]}
        task = (await api.get("/api/tasks/t-1", headers=bearer(ADMIN))).json()
        assert (task["status"], task["worker_id"], task["result"]) == ("running", "w-a", None)
    err = capfd.readouterr().err
    assert '"event": "report.stale"' in err and '"worker_id": "w-b"' in err


@pytest.fixture
async def redis_user(valkey: ValkeyServer, redis_client: Redis) -> AsyncIterator[str]:
    """A Redis URL with a password: a user of the test Valkey's own ACL."""
    password = "s3cret-redis-password"
    await redis_client.execute_command(
        "ACL", "SETUSER", "sched", "on", f">{password}", "~*", "&*", "+@all"
    )
    yield valkey.url.replace("redis://", f"redis://sched:{password}@", 1)
    await redis_client.execute_command("ACL", "DELUSER", "sched")


async def test_register_withholds_the_redis_password_from_all_but_worker_keys(
    settings: Settings, redis_user: str, capfd: pytest.CaptureFixture[str]
) -> None:
    password = "s3cret-redis-password"
    spec = {"worker_id": "w-1", "capabilities": ["echo"]}
    exposed = settings.model_copy(
        update={
            "redis_url": redis_user,
            "api_host": "0.0.0.0",
            "auth_required": False,
            "admin_api_key": SecretStr(ADMIN),
            "log_level": "INFO",
        }
    )
    async with running(exposed) as api:
        # Open mode on a network address: no key, no password.
        anonymous = (await api.post("/api/workers/register", json=spec)).json()
        assert anonymous["redis_url"] == mask_url(redis_user) and password not in str(anonymous)
        reader = bearer((await new_key(api, Scope.READ))["key"])
        refused = await api.post("/api/workers/register", json=spec, headers=reader)
        assert refused.status_code == 403 and password not in refused.text
        worker = bearer((await new_key(api, Scope.WORKER))["key"])
        answer = (await api.post("/api/workers/register", json=spec, headers=worker)).json()
        assert answer["redis_url"] == redis_user
    async with running(exposed.model_copy(update={"api_host": "127.0.0.1"})) as api:
        # Open mode on loopback (the dev stack): the worker there needs it and gets it.
        assert (await api.post("/api/workers/register", json=spec)).json()[
            "redis_url"
        ] == redis_user
    assert password not in capfd.readouterr().err


# --- audit ----------------------------------------------------------------------------------------


async def test_operator_actions_are_in_the_task_events(secured: httpx.AsyncClient) -> None:
    operator = await new_key(secured, Scope.OPERATE)
    await secured.post("/api/tasks", json=seed_example(), headers=bearer(ADMIN))
    for action in ("cancel", "retry"):
        url = f"/api/tasks/unique-task-id/{action}"
        response = await secured.post(url, headers=bearer(operator["key"]))
        assert response.status_code == 200
        assert response.json()["events"][-1]["action"] == action
    await secured.post("/api/tasks/unique-task-id/cancel", headers=bearer(ADMIN))
    task = (await secured.get("/api/tasks/unique-task-id", headers=bearer(ADMIN))).json()
    events = [(e["action"], e["key_id"]) for e in task["events"]]
    assert events == [
        ("cancel", operator["key_id"]),
        ("retry", operator["key_id"]),
        ("cancel", BOOTSTRAP_KEY_ID),
    ]
    assert task["events"][0]["detail"] == {"previous": "pending", "dependents": 0}
    listed = (await secured.get("/api/tasks", headers=bearer(ADMIN))).json()["tasks"]
    assert listed[0]["events"] is None  # lists leave them out, like attempts


async def test_key_management_is_audited(secured: httpx.AsyncClient) -> None:
    created = await new_key(secured, Scope.READ)
    await secured.delete(f"/api/keys/{created['key_id']}", headers=bearer(ADMIN))
    async with secured.app.state.db.read() as conn:  # type: ignore[attr-defined]
        rows = (await conn.execute(select(task_events).order_by(task_events.c.id))).all()
    assert [(r.task_id, r.action, r.key_id, r.detail["key"]) for r in rows] == [
        (None, "key.create", BOOTSTRAP_KEY_ID, created["key_id"]),
        (None, "key.revoke", BOOTSTRAP_KEY_ID, created["key_id"]),
    ]


async def test_open_mode_events_have_no_key(api: httpx.AsyncClient) -> None:
    await api.post("/api/tasks", json=seed_example())
    cancelled = (await api.post("/api/tasks/unique-task-id/cancel", json={})).json()
    assert [(e["action"], e["key_id"]) for e in cancelled["events"]] == [("cancel", None)]


# --- end to end -----------------------------------------------------------------------------------


# The Redis ACL of a worker on the HTTP transport (docs/security.md): its keys, its cancel
# channel, the commands it sends and those its Lua scripts call (claim, renew, unclaim).
WORKER_ACL = [
    "resetkeys",
    "~{p}:queue:*",
    "~{p}:wake:*",
    "~{p}:active",
    "~{p}:owners",
    "resetchannels",
    "&{p}:cancel",
    "-@all",
    "+ping",
    "+client|setinfo",
    "+evalsha",
    "+script|load",
    "+blpop",
    "+lpush",
    "+subscribe",
    "+unsubscribe",
    "+time",
    "+zadd",
    "+zpopmin",
    "+zrange",
    "+zscore",
    "+zrem",
    "+hset",
    "+hget",
    "+hdel",
    "+ltrim",
]


@pytest.fixture
async def restricted_worker_user(valkey: ValkeyServer, redis_client: Redis) -> AsyncIterator[str]:
    """A Redis user with only the worker's ACL; its URL."""
    password = "w0rker-redis-password"
    rules = [rule.format(p="dts") for rule in WORKER_ACL]
    await redis_client.execute_command("ACL", "SETUSER", "dts-worker", "on", f">{password}", *rules)
    await redis_client.execute_command("ACL", "LOG", "RESET")
    yield valkey.url.replace("redis://", f"redis://dts-worker:{password}@", 1)
    await redis_client.execute_command("ACL", "DELUSER", "dts-worker")


@pytest.mark.e2e
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_worker_with_a_worker_key_and_a_restricted_redis_user_runs_tasks(
    tmp_path: Path,
    redis_client: Redis,
    database_url: str,
    redis_user: str,
    restricted_worker_user: str,
) -> None:
    """Keys required, the API on a Redis user with a password, the worker on a Redis user with
    only its ACL: tasks run, no command is denied, and no log holds a password."""
    stack = Stack(
        tmp=tmp_path,
        database_url=database_url,
        redis_url=redis_user,
        env={"AUTH_REQUIRED": "true", "ADMIN_API_KEY": ADMIN, "HEARTBEAT_INTERVAL": "1"},
    )
    try:
        await stack.start_api()
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as http:
            keyless = stack.start_worker("e2e-keyless")
            assert await keyless.wait(timeout=60) != 0  # refused at registration: exits
            bound = await new_key(http, Scope.WORKER, worker_id="e2e-*")
            env = {"REDIS_URL": restricted_worker_user}
            stack.start_worker("e2e-1", "--api-key", bound["key"], env=env)
            http.headers.update(bearer((await new_key(http, Scope.SUBMIT, Scope.READ))["key"]))
            for n in range(3):
                spec = {"task_id": f"e-{n}", "task_type": "echo", "payload": {"n": n}}
                assert (await http.post("/api/tasks", json=spec)).status_code == 201
            for n in range(3):
                await wait_for_status(http, f"e-{n}", "completed", timeout=60)
            assert (await http.get("/api/tasks/e-0")).json()["worker_id"] == "e2e-1"
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop_all()
    assert await redis_client.execute_command("ACL", "LOG") == []  # nothing denied
    restricted = Redis.from_url(restricted_worker_user)
    try:
        with pytest.raises(NoPermissionError):  # and the user is restricted indeed
            await restricted.get("dts:epoch")
    finally:
        await restricted.aclose()
    logs = {p.name: p.read_text() for p in tmp_path.glob("*.log")}
    assert "401" in logs["e2e-keyless.log"]
    assert '"event": "api.started"' in logs["api-0.log"] and ":***@" in logs["api-0.log"]
    for secret in ("s3cret-redis-password", "w0rker-redis-password", ADMIN, bound["key"]):
        assert not [name for name, text in logs.items() if secret in text], secret
