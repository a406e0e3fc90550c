"""models: the Model resource of ModelService, and presigned uploads in progress.

Revision ID: 0002_models
Revises: 0001_executions
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from service_runtime.db.base import UtcDateTime

revision = "0002_models"
down_revision = "0001_executions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        # PENDING while its bytes stream in (the row reserves the name), READY once validated and stored.
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("architecture", sa.String(32), nullable=False, server_default="UNSPECIFIED"),
        sa.Column("supported", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("size_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("sha256", sa.String(64), nullable=False, server_default=""),
        sa.Column("parameter_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("dtypes_json", sa.Text, nullable=False, server_default="[]"),
        sa.Column("lora_rank", sa.Integer, nullable=False, server_default="0"),
        sa.Column("file_metadata_json", sa.Text, nullable=False, server_default="{}"),
        sa.Column("properties_json", sa.Text, nullable=False, server_default="{}"),
        sa.Column("bucket", sa.String(255), nullable=False),
        sa.Column("object_key", sa.String(1024), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("create_time", UtcDateTime, nullable=False),
        sa.Column("update_time", UtcDateTime, nullable=False),
        sa.UniqueConstraint("tenant", "kind", "name", name="uq_models_tenant_kind_name"),
        sa.UniqueConstraint("tenant", "request_id", name="uq_models_tenant_request_id"),
    )
    op.create_index("ix_models_tenant_name", "models", ["tenant", "name", "id"])
    op.create_index("ix_models_tenant_sha256", "models", ["tenant", "kind", "sha256"])
    op.create_table(
        "model_uploads",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("sha256", sa.String(64), nullable=False, server_default=""),
        sa.Column("request_id", sa.String(64), nullable=True),
        # OPEN until a CompleteModelUpload registered it (COMPLETED, with model_id).
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("staging_key", sa.String(1024), nullable=False),
        # The object store's multipart upload id ("" for a single-PUT upload) and its part size.
        sa.Column("multipart_id", sa.String(1024), nullable=False, server_default=""),
        sa.Column("part_size_bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("model_id", sa.String(32), nullable=True),
        sa.Column("create_time", UtcDateTime, nullable=False),
        sa.Column("update_time", UtcDateTime, nullable=False),
        sa.Column("expire_time", UtcDateTime, nullable=False),
        sa.UniqueConstraint("tenant", "request_id", name="uq_model_uploads_tenant_request_id"),
    )
    op.create_index("ix_model_uploads_expire_time", "model_uploads", ["expire_time"])


def downgrade() -> None:
    op.drop_index("ix_model_uploads_expire_time", table_name="model_uploads")
    op.drop_table("model_uploads")
    op.drop_index("ix_models_tenant_sha256", table_name="models")
    op.drop_index("ix_models_tenant_name", table_name="models")
    op.drop_table("models")
