"""The identity tables (mirroring migration 0004_auth): tenants, principals, API keys, token-signing keys.

They live in the bottom package because every service's auth interceptor reads them (API keys, tenants' limits,
signing keys) directly from the shared database; AuthService (services/auth/repository.py) writes them.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from service_runtime.db import Base, UtcDateTime


class TenantRow(Base):
    __tablename__ = "auth_tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(Text)
    tier: Mapped[str] = mapped_column(String(16))
    requests_per_second: Mapped[float] = mapped_column(Float)
    burst: Mapped[int] = mapped_column(Integer)
    max_concurrent_executions: Mapped[int] = mapped_column(Integer)
    max_queued_executions: Mapped[int] = mapped_column(Integer)
    monthly_budget_usd: Mapped[float] = mapped_column(Float)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    create_time = mapped_column(UtcDateTime, nullable=False)
    update_time = mapped_column(UtcDateTime, nullable=False)


class PrincipalRow(Base):
    __tablename__ = "auth_principals"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), ForeignKey("auth_tenants.id"))
    display_name: Mapped[str] = mapped_column(Text)
    service_account: Mapped[bool] = mapped_column(Boolean)
    roles_json: Mapped[str] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(Boolean)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    create_time = mapped_column(UtcDateTime, nullable=False)
    update_time = mapped_column(UtcDateTime, nullable=False)


class ApiKeyRow(Base):
    __tablename__ = "auth_api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    principal_id: Mapped[str] = mapped_column(String(32), ForeignKey("auth_principals.id", ondelete="CASCADE"))
    display_name: Mapped[str] = mapped_column(Text)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(Text)
    scopes_json: Mapped[str] = mapped_column(Text)
    expire_time = mapped_column(UtcDateTime, nullable=True)
    revoke_time = mapped_column(UtcDateTime, nullable=True)
    last_used_time = mapped_column(UtcDateTime, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    create_time = mapped_column(UtcDateTime, nullable=False)


class SigningKeyRow(Base):
    __tablename__ = "auth_signing_keys"

    kid: Mapped[str] = mapped_column(String(32), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(16))
    public_key_pem: Mapped[str] = mapped_column(Text)
    # PKCS#8, encrypted with the deployment secret: a database dump alone cannot mint tokens.
    private_key_pem: Mapped[str] = mapped_column(Text)
    create_time = mapped_column(UtcDateTime, nullable=False)
    retire_time = mapped_column(UtcDateTime, nullable=True)  # stops verifying (null: in use)
