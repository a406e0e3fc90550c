"""What verifying a caller reads from the database: an API key with its owner, a tenant's tier and limits, the
token-signing public keys. Read-only but for an API key's last-used time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select, update

from service_runtime.auth.scopes import Role
from service_runtime.auth.tables import ApiKeyRow, PrincipalRow, SigningKeyRow, TenantRow
from service_runtime.auth.tiers import Limits, Tier
from service_runtime.auth.tokens import PublicSigningKey
from service_runtime.db import Database


@dataclass(frozen=True)
class TenantInfo:
    tenant_id: str
    display_name: str
    tier: Tier
    overrides: Limits  # the tenant's own limit fields (0 = its tier's default)
    create_time: datetime


@dataclass(frozen=True)
class KeyState:
    """An API key as verification needs it, with its owner's state."""

    key_id: str
    tenant: str
    principal_id: str
    prefix: str
    secret_hash: str
    scopes: frozenset[str]  # empty: all of the owner's
    expire_time: datetime | None
    revoke_time: datetime | None
    last_used_time: datetime | None
    principal_disabled: bool
    roles: tuple[Role, ...]
    service_account: bool


def parse_roles(roles_json: str) -> tuple[Role, ...]:
    return tuple(Role(r) for r in json.loads(roles_json) if r in Role.__members__)


def tenant_info(row: TenantRow) -> TenantInfo:
    try:
        tier = Tier(row.tier)
    except ValueError:
        tier = Tier.BASIC
    return TenantInfo(row.id, row.display_name, tier, Limits(
        requests_per_second=row.requests_per_second, burst=row.burst,
        max_concurrent_executions=row.max_concurrent_executions, max_queued_executions=row.max_queued_executions,
        monthly_budget_usd=row.monthly_budget_usd), row.create_time)


def public_key(row: SigningKeyRow) -> PublicSigningKey:
    return PublicSigningKey(kid=row.kid, algorithm=row.algorithm, public_key_pem=row.public_key_pem,
                            create_time=row.create_time, retire_time=row.retire_time)


class CredentialStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def key_by_prefix(self, prefix: str) -> KeyState | None:
        async with self._db.session() as session:
            found = (await session.execute(
                select(ApiKeyRow, PrincipalRow).join(PrincipalRow, PrincipalRow.id == ApiKeyRow.principal_id)
                .where(ApiKeyRow.prefix == prefix))).first()
        if found is None:
            return None
        key, principal = found
        return KeyState(key_id=key.id, tenant=key.tenant, principal_id=key.principal_id, prefix=key.prefix,
                        secret_hash=key.secret_hash, scopes=frozenset(json.loads(key.scopes_json)),
                        expire_time=key.expire_time, revoke_time=key.revoke_time, last_used_time=key.last_used_time,
                        principal_disabled=principal.disabled, roles=parse_roles(principal.roles_json),
                        service_account=principal.service_account)

    async def tenant(self, tenant_id: str) -> TenantInfo | None:
        async with self._db.session() as session:
            row = await session.get(TenantRow, tenant_id)
            return tenant_info(row) if row is not None else None

    async def signing_keys(self, now: datetime) -> list[PublicSigningKey]:
        """The public keys that verify at `now`, newest first."""
        async with self._db.session() as session:
            rows = (await session.execute(
                select(SigningKeyRow).where(or_(SigningKeyRow.retire_time.is_(None), SigningKeyRow.retire_time > now))
                .order_by(SigningKeyRow.create_time.desc()))).scalars().all()
            return [public_key(row) for row in rows]

    async def touch_key(self, key_id: str, now: datetime) -> None:
        async with self._db.session() as session:
            await session.execute(update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(last_used_time=now))
