"""AuthService and the authenticating interceptor on a real in-process GrpcServer (SQLite and PostgreSQL, Redis).

The server's chain is the standard one with the auth interceptor added explicitly (phase A: it is not in the
default chain yet). Besides AuthService it serves WorkflowService and QueueService contract-only servicers (every
RPC UNIMPLEMENTED once admitted), so a call that gets past authentication and its scope answers UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as redis
from google.api import httpbody_pb2
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from comfymesh.auth.v1 import auth_service_pb2 as pb
from comfymesh.auth.v1 import auth_service_pb2_grpc
from comfymesh.queue.v1 import queue_service_pb2, queue_service_pb2_grpc
from comfymesh.workflow.v1 import execution_pb2, workflow_service_pb2, workflow_service_pb2_grpc
from service_runtime.auth.client import bearer_client_interceptors, internal_client_interceptors
from service_runtime.auth.credentials import internal_credential
from service_runtime.auth.interceptor import AuthInterceptor, auth_interceptor
from service_runtime.auth.tokens import TokenClaims, new_signing_key, sign_token
from service_runtime.db import Database
from service_runtime.grpc import GrpcServer, ServiceBinding
from service_runtime.grpc.contract import contract_only
from service_runtime.grpc.identity import caller_tenant
from service_runtime.settings import Settings
from services.auth.bootstrap import ensure_admin_key_async
from services.auth.component import AUTH_SERVICE, AuthParts, build_auth
from services.context import AppContext

pytestmark = pytest.mark.integration
WORKFLOW = "comfymesh.workflow.v1.WorkflowService"
QUEUE = "comfymesh.queue.v1.QueueService"


class Workflow(workflow_service_pb2_grpc.WorkflowServiceServicer):
    """GetExecution answers with the tenant the call was bound to; GetObjectInfo calls GetExecution on behalf of its
    caller through `downstream` (an internal channel) and answers with what that saw; the rest is UNIMPLEMENTED."""

    downstream: grpc.aio.Channel | None = None

    async def GetExecution(self, request: Any, context: Any) -> execution_pb2.Execution:
        return execution_pb2.Execution(id=request.id, name=f"tenants/{caller_tenant(context)}")

    async def GetObjectInfo(self, request: Any, context: Any) -> httpbody_pb2.HttpBody:
        assert self.downstream is not None
        seen = await workflow_service_pb2_grpc.WorkflowServiceStub(self.downstream).GetExecution(
            workflow_service_pb2.GetExecutionRequest(id="downstream"))
        return httpbody_pb2.HttpBody(content_type="text/plain", data=seen.name.encode())


async def start_server(settings: Settings, bindings: Sequence[ServiceBinding],
                       interceptor: grpc.aio.ServerInterceptor) -> GrpcServer:
    """A GrpcServer whose standard chain includes `interceptor` (in the auth slot)."""
    server = GrpcServer(settings, "auth-test", bindings, port=0, host="127.0.0.1", auth=interceptor)
    await server.start()
    return server


def auth_settings(home: Path, database_url: str, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": home, "database_url": database_url, "redis_url": redis_url, "secret_key": "auth-test-secret",
        "metrics_port": 0, "shutdown_grace_seconds": 0.2, "auth_signing_keys_refresh_seconds": 0.5}
    values.update(overrides)
    return Settings(**values)


@dataclass
class Rig:
    settings: Settings
    db: Database
    redis: redis.Redis
    parts: AuthParts
    interceptor: AuthInterceptor
    server: GrpcServer
    channel: grpc.aio.Channel
    admin_key: str
    namespace: str
    closers: list[Any] = field(default_factory=list)

    @property
    def auth(self) -> Any:
        return auth_service_pb2_grpc.AuthServiceStub(self.channel)

    @property
    def workflow(self) -> Any:
        return workflow_service_pb2_grpc.WorkflowServiceStub(self.channel)

    @property
    def queue(self) -> Any:
        return queue_service_pb2_grpc.QueueServiceStub(self.channel)

    @property
    def internal(self) -> str:
        return internal_credential(self.settings)

    async def new_key(self, tenant: str, roles: Sequence[pb.Role.ValueType], *, scopes: Sequence[str] = (),
                      limits: pb.TenantLimits | None = None, tier: pb.Tier.ValueType = pb.TIER_BASIC,
                      service_account: bool = False) -> tuple[str, str, str]:
        """A principal of `tenant` (created with `limits` when it does not exist) and a key: (key, key id,
        principal id). Made through the API, with the internal credential acting for the tenant."""
        admin = bearer(self.admin_key)
        if tenant != "default":
            try:
                await self.auth.GetTenant(pb.GetTenantRequest(tenant_id=tenant), metadata=admin)
            except grpc.aio.AioRpcError:
                tenant = (await self.auth.CreateTenant(pb.CreateTenantRequest(tenant=pb.Tenant(
                    display_name=tenant, tier=tier, limits=limits)), metadata=admin)).tenant_id
        acting = (*bearer(self.internal), ("x-comfymesh-tenant", tenant))
        principal = await self.auth.CreatePrincipal(pb.CreatePrincipalRequest(principal=pb.Principal(
            display_name=f"p-{secrets.token_hex(3)}", roles=roles, service_account=service_account)),
            metadata=acting)
        created = await self.auth.CreateApiKey(pb.CreateApiKeyRequest(
            principal_id=principal.principal_id, scopes=scopes), metadata=acting)
        return created.secret, created.api_key.key_id, principal.principal_id


def bearer(credential: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {credential}"),)


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def retry_info(error: grpc.aio.AioRpcError) -> error_details_pb2.RetryInfo | None:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info
    return None


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def open_rig(settings: Settings, db: Database, redis_url: str) -> Rig:
    client = redis.Redis.from_url(redis_url)
    namespace = f"cm:authtest:{secrets.token_hex(4)}"
    ctx = AppContext(settings, _db=db, _redis=client)
    admin_key = await ensure_admin_key_async(settings, db)
    assert admin_key is not None
    interceptor = auth_interceptor(settings, client, db, namespace=namespace)
    assert interceptor is not None
    parts = build_auth(ctx, namespace=namespace, on_revoke=interceptor.verifier.forget_key)
    workflow = contract_only(Workflow)
    bindings = [
        ServiceBinding(AUTH_SERVICE, parts.servicer, auth_service_pb2_grpc.add_AuthServiceServicer_to_server),
        ServiceBinding(WORKFLOW, workflow, workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server),
        ServiceBinding(QUEUE, contract_only(queue_service_pb2_grpc.QueueServiceServicer),
                       queue_service_pb2_grpc.add_QueueServiceServicer_to_server),
    ]
    server = await start_server(settings, bindings, interceptor)
    channel = grpc.aio.insecure_channel(server.address)
    workflow.downstream = grpc.aio.insecure_channel(server.address,
                                                    interceptors=internal_client_interceptors(settings))
    return Rig(settings, db, client, parts, interceptor, server, channel, admin_key, namespace,
               closers=[workflow.downstream.close])


async def close_rig(rig: Rig) -> None:
    for close in rig.closers:
        await close()
    await rig.channel.close()
    await rig.server.stop(0.1)
    keys = [k async for k in rig.redis.scan_iter(match=f"{rig.namespace}:*")]
    if keys:
        await rig.redis.delete(*keys)
    await rig.redis.aclose()


@pytest.fixture
async def rig(database: Database, redis_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    settings = auth_settings(tmp_path, database.url, redis_url)
    opened = await open_rig(settings, database, redis_url)
    try:
        yield opened
    finally:
        await close_rig(opened)


# --- authentication ----------------------------------------------------------------------------------------------


async def test_admin_key_authenticates_and_binds_its_tenant(rig: Rig) -> None:
    who = await rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(rig.admin_key))
    assert who.credential_type == "api_key" and who.tenant.tenant_id == "default"
    assert who.principal.service_account and list(who.principal.roles) == [pb.ROLE_ADMIN]
    assert {"auth.admin", "tenants.admin", "executions.write"} <= set(who.scopes)
    assert not {"queue.internal", "fleet.register", "executor.run"} & set(who.scopes)
    execution = await rig.workflow.GetExecution(workflow_service_pb2.GetExecutionRequest(id="x"),
                                                metadata=bearer(rig.admin_key))
    assert execution.name == "tenants/default"

    key, _, _ = await rig.new_key("acme", [pb.ROLE_VIEWER])
    execution = await rig.workflow.GetExecution(workflow_service_pb2.GetExecutionRequest(id="x"),
                                                metadata=bearer(key))
    assert execution.name.startswith("tenants/") and execution.name != "tenants/default"


@pytest.mark.parametrize("metadata", [
    (), (("authorization", "Basic dXNlcjpwdw=="),), (("authorization", "Bearer "),),
    (("authorization", "Bearer cm_000000000000_" + "A" * 43),), (("authorization", "Bearer cm_garbage"),),
    (("authorization", "Bearer not-a-credential"),), (("authorization", "Bearer aaa.bbb.ccc"),),
    (("authorization", "Bearer cmi_wrong"),),
])
async def test_missing_or_bad_credentials_are_unauthenticated(rig: Rig, metadata: tuple[tuple[str, str], ...]
                                                              ) -> None:
    for call in (rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=metadata),
                 rig.workflow.GetExecution(workflow_service_pb2.GetExecutionRequest(id="x"), metadata=metadata),
                 rig.queue.LeaseJob(queue_service_pb2.LeaseJobRequest(), metadata=metadata)):
        error = await refused(call)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(error).reason == "UNAUTHENTICATED"


async def test_wrong_secret_for_a_real_prefix_is_unauthenticated(rig: Rig) -> None:
    forged = rig.admin_key[:15] + "_" + "B" * 43  # "cm_<12 hex>" of a real key, a wrong secret
    assert forged != rig.admin_key
    error = await refused(rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(forged)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_and_reflection_stay_open(rig: Rig) -> None:
    response = await health_pb2_grpc.HealthStub(rig.channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert response.status == health_pb2.HealthCheckResponse.SERVING


# --- authorisation -----------------------------------------------------------------------------------------------


async def test_missing_scope_is_permission_denied(rig: Rig) -> None:
    viewer, _, _ = await rig.new_key("acme", [pb.ROLE_VIEWER])
    error = await refused(rig.workflow.SubmitExecution(workflow_service_pb2.SubmitExecutionRequest(),
                                                       metadata=bearer(viewer)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info(error)
    assert (info.reason, info.metadata["scope"]) == ("PERMISSION_DENIED", "executions.write")
    # Admitted (the contract-only servicer answers UNIMPLEMENTED): the viewer may read.
    error = await refused(rig.workflow.ListExecutions(workflow_service_pb2.ListExecutionsRequest(),
                                                      metadata=bearer(viewer)))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    # Viewers do not manage principals or create keys.
    for call in (rig.auth.ListPrincipals(pb.ListPrincipalsRequest(), metadata=bearer(viewer)),
                 rig.auth.CreateApiKey(pb.CreateApiKeyRequest(), metadata=bearer(viewer)),
                 rig.auth.ListTenants(pb.ListTenantsRequest(), metadata=bearer(viewer))):
        assert (await refused(call)).code() == grpc.StatusCode.PERMISSION_DENIED


async def test_internal_rpcs_need_the_internal_credential(rig: Rig) -> None:
    developer, _, _ = await rig.new_key("default", [pb.ROLE_ADMIN])
    for key in (rig.admin_key, developer):
        error = await refused(rig.queue.LeaseJob(queue_service_pb2.LeaseJobRequest(), metadata=bearer(key)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = await refused(rig.queue.LeaseJob(queue_service_pb2.LeaseJobRequest(), metadata=bearer(rig.internal)))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    # Platform operators (default tenant) see the queue; a tenant's own admin does not.
    error = await refused(rig.queue.GetQueueStats(queue_service_pb2.GetQueueStatsRequest(),
                                                  metadata=bearer(rig.admin_key)))
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    tenant_admin, _, _ = await rig.new_key("acme", [pb.ROLE_ADMIN])
    error = await refused(rig.queue.GetQueueStats(queue_service_pb2.GetQueueStatsRequest(),
                                                  metadata=bearer(tenant_admin)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_executor_keys_only_register(rig: Rig) -> None:
    key, _, _ = await rig.new_key("default", [pb.ROLE_EXECUTOR], service_account=True)
    who = await rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(key))
    assert list(who.scopes) == ["fleet.register"]
    error = await refused(rig.workflow.GetExecution(workflow_service_pb2.GetExecutionRequest(id="x"),
                                                    metadata=bearer(key)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # executors are service accounts of the platform's tenant
        await rig.new_key("acme", [pb.ROLE_EXECUTOR], service_account=True)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- revocation and expiry ---------------------------------------------------------------------------------------


async def _refused_within(rig: Rig, key: str, seconds: float) -> float:
    started = time.monotonic()
    while True:
        try:
            await rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(key))
        except grpc.aio.AioRpcError as error:
            code = error.code()
            break
        assert time.monotonic() - started < seconds, "the revoked key still works"
        await asyncio.sleep(0.05)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    return time.monotonic() - started


async def test_revoked_key_is_refused_within_two_seconds(rig: Rig) -> None:
    key, key_id, _ = await rig.new_key("default", [pb.ROLE_DEVELOPER])
    await rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(key))  # cached as valid now
    revoked = await rig.auth.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=key_id), metadata=bearer(rig.admin_key))
    assert revoked.HasField("revoke_time")
    assert await _refused_within(rig, key, 2.0) < 2.0
    error = await refused(rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(key)))
    assert "revoked" in (error.details() or "")


async def test_revocation_written_only_to_the_database_still_takes_effect(rig: Rig) -> None:
    """Another replica's revocation whose Redis write was lost: the 1 s state cache still ends the key."""
    key, key_id, _ = await rig.new_key("default", [pb.ROLE_DEVELOPER])
    await rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(key))
    assert await rig.parts.repository.revoke_api_key("default", key_id, datetime.now(UTC)) is not None
    assert await _refused_within(rig, key, 2.0) < 2.0


