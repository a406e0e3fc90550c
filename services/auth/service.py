"""AuthService's domain operations: tenants, principals, API keys, tokens, usage — each on behalf of a `Caller`.

The interceptor has already checked the scope an RPC requires (service_runtime/auth/scopes.py); the finer rules
are here:
- a caller acts in its own tenant; another tenant's principal or key answers NOT_FOUND, like a missing one, and
  only platform admins (`tenants.admin`) reach other tenants at all;
- own keys need `keys.*`; other principals' keys and principals need `auth.admin`;
- nobody grants more than they hold: a new key's or token's scopes must be held by the caller's credential, and a
  new principal's roles may not exceed the caller's scopes;
- executor principals are service accounts of the platform's own tenant.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service_runtime.auth.credentials import new_api_key
from service_runtime.auth.quotas import SubmissionQuotas, TenantUsage
from service_runtime.auth.ratelimit import RateLimiter
from service_runtime.auth.scopes import (
    ALL_SCOPES,
    AUTH_ADMIN,
    KEYS_READ,
    KEYS_WRITE,
    SYSTEM_TENANT,
    TENANT_READ,
    TENANTS_ADMIN,
    scopes_of_roles,
    unknown_scopes,
)
from service_runtime.auth.store import CredentialStore
from service_runtime.auth.tiers import Limits, Tier
from service_runtime.auth.tokens import LEEWAY_SECONDS, PublicSigningKey, TokenClaims, sign_token
from service_runtime.errors import (
    FieldViolation,
    failed_precondition,
    invalid_argument,
    not_found,
    permission_denied,
    unauthenticated,
)
from service_runtime.grpc.identity import Caller
from service_runtime.ids import is_valid_id, time_ordered_id
from service_runtime.pagination import PageSize, PageTokenCodec
from services.auth.domain import ApiKey, NewApiKey, NewPrincipal, NewTenant, Principal, Tenant
from services.auth.repository import AuthRepository, PrefixTakenError
from services.auth.signing import SigningKeyRing

PAGE_SIZE = PageSize(default=100, maximum=1000)
MAX_DISPLAY_NAME = 200
MAX_REQUEST_ID = 64
CALLER_TENANT = "-"  # GetTenant/GetUsage: "the caller's tenant"
ALL_PRINCIPALS = "-"  # ListApiKeys: every principal of the tenant (admins)
_TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class AuthConfig:
    token_ttl_seconds: float = 900.0
    token_max_ttl_seconds: float = 3600.0


def _bad(field: str, message: str, reason: str = "INVALID") -> Exception:
    return invalid_argument(message, FieldViolation(field, message, reason))


def _check_id(value: str, field: str, what: str) -> None:
    if not is_valid_id(value):
        raise _bad(field, f"{field} must be {what} id (32 lowercase hex characters)", "INVALID_ID")


def _check_name(value: str, field: str, *, required: bool) -> str:
    name = value.strip()
    if required and not name:
        raise _bad(field, f"{field} is required", "REQUIRED")
    if len(name) > MAX_DISPLAY_NAME:
        raise _bad(field, f"{field} is longer than {MAX_DISPLAY_NAME} characters", "TOO_LONG")
    return name


def _check_request_id(value: str | None) -> str | None:
    if not value:
        return None
    if len(value) > MAX_REQUEST_ID:
        raise _bad("request_id", f"request_id is longer than {MAX_REQUEST_ID} characters", "TOO_LONG")
    return value


def _check_scopes(scopes: Sequence[str], field: str) -> frozenset[str]:
    unknown = unknown_scopes(scopes)
    if unknown:
        raise invalid_argument(f"unknown scopes: {', '.join(unknown)}", *[
            FieldViolation(f"{field}[{list(scopes).index(s)}]", f"{s!r} is not a scope", "UNKNOWN_SCOPE")
            for s in unknown])
    return frozenset(scopes)


async def mint_api_key(repository: AuthRepository, owner: Principal, scopes: frozenset[str], new: NewApiKey,
                       now: datetime) -> tuple[ApiKey, str]:
    """Creates a key for `owner` with `scopes` (empty: all of the owner's) — the caller has checked that it may.
    Returns the key and its secret (shown once)."""
    if new.ttl_seconds is not None and new.ttl_seconds <= 0:
        raise _bad("ttl", "ttl must be positive", "NOT_POSITIVE")
    expire = now + timedelta(seconds=new.ttl_seconds) if new.ttl_seconds is not None else None
    name = _check_name(new.display_name, "display_name", required=False)
    request_id = _check_request_id(new.request_id)
    for _ in range(3):
        minted = await asyncio.to_thread(new_api_key)
        key = ApiKey(key_id=time_ordered_id(), tenant=owner.tenant, principal_id=owner.principal_id,
                     display_name=name, prefix=minted.prefix, scopes=tuple(sorted(scopes)), create_time=now,
                     expire_time=expire)
        try:
            await repository.add_api_key(key, minted.secret_hash, request_id)
        except PrefixTakenError:
            continue
        return key, minted.secret
    raise RuntimeError("could not draw an unused API key prefix")


def check_limits(limits: Limits, field: str) -> Limits:
    for name in ("requests_per_second", "burst", "max_concurrent_executions", "max_queued_executions",
                 "monthly_budget_usd"):
        if getattr(limits, name) < 0:
            raise _bad(f"{field}.{name}", f"{field}.{name} must not be negative", "NEGATIVE")
    return limits


class AuthService:
    def __init__(self, repository: AuthRepository, store: CredentialStore, signing: SigningKeyRing,
                 quotas: SubmissionQuotas, page_tokens: PageTokenCodec, config: AuthConfig = AuthConfig(), *,
                 limiter: RateLimiter | None = None, on_revoke: Callable[[str], None] | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._repository = repository
        self._store = store
        self._signing = signing
        self._quotas = quotas
        self._tokens = page_tokens
        self._config = config
        self._limiter = limiter
        self._on_revoke = on_revoke
        self._clock = clock

    @property
    def repository(self) -> AuthRepository:
        return self._repository

    # --- who -----------------------------------------------------------------------------------------------

    async def whoami(self, caller: Caller) -> tuple[Principal, Tenant]:
        tenant = await self._repository.get_tenant(caller.tenant) or Tenant(
            caller.tenant, caller.tenant, Tier.ENTERPRISE, Limits(), self._clock())
        if caller.credential_type in ("internal", "none"):
            return Principal(caller.principal_id, caller.tenant, "ComfyMesh " + caller.principal_id, True, (),
                             False, tenant.create_time), tenant
        principal = await self._repository.get_principal(caller.tenant, caller.principal_id)
        if principal is None or principal.disabled:
            raise unauthenticated("the caller's principal no longer exists")
        return principal, tenant

    # --- tenants -----------------------------------------------------------------------------------------------

    def _tenant_id(self, caller: Caller, tenant_id: str) -> str:
        """The tenant a request names ("-": the caller's), NOT_FOUND when the caller may not see it."""
        wanted = caller.tenant if tenant_id in (CALLER_TENANT, "") else tenant_id
        if wanted != caller.tenant and not caller.has(TENANTS_ADMIN):
            raise not_found(f"tenant {wanted} not found", tenant_id=wanted)
        return wanted

    async def create_tenant(self, caller: Caller, new: NewTenant) -> Tenant:
        if not caller.has(TENANTS_ADMIN):
            raise permission_denied("creating tenants requires the scope tenants.admin", scope=TENANTS_ADMIN)
        tenant = Tenant(tenant_id=new.tenant_id or time_ordered_id(),
                        display_name=_check_name(new.display_name, "tenant.display_name", required=True),
                        tier=new.tier, limits=check_limits(new.limits, "tenant.limits"), create_time=self._clock())
        created, _ = await self._repository.add_tenant(tenant, _check_request_id(new.request_id))
        return created

    async def get_tenant(self, caller: Caller, tenant_id: str) -> Tenant:
        wanted = self._tenant_id(caller, tenant_id)
        tenant = await self._repository.get_tenant(wanted)
        if tenant is None:
            raise not_found(f"tenant {wanted} not found", tenant_id=wanted)
        return tenant

    async def list_tenants(self, caller: Caller, page_size: int, page_token: str) -> tuple[list[Tenant], str]:
        if not caller.has(TENANTS_ADMIN):
            raise permission_denied("listing tenants requires the scope tenants.admin", scope=TENANTS_ADMIN)
        limit = PAGE_SIZE.resolve(page_size)
        query = {"list": "tenants"}
        cursor = self._tokens.decode(page_token, query)
        tenants, after = await self._repository.list_tenants(after_id=cursor["after"] if cursor else None,
                                                             limit=limit)
        return tenants, (self._tokens.encode({"after": after}, query) if after else "")

    # --- principals --------------------------------------------------------------------------------------------

    async def create_principal(self, caller: Caller, tenant_id: str, new: NewPrincipal) -> Principal:
        self._require(caller, AUTH_ADMIN)
        tenant = self._tenant_id(caller, tenant_id)
        if await self._repository.get_tenant(tenant) is None:
            raise not_found(f"tenant {tenant} not found", tenant_id=tenant)
        if not new.roles:
            raise _bad("principal.roles", "principal.roles needs at least one role", "REQUIRED")
        for index, role in enumerate(new.roles):
            if role.service_accounts_only and not new.service_account:
                raise _bad(f"principal.roles[{index}]", f"the role {role} is for service accounts only",
                           "SERVICE_ACCOUNT_ONLY")
            if role.system_tenant_only and tenant != SYSTEM_TENANT:
                raise _bad(f"principal.roles[{index}]", f"the role {role} exists only in the platform's tenant",
                           "SYSTEM_TENANT_ONLY")
        granted = scopes_of_roles(new.roles, tenant)
        if not caller.has_all(granted):
            raise permission_denied("the new principal's roles grant scopes the caller does not hold",
                                    missing=" ".join(sorted(granted - caller.scopes)))
        principal = Principal(principal_id=time_ordered_id(), tenant=tenant,
                              display_name=_check_name(new.display_name, "principal.display_name", required=True),
                              service_account=new.service_account, roles=tuple(dict.fromkeys(new.roles)),
                              disabled=False, create_time=self._clock())
        created, _ = await self._repository.add_principal(principal, _check_request_id(new.request_id))
        return created

    async def get_principal(self, caller: Caller, principal_id: str) -> Principal:
        _check_id(principal_id, "principal_id", "a principal")
        if principal_id != caller.principal_id:
            self._require(caller, AUTH_ADMIN)
        principal = await self._repository.get_principal(caller.tenant, principal_id)
        if principal is None:
            raise not_found(f"principal {principal_id} not found", principal_id=principal_id)
        return principal

    async def list_principals(self, caller: Caller, page_size: int, page_token: str
                              ) -> tuple[list[Principal], str]:
        self._require(caller, AUTH_ADMIN)
        limit = PAGE_SIZE.resolve(page_size)
        query = {"list": "principals", "tenant": caller.tenant}
        cursor = self._tokens.decode(page_token, query)
        principals, after = await self._repository.list_principals(
            caller.tenant, after_id=cursor["after"] if cursor else None, limit=limit)
        return principals, (self._tokens.encode({"after": after}, query) if after else "")

    async def delete_principal(self, caller: Caller, principal_id: str) -> None:
        self._require(caller, AUTH_ADMIN)
        _check_id(principal_id, "principal_id", "a principal")
        if principal_id == caller.principal_id:
            raise failed_precondition("a principal cannot delete itself", principal_id=principal_id)
        found = await self._repository.disable_principal(caller.tenant, principal_id, self._clock())
        if found is None:
            raise not_found(f"principal {principal_id} not found", principal_id=principal_id)
        _, key_ids = found
        await self._revoked(principal_id, key_ids)

    # --- API keys ----------------------------------------------------------------------------------------------

    async def _owner(self, caller: Caller, principal_id: str) -> Principal:
        owner_id = principal_id or caller.principal_id
        if not is_valid_id(owner_id):
            if not principal_id:
                raise _bad("principal_id", "principal_id is required for this caller", "REQUIRED")
            _check_id(principal_id, "principal_id", "a principal")
        if owner_id != caller.principal_id:
            self._require(caller, AUTH_ADMIN, what="another principal's API keys")
        owner = await self._repository.get_principal(caller.tenant, owner_id)
        if owner is None:
            raise not_found(f"principal {owner_id} not found", principal_id=owner_id)
        return owner

    async def create_api_key(self, caller: Caller, principal_id: str, new: NewApiKey) -> tuple[ApiKey, str]:
        """The key and its secret (shown once)."""
        self._require(caller, KEYS_WRITE)
        owner = await self._owner(caller, principal_id)
        if owner.disabled:
            raise failed_precondition(f"principal {owner.principal_id} is disabled", principal_id=owner.principal_id)
        requested = _check_scopes(new.scopes, "scopes")
        owner_scopes = owner.scopes
        if requested - owner_scopes:
            raise invalid_argument(f"principal {owner.principal_id} does not hold the scopes "
                                   f"{', '.join(sorted(requested - owner_scopes))}", FieldViolation(
                                       "scopes", "not held by the key's owner", "SCOPE_NOT_HELD"))
        if requested - caller.scopes:
            raise permission_denied("a key cannot grant scopes the caller's credential does not hold",
                                    missing=" ".join(sorted(requested - caller.scopes)))
        if not requested and not owner_scopes <= caller.scopes:
            requested = owner_scopes & caller.scopes  # "all of the owner's" as far as the caller may grant
        return await mint_api_key(self._repository, owner, requested, new, self._clock())

    async def list_api_keys(self, caller: Caller, principal_id: str, page_size: int, page_token: str
                            ) -> tuple[list[ApiKey], str]:
        self._require(caller, KEYS_READ)
        owner: str | None
        if principal_id == ALL_PRINCIPALS:
            self._require(caller, AUTH_ADMIN, what="every principal's API keys")
            owner = None
        else:
            owner = (await self._owner(caller, principal_id)).principal_id
        limit = PAGE_SIZE.resolve(page_size)
        query = {"list": "api_keys", "tenant": caller.tenant, "principal": owner}
        cursor = self._tokens.decode(page_token, query)
        keys, before = await self._repository.list_api_keys(
            caller.tenant, owner, before_id=cursor["before"] if cursor else None, limit=limit)
        return keys, (self._tokens.encode({"before": before}, query) if before else "")

    async def revoke_api_key(self, caller: Caller, key_id: str) -> ApiKey:
        self._require(caller, KEYS_WRITE)
        _check_id(key_id, "key_id", "an API key")
        key = await self._repository.get_api_key(caller.tenant, key_id)
        if key is None:
            raise not_found(f"API key {key_id} not found", key_id=key_id)
        if key.principal_id != caller.principal_id:
            self._require(caller, AUTH_ADMIN, what="another principal's API keys")
        revoked = await self._repository.revoke_api_key(caller.tenant, key_id, self._clock())
        if revoked is None:
            raise not_found(f"API key {key_id} not found", key_id=key_id)
        await self._revoked(revoked.principal_id, [revoked.key_id], prefixes=[revoked.prefix])
        return revoked

    async def _revoked(self, principal_id: str, key_ids: list[str], prefixes: Sequence[str] = ()) -> None:
        """Spreads a revocation: the principal's revoked list in Redis (every replica, and tokens of the keys),
        and this process's verifier cache. The database already says so (verifiers re-read it within a second)."""
        if self._limiter is not None and key_ids:
            ttl = self._config.token_max_ttl_seconds + LEEWAY_SECONDS + 60
            await self._limiter.mark_revoked(principal_id, key_ids, ttl)
        if self._on_revoke is not None:
            for prefix in prefixes:
                self._on_revoke(prefix)

    # --- tokens ------------------------------------------------------------------------------------------------

    async def create_token(self, caller: Caller, ttl_seconds: float | None, scopes: Sequence[str]
                           ) -> tuple[str, datetime]:
        if caller.credential_type != "api_key":
            raise failed_precondition("tokens are exchanged for an API key: call CreateToken with an API key",
                                      credential_type=caller.credential_type)
        key = await self._repository.get_api_key(caller.tenant, caller.key_id)
        now = self._clock()
        if key is None or not key.active_at(now):
            raise unauthenticated("the API key is no longer valid")
        ttl = self._config.token_ttl_seconds if ttl_seconds is None else ttl_seconds
        if ttl <= 0:
            raise _bad("ttl", "ttl must be positive", "NOT_POSITIVE")
        if ttl > self._config.token_max_ttl_seconds:
            raise _bad("ttl", f"ttl must be at most {self._config.token_max_ttl_seconds:g} seconds", "TOO_LONG")
        requested = _check_scopes(scopes, "scopes")
        if requested - caller.scopes:
            raise permission_denied("a token cannot carry scopes the API key does not hold",
                                    missing=" ".join(sorted(requested - caller.scopes)))
        expire = now + timedelta(seconds=ttl)
        if key.expire_time is not None:
            expire = min(expire, key.expire_time)
        pair = await self._signing.current()
        token = sign_token(pair, TokenClaims(
            principal_id=caller.principal_id, tenant=caller.tenant, scopes=requested or caller.scopes,
            key_id=key.key_id, service_account=caller.service_account, issued_at=now, expires_at=expire,
            token_id=uuid.uuid4().hex))
        return token, datetime.fromtimestamp(int(expire.timestamp()), UTC)

    async def signing_keys(self) -> list[PublicSigningKey]:
        await self._signing.current()  # there is always a key to publish
        return await self._store.signing_keys(self._clock())

    # --- usage -------------------------------------------------------------------------------------------------

    async def usage(self, caller: Caller, tenant_id: str) -> TenantUsage:
        self._require(caller, TENANT_READ)
        wanted = self._tenant_id(caller, tenant_id)
        if await self._repository.get_tenant(wanted) is None:
            raise not_found(f"tenant {wanted} not found", tenant_id=wanted)
        return await self._quotas.usage(wanted)

    # --- helpers -----------------------------------------------------------------------------------------------

    @staticmethod
    def _require(caller: Caller, scope: str, *, what: str = "") -> None:
        if not caller.has(scope):
            target = f" for {what}" if what else ""
            raise permission_denied(f"the scope {scope} is required{target}", scope=scope)


def check_tenant_id(value: str, field: str) -> str:
    if not _TENANT_ID.match(value):
        raise _bad(field, f"{field} is not a tenant id", "INVALID_ID")
    return value


#: The caller of every RPC while authentication is off: the default tenant with every scope.
ANONYMOUS = Caller(principal_id="anonymous", tenant=SYSTEM_TENANT, scopes=ALL_SCOPES, credential_type="none")
