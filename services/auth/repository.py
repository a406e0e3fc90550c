"""Identity state in SQL (SQLite or PostgreSQL through the same code): tenants, principals, API keys, signing keys.

The tables are declared in `service_runtime.auth.tables` (every service's interceptor reads them); this repository
is the only writer. Reads of principals and keys are scoped to a tenant: another tenant's row is None, exactly
like a missing one.
"""

from __future__ import annotations

import builtins
import json
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from service_runtime.auth.scopes import Role
from service_runtime.auth.store import parse_roles, public_key, tenant_info
from service_runtime.auth.tables import ApiKeyRow, PrincipalRow, SigningKeyRow, TenantRow
from service_runtime.auth.tokens import PublicSigningKey
from service_runtime.db import Database
from service_runtime.errors import Reason, already_exists
from services.auth.domain import ApiKey, Principal, Tenant


class PrefixTakenError(Exception):
    """Another key has this lookup prefix (astronomically rare: the caller draws a new key)."""


def _tenant(row: TenantRow) -> Tenant:
    info = tenant_info(row)
    return Tenant(info.tenant_id, info.display_name, info.tier, info.overrides, info.create_time)


def _principal(row: PrincipalRow) -> Principal:
    return Principal(principal_id=row.id, tenant=row.tenant, display_name=row.display_name,
                     service_account=row.service_account, roles=parse_roles(row.roles_json), disabled=row.disabled,
                     create_time=row.create_time)


def _api_key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(key_id=row.id, tenant=row.tenant, principal_id=row.principal_id, display_name=row.display_name,
                  prefix=row.prefix, scopes=tuple(json.loads(row.scopes_json)), create_time=row.create_time,
                  expire_time=row.expire_time, revoke_time=row.revoke_time, last_used_time=row.last_used_time)


def _roles_json(roles: tuple[Role, ...]) -> str:
    return json.dumps(sorted({str(r) for r in roles}))


class AuthRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    # --- tenants -----------------------------------------------------------------------------------------------

    async def add_tenant(self, tenant: Tenant, request_id: str | None) -> tuple[Tenant, bool]:
        """Inserts; returns (tenant, created). An id or a request_id already used returns the existing tenant."""
        limits = tenant.limits
        row = TenantRow(id=tenant.tenant_id, display_name=tenant.display_name, tier=str(tenant.tier),
                        requests_per_second=limits.requests_per_second, burst=limits.burst,
                        max_concurrent_executions=limits.max_concurrent_executions,
                        max_queued_executions=limits.max_queued_executions,
                        monthly_budget_usd=limits.monthly_budget_usd, request_id=request_id,
                        create_time=tenant.create_time, update_time=tenant.create_time)
        try:
            async with self._db.session() as session:
                session.add(row)
        except IntegrityError:
            async with self._db.session() as session:
                query = select(TenantRow).where(TenantRow.request_id == request_id) if request_id else None
                existing = (await session.execute(query)).scalar_one_or_none() if query is not None else None
                if existing is None:
                    existing = await session.get(TenantRow, tenant.tenant_id)
                if existing is None:
                    raise
                return _tenant(existing), False
        return tenant, True

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        async with self._db.session() as session:
            row = await session.get(TenantRow, tenant_id)
            return _tenant(row) if row is not None else None

    async def list_tenants(self, *, after_id: str | None, limit: int) -> tuple[builtins.list[Tenant], str | None]:
        """Ordered by id; returns the page and the cursor of the next one (None at the end)."""
        query = select(TenantRow).order_by(TenantRow.id).limit(limit + 1)
        if after_id is not None:
            query = query.where(TenantRow.id > after_id)
        async with self._db.session() as session:
            rows = (await session.execute(query)).scalars().all()
        page = [_tenant(r) for r in rows[:limit]]
        return page, (page[-1].tenant_id if len(rows) > limit else None)

    # --- principals --------------------------------------------------------------------------------------------

    async def add_principal(self, principal: Principal, request_id: str | None) -> tuple[Principal, bool]:
        """Inserts; returns (principal, created). A request_id the tenant already used returns that principal."""
        row = PrincipalRow(id=principal.principal_id, tenant=principal.tenant, display_name=principal.display_name,
                           service_account=principal.service_account, roles_json=_roles_json(principal.roles),
                           disabled=principal.disabled, request_id=request_id, create_time=principal.create_time,
                           update_time=principal.create_time)
        try:
            async with self._db.session() as session:
                session.add(row)
        except IntegrityError:
            if request_id is None:
                raise
            existing = await self.principal_by_request_id(principal.tenant, request_id)
            if existing is None:
                raise
            return existing, False
        return principal, True

    async def principal_by_request_id(self, tenant: str, request_id: str) -> Principal | None:
        async with self._db.session() as session:
            row = (await session.execute(select(PrincipalRow).where(
                PrincipalRow.tenant == tenant, PrincipalRow.request_id == request_id))).scalar_one_or_none()
            return _principal(row) if row is not None else None

    async def get_principal(self, tenant: str, principal_id: str) -> Principal | None:
        async with self._db.session() as session:
            row = await session.get(PrincipalRow, principal_id)
            return _principal(row) if row is not None and row.tenant == tenant else None

    async def list_principals(self, tenant: str, *, after_id: str | None, limit: int
                              ) -> tuple[builtins.list[Principal], str | None]:
        query = select(PrincipalRow).where(PrincipalRow.tenant == tenant).order_by(PrincipalRow.id).limit(limit + 1)
        if after_id is not None:
            query = query.where(PrincipalRow.id > after_id)
        async with self._db.session() as session:
            rows = (await session.execute(query)).scalars().all()
        page = [_principal(r) for r in rows[:limit]]
        return page, (page[-1].principal_id if len(rows) > limit else None)

    async def disable_principal(self, tenant: str, principal_id: str, now: datetime
                                ) -> tuple[Principal, builtins.list[str]] | None:
        """Disables a principal and revokes its active keys; returns it and every key id it has (None: not in the
        tenant)."""
        async with self._db.session() as session:
            row = await session.get(PrincipalRow, principal_id, with_for_update=True)
            if row is None or row.tenant != tenant:
                return None
            row.disabled = True
            row.update_time = now
            await session.execute(update(ApiKeyRow).where(ApiKeyRow.principal_id == principal_id,
                                                          ApiKeyRow.revoke_time.is_(None)).values(revoke_time=now))
            key_ids = (await session.execute(select(ApiKeyRow.id).where(ApiKeyRow.principal_id == principal_id))
                       ).scalars().all()
            return _principal(row), list(key_ids)

    # --- API keys ----------------------------------------------------------------------------------------------

    async def add_api_key(self, key: ApiKey, secret_hash: str, request_id: str | None) -> None:
        """Inserts. A request_id the owner already used is ALREADY_EXISTS (the secret cannot be shown twice); a
        taken prefix is PrefixTakenError."""
        row = ApiKeyRow(id=key.key_id, tenant=key.tenant, principal_id=key.principal_id,
                        display_name=key.display_name, prefix=key.prefix, secret_hash=secret_hash,
                        scopes_json=json.dumps(list(key.scopes)), expire_time=key.expire_time, revoke_time=None,
                        last_used_time=None, request_id=request_id, create_time=key.create_time)
        try:
            async with self._db.session() as session:
                session.add(row)
        except IntegrityError:
            if request_id is not None:
                async with self._db.session() as session:
                    existing = (await session.execute(select(ApiKeyRow.id).where(
                        ApiKeyRow.principal_id == key.principal_id, ApiKeyRow.request_id == request_id))
                    ).scalar_one_or_none()
                if existing is not None:
                    raise already_exists("an API key was already created with this request_id; its secret was "
                                         "shown then and cannot be shown again", Reason.ALREADY_EXISTS,
                                         key_id=existing, request_id=request_id) from None
            raise PrefixTakenError(key.prefix) from None

    async def get_api_key(self, tenant: str, key_id: str) -> ApiKey | None:
        async with self._db.session() as session:
            row = await session.get(ApiKeyRow, key_id)
            return _api_key(row) if row is not None and row.tenant == tenant else None

    async def list_api_keys(self, tenant: str, principal_id: str | None, *, before_id: str | None, limit: int
                            ) -> tuple[builtins.list[ApiKey], str | None]:
        """Newest first (ids are time-ordered); `principal_id` None: the whole tenant's."""
        query = select(ApiKeyRow).where(ApiKeyRow.tenant == tenant)
        if principal_id is not None:
            query = query.where(ApiKeyRow.principal_id == principal_id)
        if before_id is not None:
            query = query.where(ApiKeyRow.id < before_id)
        async with self._db.session() as session:
            rows = (await session.execute(query.order_by(ApiKeyRow.id.desc()).limit(limit + 1))).scalars().all()
        page = [_api_key(r) for r in rows[:limit]]
        return page, (page[-1].key_id if len(rows) > limit else None)

    async def revoke_api_key(self, tenant: str, key_id: str, now: datetime) -> ApiKey | None:
        """Revokes (idempotent: a revoked key keeps its first revoke time); None when not in the tenant."""
        async with self._db.session() as session:
            await session.execute(update(ApiKeyRow).where(
                ApiKeyRow.id == key_id, ApiKeyRow.tenant == tenant, ApiKeyRow.revoke_time.is_(None))
                .values(revoke_time=now))
            row = await session.get(ApiKeyRow, key_id)
            return _api_key(row) if row is not None and row.tenant == tenant else None

    # --- signing keys ------------------------------------------------------------------------------------------

    async def add_signing_key(self, key: PublicSigningKey, encrypted_private_pem: str) -> None:
        async with self._db.session() as session:
            session.add(SigningKeyRow(kid=key.kid, algorithm=key.algorithm, public_key_pem=key.public_key_pem,
                                      private_key_pem=encrypted_private_pem, create_time=key.create_time,
                                      retire_time=key.retire_time))

    async def newest_signing_key(self) -> tuple[PublicSigningKey, str] | None:
        """The key that signs (the newest one not retiring), with its encrypted private key."""
        async with self._db.session() as session:
            row = (await session.execute(select(SigningKeyRow).where(SigningKeyRow.retire_time.is_(None))
                                         .order_by(SigningKeyRow.create_time.desc()).limit(1))).scalar_one_or_none()
            return (public_key(row), row.private_key_pem) if row is not None else None

    async def retire_signing_keys(self, keep_kid: str, retire_time: datetime) -> int:
        """Schedules every other signing key still in use to stop verifying at `retire_time`."""
        async with self._db.session() as session:
            result = await session.execute(update(SigningKeyRow).where(
                SigningKeyRow.kid != keep_kid, SigningKeyRow.retire_time.is_(None)).values(retire_time=retire_time))
            return int(getattr(result, "rowcount", 0) or 0)
