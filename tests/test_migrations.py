"""The Alembic migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from app.config import to_async_database_url
from app.database.connection import Database
from app.database.tables import Base


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_match_the_models(database_url: str) -> None:
    db = Database(to_async_database_url(database_url))
    try:
        await db.migrate()
        await db.migrate()  # applying again is a no-op
        async with db.engine.connect() as conn:
            differences = await conn.run_sync(_diff)
    finally:
        await db.dispose()
    assert differences == []