async def test_a_developer_revokes_its_own_key_but_not_anothers(rig: Rig) -> None:
    mine, my_id, _ = await rig.new_key("default", [pb.ROLE_DEVELOPER])
    _, other_id, _ = await rig.new_key("default", [pb.ROLE_DEVELOPER])
    error = await refused(rig.auth.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=other_id), metadata=bearer(mine)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    listed = await rig.auth.ListApiKeys(pb.ListApiKeysRequest(), metadata=bearer(mine))
    assert [k.key_id for k in listed.api_keys] == [my_id]
    assert mine.startswith(listed.api_keys[0].prefix + "_") and len(listed.api_keys[0].prefix) == 15
    await rig.auth.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=my_id), metadata=bearer(mine))
    await _refused_within(rig, mine, 2.0)


async def test_expired_key_is_refused(rig: Rig) -> None:
    acting = (*bearer(rig.internal), ("x-comfymesh-tenant", "default"))
    principal = await rig.auth.CreatePrincipal(pb.CreatePrincipalRequest(principal=pb.Principal(
        display_name="short-lived", roles=[pb.ROLE_VIEWER])), metadata=acting)
    created = await rig.auth.CreateApiKey(pb.CreateApiKeyRequest(
        principal_id=principal.principal_id, ttl=duration_pb2.Duration(nanos=600_000_000)), metadata=acting)
    await rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(created.secret))
    await asyncio.sleep(0.7)
    error = await refused(rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(created.secret)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "expired" in (error.details() or "")


async def test_deleting_a_principal_ends_its_keys(rig: Rig) -> None:
    key, _, principal_id = await rig.new_key("default", [pb.ROLE_DEVELOPER])
    await rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(key))
    await rig.auth.DeletePrincipal(pb.DeletePrincipalRequest(principal_id=principal_id),
                                   metadata=bearer(rig.admin_key))
    await _refused_within(rig, key, 2.0)
    principal = await rig.auth.GetPrincipal(pb.GetPrincipalRequest(principal_id=principal_id),
                                            metadata=bearer(rig.admin_key))
    assert principal.disabled


