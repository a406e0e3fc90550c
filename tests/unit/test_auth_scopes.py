"""The scope table covers every RPC of the descriptor set, internal RPCs stay internal, roles grant what they say."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from comfymesh.auth.v1 import auth_service_pb2
from service_runtime.auth import scopes
from service_runtime.auth.scopes import (
    AUTHENTICATED,
    INTERNAL,
    INTERNAL_SCOPES,
    METHOD_SCOPES,
    OPEN,
    PLATFORM_SCOPES,
    ROLE_SCOPES,
    SYSTEM_TENANT,
    Role,
    required_scope,
    scopes_of_roles,
)

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
DESCRIPTOR_SET = ROOT / "gen" / "descriptor" / "comfymesh.binpb"


def _rpcs() -> set[str]:
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file
    return {f"/{file.package}.{service.name}/{method.name}"
            for file in files if file.package.startswith("comfymesh.")
            for service in file.service for method in service.method}


def test_every_rpc_of_the_descriptor_set_has_a_scope() -> None:
    missing = sorted(_rpcs() - set(METHOD_SCOPES))
    assert not missing, f"RPCs without an entry in service_runtime/auth/scopes.py METHOD_SCOPES: {missing}"


def test_the_table_names_no_rpc_that_does_not_exist() -> None:
    assert not sorted(set(METHOD_SCOPES) - _rpcs())


def test_every_entry_is_a_known_scope_or_a_pseudo_scope() -> None:
    for method, scope in METHOD_SCOPES.items():
        assert scope in scopes.ALL_SCOPES or scope == AUTHENTICATED, (method, scope)
        assert scope != OPEN, f"{method}: only health and reflection are open"


@pytest.mark.parametrize("method", [
    "/comfymesh.execution.v1.ExecutionService/RegisterExecutor",
    "/comfymesh.execution.v1.ExecutionService/Heartbeat",
    "/comfymesh.execution.v1.ExecutionService/DeregisterExecutor",
    "/comfymesh.queue.v1.QueueService/EnqueueJob",
    "/comfymesh.queue.v1.QueueService/LeaseJob",
    "/comfymesh.queue.v1.QueueService/RenewLease",
    "/comfymesh.queue.v1.QueueService/CompleteJob",
    "/comfymesh.executor.v1.GpuExecutorService/Execute",
    "/comfymesh.executor.v1.GpuExecutorService/Interrupt",
    "/comfymesh.executor.v1.GpuExecutorService/Describe",
    "/comfymesh.executor.v1.GpuExecutorService/PrefetchModels",
])
def test_internal_rpcs_need_internal_scopes(method: str) -> None:
    assert required_scope(method) in INTERNAL_SCOPES


def test_every_executor_rpc_is_internal() -> None:
    executor = [m for m in _rpcs() if m.startswith("/comfymesh.executor.")]
    assert executor and all(required_scope(m) in INTERNAL_SCOPES for m in executor)


def test_no_user_role_holds_an_internal_scope() -> None:
    for role in (Role.ADMIN, Role.OPERATOR, Role.DEVELOPER, Role.VIEWER):
        assert not ROLE_SCOPES[role] & INTERNAL_SCOPES, role
        assert not scopes_of_roles([role], SYSTEM_TENANT) & INTERNAL_SCOPES
    assert scopes_of_roles([Role.EXECUTOR], SYSTEM_TENANT) == {scopes.FLEET_REGISTER}


def test_health_and_reflection_are_open_and_unknown_methods_closed() -> None:
    assert required_scope("/grpc.health.v1.Health/Check") == OPEN
    assert required_scope("/grpc.health.v1.Health/Watch") == OPEN
    assert required_scope("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") == OPEN
    assert required_scope("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo") == OPEN
    assert required_scope("/comfymesh.nothing.v1.Nope/Call") == INTERNAL
    assert required_scope("/grpc.health.v1.HealthX/Check") == INTERNAL


def test_platform_scopes_only_in_the_system_tenant() -> None:
    assert scopes_of_roles([Role.ADMIN], SYSTEM_TENANT) >= PLATFORM_SCOPES
    tenant_admin = scopes_of_roles([Role.ADMIN], "acme")
    assert not tenant_admin & PLATFORM_SCOPES
    assert {scopes.AUTH_ADMIN, scopes.EXECUTIONS_WRITE} <= tenant_admin
    assert scopes_of_roles([Role.EXECUTOR], "acme") == frozenset()


def test_roles_nest() -> None:
    viewer, developer, operator, admin = (ROLE_SCOPES[r] for r in (Role.VIEWER, Role.DEVELOPER, Role.OPERATOR,
                                                                    Role.ADMIN))
    assert viewer < developer < operator < admin
    assert all(s.endswith(".read") for s in viewer)


def test_roles_mirror_the_proto_enum() -> None:
    published = {v.name.removeprefix("ROLE_") for v in auth_service_pb2.Role.DESCRIPTOR.values} - {"UNSPECIFIED"}
    assert published == {r.value for r in Role}
