"""Structured JSON logging for API and workers: one JSON object per line on stderr.

A correlation id bound with `structlog.contextvars.bind_contextvars(correlation_id=...)` appears
on every line logged while it is bound, which is how one id follows a task from its HTTP request
to the worker that ran it. Records from the standard library (uvicorn, SQLAlchemy, httpx) go
through the same renderer, so a log shipper sees one format."""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.types import EventDict, Processor, WrappedLogger


def configure_logging(level: str = "INFO", *, service: str) -> None:
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)

    def add_service(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
        event.setdefault("service", service)
        return event

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_service,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                # Tracebacks as data, without local variables (they may hold secrets).
                structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    # uvicorn installs handlers of its own before the app starts; send its records to ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    for noisy in ("httpx", "alembic"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
