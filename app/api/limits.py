"""Hard limits on what reaches the routes, each answered with a clear 4xx before any work is done
(docs/api_reference.md, "Limits"):

- `LimitsMiddleware` (ASGI, under /api/): a NUL in the path, the query or the correlation id
  is a 422; a state-changing call without a JSON content type or a key header is a 415 (a plain
  HTML form on another site cannot send either); a body over its limit is a 413, from its
  Content-Length or counted as it streams in; a body that has not arrived in time is a 408; a
  caller over its rate is a 429 with Retry-After (a token bucket in Redis, one call per request,
  none when off).
- `StrictJsonRoute`: bodies are parsed by pydantic-core, which keeps big integers exact (orjson
  would turn them into floats silently), refuses NaN and Infinity and nests 200 levels at most;
  every parse error is a 422, never a 500.
- `BoundedHttpToolsProtocol`: the HTTP server's own bounds that uvicorn lacks with httptools:
  request line plus headers over `max_header_bytes` is a 431, and a connection that has not sent
  its headers within `header_timeout` is closed with a 408.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar

import structlog
from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from pydantic_core import from_json
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.config import Settings, get_settings
from app.services.keys import RedisKeys

log = structlog.get_logger(__name__)

LUA = Path(__file__).resolve().parent.parent / "services" / "lua" / "ratelimit.lua"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Bodies that carry many items get the larger limit (MAX_BATCH_REQUEST_BYTES).
BATCH_PATH = re.compile(r"^/api/(tasks/batch|workers/[^/]+/(reports|exchange|start))$")
KEY_HEADERS = (b"authorization", b"x-api-key")
CORS_HEADERS = ["Authorization", "X-API-Key", "Content-Type", "X-Correlation-ID"]
CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def _error(
    status: int, loc: list[str | int], msg: str, kind: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"detail": [{"loc": loc, "msg": msg, "type": kind}]}, status_code=status, headers=headers
    )


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def _header_refusal(scope: Scope, headers: dict[bytes, bytes]) -> JSONResponse | None:
    if CONTROL.search(headers.get(b"x-correlation-id", b"")):
        msg = "X-Correlation-ID must not contain control characters"
        return _error(422, ["header", "x-correlation-id"], msg, "value_error")
    if scope["method"] not in STATE_CHANGING:
        return None
    if _is_json(headers.get(b"content-type", b"")) or any(h in headers for h in KEY_HEADERS):
        return None
    # A cross-site HTML form can send neither a JSON content type nor a custom header without
    # the browser asking first (CORS preflight), so this stops it from cancelling or retrying.
    msg = "state-changing requests need Content-Type: application/json or an API key header"
    return _error(415, ["header", "content-type"], msg, "unsupported_media_type")


def _refusal(scope: Scope, limit: int) -> JSONResponse | None:
    """The refusals that need nothing but the request's head."""
    if "\x00" in scope["path"]:
        return _error(422, ["path"], "the path must not contain NUL (%00)", "value_error")
    query: bytes = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        return _error(422, ["query"], "the query must not contain NUL (%00)", "value_error")
    headers = dict(scope["headers"])
    refusal = _header_refusal(scope, headers)
    if refusal is not None:
        return refusal
    length = headers.get(b"content-length", b"")
    if length.isdigit() and int(length) > limit:
        return _too_large(limit)
    return None


def _too_large(limit: int) -> JSONResponse:
    msg = f"the request body is over the limit of {limit} bytes"
    return _error(413, ["body"], msg, "too_large", {"Connection": "close"})


def body_limit(settings: Settings, path: str) -> int:
    if BATCH_PATH.match(path):
        return settings.max_batch_request_bytes
    return settings.request_bytes_limit


