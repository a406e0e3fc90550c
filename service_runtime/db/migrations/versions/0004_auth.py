"""auth: AuthService tenants, principals, API keys (hashed) and token-signing keys.

Revision ID: 0004_auth
Revises: 0003_webhooks
Create Date: 2026-12-10
"""

import sqlalchemy as sa
from alembic import op

from service_runtime.db.base import UtcDateTime

revision = "0004_auth"
down_revision = "0003_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auth_tenants",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("tier", sa.String(16), nullable=False),
        # 0 = the tier's default (settings), see service_runtime/auth/tiers.py.
        sa.Column("requests_per_second", sa.Float, nullable=False, server_default="0"),
        sa.Column("burst", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_concurrent_executions", sa.Integer, nullable=False, server_default="0"),
        sa.Column("max_queued_executions", sa.Integer, nullable=False, server_default="0"),
        sa.Column("monthly_budget_usd", sa.Float, nullable=False, server_default="0"),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("create_time", UtcDateTime, nullable=False),
        sa.Column("update_time", UtcDateTime, nullable=False),
        sa.UniqueConstraint("request_id", name="uq_auth_tenants_request_id"),
    )

    op.create_table(
        "auth_principals",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(64),
                  sa.ForeignKey("auth_tenants.id", name="fk_auth_principals_tenant_auth_tenants"), nullable=False),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("service_account", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("roles_json", sa.Text, nullable=False, server_default="[]"),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("create_time", UtcDateTime, nullable=False),
        sa.Column("update_time", UtcDateTime, nullable=False),
        sa.UniqueConstraint("tenant", "request_id", name="uq_auth_principals_tenant_request_id"),
    )
    op.create_index("ix_auth_principals_tenant_id", "auth_principals", ["tenant", "id"])

    op.create_table(
        "auth_api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("principal_id", sa.String(32),
                  sa.ForeignKey("auth_principals.id", ondelete="CASCADE",
                                name="fk_auth_api_keys_principal_id_auth_principals"),
                  nullable=False),
        sa.Column("display_name", sa.Text, nullable=False, server_default=""),
        # The public lookup part of the key ("cm_<12 hex>"); the key itself is only in secret_hash (argon2id).
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("secret_hash", sa.Text, nullable=False),
        sa.Column("scopes_json", sa.Text, nullable=False, server_default="[]"),
        sa.Column("expire_time", UtcDateTime, nullable=True),
        sa.Column("revoke_time", UtcDateTime, nullable=True),
        sa.Column("last_used_time", UtcDateTime, nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("create_time", UtcDateTime, nullable=False),
        sa.UniqueConstraint("prefix", name="uq_auth_api_keys_prefix"),
        sa.UniqueConstraint("principal_id", "request_id", name="uq_auth_api_keys_principal_id_request_id"),
    )
    op.create_index("ix_auth_api_keys_principal_id_id", "auth_api_keys", ["principal_id", "id"])
    op.create_index("ix_auth_api_keys_tenant_id", "auth_api_keys", ["tenant", "id"])

    op.create_table(
        "auth_signing_keys",
        sa.Column("kid", sa.String(32), primary_key=True),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("public_key_pem", sa.Text, nullable=False),
        sa.Column("private_key_pem", sa.Text, nullable=False),
        sa.Column("create_time", UtcDateTime, nullable=False),
        sa.Column("retire_time", UtcDateTime, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("auth_signing_keys")
    op.drop_index("ix_auth_api_keys_tenant_id", table_name="auth_api_keys")
    op.drop_index("ix_auth_api_keys_principal_id_id", table_name="auth_api_keys")
    op.drop_table("auth_api_keys")
    op.drop_index("ix_auth_principals_tenant_id", table_name="auth_principals")
    op.drop_table("auth_principals")
    op.drop_table("auth_tenants")
