"""AuthService over gRPC: request checks and proto ⇄ domain conversion around the domain (service.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import grpc.aio
from google.protobuf import empty_pb2, timestamp_pb2

from comfymesh.auth.v1 import auth_service_pb2 as pb
from comfymesh.auth.v1 import auth_service_pb2_grpc
from service_runtime.auth.quotas import TenantUsage
from service_runtime.auth.scopes import Role
from service_runtime.auth.tiers import Limits, Tier
from service_runtime.auth.tokens import PublicSigningKey
from service_runtime.errors import FieldViolation, invalid_argument
from service_runtime.grpc.identity import Caller, current_caller
from services.auth.domain import ApiKey, NewApiKey, NewPrincipal, NewTenant, Principal, Tenant
from services.auth.service import ANONYMOUS, AuthService


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def caller() -> Caller:
    """The RPC's authenticated caller; with authentication off, the default tenant with every scope."""
    return current_caller() or ANONYMOUS


def tier_to_proto(tier: Tier) -> pb.Tier.ValueType:
    return pb.Tier.Value(f"TIER_{tier}")


def tier_from_proto(value: int, field: str) -> Tier:
    if value == pb.TIER_UNSPECIFIED:
        return Tier.BASIC
    try:
        return Tier(pb.Tier.Name(value).removeprefix("TIER_"))  # type: ignore[arg-type]
    except ValueError:
        raise invalid_argument("unknown tier", FieldViolation(field, f"{value} is not a tier", "INVALID_TIER")
                               ) from None


def role_to_proto(role: Role) -> pb.Role.ValueType:
    return pb.Role.Value(f"ROLE_{role}")


def roles_from_proto(values: Any, field: str) -> tuple[Role, ...]:
    roles: list[Role] = []
    for index, value in enumerate(values):
        try:
            if value == pb.ROLE_UNSPECIFIED:
                raise ValueError
            roles.append(Role(pb.Role.Name(value).removeprefix("ROLE_")))
        except ValueError:
            raise invalid_argument("unknown or unspecified role", FieldViolation(
                f"{field}[{index}]", f"{value} is not a role", "INVALID_ROLE")) from None
    return tuple(roles)


def limits_to_proto(limits: Limits) -> pb.TenantLimits:
    return pb.TenantLimits(requests_per_second=limits.requests_per_second, burst=limits.burst,
                           max_concurrent_executions=limits.max_concurrent_executions,
                           max_queued_executions=limits.max_queued_executions,
                           monthly_budget_usd=limits.monthly_budget_usd)


def limits_from_proto(message: pb.TenantLimits) -> Limits:
    return Limits(requests_per_second=message.requests_per_second, burst=message.burst,
                  max_concurrent_executions=message.max_concurrent_executions,
                  max_queued_executions=message.max_queued_executions,
                  monthly_budget_usd=message.monthly_budget_usd)


def tenant_to_proto(tenant: Tenant) -> pb.Tenant:
    message = pb.Tenant(tenant_id=tenant.tenant_id, display_name=tenant.display_name,
                        tier=tier_to_proto(tenant.tier), limits=limits_to_proto(tenant.limits))
    message.create_time.CopyFrom(_timestamp(tenant.create_time))
    return message


def principal_to_proto(principal: Principal) -> pb.Principal:
    message = pb.Principal(principal_id=principal.principal_id, tenant_id=principal.tenant,
                           display_name=principal.display_name, service_account=principal.service_account,
                           roles=[role_to_proto(r) for r in principal.roles], disabled=principal.disabled)
    message.create_time.CopyFrom(_timestamp(principal.create_time))
    return message


def api_key_to_proto(key: ApiKey) -> pb.ApiKey:
    message = pb.ApiKey(key_id=key.key_id, principal_id=key.principal_id, display_name=key.display_name,
                        prefix=key.prefix, scopes=list(key.scopes))
    message.create_time.CopyFrom(_timestamp(key.create_time))
    for name in ("expire_time", "revoke_time", "last_used_time"):
        value = getattr(key, name)
        if value is not None:
            getattr(message, name).CopyFrom(_timestamp(value))
    return message


def signing_key_to_proto(key: PublicSigningKey) -> pb.SigningKey:
    message = pb.SigningKey(kid=key.kid, algorithm=key.algorithm, public_key_pem=key.public_key_pem)
    message.create_time.CopyFrom(_timestamp(key.create_time))
    if key.retire_time is not None:
        message.retire_time.CopyFrom(_timestamp(key.retire_time))
    return message


def usage_to_proto(usage: TenantUsage) -> pb.Usage:
    return pb.Usage(tenant_id=usage.tenant_id, month=usage.month, spent_usd=usage.spent_usd,
                    budget_usd=usage.limits.monthly_budget_usd, device_seconds=usage.device_seconds,
                    running_executions=usage.running_executions, queued_executions=usage.queued_executions)


def _seconds(message: Any) -> float:
    return float(message.ToNanoseconds()) / 1e9


