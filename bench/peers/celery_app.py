"""Celery peer: one no-op task on Redis, no result backend, default settings.

Worker: ``celery -A peers.celery_app worker --concurrency N`` (prefork, the default pool), with
``bench/`` on PYTHONPATH and BENCH_REDIS_URL / BENCH_RECORD_DIR set by bench/side_by_side.py.
"""

from __future__ import annotations

# Celery ships no type information, and CI's lint does not install the bench requirements.
from celery import Celery  # type: ignore[import-untyped, import-not-found, unused-ignore]

from peers.record import record, redis_url

app = Celery("bench_peer", broker=redis_url())
# Celery 5.x warns at start-up unless this is set; True is the behaviour it has anyway.
app.conf.broker_connection_retry_on_startup = True


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop(n: int, sent: float) -> None:
    record(n, sent)


def send(n: int, sent: float) -> None:
    """The peer's enqueue call, timed by the producer."""
    noop.delay(n, sent)