class _BoundedBody:
    """The request's `receive`, counting body bytes against `limit` and timing the body out.
    Raised HTTPExceptions become the response: FastAPI re-raises them from its body reading.
    One timer per request, armed at the first read, cancels a read still waiting at the deadline
    (asyncio.timeout around each read would cost several times more on every request)."""

    def __init__(self, receive: Receive, limit: int, timeout: float) -> None:
        self.receive, self.limit, self.timeout = receive, limit, timeout
        self.received = 0
        self.done = self.expired = self.waiting = False
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[Any] | None = None

    async def __call__(self) -> Message:
        if self.done:  # after the body: disconnect notices, which may wait as long as they like
            return await self.receive()
        if self.timer is None:
            loop = asyncio.get_running_loop()
            self.task = asyncio.current_task()
            self.timer = loop.call_later(self.timeout, self._expire)
        if self.expired:
            raise self._timed_out()
        self.waiting = True
        try:
            message = await self.receive()
        except asyncio.CancelledError:
            if self.expired and self.task is not None and self.task.uncancel() == 0:
                raise self._timed_out() from None
            raise
        finally:
            self.waiting = False
        return self._count(message)

    def _count(self, message: Message) -> Message:
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self._finish()
                msg = f"the request body is over the limit of {self.limit} bytes"
                detail = [_item(["body"], msg, "too_large")]
                raise HTTPException(413, detail, {"Connection": "close"})
            if message.get("more_body", False):
                return message
        self._finish()
        return message

    def _finish(self) -> None:
        self.done = True
        if self.timer is not None:
            self.timer.cancel()

    def _expire(self) -> None:
        self.expired = True
        if self.waiting and self.task is not None:
            self.task.cancel()

    def _timed_out(self) -> HTTPException:
        self._finish()
        msg = f"the request body did not arrive within {self.timeout:g} s"
        return HTTPException(408, [_item(["body"], msg, "timeout")], {"Connection": "close"})


