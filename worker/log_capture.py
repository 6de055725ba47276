"""Capture of what handlers print and log, per attempt, without mixing concurrent attempts.

`sys.stdout`, `sys.stderr` and the root logger are routed once per process (`install`): a write
goes to the buffer of the attempt current in its context (a contextvar), or to the real stream
when there is none. Async handlers run in their attempt's task, whose context holds it; thread
handlers set it in their pool thread (`run_captured`); process handlers capture in the child,
which runs one task per call, and return their lines with the result.

Rejected: one pipe or temporary file per attempt (a process-wide file descriptor can only be
redirected for everyone at once), and a logging filter per task id (print would escape it).

A buffer is bounded per attempt (TASK_LOG_MAX_BYTES): past it lines are dropped, and one marker
line, written when the attempt ends, says how many bytes were. Nothing here can fail a task:
writes never raise and never wait for the network (the pump ships the lines, LogBook.take)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from app.models.logs import (
    MAX_LEVEL_CHARS,
    MAX_LINE_CHARS,
    MAX_SHIPPED_LINES,
    SEQ_PER_ATTEMPT,
    LogStream,
    ShippedLine,
    storable_message,
)

# While lines of a running attempt wait, the pump ships them at least this often.
FLUSH_SECONDS = 1.0
# What one exchange carries at most (the rest goes with the next one).
SHIP_LINES = MAX_SHIPPED_LINES
SHIP_CHARS = 1024 * 1024
STREAM_LEVELS = {LogStream.STDOUT: "INFO", LogStream.STDERR: "ERROR"}
# Fields of a structlog event that say where it came from, not what happened.
STRUCTLOG_META = frozenset(
    {"event", "timestamp", "level", "logger", "service", "task_id", "attempt", "correlation_id"}
)
# A line as a process handler's child returns it: (at, level, stream, message).
RawLine = tuple[datetime, str, str, str]


class AttemptLog:
    """The lines one attempt wrote, waiting to be shipped. Written from the attempt's thread and
    taken from the event loop's, hence the lock. Slots: one is made per attempt, on the hot path
    of tasks that print nothing too."""

    __slots__ = (
        "_lock",
        "_partial",
        "attempt",
        "closed",
        "dropped",
        "max_bytes",
        "next_line",
        "pending",
        "task_id",
        "used",
    )

    def __init__(self, task_id: str, attempt: int, max_bytes: int) -> None:
        self.task_id = task_id
        self.attempt = attempt
        self.max_bytes = max_bytes
        self.used = 0
        self.dropped = 0
        self.next_line = 0
        self.closed = False
        self.pending: deque[ShippedLine] = deque()
        self._partial: dict[LogStream, str] = {}
        self._lock = threading.Lock()

    def write(self, stream: LogStream, text: str) -> None:
        """Stream output: complete lines are kept, the rest waits for its newline."""
        with self._lock:
            text = self._partial.pop(stream, "") + text
            *complete, rest = text.split("\n")
            if len(rest) > MAX_LINE_CHARS:  # output that never ends a line must not pile up
                complete.append(rest)
                rest = ""
            if rest:
                self._partial[stream] = rest
            for line in complete:
                self._keep(STREAM_LEVELS[stream], stream, line, datetime.now(UTC))

    def add(self, level: str, stream: LogStream, message: str, at: datetime) -> None:
        with self._lock:
            self._keep(level, stream, message, at)

    def absorb(self, lines: Iterable[RawLine], dropped: int) -> None:
        """Lines a process handler's child captured under the same bound."""
        with self._lock:
            for at, level, stream, message in lines:
                self._keep(level, LogStream(stream), message, at)
            self.dropped += dropped

    def close(self) -> None:
        """The attempt ended: its unfinished lines are kept, and the marker if it lost any."""
        with self._lock:
            for stream, rest in list(self._partial.items()):
                self._keep(STREAM_LEVELS[stream], stream, rest, datetime.now(UTC))
            self._partial.clear()
            if self.dropped:
                marker = (
                    f"[log truncated: {self.dropped} bytes dropped past the limit of "
                    f"{self.max_bytes} bytes per attempt (TASK_LOG_MAX_BYTES)]"
                )
                self._append("WARNING", LogStream.LOG, marker, datetime.now(UTC))
            self.closed = True

    def raw_lines(self) -> list[RawLine]:
        with self._lock:
            return [(p.at, p.level, str(p.stream), p.message) for p in self.pending]

    def take(self, max_lines: int, max_chars: int) -> list[ShippedLine]:
        taken: list[ShippedLine] = []
        with self._lock:
            while self.pending and len(taken) < max_lines:
                size = len(self.pending[0].message)
                if taken and size > max_chars:
                    break
                max_chars -= size
                taken.append(self.pending.popleft())
        return taken

    def put_back(self, lines: list[ShippedLine]) -> None:
        with self._lock:
            self.pending.extendleft(reversed(lines))

    def _keep(self, level: str, stream: LogStream, message: str, at: datetime) -> None:
        if self.closed:  # an abandoned thread handler still printing: its attempt is over
            return
        message = storable_message(message.rstrip("\r"))  # CR: of a CRLF line end
        for start in range(0, max(len(message), 1), MAX_LINE_CHARS):
            chunk = message[start : start + MAX_LINE_CHARS]
            size = len(chunk.encode()) + 1  # the newline: empty lines count too
            if self.used + size > self.max_bytes:
                self.dropped += size
                continue
            self.used += size
            self._append(level, stream, chunk, at)

    def _append(self, level: str, stream: LogStream, message: str, at: datetime) -> None:
        if self.next_line >= SEQ_PER_ATTEMPT:
            return
        line = ShippedLine.model_construct(
            task_id=self.task_id,
            attempt=self.attempt,
            line=self.next_line,
            at=at,
            level=level[:MAX_LEVEL_CHARS],  # a custom level name may be long
            stream=stream,
            message=message,
        )
        self.next_line += 1
        self.pending.append(line)


