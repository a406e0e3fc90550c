"""AuthService's domain objects: tenants, principals, API keys. Plain Python, no generated code.

Scopes and roles (`service_runtime.auth.scopes`), tiers and limits (`service_runtime.auth.tiers`) live in the bottom
package because every service's interceptor needs them; this module adds what only AuthService manages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from service_runtime.auth.scopes import Role, scopes_of_roles
from service_runtime.auth.tiers import Limits, Tier

#: The platform's own tenant: created at bootstrap, holds the admin service account.
DEFAULT_TENANT = "default"
BOOTSTRAP_PRINCIPAL_REQUEST = "bootstrap-admin"


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    display_name: str
    tier: Tier
    limits: Limits  # the tenant's own overrides (0 fields: the tier's default)
    create_time: datetime


@dataclass(frozen=True)
class Principal:
    principal_id: str
    tenant: str
    display_name: str
    service_account: bool
    roles: tuple[Role, ...]
    disabled: bool
    create_time: datetime

    @property
    def scopes(self) -> frozenset[str]:
        return scopes_of_roles(self.roles, self.tenant)


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant: str
    principal_id: str
    display_name: str
    prefix: str
    scopes: tuple[str, ...]  # empty: all of the owner's
    create_time: datetime
    expire_time: datetime | None = None
    revoke_time: datetime | None = None
    last_used_time: datetime | None = None

    def active_at(self, now: datetime) -> bool:
        return self.revoke_time is None and (self.expire_time is None or self.expire_time > now)


@dataclass(frozen=True)
class NewTenant:
    display_name: str
    tier: Tier = Tier.BASIC
    limits: Limits = field(default_factory=Limits)
    request_id: str | None = None
    tenant_id: str | None = None  # None: generated (bootstrap names "default")


@dataclass(frozen=True)
class NewPrincipal:
    display_name: str
    roles: tuple[Role, ...]
    service_account: bool = False
    request_id: str | None = None


@dataclass(frozen=True)
class NewApiKey:
    display_name: str = ""
    scopes: tuple[str, ...] = ()
    ttl_seconds: float | None = None
    request_id: str | None = None