def _item(loc: list[str | int], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": kind}


class LimitsMiddleware:
    """Runs inside the correlation-id middleware, so refusals carry the id too. Settings and the
    rate limiter are read from app.state, where the lifespan puts them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Only the API proper: /health, /metrics and the docs read no input and write nothing.
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        settings: Settings = state.settings
        limit = body_limit(settings, scope["path"])
        refusal = _refusal(scope, limit)
        if refusal is None:
            limiter: RateLimiter | None = getattr(state, "rate_limiter", None)
            if limiter is not None and limiter.enabled:
                refusal = await limiter.check(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        bounded = _BoundedBody(receive, limit, settings.request_body_timeout)
        await self.app(scope, bounded, send)


class ConfiguredCors:
    """CORS only when CORS_ORIGINS names origins; otherwise browsers on other origins get no
    CORS headers and cannot read answers (nor send JSON or key headers, which need a preflight).
    Built at the first request, because the settings are known only once the lifespan ran."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.handler: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.handler is None:
            if scope["type"] not in ("http", "websocket"):
                await self.app(scope, receive, send)
                return
            origins: list[str] = scope["app"].state.settings.cors_origins
            self.handler = self.app
            if origins:
                self.handler = CORSMiddleware(
                    self.app,
                    allow_origins=origins,
                    allow_methods=["GET", "POST", "DELETE"],
                    allow_headers=[
                        "Authorization",
                        "X-API-Key",
                        "Content-Type",
                        "X-Correlation-ID",
                    ],
                    expose_headers=["X-Correlation-ID", "Retry-After"],
                )
        await self.handler(scope, receive, send)


# --- rate limits ---------------------------------------------------------------------------


def rate_scope(method: str, path: str) -> str | None:
    """Which scope's rate a request spends, by the same split as the keys' scopes."""
    if not path.startswith("/api/") or path.startswith("/api/keys"):
        return None
    if path.startswith("/api/workers/") and method == "POST":
        return "worker"
    if method in ("GET", "HEAD"):
        return "read"
    if path in ("/api/tasks", "/api/tasks/batch"):
        return "submit"
    return "operate"


def caller_identity(scope: Scope) -> str:
    """Whom a request's rate is counted against: its key (hashed, as a key is never kept in
    clear), or without one its client address."""
    headers = dict(scope["headers"])
    for name in KEY_HEADERS:
        value = headers.get(name)
        if value:
            token = value.split(b" ", 1)[-1] if name == b"authorization" else value
            return "key:" + hashlib.sha256(token.strip()).hexdigest()[:32]
    client = scope.get("client")
    return "addr:" + (client[0] if client else "unknown")


class RateLimiter:
    """A token bucket per (scope, caller) in Redis: RATE_LIMIT_<SCOPE> tokens a second, up to
    RATE_LIMIT_BURST seconds' worth saved up. One script call per limited request."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.rates = {
            "submit": settings.rate_limit_submit,
            "read": settings.rate_limit_read,
            "operate": settings.rate_limit_operate,
            "worker": settings.rate_limit_worker,
        }
        self.burst = settings.rate_limit_burst
        self.keys = RedisKeys(settings.redis_prefix)
        self.enabled = any(rate > 0 for rate in self.rates.values())
        self.script = redis.register_script(LUA.read_text())

    async def retry_after(self, scope_name: str, identity: str) -> float | None:
        """Seconds to wait before the next request may pass, or None when this one passes."""
        rate = self.rates.get(scope_name, 0.0)
        if rate <= 0:
            return None
        capacity = max(1.0, rate * self.burst)
        key = self.keys.rate_limit(scope_name, identity)
        allowed, wait_ms = await self.script(keys=[key], args=[repr(rate), repr(capacity), 1])
        return None if int(allowed) else int(wait_ms) / 1000

    async def check(self, scope: Scope) -> JSONResponse | None:
        scope_name = rate_scope(scope["method"], scope["path"])
        if scope_name is None:
            return None
        identity = caller_identity(scope)
        try:
            wait = await self.retry_after(scope_name, identity)
        except (RedisError, OSError) as exc:
            # A Redis outage must not take the API down with it: limits lapse until it is back.
            log.warning("ratelimit.unavailable", error=type(exc).__name__)
            return None
        if wait is None:
            return None
        log.info("ratelimit.refused", scope=scope_name, identity=identity[:16])
        msg = f"over the '{scope_name}' rate of {self.rates[scope_name]:g} requests per second"
        headers = {"Retry-After": str(max(1, math.ceil(wait)))}
        return _error(429, [], msg, "rate_limited", headers)


# --- JSON bodies -----------------------------------------------------------------------------

POSITION = re.compile(r"line (\d+) column (\d+)")


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = from_json(body, allow_inf_nan=False)
            except ValueError as exc:
                raise _decode_error(str(exc), body) from exc
        return self._json


def _decode_error(message: str, body: bytes) -> json.JSONDecodeError:
    """FastAPI answers a json.JSONDecodeError with a 422 naming the position; other parse
    errors would be a 400 without the error format."""
    doc = body.decode("utf-8", errors="replace")
    pos = 0
    found = POSITION.search(message)
    if found:
        line, column = int(found[1]), int(found[2])
        starts = [0] + [m.end() for m in re.finditer("\n", doc)]
        pos = min(len(doc), starts[min(line, len(starts)) - 1] + max(column - 1, 0))
    return json.JSONDecodeError(POSITION.sub("", message).removesuffix(" at ").strip(), doc, pos)


class StrictJsonRoute(APIRoute):
    """Route class for routers with JSON bodies: `APIRouter(route_class=StrictJsonRoute)`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict_handler


# --- the HTTP server -------------------------------------------------------------------------

REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
HEADERS_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-length: 0\r\nconnection: close\r\n\r\n"
)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on the request head, in bytes and in time.
    httptools buffers headers without limit (uvicorn's h11_max_incomplete_event_size applies to
    h11 only, which is several times slower), and uvicorn's keep-alive timer neither runs before
    a connection's first request nor once a request has begun, so a client that sends a byte now
    and then holds its connection for ever. `app.main.main` sets the two bounds from Settings."""

    max_header_bytes: ClassVar[int] = 64 * 1024
    header_timeout: ClassVar[float] = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes: int | None = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_bytes is None or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > self.max_header_bytes:
            self._refuse(HEADERS_TOO_LARGE)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        self._cancel_head_timer()
        super().on_headers_complete()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_bytes is not None:  # still waiting for a request's head
            self._refuse(REQUEST_TIMEOUT)

    def _refuse(self, response: bytes) -> None:
        self._cancel_head_timer()
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()


class SettingsHttpProtocol(BoundedHttpToolsProtocol):
    """BoundedHttpToolsProtocol with the bounds of Settings, named by its import path: the worker
    processes of `python -m app.main --workers N` import their protocol, they cannot be handed a
    class made at run time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = get_settings()
        type(self).max_header_bytes = settings.max_header_bytes
        type(self).header_timeout = settings.header_timeout
        super().__init__(*args, **kwargs)


def bounded_http_protocol(settings: Settings) -> type[BoundedHttpToolsProtocol]:
    """The protocol class with this configuration's bounds (uvicorn takes a class)."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"max_header_bytes": settings.max_header_bytes, "header_timeout": settings.header_timeout},
    )