current: ContextVar[AttemptLog | None] = ContextVar("dts_attempt_log", default=None)


class LogBook:
    """The worker's attempt logs with lines still to ship. A log that ends empty is forgotten
    at once, so a task that prints nothing costs a dict entry for its run."""

    def __init__(self, max_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.clock = clock
        self.logs: dict[tuple[str, int], AttemptLog] = {}
        self.last_shipped = clock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def open(self, task_id: str, attempt: int) -> AttemptLog:
        log = AttemptLog(task_id, attempt, self.max_bytes)
        self.logs[(task_id, attempt)] = log
        return log

    def close(self, log: AttemptLog) -> None:
        log.close()
        if not log.pending:
            self.logs.pop((log.task_id, log.attempt), None)

    def pending(self) -> bool:
        return any(log.pending for log in self.logs.values())

    def due(self) -> bool:
        """Lines of an ended attempt go at once (with its report); a running attempt's lines
        go at least every FLUSH_SECONDS, so that its log can be followed."""
        waiting = [log for log in self.logs.values() if log.pending]
        if not waiting:
            return False
        if any(log.closed for log in waiting):
            return True
        return self.clock() - self.last_shipped >= FLUSH_SECONDS

    def take(self) -> list[ShippedLine]:
        taken: list[ShippedLine] = []
        chars = 0
        for key, log in list(self.logs.items()):
            if len(taken) >= SHIP_LINES or chars >= SHIP_CHARS:
                break
            more = log.take(SHIP_LINES - len(taken), SHIP_CHARS - chars)
            taken += more
            chars += sum(len(line.message) for line in more)
            if log.closed and not log.pending:
                del self.logs[key]
        self.last_shipped = self.clock()
        return taken

    def put_back(self, lines: list[ShippedLine]) -> None:
        """Lines of an exchange that did not reach the scheduler: they go with the next one
        (stored once, whatever is sent twice)."""
        for line in reversed(lines):
            key = (line.task_id, line.attempt)
            log = self.logs.get(key)
            if log is None:
                log = self.logs[key] = AttemptLog(line.task_id, line.attempt, self.max_bytes)
                log.closed = True
            log.put_back([line])


class StreamRouter:
    """Stands in for sys.stdout or sys.stderr: writes go to the current attempt's log, or to the
    real stream outside any attempt."""

    def __init__(self, real: TextIO, stream: LogStream) -> None:
        self.real = real
        self.stream = stream

    def write(self, text: str) -> int:
        log = current.get()
        if log is None:
            return self.real.write(text)
        log.write(self.stream, text)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for text in lines:
            self.write(text)

    def flush(self) -> None:
        if current.get() is None:
            self.real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class CaptureHandler(logging.Handler):
    """On the root logger: a record logged during an attempt goes to its log as well."""

    def emit(self, record: logging.LogRecord) -> None:
        log = current.get()
        if log is None:
            return
        try:
            message = render(record)
        except Exception:  # a record that cannot be rendered must not reach the handler
            message = str(record.msg)
        log.add(
            record.levelname, LogStream.LOG, message, datetime.fromtimestamp(record.created, UTC)
        )


def render(record: logging.LogRecord) -> str:
    """The record's message; a structlog event as `event key=value ...`; with its traceback."""
    if isinstance(record.msg, dict):
        event = record.msg
        fields = " ".join(f"{k}={v}" for k, v in event.items() if k not in STRUCTLOG_META)
        message = f"{event.get('event', '')} {fields}".strip()
    else:
        message = record.getMessage()
    if record.exc_info:
        message += "\n" + logging.Formatter().formatException(record.exc_info)
    return message


def install(level: int | None = None) -> None:
    """Route this process's stdout, stderr and root logger (once; later calls change nothing).
    Handlers already writing to a routed stream are pointed at the real one, so the worker's own
    log lines are never taken for a handler's output."""
    if not isinstance(sys.stdout, StreamRouter):
        sys.stdout = StreamRouter(sys.stdout, LogStream.STDOUT)
    if not isinstance(sys.stderr, StreamRouter):
        sys.stderr = StreamRouter(sys.stderr, LogStream.STDERR)
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler) and isinstance(handler.stream, StreamRouter):
            handler.setStream(handler.stream.real)
    if not any(isinstance(h, CaptureHandler) for h in root.handlers):
        root.addHandler(CaptureHandler())
    if level is not None:
        root.setLevel(level)


def run_captured(log: AttemptLog | None, func: Callable[..., Any], *args: Any) -> Any:
    """Run a thread handler with its attempt's log current in this pool thread."""
    token = current.set(log)
    try:
        return func(*args)
    finally:
        current.reset(token)
