"""Retry policy: pure functions, tested without I/O."""

from __future__ import annotations

import random

from app.models.task import AttemptOutcome
from app.services.retry_policy import backoff_seconds, is_retryable


def test_backoff_grows_exponentially_within_jitter_bounds() -> None:
    rng = random.Random(7)
    for attempt, step in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)]:
        delay = backoff_seconds(attempt, base=1.0, cap=100.0, rng=rng)
        assert step / 2 <= delay <= step


def test_backoff_is_capped() -> None:
    assert backoff_seconds(50, base=1.0, cap=30.0, rng=random.Random(1)) <= 30.0


def test_jitter_spreads_retries_of_the_same_attempt() -> None:
    rng = random.Random(3)
    delays = {round(backoff_seconds(5, base=1.0, cap=100.0, rng=rng), 6) for _ in range(20)}
    assert len(delays) > 10


def test_only_errors_and_timeouts_are_retried() -> None:
    assert is_retryable(AttemptOutcome.ERROR)
    assert is_retryable(AttemptOutcome.TIMEOUT)
    assert not is_retryable(AttemptOutcome.CANCELLED)
    assert not is_retryable(AttemptOutcome.COMPLETED)
