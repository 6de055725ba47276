"""Retry policy: pure functions, no I/O. Given how an attempt ended and what the task has used
up, it decides whether and when the next attempt starts; app.database.transitions.retry stores
the decision in one guarded statement. The rules (docs/architecture.md, "Retries"):

| attempt ended by     | counts against         | next attempt             |
|----------------------|------------------------|--------------------------|
| error, timeout       | max_retries (the task) | after backoff(n), n = errors so far |
| worker_lost          | MAX_WORKER_LOSSES      | at once                  |
| released (shutdown)  | nothing                | at once                  |

Counts start again after a manual retry, so its backoff starts small again."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.models.task import AttemptOutcome

MAX_DOUBLINGS = 1023
RETRYABLE = frozenset({AttemptOutcome.ERROR, AttemptOutcome.TIMEOUT})


def backoff_seconds(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with "equal jitter": half the step is fixed, half random, so retries of
    tasks that failed together spread out instead of returning as a herd."""
    # 2.0 ** 1024 raises OverflowError; past 2 ** 1023 the cap has long been reached anyway.
    step = min(cap, base * 2.0 ** min(max(0, attempt - 1), MAX_DOUBLINGS))
    jitter: float = (rng or random).uniform(0, step / 2)
    return step / 2 + jitter


def next_run_at(
    now: datetime, attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> datetime:
    return now + timedelta(seconds=backoff_seconds(attempt, base=base, cap=cap, rng=rng))


def is_retryable(outcome: AttemptOutcome) -> bool:
    return outcome in RETRYABLE


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`max_losses`: attempts a task may lose to vanished workers (crash, kill, partition) before
    it fails. They do not use up max_retries, since they are not the task's fault, but they have
    a cap, so that a task that kills every worker running it (a poison task) still ends."""

    base: float
    cap: float
    max_losses: int

    def delay(
        self, outcome: AttemptOutcome, *, errors: int, losses: int, max_retries: int
    ) -> float | None:
        """Seconds until the next attempt, or None when the task has used up its allowance for
        this kind of ending. `errors` and `losses` count the attempts that ended so since the
        last manual retry, this one not included."""
        if outcome == AttemptOutcome.WORKER_LOST:
            return 0.0 if losses < self.max_losses else None
        if outcome in RETRYABLE and errors < max_retries:
            return backoff_seconds(errors + 1, base=self.base, cap=self.cap)
        return None
