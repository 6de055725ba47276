"""Carrying out the steps of an operation (dts_client/operations.py): the HTTP calls with the
retry policy (dts_client/retry.py), the pauses, and the items of iterating operations. One
blocking driver and one async driver; all the decisions are in the operations and the policy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import httpx

from dts_client.config import Endpoint, __version__
from dts_client.errors import DtsError, Unavailable, api_error
from dts_client.operations import Call, Emit, Op, Pause, Step
from dts_client.retry import Attempts, RetryPolicy, retry_after_seconds

T = TypeVar("T")
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


def headers(endpoint: Endpoint) -> dict[str, str]:
    found = {"User-Agent": f"dts-client/{__version__}", "Content-Type": "application/json"}
    if endpoint.api_key:
        found["Authorization"] = f"Bearer {endpoint.api_key}"
    return found


def _outcome(response: httpx.Response) -> bytes:
    if response.is_success:
        return response.content
    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
    raise api_error(response.status_code, response.content, retry_after)


def _unreachable(call: Call, error: httpx.TransportError) -> DtsError:
    return Unavailable(f"{call.method} {call.path}: {type(error).__name__}: {error}".rstrip(": "))


class Addresses:
    """Where calls go. One address: the http client's own base_url (it may be the caller's
    client). Several: each call is sent to the current one, and a connection error or a 503
    moves the next attempt to the next address."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.urls = endpoint.api_urls if len(endpoint.api_urls) > 1 else ()
        self.current = 0

    def target(self, call: Call) -> str:
        return f"{self.urls[self.current]}{call.path}" if self.urls else call.path

    def fail_over(self) -> None:
        if self.urls:
            self.current = (self.current + 1) % len(self.urls)


class _Driver:
    """What both drivers share: where a call goes, its headers, and the retry decision after
    each answer. The subclasses add only the sending and the sleeping, blocking or async."""

    def __init__(self, policy: RetryPolicy, endpoint: Endpoint) -> None:
        self.policy = policy
        # Sent with each request, not set on the http client, which may be the caller's own.
        self.headers = headers(endpoint)
        self.addresses = Addresses(endpoint)

    def _request(self, call: Call) -> dict[str, Any]:
        return {
            "method": call.method,
            "url": self.addresses.target(call),
            "params": call.params,
            "content": call.body,
            "headers": self.headers,
        }

    def _after_error(self, attempts: Attempts, call: Call, error: httpx.TransportError) -> float:
        """The delay before sending again, or Unavailable when the call must not be."""
        delay = attempts.after_transport_error(error)
        if delay is None:
            raise _unreachable(call, error) from error
        self.addresses.fail_over()
        return delay

    def _after_response(self, attempts: Attempts, response: httpx.Response) -> float | None:
        """The delay before sending again, or None when `response` is the answer."""
        delay = attempts.after_status(response.status_code, response.headers.get("Retry-After"))
        if delay is not None and response.status_code == 503:
            self.addresses.fail_over()
        return delay


class SyncDriver(_Driver):
    def __init__(self, http: httpx.Client, policy: RetryPolicy, endpoint: Endpoint) -> None:
        super().__init__(policy, endpoint)
        self.http = http

    def send(self, call: Call) -> bytes:
        attempts = Attempts(self.policy, call.idempotent)
        delay: float | None
        while True:
            try:
                response = self.http.request(**self._request(call))
            except httpx.TransportError as exc:
                delay = self._after_error(attempts, call, exc)
            else:
                delay = self._after_response(attempts, response)
                if delay is None:
                    return _outcome(response)
            time.sleep(delay)

    def step(self, step: Step) -> Any:
        if isinstance(step, Call):
            return self.send(step)
        if isinstance(step, Pause):
            time.sleep(step.seconds)
        return None

    def run(self, op: Op[T]) -> T:
        reply: Any = None
        while True:
            try:
                step = op.send(reply)
            except StopIteration as stop:
                value: T = stop.value
                return value
            if isinstance(step, Emit):
                raise TypeError("an iterating operation was run as a call")
            reply = self.step(step)

    def iterate(self, op: Op[Any]) -> Iterator[Any]:
        reply: Any = None
        while True:
            try:
                step = op.send(reply)
            except StopIteration:
                return
            if isinstance(step, Emit):
                yield from step.items
                reply = None
            else:
                reply = self.step(step)


class AsyncDriver(_Driver):
    def __init__(self, http: httpx.AsyncClient, policy: RetryPolicy, endpoint: Endpoint) -> None:
        super().__init__(policy, endpoint)
        self.http = http

    async def send(self, call: Call) -> bytes:
        attempts = Attempts(self.policy, call.idempotent)
        delay: float | None
        while True:
            try:
                response = await self.http.request(**self._request(call))
            except httpx.TransportError as exc:
                delay = self._after_error(attempts, call, exc)
            else:
                delay = self._after_response(attempts, response)
                if delay is None:
                    return _outcome(response)
            await asyncio.sleep(delay)

    async def step(self, step: Step) -> Any:
        if isinstance(step, Call):
            return await self.send(step)
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
        return None

    async def run(self, op: Op[T]) -> T:
        reply: Any = None
        while True:
            try:
                step = op.send(reply)
            except StopIteration as stop:
                value: T = stop.value
                return value
            if isinstance(step, Emit):
                raise TypeError("an iterating operation was run as a call")
            reply = await self.step(step)

    async def iterate(self, op: Op[Any]) -> AsyncIterator[Any]:
        reply: Any = None
        while True:
            try:
                step = op.send(reply)
            except StopIteration:
                return
            if isinstance(step, Emit):
                for item in step.items:
                    yield item
                reply = None
            else:
                reply = await self.step(step)
