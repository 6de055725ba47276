"""Retry policy: pure functions, no I/O. Whether attempts remain is decided by the guarded SQL
statement (attempt <= max_retries); this module decides when the next attempt may start."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from app.models.task import AttemptOutcome

RETRYABLE = frozenset({AttemptOutcome.ERROR, AttemptOutcome.TIMEOUT})


def backoff_seconds(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with "equal jitter": half the step is fixed, half random, so retries of
    tasks that failed together spread out instead of returning as a herd."""
    step = min(cap, base * 2.0 ** max(0, attempt - 1))
    jitter: float = (rng or random).uniform(0, step / 2)
    return step / 2 + jitter


def next_run_at(
    now: datetime, attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> datetime:
    return now + timedelta(seconds=backoff_seconds(attempt, base=base, cap=cap, rng=rng))


def is_retryable(outcome: AttemptOutcome) -> bool:
    return outcome in RETRYABLE
