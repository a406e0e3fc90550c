"""`python -m services.auth`: the auth service on its own (port COMFYMESH_AUTH_PORT), and its admin commands.

    python -m services.auth                     serve (first start: creates the admin key, see bootstrap.py)
    python -m services.auth serve               the same
    python -m services.auth bootstrap           create the default tenant and admin key if missing; print the key
    python -m services.auth create-tenant --name NAME [--tier basic|pro|enterprise]
    python -m services.auth create-key --tenant T --role developer [--name NAME] [--service-account]
                                        [--scope S ...] [--ttl-days N]
    python -m services.auth create-key --tenant T --principal ID [--scope S ...]   (another key for a principal)

Commands print what they create as one JSON object on stdout; an API key's secret is shown there once. They act
on COMFYMESH_DATABASE_URL directly (the platform's own authority), which must be migrated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from service_runtime.auth.scopes import Role, unknown_scopes
from service_runtime.auth.tiers import Limits, Tier
from service_runtime.db import Database
from service_runtime.ids import time_ordered_id
from service_runtime.settings import Settings, get_settings
from services.auth.bootstrap import admin_key_path, ensure_admin_key, ensure_default_tenant, issue_key
from services.auth.domain import DEFAULT_TENANT, NewApiKey, Principal, Tenant
from services.auth.repository import AuthRepository


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.auth", description="ComfyMesh AuthService.")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve AuthService (the default)")
    sub.add_parser("bootstrap", help="create the default tenant and the admin key if missing")
    tenant = sub.add_parser("create-tenant", help="create a tenant")
    tenant.add_argument("--name", required=True, help="display name")
    tenant.add_argument("--tier", default="basic", choices=[t.lower() for t in Tier])
    key = sub.add_parser("create-key", help="create an API key (and, with --role, its principal)")
    key.add_argument("--tenant", default=DEFAULT_TENANT, help="tenant id (default: %(default)s)")
    owner = key.add_mutually_exclusive_group(required=True)
    owner.add_argument("--role", choices=[r.lower() for r in Role], help="create a principal with this role")
    owner.add_argument("--principal", help="an existing principal of the tenant")
    key.add_argument("--name", default="", help="the new principal's display name (and the key's label)")
    key.add_argument("--service-account", action="store_true", help="the new principal is a service account")
    key.add_argument("--scope", action="append", default=[], help="narrow the key to these scopes (repeatable)")
    key.add_argument("--ttl-days", type=float, default=None, help="expire after this many days")
    return parser


async def _create_tenant(db: Database, name: str, tier: str) -> dict[str, str]:
    repository = AuthRepository(db)
    await ensure_default_tenant(repository)
    tenant, _ = await repository.add_tenant(
        Tenant(time_ordered_id(), name, Tier(tier.upper()), Limits(), datetime.now(UTC)), None)
    return {"tenant_id": tenant.tenant_id, "display_name": tenant.display_name, "tier": str(tenant.tier).lower()}


async def _create_key(db: Database, args: argparse.Namespace) -> dict[str, str]:
    repository = AuthRepository(db)
    if args.tenant == DEFAULT_TENANT:
        await ensure_default_tenant(repository)
    if await repository.get_tenant(args.tenant) is None:
        raise SystemExit(f"no tenant {args.tenant!r}: create it first with `python -m services.auth create-tenant`")
    unknown = unknown_scopes(args.scope)
    if unknown:
        raise SystemExit(f"unknown scopes: {', '.join(unknown)}")
    principal: Principal | None
    if args.principal:
        principal = await repository.get_principal(args.tenant, args.principal)
        if principal is None:
            raise SystemExit(f"no principal {args.principal!r} in tenant {args.tenant!r}")
    else:
        role = Role(args.role.upper())
        service_account = args.service_account or role.service_accounts_only
        if role.system_tenant_only and args.tenant != DEFAULT_TENANT:
            raise SystemExit(f"the role {role.lower()} exists only in the tenant {DEFAULT_TENANT!r}")
        principal, _ = await repository.add_principal(Principal(
            principal_id=time_ordered_id(), tenant=args.tenant, display_name=args.name or f"{role.lower()} (cli)",
            service_account=service_account, roles=(role,), disabled=False, create_time=datetime.now(UTC)), None)
    ttl = args.ttl_days * 86400 if args.ttl_days is not None else None
    try:
        issued = await issue_key(repository, principal, NewApiKey(display_name=args.name, ttl_seconds=ttl),
                                 frozenset(args.scope))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return {"tenant_id": issued.tenant, "principal_id": issued.principal_id, "key_id": issued.key_id,
            "api_key": issued.secret}


def _on_database(settings: Settings, action: str, args: argparse.Namespace) -> dict[str, str]:
    async def run() -> dict[str, str]:
        db = Database(settings.resolved_database_url)
        try:
            if action == "create-tenant":
                return await _create_tenant(db, args.name, args.tier)
            return await _create_key(db, args)
        finally:
            await db.dispose()

    return asyncio.run(run())


def _bootstrap(settings: Settings) -> str | None:
    if not (settings.auth_enabled and settings.auth_bootstrap_admin):
        return None
    try:
        key = ensure_admin_key(settings)
    except Exception as exc:  # noqa: BLE001 - serving must not depend on it (e.g. migrations still to run)
        print(f"admin key bootstrap skipped: {exc}", file=sys.stderr)
        return None
    if key is not None:
        print(f"admin API key created and written to {admin_key_path(settings)}", file=sys.stderr)
    return key


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = get_settings()
    if args.command in (None, "serve"):
        from services.runner import run

        _bootstrap(settings)
        run(["auth"])
    elif args.command == "bootstrap":
        key = ensure_admin_key(settings)
        print(json.dumps({"created": key is not None, "api_key": key or "", "path": str(admin_key_path(settings))}))
    else:
        print(json.dumps(_on_database(settings, args.command, args)))


if __name__ == "__main__":
    main()
