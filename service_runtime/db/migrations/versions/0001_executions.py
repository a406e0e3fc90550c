"""executions: the Execution resource of WorkflowService.

Revision ID: 0001_executions
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from service_runtime.db.base import UtcDateTime

revision = "0001_executions"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "executions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
        # The graph as exact JSON text (integers beyond 2^53 included): never a JSON column, which may use doubles.
        sa.Column("graph_json", sa.Text, nullable=False),
        sa.Column("inputs_json", sa.Text, nullable=False, server_default="[]"),
        sa.Column("labels_json", sa.Text, nullable=False, server_default="{}"),
        sa.Column("webhook_url", sa.Text, nullable=False, server_default=""),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("create_time", UtcDateTime, nullable=False),
        sa.Column("update_time", UtcDateTime, nullable=False),
        sa.Column("queue_time", UtcDateTime, nullable=True),
        sa.Column("start_time", UtcDateTime, nullable=True),
        sa.Column("end_time", UtcDateTime, nullable=True),
        sa.Column("queue_seconds", sa.Float, nullable=False, server_default="0"),
        sa.Column("run_seconds", sa.Float, nullable=False, server_default="0"),
        sa.Column("queue_timeout_seconds", sa.Float, nullable=True),
        sa.Column("run_timeout_seconds", sa.Float, nullable=True),
        sa.Column("node_timings_json", sa.Text, nullable=False, server_default="[]"),
        sa.Column("outputs_json", sa.Text, nullable=False, server_default="[]"),
        sa.Column("error_json", sa.Text, nullable=True),
        sa.Column("attempt_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("executor_id", sa.String(128), nullable=False, server_default=""),
        sa.Column("last_event_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("device_seconds", sa.Float, nullable=False, server_default="0"),
        sa.Column("device_type", sa.String(128), nullable=False, server_default=""),
        sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
        # Optimistic concurrency: every state change bumps it; a stale writer updates zero rows.
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.UniqueConstraint("tenant", "request_id", name="uq_executions_tenant_request_id"),
    )
    op.create_index("ix_executions_tenant_id", "executions", ["tenant", "id"])
    op.create_index("ix_executions_state", "executions", ["state"])


def downgrade() -> None:
    op.drop_index("ix_executions_state", table_name="executions")
    op.drop_index("ix_executions_tenant_id", table_name="executions")
    op.drop_table("executions")
