"""The verifier's caches against a counting in-memory store: one read and one slow hash per key, not per request."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from comfymesh.common.v1 import execution_event_pb2
from comfymesh.workflow.v1 import workflow_service_pb2, workflow_service_pb2_grpc
from service_runtime.auth import credentials
from service_runtime.auth.credentials import new_api_key
from service_runtime.auth.interceptor import AuthInterceptor, auth_interceptor, status_of
from service_runtime.auth.scopes import Role
from service_runtime.auth.store import KeyState, TenantInfo
from service_runtime.auth.tiers import Limits, Tier, TierTable
from service_runtime.auth.verifier import CredentialVerifier
from service_runtime.errors import Reason, ServiceError, resource_exhausted
from service_runtime.grpc import GrpcServer, ServiceBinding
from service_runtime.grpc.contract import contract_only
from service_runtime.settings import Settings

pytestmark = pytest.mark.unit
NOW = datetime.now(UTC)


class Store:
    def __init__(self, state: KeyState) -> None:
        self.state = state
        self.key_reads = 0
        self.touched: list[str] = []

    async def key_by_prefix(self, prefix: str) -> KeyState | None:
        self.key_reads += 1
        await asyncio.sleep(0.01)
        return self.state if prefix == self.state.prefix else None

    async def tenant(self, tenant_id: str) -> TenantInfo | None:
        return TenantInfo(tenant_id, tenant_id, Tier.PRO, Limits(), NOW)

    async def signing_keys(self, now: datetime) -> list[Any]:
        return []

    async def touch_key(self, key_id: str, now: datetime) -> None:
        self.touched.append(key_id)


def _setup(monkeypatch: pytest.MonkeyPatch, **changes: Any) -> tuple[str, Store, CredentialVerifier, list[str]]:
    key = new_api_key()
    values: dict[str, Any] = {
        "key_id": "k" * 32, "tenant": "acme", "principal_id": "p" * 32, "prefix": key.prefix,
        "secret_hash": key.secret_hash, "scopes": frozenset(), "expire_time": None, "revoke_time": None,
        "last_used_time": None, "principal_disabled": False, "roles": (Role.DEVELOPER,), "service_account": False}
    values.update(changes)
    store = Store(KeyState(**values))
    hashed: list[str] = []
    real = credentials.verify_api_key

    def counting(secret: str, secret_hash: str) -> bool:
        hashed.append(secret)
        return real(secret, secret_hash)

    monkeypatch.setattr("service_runtime.auth.verifier.verify_api_key", counting)
    verifier = CredentialVerifier(store, TierTable.from_settings(Settings()),  # type: ignore[arg-type]
                                  internal_credential="cmi_x", key_cache_seconds=0.3)
    return key.secret, store, verifier, hashed


async def test_concurrent_requests_share_one_read_and_one_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    secret, store, verifier, hashed = _setup(monkeypatch)
    callers = await asyncio.gather(*(verifier.authenticate(secret) for _ in range(50)))
    assert {c.principal_id for c in callers} == {"p" * 32}
    assert callers[0].tier == "PRO" and callers[0].requests_per_second > 0 and callers[0].has("executions.write")
    assert (store.key_reads, len(hashed)) == (1, 1)
    await asyncio.sleep(0.35)  # the state is re-read once the cache expires; the hash is not re-checked
    await verifier.authenticate(secret)
    assert (store.key_reads, len(hashed)) == (2, 1)
    await asyncio.sleep(0)
    assert store.touched == ["k" * 32]  # last-used written once


async def test_a_wrong_secret_costs_one_hash_then_is_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    secret, _, verifier, hashed = _setup(monkeypatch)
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for _ in range(5):
        with pytest.raises(ServiceError) as caught:
            await verifier.authenticate(wrong)
        assert caught.value.reason == Reason.UNAUTHENTICATED
    assert len(hashed) == 1


@pytest.mark.parametrize(("changes", "message"), [
    ({"revoke_time": NOW}, "revoked"), ({"expire_time": NOW - timedelta(seconds=1)}, "expired"),
    ({"principal_disabled": True}, "disabled"),
])
async def test_inactive_keys(monkeypatch: pytest.MonkeyPatch, changes: dict[str, Any], message: str) -> None:
    secret, _, verifier, _ = _setup(monkeypatch, **changes)
    with pytest.raises(ServiceError, match=message):
        await verifier.authenticate(secret)


async def test_key_scopes_narrow_the_roles(monkeypatch: pytest.MonkeyPatch) -> None:
    secret, _, verifier, _ = _setup(monkeypatch, scopes=frozenset({"executions.read", "auth.admin"}))
    assert (await verifier.authenticate(secret)).scopes == {"executions.read"}


async def test_internal_credential_acts_for_a_tenant(monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, verifier, _ = _setup(monkeypatch)
    caller = await verifier.authenticate("cmi_x", acting_tenant="acme")
    assert (caller.tenant, caller.credential_type, caller.has("queue.internal")) == ("acme", "internal", True)
    assert (await verifier.authenticate("cmi_x")).tenant == "default"
    with pytest.raises(ServiceError):
        await verifier.authenticate("cmi_y")
    with pytest.raises(ServiceError):
        await verifier.authenticate("cmi_x", acting_tenant="../etc")


def test_disabled_auth_builds_no_interceptor() -> None:
    assert auth_interceptor(Settings(auth_enabled=False), None, None) is None
    assert auth_interceptor(Settings(secret_key="s"), None, None) is not None


def test_retry_after_trailer() -> None:
    status = status_of(resource_exhausted("slow down", Reason.RATE_LIMITED, retry_after_seconds=1.2))
    assert ("retry-after", "2") in status.trailing_metadata  # type: ignore[attr-defined]
    assert status.trailing_metadata[0][0] == "grpc-status-details-bin"  # type: ignore[attr-defined]


class BrokenStore(Store):
    async def key_by_prefix(self, prefix: str) -> KeyState | None:
        raise RuntimeError("database is down: password=hunter2")


async def test_a_failing_store_answers_unavailable_not_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    secret, store, _, _ = _setup(monkeypatch)
    verifier = CredentialVerifier(BrokenStore(store.state), TierTable.from_settings(Settings()),  # type: ignore[arg-type]
                                  internal_credential=None)
    interceptor = AuthInterceptor(verifier, None)
    server = GrpcServer(Settings(metrics_port=0), "auth-unit", [ServiceBinding(
        "comfymesh.workflow.v1.WorkflowService", contract_only(workflow_service_pb2_grpc.WorkflowServiceServicer),
        workflow_service_pb2_grpc.add_WorkflowServiceServicer_to_server)], port=0, host="127.0.0.1",
        auth=interceptor)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = workflow_service_pb2_grpc.WorkflowServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetExecution(workflow_service_pb2.GetExecutionRequest(id="x"),
                                        metadata=(("authorization", f"Bearer {secret}"),))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "hunter2" not in (caught.value.details() or "")
            status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
            info = error_details_pb2.ErrorInfo()
            assert status is not None and status.details[0].Unpack(info) and info.reason == "BACKEND_UNAVAILABLE"
            # A server stream refused before its first message.
            events: list[execution_event_pb2.ExecutionEvent] = []

            async def watch() -> None:
                async for event in stub.WatchExecution(workflow_service_pb2.WatchExecutionRequest(id="x")):
                    events.append(event)

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await watch()
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED and not events
    finally:
        await server.stop(0.1)
