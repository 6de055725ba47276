"""API keys: who is calling, and what they may do (docs/security.md).

A key is `dts_` + 256 random bits. Only its SHA-256 is stored; a fast hash is enough because the
secret is random, not a password (nothing to brute-force, so no bcrypt cost on every request).

Verification runs on every request, the workers' exchange included (hundreds a second), so a
verified key is trusted for `API_KEY_CACHE_SECONDS` without a database read, and `last_used_at` is
written at most once a minute per key and process. Hence the revocation bound: a revoked key is
refused at once by the process that revoked it, and by every other API process within
API_KEY_CACHE_SECONDS."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError

from app.database import repositories as repo
from app.database.connection import Database
from app.database.tables import api_keys
from app.models.auth import KeyCreate, KeyCreated, KeyPublic, Scope

log = structlog.get_logger(__name__)

KEY_PREFIX = "dts_"
# The key ADMIN_API_KEY bootstraps: never stored, named so in the audit trail.
BOOTSTRAP_KEY_ID = "ADMIN_API_KEY"
LAST_USED_EVERY = 60.0
# Beyond this many cached keys (unknown ones included) the cache starts afresh: a flood of made-up
# keys costs database reads, never unbounded memory.
CACHE_MAX = 10_000


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request: a key (its id, scopes and worker binding) or nobody (open mode)."""

    key_id: str | None
    scopes: frozenset[Scope]
    worker_id: str | None = None  # a worker id, or a prefix ending in '*'

    @property
    def anonymous(self) -> bool:
        return self.key_id is None

    def holds(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes

    def may_act_as(self, worker_id: str) -> bool:
        bound = self.worker_id
        if bound is None:
            return True
        if bound.endswith("*"):
            return worker_id.startswith(bound[:-1])
        return worker_id == bound


# A request without a key when keys are not required: everything but managing keys.
ANONYMOUS = Caller(None, frozenset(Scope) - {Scope.ADMIN})
BOOTSTRAP_ADMIN = Caller(BOOTSTRAP_KEY_ID, frozenset({Scope.ADMIN}))


@dataclass(frozen=True, slots=True)
class _Cached:
    caller: Caller | None  # None: no such key, or revoked
    expires_at: datetime | None
    until: float  # monotonic time this entry stops being trusted


def _caller(row: Any) -> Caller:
    known = {s.value for s in Scope}
    scopes = frozenset(Scope(s) for s in row.scopes if s in known)
    return Caller(row.key_id, scopes, row.worker_id)


class KeyStore:
    """Verifies keys (with the cache) and manages them; key actions are audited in task_events
    with task_id NULL, and logged."""

    def __init__(self, db: Database, *, cache_seconds: float, admin_key: str | None) -> None:
        self.db = db
        self.cache_seconds = cache_seconds
        self.admin_hash = hash_key(admin_key) if admin_key else None
        self.cache: dict[str, _Cached] = {}
        self.touched: dict[str, float] = {}  # key id -> when its last_used_at was last written

    async def verify(self, key: str) -> Caller | None:
        """The caller this key identifies, or None (unknown, revoked or expired)."""
        digest = hash_key(key)
        if self.admin_hash is not None and hmac.compare_digest(digest, self.admin_hash):
            return BOOTSTRAP_ADMIN
        now = time.monotonic()
        entry = self.cache.get(digest)
        if entry is None or entry.until <= now:
            entry = await self._load(digest, now)
        if entry.caller is None or (entry.expires_at is not None and entry.expires_at <= utcnow()):
            return None
        await self._touch(entry.caller, now)
        return entry.caller

    async def _load(self, digest: str, now: float) -> _Cached:
        async with self.db.read() as conn:
            found = await conn.execute(select(api_keys).where(api_keys.c.key_hash == digest))
            row = found.first()
        caller = None if row is None or row.revoked_at is not None else _caller(row)
        if len(self.cache) >= CACHE_MAX:
            self.cache.clear()
        entry = _Cached(caller, None if row is None else row.expires_at, now + self.cache_seconds)
        self.cache[digest] = entry
        return entry

    async def _touch(self, caller: Caller, now: float) -> None:
        """last_used_at, at most once a minute: a write per request would double the cost of the
        workers' exchange on SQLite. A failure only loses the timestamp."""
        assert caller.key_id is not None
        if now - self.touched.get(caller.key_id, -LAST_USED_EVERY) < LAST_USED_EVERY:
            return
        self.touched[caller.key_id] = now  # before the await: one write even under concurrency
        try:
            async with self.db.transaction() as conn:
                await conn.execute(
                    update(api_keys)
                    .where(api_keys.c.key_id == caller.key_id)
                    .values(last_used_at=utcnow())
                )
        except (DBAPIError, OSError) as exc:
            log.warning("api_key.touch_failed", key_id=caller.key_id, error=type(exc).__name__)

    async def create(self, spec: KeyCreate, *, by: Caller) -> KeyCreated:
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        key_id = "key_" + secrets.token_hex(8)
        now = utcnow()
        values = {
            "key_id": key_id,
            "name": spec.name,
            "key_hash": hash_key(key),
            "scopes": [s.value for s in spec.scopes],
            "worker_id": spec.worker_id,
            "created_at": now,
            "expires_at": spec.expires_at,
        }
        detail = {"key": key_id, "name": spec.name, "scopes": values["scopes"]}
        async with self.db.transaction() as conn:
            await conn.execute(api_keys.insert().values(**values))
            await repo.record_event(
                conn, "key.create", task_id=None, key_id=by.key_id, at=now, detail=detail
            )
        log.info("api_key.created", key=key_id, scopes=values["scopes"], by=by.key_id)
        return KeyCreated(
            key_id=key_id,
            key=key,
            name=spec.name,
            scopes=spec.scopes,
            worker_id=spec.worker_id,
            expires_at=spec.expires_at,
        )

    async def list_all(self) -> list[KeyPublic]:
        async with self.db.read() as conn:
            rows = await conn.execute(select(api_keys).order_by(api_keys.c.created_at))
        return [
            KeyPublic.model_validate(
                {**r._mapping, "scopes": sorted(_caller(r).scopes), "revoked": bool(r.revoked_at)}
            )
            for r in rows
        ]

    async def revoke(self, key_id: str, *, by: Caller) -> bool:
        """Revoke a key (again is a no-op); False when there is no such key."""
        now = utcnow()
        async with self.db.transaction() as conn:
            row = (
                await conn.execute(
                    select(api_keys.c.key_hash, api_keys.c.revoked_at).where(
                        api_keys.c.key_id == key_id
                    )
                )
            ).first()
            if row is None:
                return False
            if row.revoked_at is None:
                await conn.execute(
                    update(api_keys).where(api_keys.c.key_id == key_id).values(revoked_at=now)
                )
                detail = {"key": key_id}
                await repo.record_event(
                    conn, "key.revoke", task_id=None, key_id=by.key_id, at=now, detail=detail
                )
        # This process refuses it at once; the others when their cache entry lapses.
        self.cache.pop(row.key_hash, None)
        log.info("api_key.revoked", key=key_id, by=by.key_id)
        return True
