"""API keys: the scopes, and the bodies of /api/keys. A key's secret appears once, in KeyCreated."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictStr, field_validator

# A worker id (app.models.task.NAME_PATTERN), or a prefix of one ending in '*'.
WORKER_BINDING_PATTERN = r"^[A-Za-z0-9_.:\-]{1,100}\*?$"


class Scope(StrEnum):
    SUBMIT = "submit"  # create tasks and batches
    READ = "read"  # every GET under /api
    OPERATE = "operate"  # cancel, retry
    WORKER = "worker"  # register, heartbeat, start, report, exchange, deregister
    ADMIN = "admin"  # manage keys; implies every other scope


KeyName = Annotated[StrictStr, Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")]


class KeyCreate(BaseModel):
    """Body of POST /api/keys."""

    model_config = ConfigDict(extra="forbid")

    name: KeyName
    scopes: list[Scope] = Field(min_length=1, max_length=len(Scope))
    expires_at: AwareDatetime | None = None
    worker_id: StrictStr | None = Field(
        default=None,
        pattern=WORKER_BINDING_PATTERN,
        description="the worker id this key may act as, or a prefix ending in '*'",
    )

    @field_validator("scopes")
    @classmethod
    def _distinct(cls, scopes: list[Scope]) -> list[Scope]:
        return sorted(set(scopes))

    @field_validator("expires_at")
    @classmethod
    def _in_future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value <= datetime.now(UTC):
            raise ValueError("must be in the future")
        return value


class KeyPublic(BaseModel):
    """A key as listed: everything but its secret, which is not kept."""

    key_id: str
    name: str
    scopes: list[Scope]
    worker_id: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    revoked: bool


class KeyCreated(BaseModel):
    """Answer of POST /api/keys: the only time `key` is shown."""

    key_id: str
    key: str
    name: str
    scopes: list[Scope]
    worker_id: str | None
    expires_at: datetime | None


class KeyList(BaseModel):
    keys: list[KeyPublic]
    total: int