class AuthServicer(auth_service_pb2_grpc.AuthServiceServicer):
    def __init__(self, service: AuthService) -> None:
        self._service = service

    async def WhoAmI(self, request: pb.WhoAmIRequest, context: grpc.aio.ServicerContext[Any, Any]
                     ) -> pb.WhoAmIResponse:
        who = caller()
        principal, tenant = await self._service.whoami(who)
        return pb.WhoAmIResponse(principal=principal_to_proto(principal), tenant=tenant_to_proto(tenant),
                                 scopes=sorted(who.scopes), credential_type=who.credential_type)

    async def CreateTenant(self, request: pb.CreateTenantRequest, context: grpc.aio.ServicerContext[Any, Any]
                           ) -> pb.Tenant:
        if not request.HasField("tenant"):
            raise invalid_argument("tenant is required", FieldViolation("tenant", "required", "REQUIRED"))
        given = request.tenant
        tenant = await self._service.create_tenant(caller(), NewTenant(
            display_name=given.display_name, tier=tier_from_proto(given.tier, "tenant.tier"),
            limits=limits_from_proto(given.limits), request_id=request.request_id or None))
        return tenant_to_proto(tenant)

    async def GetTenant(self, request: pb.GetTenantRequest, context: grpc.aio.ServicerContext[Any, Any]
                        ) -> pb.Tenant:
        return tenant_to_proto(await self._service.get_tenant(caller(), request.tenant_id))

    async def ListTenants(self, request: pb.ListTenantsRequest, context: grpc.aio.ServicerContext[Any, Any]
                          ) -> pb.ListTenantsResponse:
        tenants, token = await self._service.list_tenants(caller(), request.page_size, request.page_token)
        return pb.ListTenantsResponse(tenants=[tenant_to_proto(t) for t in tenants], next_page_token=token)

    async def CreatePrincipal(self, request: pb.CreatePrincipalRequest, context: grpc.aio.ServicerContext[Any, Any]
                              ) -> pb.Principal:
        if not request.HasField("principal"):
            raise invalid_argument("principal is required", FieldViolation("principal", "required", "REQUIRED"))
        given = request.principal
        principal = await self._service.create_principal(caller(), given.tenant_id, NewPrincipal(
            display_name=given.display_name, roles=roles_from_proto(given.roles, "principal.roles"),
            service_account=given.service_account, request_id=request.request_id or None))
        return principal_to_proto(principal)

    async def GetPrincipal(self, request: pb.GetPrincipalRequest, context: grpc.aio.ServicerContext[Any, Any]
                           ) -> pb.Principal:
        return principal_to_proto(await self._service.get_principal(caller(), request.principal_id))

    async def ListPrincipals(self, request: pb.ListPrincipalsRequest, context: grpc.aio.ServicerContext[Any, Any]
                             ) -> pb.ListPrincipalsResponse:
        principals, token = await self._service.list_principals(caller(), request.page_size, request.page_token)
        return pb.ListPrincipalsResponse(principals=[principal_to_proto(p) for p in principals],
                                         next_page_token=token)

    async def DeletePrincipal(self, request: pb.DeletePrincipalRequest, context: grpc.aio.ServicerContext[Any, Any]
                              ) -> empty_pb2.Empty:
        await self._service.delete_principal(caller(), request.principal_id)
        return empty_pb2.Empty()

    async def CreateApiKey(self, request: pb.CreateApiKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
                           ) -> pb.CreateApiKeyResponse:
        key, secret = await self._service.create_api_key(caller(), request.principal_id, NewApiKey(
            display_name=request.display_name, scopes=tuple(request.scopes),
            ttl_seconds=_seconds(request.ttl) if request.HasField("ttl") else None,
            request_id=request.request_id or None))
        return pb.CreateApiKeyResponse(api_key=api_key_to_proto(key), secret=secret)

    async def ListApiKeys(self, request: pb.ListApiKeysRequest, context: grpc.aio.ServicerContext[Any, Any]
                          ) -> pb.ListApiKeysResponse:
        keys, token = await self._service.list_api_keys(caller(), request.principal_id, request.page_size,
                                                        request.page_token)
        return pb.ListApiKeysResponse(api_keys=[api_key_to_proto(k) for k in keys], next_page_token=token)

    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest, context: grpc.aio.ServicerContext[Any, Any]
                           ) -> pb.ApiKey:
        return api_key_to_proto(await self._service.revoke_api_key(caller(), request.key_id))

    async def CreateToken(self, request: pb.CreateTokenRequest, context: grpc.aio.ServicerContext[Any, Any]
                          ) -> pb.CreateTokenResponse:
        token, expire = await self._service.create_token(
            caller(), _seconds(request.ttl) if request.HasField("ttl") else None, tuple(request.scopes))
        response = pb.CreateTokenResponse(token=token)
        response.expire_time.CopyFrom(_timestamp(expire))
        return response

    async def ListSigningKeys(self, request: pb.ListSigningKeysRequest, context: grpc.aio.ServicerContext[Any, Any]
                              ) -> pb.ListSigningKeysResponse:
        return pb.ListSigningKeysResponse(keys=[signing_key_to_proto(k) for k in await self._service.signing_keys()])

    async def GetUsage(self, request: pb.GetUsageRequest, context: grpc.aio.ServicerContext[Any, Any]) -> pb.Usage:
        return usage_to_proto(await self._service.usage(caller(), request.tenant_id))