# --- tokens ------------------------------------------------------------------------------------------------------


async def _token(rig: Rig, key: str, **fields: Any) -> pb.CreateTokenResponse:
    response: pb.CreateTokenResponse = await rig.auth.CreateToken(pb.CreateTokenRequest(**fields),
                                                                  metadata=bearer(key))
    return response


def _tamper(token: str, **claims: Any) -> str:
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(claims)
    encoded = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
    return f"{header}.{encoded}.{signature}"


async def test_token_exchange_and_local_verification(rig: Rig) -> None:
    key, _, principal_id = await rig.new_key("default", [pb.ROLE_DEVELOPER])
    issued = await _token(rig, key, scopes=["executions.read"])
    assert issued.expire_time.ToDatetime(UTC) <= datetime.now(UTC) + timedelta(seconds=901)
    who = await rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(issued.token))
    assert (who.credential_type, who.principal.principal_id, list(who.scopes)) == (
        "token", principal_id, ["executions.read"])
    # Narrowed: the token cannot submit, though its key could.
    error = await refused(rig.workflow.SubmitExecution(workflow_service_pb2.SubmitExecutionRequest(),
                                                       metadata=bearer(issued.token)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    # A token is not exchanged for another token, nor does it widen its key.
    error = await refused(rig.auth.CreateToken(pb.CreateTokenRequest(), metadata=bearer(issued.token)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    error = await refused(rig.auth.CreateToken(pb.CreateTokenRequest(scopes=["auth.admin"]), metadata=bearer(key)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = await refused(rig.auth.CreateToken(pb.CreateTokenRequest(ttl=duration_pb2.Duration(seconds=7200)),
                                               metadata=bearer(key)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    keys = await rig.auth.ListSigningKeys(pb.ListSigningKeysRequest(), metadata=bearer(key))
    assert keys.keys and keys.keys[0].algorithm == "EdDSA" and "PUBLIC KEY" in keys.keys[0].public_key_pem


async def test_tampered_alg_none_expired_and_unknown_kid_tokens_are_refused(rig: Rig) -> None:
    key, key_id, principal_id = await rig.new_key("default", [pb.ROLE_VIEWER])
    token = (await _token(rig, key)).token
    await rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(token))
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    now = datetime.now(UTC)
    pair = await rig.parts.signing.current()

    def signed(by: Any, **changes: Any) -> str:
        values: dict[str, Any] = {
            "principal_id": principal_id, "tenant": "default", "scopes": frozenset({"auth.admin"}), "key_id": key_id,
            "service_account": False, "issued_at": now, "expires_at": now + timedelta(minutes=5), "token_id": "x"}
        values.update(changes)
        return sign_token(by, TokenClaims(**values))

    none_header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": header["kid"]}).encode()).decode()
    forged = {
        "tampered": _tamper(token, scope="auth.admin tenants.admin", tenant="other"),
        "alg none": f"{none_header.rstrip('=')}.{_tamper(token, scope='auth.admin').split('.')[1]}.",
        "expired": signed(pair, issued_at=now - timedelta(hours=2), expires_at=now - timedelta(hours=1)),
        "unknown kid": signed(new_signing_key()),
        "truncated signature": token[:-4],
    }
    for what, bad in forged.items():
        error = await refused(rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(bad)))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, what
    expired = await refused(rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(forged["expired"])))
    assert "expired" in (expired.details() or "")


async def test_rotation_keeps_old_tokens_valid_until_they_retire(rig: Rig) -> None:
    key, _, _ = await rig.new_key("default", [pb.ROLE_VIEWER])
    old = (await _token(rig, key)).token
    old_kid = json.loads(base64.urlsafe_b64decode(old.split(".")[0] + "=="))["kid"]
    await rig.parts.signing.rotate()
    new = (await _token(rig, key)).token
    new_kid = json.loads(base64.urlsafe_b64decode(new.split(".")[0] + "=="))["kid"]
    assert new_kid != old_kid
    for token in (old, new):  # the new kid is unknown to the verifier's cache: it refreshes at once
        await rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(token))
    listed = await rig.auth.ListSigningKeys(pb.ListSigningKeysRequest(), metadata=bearer(key))
    by_kid = {k.kid: k for k in listed.keys}
    assert by_kid[old_kid].HasField("retire_time") and not by_kid[new_kid].HasField("retire_time")
    retire = by_kid[old_kid].retire_time.ToDatetime(UTC)
    assert retire >= datetime.now(UTC) + timedelta(seconds=rig.settings.auth_token_max_ttl_seconds - 5)
    # Once retired (as if the hour had passed), the old key verifies nothing.
    from sqlalchemy import update

    from service_runtime.auth.tables import SigningKeyRow

    async with rig.db.session() as session:
        await session.execute(update(SigningKeyRow).where(SigningKeyRow.kid == old_kid)
                              .values(retire_time=datetime.now(UTC) - timedelta(seconds=1)))
    await asyncio.sleep(rig.settings.auth_signing_keys_refresh_seconds + 0.1)
    error = await refused(rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(old)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    await rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(new))


async def test_revoking_a_key_ends_its_tokens(rig: Rig) -> None:
    key, key_id, _ = await rig.new_key("default", [pb.ROLE_VIEWER])
    token = (await _token(rig, key)).token
    await rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(token))
    await rig.auth.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=key_id), metadata=bearer(rig.admin_key))
    error = await refused(rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(token)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in (error.details() or "")


# --- rate limits -------------------------------------------------------------------------------------------------


async def test_rate_limit_answers_resource_exhausted_with_retry_info(rig: Rig) -> None:
    key, _, _ = await rig.new_key("slow", [pb.ROLE_VIEWER],
                                  limits=pb.TenantLimits(requests_per_second=0.5, burst=2))
    for _ in range(2):
        await rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(key))
    call = rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(key))
    error = await refused(call)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(error).reason == "RATE_LIMITED"
    retry = retry_info(error)
    assert retry is not None and 0 < retry.retry_delay.ToNanoseconds() <= 2_000_000_000
    trailers = dict(error.trailing_metadata() or ())
    assert trailers.get("retry-after") in ("1", "2")
    # Other principals have buckets of their own.
    await rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(rig.admin_key))


