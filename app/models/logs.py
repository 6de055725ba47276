"""Per-task log schemas: the lines a handler wrote during its attempts, as the API returns them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# How many lines one GET returns at most, and by default; a follower pages with `after`.
LOGS_PAGE_DEFAULT = 1000
LOGS_PAGE_MAX = 5000


def storable_message(text: str) -> str:
    """A line as both stores can hold it: no NUL (PostgreSQL refuses it), no lone surrogates
    (not UTF-8). Workers apply it as they capture; the model applies it to what arrives."""
    text = text.replace("\x00", "\ufffd")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode()
    return text


class LogStream(StrEnum):
    LOG = "log"  # a record from the `logging` module
    STDOUT = "stdout"
    STDERR = "stderr"


class LogLine(BaseModel):
    model_config = ConfigDict(frozen=True)

    seq: int = Field(description="position of the line in the task's log, increasing")
    attempt: int = Field(ge=1, description="the attempt that wrote it")
    at: datetime = Field(description="when it was written (UTC)")
    level: str = Field(description="logging level name; INFO for stdout, ERROR for stderr")
    stream: LogStream
    message: str


class TaskLogs(BaseModel):
    task_id: str
    lines: list[LogLine]
    next_after: int | None = Field(
        description="seq of the last line returned, or the `after` sent when there is nothing new"
    )


# seq = attempt × SEQ_PER_ATTEMPT + the line's number within the attempt (see task_logs).
SEQ_PER_ATTEMPT = 1_000_000_000
# Lines a worker ships in one exchange, and the longest line (longer output is split).
MAX_SHIPPED_LINES = 5000
MAX_LINE_CHARS = 16 * 1024
MAX_LEVEL_CHARS = 16


class ShippedLine(BaseModel):
    """A captured line on its way from a worker to the store (the `logs` of an exchange). The
    worker keeps within these bounds by construction (worker/log_capture.py): a refused line
    would send its exchange's reports again without it, a round trip for nothing."""

    model_config = ConfigDict(extra="ignore")

    task_id: str = Field(max_length=100)
    attempt: int = Field(ge=1, lt=2**31)
    line: int = Field(ge=0, lt=SEQ_PER_ATTEMPT, description="number within the attempt")
    at: datetime
    level: str = Field(max_length=MAX_LEVEL_CHARS)
    stream: LogStream
    message: Annotated[str, AfterValidator(storable_message)] = Field(max_length=MAX_LINE_CHARS)

    @property
    def seq(self) -> int:
        return self.attempt * SEQ_PER_ATTEMPT + self.line
