"""webhooks: WebhookService subscriptions, deliveries (the durable delivery queue and log), attempts, circuits.

Revision ID: 0003_webhooks
Revises: 0002_models
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from service_runtime.db.base import UtcDateTime

revision = "0003_webhooks"
down_revision = "0002_models"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_subscriptions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("event_types_json", sa.Text, nullable=False, server_default="[]"),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("disabled_reason", sa.Text, nullable=False, server_default=""),
        sa.Column("progress_interval_seconds", sa.Float, nullable=False, server_default="0"),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("previous_secret", sa.Text, nullable=True),
        sa.Column("previous_secret_expire_time", UtcDateTime, nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("create_time", UtcDateTime, nullable=False),
        sa.Column("update_time", UtcDateTime, nullable=False),
        sa.UniqueConstraint("tenant", "request_id", name="uq_webhook_subscriptions_tenant_request_id"),
    )
    op.create_index("ix_webhook_subscriptions_tenant_id", "webhook_subscriptions", ["tenant", "id"])

    op.create_table(
        "webhook_deliveries",
        # Derived from the feed entry and the endpoint, so a replayed feed entry cannot create a second delivery;
        # also the `webhook-id` header, stable across attempts and redeliveries.
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("subscription_id", sa.String(32), nullable=False, server_default=""),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("endpoint_key", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("execution_id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("payload_json", sa.Text, nullable=False),
        sa.Column("attempt_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("round_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_time", UtcDateTime, nullable=False),
        sa.Column("expire_time", UtcDateTime, nullable=False),
        sa.Column("lease_until", UtcDateTime, nullable=True),
        sa.Column("claim_token", sa.String(32), nullable=True),
        sa.Column("last_http_status", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text, nullable=False, server_default=""),
        sa.Column("last_attempt_time", UtcDateTime, nullable=True),
        sa.Column("create_time", UtcDateTime, nullable=False),
        sa.Column("update_time", UtcDateTime, nullable=False),
    )
    op.create_index("ix_webhook_deliveries_state_next_attempt_time", "webhook_deliveries",
                    ["state", "next_attempt_time"])
    op.create_index("ix_webhook_deliveries_tenant_id", "webhook_deliveries", ["tenant", "id"])
    op.create_index("ix_webhook_deliveries_subscription_id", "webhook_deliveries", ["subscription_id", "id"])
    op.create_index("ix_webhook_deliveries_execution_id", "webhook_deliveries", ["execution_id"])

    op.create_table(
        "webhook_delivery_attempts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("delivery_id", sa.String(32),
                  sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE",
                                name="fk_webhook_delivery_attempts_delivery_id_webhook_deliveries"),
                  nullable=False),
        sa.Column("attempt_time", UtcDateTime, nullable=False),
        sa.Column("http_status", sa.Integer, nullable=False, server_default="0"),
        sa.Column("latency_seconds", sa.Float, nullable=False, server_default="0"),
        sa.Column("error", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("ix_webhook_delivery_attempts_delivery_id", "webhook_delivery_attempts", ["delivery_id", "id"])

    op.create_table(
        "webhook_circuits",
        sa.Column("endpoint_key", sa.String(64), primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("open_until", UtcDateTime, nullable=True),
        sa.Column("probe_until", UtcDateTime, nullable=True),
        sa.Column("update_time", UtcDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("webhook_circuits")
    op.drop_index("ix_webhook_delivery_attempts_delivery_id", table_name="webhook_delivery_attempts")
    op.drop_table("webhook_delivery_attempts")
    op.drop_index("ix_webhook_deliveries_execution_id", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_subscription_id", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_tenant_id", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_state_next_attempt_time", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_webhook_subscriptions_tenant_id", table_name="webhook_subscriptions")
    op.drop_table("webhook_subscriptions")