# --- tenants, scopes granted, isolation --------------------------------------------------------------------------


async def test_keys_cannot_grant_more_than_their_credential_holds(rig: Rig) -> None:
    narrow, _, principal_id = await rig.new_key("default", [pb.ROLE_DEVELOPER], scopes=["keys.read", "keys.write"])
    error = await refused(rig.auth.CreateApiKey(pb.CreateApiKeyRequest(scopes=["executions.write"]),
                                                metadata=bearer(narrow)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = await refused(rig.auth.CreateApiKey(pb.CreateApiKeyRequest(scopes=["auth.admin"]),
                                                metadata=bearer(narrow)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # the owner (a developer) does not hold it
    error = await refused(rig.auth.CreateApiKey(pb.CreateApiKeyRequest(scopes=["no.such"]), metadata=bearer(narrow)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    created = await rig.auth.CreateApiKey(pb.CreateApiKeyRequest(display_name="child"), metadata=bearer(narrow))
    assert set(created.api_key.scopes) == {"keys.read", "keys.write"}
    who = await rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(created.secret))
    assert set(who.scopes) == {"keys.read", "keys.write"} and who.principal.principal_id == principal_id
    # A tenant admin cannot mint principals with platform roles' scopes beyond its own.
    tenant_admin, _, _ = await rig.new_key("acme", [pb.ROLE_ADMIN])
    principal = await rig.auth.CreatePrincipal(pb.CreatePrincipalRequest(principal=pb.Principal(
        display_name="dev", roles=[pb.ROLE_DEVELOPER])), metadata=bearer(tenant_admin))
    assert principal.tenant_id != "default"


async def test_request_ids_make_creates_idempotent(rig: Rig) -> None:
    admin = bearer(rig.admin_key)
    request = pb.CreateTenantRequest(tenant=pb.Tenant(display_name="Idem", tier=pb.TIER_PRO),
                                     request_id="6c4a9d39-58f2-4a42-9a65-3c3f4b8c0e11")
    first, second = await rig.auth.CreateTenant(request, metadata=admin), await rig.auth.CreateTenant(
        request, metadata=admin)
    assert first.tenant_id == second.tenant_id and first.tier == pb.TIER_PRO
    key = pb.CreateApiKeyRequest(request_id="1b3c1e51-66f9-4bd3-9d55-7e0a6d1f2e33")
    await rig.auth.CreateApiKey(key, metadata=admin)
    error = await refused(rig.auth.CreateApiKey(key, metadata=admin))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_other_tenants_answer_not_found(rig: Rig) -> None:
    acme_admin, acme_key_id, acme_principal = await rig.new_key("acme", [pb.ROLE_ADMIN])
    globex_admin, globex_key_id, globex_principal = await rig.new_key("globex", [pb.ROLE_ADMIN])
    acme_tenant = (await rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(acme_admin))).tenant.tenant_id
    calls = (
        rig.auth.GetPrincipal(pb.GetPrincipalRequest(principal_id=acme_principal), metadata=bearer(globex_admin)),
        rig.auth.DeletePrincipal(pb.DeletePrincipalRequest(principal_id=acme_principal),
                                 metadata=bearer(globex_admin)),
        rig.auth.RevokeApiKey(pb.RevokeApiKeyRequest(key_id=acme_key_id), metadata=bearer(globex_admin)),
        rig.auth.ListApiKeys(pb.ListApiKeysRequest(principal_id=acme_principal), metadata=bearer(globex_admin)),
        rig.auth.CreateApiKey(pb.CreateApiKeyRequest(principal_id=acme_principal), metadata=bearer(globex_admin)),
        rig.auth.GetTenant(pb.GetTenantRequest(tenant_id=acme_tenant), metadata=bearer(globex_admin)),
        rig.auth.GetUsage(pb.GetUsageRequest(tenant_id=acme_tenant), metadata=bearer(globex_admin)),
    )
    for call in calls:
        assert (await refused(call)).code() == grpc.StatusCode.NOT_FOUND
    assert (await rig.auth.GetTenant(pb.GetTenantRequest(tenant_id="-"), metadata=bearer(acme_admin))
            ).tenant_id == acme_tenant
    # The platform admin reaches every tenant.
    assert (await rig.auth.GetTenant(pb.GetTenantRequest(tenant_id=acme_tenant), metadata=bearer(rig.admin_key))
            ).tenant_id == acme_tenant
    listed = await rig.auth.ListPrincipals(pb.ListPrincipalsRequest(), metadata=bearer(globex_admin))
    assert [p.principal_id for p in listed.principals] == [globex_principal]
    assert globex_key_id


async def test_list_pages(rig: Rig) -> None:
    for _ in range(3):
        await rig.auth.CreateApiKey(pb.CreateApiKeyRequest(), metadata=bearer(rig.admin_key))
    seen: list[str] = []
    token = ""
    while True:
        page = await rig.auth.ListApiKeys(pb.ListApiKeysRequest(page_size=2, page_token=token),
                                          metadata=bearer(rig.admin_key))
        seen += [k.key_id for k in page.api_keys]
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == 4 and seen == sorted(seen, reverse=True)
    tenants = await rig.auth.ListTenants(pb.ListTenantsRequest(), metadata=bearer(rig.admin_key))
    assert "default" in [t.tenant_id for t in tenants.tenants]


# --- the platform's own calls ------------------------------------------------------------------------------------


async def test_internal_calls_carry_the_internal_credential_and_the_callers_tenant(rig: Rig) -> None:
    key, _, _ = await rig.new_key("acme", [pb.ROLE_VIEWER])
    tenant = (await rig.auth.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(key))).tenant.tenant_id
    # A viewer's call whose handler calls another service: the inner call is the platform's, for the viewer's tenant.
    body = await rig.workflow.GetObjectInfo(workflow_service_pb2.GetObjectInfoRequest(), metadata=bearer(key))
    assert body.data.decode() == f"tenants/{tenant}"
    async with grpc.aio.insecure_channel(rig.server.address,
                                         interceptors=bearer_client_interceptors(rig.internal)) as channel:
        queue = queue_service_pb2_grpc.QueueServiceStub(channel)
        error = await refused(queue.LeaseJob(queue_service_pb2.LeaseJobRequest()))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED  # admitted: internal scopes
        who = await auth_service_pb2_grpc.AuthServiceStub(channel).WhoAmI(pb.WhoAmIRequest())
        assert (who.credential_type, who.tenant.tenant_id) == ("internal", "default")
        # An explicit credential on the call wins over the channel's.
        who = await auth_service_pb2_grpc.AuthServiceStub(channel).WhoAmI(pb.WhoAmIRequest(), metadata=bearer(key))
        assert who.credential_type == "api_key"
    assert internal_client_interceptors(rig.settings.model_copy(update={"auth_enabled": False})) == []
