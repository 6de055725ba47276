"""Worker lifecycle: registration, heartbeats, and noticing workers that went silent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog

from app.config import Settings
from app.database import repositories as repo
from app.database.connection import Database
from app.models.worker import WorkerHeartbeat, WorkerPublic, WorkerRegister, WorkerStatus
from app.utils import monitoring

log = structlog.get_logger(__name__)


class WorkerManager:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db

    async def register(self, spec: WorkerRegister) -> WorkerPublic:
        now = datetime.now(UTC)
        values = {
            "worker_id": spec.worker_id,
            "status": WorkerStatus.ACTIVE.value,
            "capabilities": spec.capabilities,
            "max_concurrent_tasks": spec.max_concurrent_tasks,
            "current_tasks": [],
            "system_info": {},
            "hostname": spec.hostname,
            "registered_at": now,
            "last_heartbeat": now,
        }
        async with self.db.transaction() as conn:
            worker = await repo.register_worker(conn, values)
        log.info("worker.registered", worker_id=spec.worker_id, capabilities=spec.capabilities)
        return worker

    async def heartbeat(self, worker_id: str, beat: WorkerHeartbeat) -> WorkerPublic | None:
        now = datetime.now(UTC)
        values = {
            "status": beat.status.value,
            "current_tasks": beat.current_tasks,
            "system_info": beat.system_info.model_dump(exclude_none=True),
            "last_heartbeat": now,
        }
        lease_until = now + timedelta(seconds=self.settings.worker_offline_after)
        async with self.db.transaction() as conn:
            worker = await repo.heartbeat_worker(conn, worker_id, values)
            if worker is not None:
                await repo.extend_leases(conn, worker_id, beat.current_tasks, until=lease_until)
        return worker

    async def deregister(self, worker_id: str) -> bool:
        async with self.db.transaction() as conn:
            found = await repo.set_worker_status(conn, worker_id, WorkerStatus.OFFLINE.value)
        log.info("worker.deregistered", worker_id=worker_id, found=found)
        return found

    async def list_all(self) -> list[WorkerPublic]:
        # A read transaction: on SQLite a write one would queue behind the writers to read.
        async with self.db.read() as conn:
            return await repo.list_workers(conn)

    async def live_capabilities(self) -> set[str]:
        """Task types at least one worker that is not offline can run."""
        return {
            c
            for w in await self.list_all()
            if w.status != WorkerStatus.OFFLINE
            for c in w.capabilities
        }

    async def mark_silent_offline(self) -> list[str]:
        silent_since = datetime.now(UTC) - timedelta(seconds=self.settings.worker_offline_after)
        async with self.db.transaction() as conn:
            gone = await repo.mark_workers_offline(conn, silent_since=silent_since)
        for worker_id in gone:
            log.warning("worker.lost", worker_id=worker_id)
        monitoring.WORKERS_LOST.inc(len(gone))
        return gone
