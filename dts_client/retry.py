"""When to send a call again: the policy is pure (a delay or a refusal), the sending loop is the
drivers' (dts_client/drivers.py), so both the blocking and the async client follow it.

Sent again: 429 and 503 (the API did nothing, and says when to come back in Retry-After), a
connection that could not be opened (nothing was sent), and, for idempotent calls only, a
connection lost after the request went out (the API may or may not have acted). The budget is
bounded in attempts and in total waiting time, so a caller never hangs on a dead API."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

RETRIED_STATUSES = frozenset({429, 503})
# One generator for the jitter, made once: seeding a random.Random for every call cost more
# than the call. The OS's source is read only when a call is retried.
_JITTER = random.SystemRandom()
# Nothing reached the server: safe to send again whatever the call does.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts`: sends of one call at most; `budget`: seconds of waiting between them at most.
    Without Retry-After the delay doubles from `base` up to `cap`, with jitter."""

    attempts: int = 6
    budget: float = 30.0
    base: float = 0.2
    cap: float = 5.0


NO_RETRY = RetryPolicy(attempts=1, budget=0.0)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


@dataclass
class Attempts:
    """The retry state of one call. Each method answers the delay before the next send, or None
    when the call must not be sent again."""

    policy: RetryPolicy
    idempotent: bool
    sent: int = 1
    waited: float = 0.0
    rng: random.Random = _JITTER

    def after_status(self, status: int, retry_after: str | None) -> float | None:
        if status not in RETRIED_STATUSES:
            return None
        return self._next(retry_after_seconds(retry_after))

    def after_transport_error(self, error: httpx.TransportError) -> float | None:
        if not (self.idempotent or isinstance(error, NOT_SENT)):
            return None
        return self._next(None)

    def _next(self, asked: float | None) -> float | None:
        if self.sent >= self.policy.attempts:
            return None
        backoff = min(self.policy.cap, self.policy.base * 2 ** (self.sent - 1))
        delay = asked if asked is not None else backoff * (0.5 + self.rng.random() / 2)
        if self.waited + delay > self.policy.budget:
            return None
        self.sent += 1
        self.waited += delay
        return delay
