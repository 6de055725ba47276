"""read path indexes: per-type and per-worker pages newest first, finished tasks by completion
time, and pending ready tasks by last change (reconciliation)

Revision ID: 0002
Revises: 0001

CREATE INDEX (not CONCURRENTLY: Alembic runs this inside the migration transaction) blocks
writes to `tasks` while it builds: a few seconds at a million tasks (bench/large_store.py times
it). Why each index exists is said beside it in app/database/tables.py.

On PostgreSQL it also creates extended statistics (most common values of type x status and
worker x status; SQLAlchemy's models have no place for them). Without them the planner takes type
and status as independent: it expects tens of thousands of tasks of a type that only ever waits
to be completed, and walks the created_at index through every row looking for them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READY = "status = 'pending' AND remaining_dependencies = 0"
HAS_WORKER = "worker_id IS NOT NULL"
FINISHED = "completed_at IS NOT NULL"
STATISTICS = {
    "st_tasks_task_type_status": "task_type, status",
    "st_tasks_worker_id_status": "worker_id, status",
}


def _where(predicate: str) -> dict[str, sa.TextClause]:
    return {"postgresql_where": sa.text(predicate), "sqlite_where": sa.text(predicate)}


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tasks_task_type_status"))
        batch_op.drop_index(batch_op.f("ix_tasks_worker_id_status"))
        batch_op.create_index(
            batch_op.f("ix_tasks_task_type_status_created_at"),
            ["task_type", "status", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_tasks_worker_id_status_created_at"),
            ["worker_id", "status", "created_at"],
            unique=False,
            **_where(HAS_WORKER),
        )
        batch_op.create_index(
            "ix_tasks_finished_completed_at", ["completed_at"], unique=False, **_where(FINISHED)
        )
        batch_op.create_index(
            "ix_tasks_ready_updated_at", ["updated_at", "task_id"], unique=False, **_where(READY)
        )
    if op.get_bind().dialect.name == "postgresql":
        for name, columns in STATISTICS.items():
            op.execute(f"CREATE STATISTICS {name} (mcv) ON {columns} FROM tasks")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in STATISTICS:
            op.execute(f"DROP STATISTICS IF EXISTS {name}")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_ready_updated_at")
        batch_op.drop_index("ix_tasks_finished_completed_at")
        batch_op.drop_index(batch_op.f("ix_tasks_worker_id_status_created_at"))
        batch_op.drop_index(batch_op.f("ix_tasks_task_type_status_created_at"))
        batch_op.create_index(
            batch_op.f("ix_tasks_worker_id_status"), ["worker_id", "status"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_tasks_task_type_status"), ["task_type", "status"], unique=False
        )
