"""First start: the platform's tenant, an admin service account and its API key, written to `admin.key` (0600).

`ensure_admin_key(settings)` is idempotent and safe to race: the admin account is created under a fixed
request id, so of several processes starting at once exactly one creates it (and its key); the others, and every
later start, create nothing and return None. The key is written to `$COMFYMESH_HOME/admin.key` with mode 0600
before the function returns it, and is never logged. Lose the file and the key is gone: create another with
`python -m services.auth create-key --tenant default --role admin`.

The database must be migrated (`python -m service_runtime.db upgrade`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from service_runtime.auth.scopes import Role
from service_runtime.auth.tiers import Limits, Tier
from service_runtime.db import Database
from service_runtime.ids import time_ordered_id
from service_runtime.settings import Settings
from services.auth.domain import BOOTSTRAP_PRINCIPAL_REQUEST, DEFAULT_TENANT, NewApiKey, Principal, Tenant
from services.auth.repository import AuthRepository
from services.auth.service import mint_api_key

ADMIN_KEY_FILE = "admin.key"
BOOTSTRAP_PRINCIPAL_NAME = "bootstrap-admin"


def admin_key_path(settings: Settings) -> Path:
    return settings.home / ADMIN_KEY_FILE


def write_secret_file(path: Path, secret: str) -> None:
    """Writes `secret` to `path` with mode 0600 from the first byte (never readable by others, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secret + "\n")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


async def ensure_default_tenant(repository: AuthRepository, now: datetime | None = None) -> Tenant:
    """The platform's own tenant ("default", enterprise: no limits but those configured for it)."""
    tenant, _ = await repository.add_tenant(Tenant(DEFAULT_TENANT, "Default", Tier.ENTERPRISE, Limits(),
                                                   now or datetime.now(UTC)), None)
    return tenant


@dataclass(frozen=True)
class IssuedKey:
    tenant: str
    principal_id: str
    key_id: str
    secret: str


async def issue_key(repository: AuthRepository, principal: Principal, new: NewApiKey,
                    scopes: frozenset[str] = frozenset()) -> IssuedKey:
    """A key for `principal` issued by the platform itself (bootstrap, the command line): `scopes` must be held by
    the principal (empty: all of its own)."""
    missing = scopes - principal.scopes
    if missing:
        raise ValueError(f"principal {principal.principal_id} does not hold the scopes {', '.join(sorted(missing))}")
    key, secret = await mint_api_key(repository, principal, scopes, new, datetime.now(UTC))
    return IssuedKey(principal.tenant, principal.principal_id, key.key_id, secret)


async def ensure_admin_key_async(settings: Settings, db: Database) -> str | None:
    """Creates the default tenant, the admin service account and its key on first start; returns the key then
    (after writing it to admin.key), None on every later call."""
    repository = AuthRepository(db)
    now = datetime.now(UTC)
    await ensure_default_tenant(repository, now)
    candidate = Principal(principal_id=time_ordered_id(), tenant=DEFAULT_TENANT, display_name=BOOTSTRAP_PRINCIPAL_NAME,
                          service_account=True, roles=(Role.ADMIN,), disabled=False, create_time=now)
    principal, created = await repository.add_principal(candidate, BOOTSTRAP_PRINCIPAL_REQUEST)
    if not created:
        return None
    issued = await issue_key(repository, principal, NewApiKey(display_name="bootstrap admin key"))
    write_secret_file(admin_key_path(settings), issued.secret)
    return issued.secret


def ensure_admin_key(settings: Settings) -> str | None:
    """`ensure_admin_key_async` on a database of its own (for launchers and the command line, outside any event
    loop)."""

    async def run() -> str | None:
        db = Database(settings.resolved_database_url)
        try:
            return await ensure_admin_key_async(settings, db)
        finally:
            await db.dispose()

    return asyncio.run(run())
