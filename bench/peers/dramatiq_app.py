"""Dramatiq peer: one no-op actor on Redis, no result backend, default settings.

Worker: ``dramatiq peers.dramatiq_app --processes N`` (threads: the default, 8 per process), with
``bench/`` on PYTHONPATH and BENCH_REDIS_URL / BENCH_RECORD_DIR set by bench/side_by_side.py.
"""

from __future__ import annotations

# CI's lint does not install the bench requirements: then these are unknown to mypy.
import dramatiq  # type: ignore[import-not-found, unused-ignore]
from dramatiq.brokers.redis import RedisBroker  # type: ignore[import-not-found, unused-ignore]

from peers.record import record, redis_url

dramatiq.set_broker(RedisBroker(url=redis_url()))  # type: ignore[no-untyped-call, unused-ignore]


@dramatiq.actor(actor_name="bench_noop")  # type: ignore[untyped-decorator, unused-ignore]
def noop(n: int, sent: float) -> None:
    record(n, sent)


def send(n: int, sent: float) -> None:
    """The peer's enqueue call, timed by the producer."""
    noop.send(n, sent)
