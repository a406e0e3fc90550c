"""Authentication through the whole platform (real processes behind Envoy): closed by default on every public RPC,
scopes, grpcurl with a key, tenant isolation, revocation within two seconds, and rate limits as 429 + Retry-After."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor

from launcher.platform import LocalPlatform
from service_runtime.db import Database
from service_runtime.ids import time_ordered_id
from service_runtime.processes import grpcurl_binary
from services.execution_store.domain import ExecutionRecord, ExecutionState
from services.execution_store.repository import ExecutionRepository
from services.registry import PUBLIC_SERVICES
from tests.fixtures.auth import bearer_headers, grpcurl_header

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
_VARIABLE = re.compile(r"\{([^}=]+)(?:=([^}]*))?\}")


def _cli(platform: LocalPlatform, *args: str) -> dict[str, str]:
    """`python -m services.auth ...` against the platform's database; its JSON answer."""
    out = subprocess.run([sys.executable, "-m", "services.auth", *args], env=platform.child_env(), cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    answer: dict[str, str] = json.loads(out.strip().splitlines()[-1])
    return answer


def _http(platform: LocalPlatform, key: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=f"http://{platform.endpoints.gateway}", timeout=10, trust_env=False,
                        headers=bearer_headers(key) if key else None)


def _methods() -> list[tuple[str, MethodDescriptor]]:
    pool = descriptor_pool.Default()
    return [(f"/{service}/{method.name}", method) for service in PUBLIC_SERVICES
            for method in pool.FindServiceByName(service).methods]


def _get_path(method: MethodDescriptor) -> str | None:
    """The REST path of the method's GET rule, with every variable filled in; None without one."""
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    if not rule.get:
        return None
    return _VARIABLE.sub(lambda m: (m.group(2) or "x").replace("**", "x").replace("*", "x"), rule.get)


def _call(channel: Any, path: str, method: MethodDescriptor, metadata: Any = None) -> grpc.StatusCode:
    """Calls `path` with an empty request; the status it ends with."""
    try:
        if method.client_streaming and method.server_streaming:
            list(channel.stream_stream(path)(iter([b""]), timeout=10, metadata=metadata))
        elif method.client_streaming:
            channel.stream_unary(path)(iter([b""]), timeout=10, metadata=metadata)
        elif method.server_streaming:
            list(channel.unary_stream(path)(b"", timeout=10, metadata=metadata))
        else:
            channel.unary_unary(path)(b"", timeout=10, metadata=metadata)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
        return code
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def admin_key(platform: LocalPlatform) -> str:
    key = platform.endpoints.admin_key
    assert key.startswith("cm_")
    assert Path(platform.endpoints.admin_key_path).stat().st_mode & 0o777 == 0o600
    return key


def test_every_public_rpc_is_closed_without_credentials(platform: LocalPlatform) -> None:
    methods = _methods()
    assert len(methods) > 30  # every public service's RPCs, from the descriptors
    with grpc.insecure_channel(platform.endpoints.gateway) as channel:
        codes = {path: _call(channel, path, method) for path, method in methods}
    assert {path: code for path, code in codes.items() if code != grpc.StatusCode.UNAUTHENTICATED} == {}
    rest = {path: get for path, method in methods if (get := _get_path(method)) is not None}
    assert len(rest) > 10
    with _http(platform) as http:
        statuses = {path: http.get(get).status_code for path, get in rest.items()}
    assert {path: status for path, status in statuses.items() if status != 401} == {}
    with _http(platform) as http:
        refused = http.post("/v1/executions", json={"workflow": {}})
    assert refused.status_code == 401 and refused.json()["code"] == 16


def test_too_few_scopes_is_permission_denied(platform: LocalPlatform) -> None:
    viewer = _cli(platform, "create-key", "--role", "viewer", "--name", "e2e viewer")["api_key"]
    with _http(platform, viewer) as http:
        assert http.get("/v1/executions").status_code == 200  # a viewer reads
        refused = http.post("/v1/executions", json={"workflow": {"1": {"class_type": "X", "inputs": {}}}})
    assert refused.status_code == 403 and refused.json()["code"] == 7
    methods = dict(_methods())
    path = "/comfymesh.workflow.v1.WorkflowService/SubmitExecution"
    with grpc.insecure_channel(platform.endpoints.gateway) as channel:
        code = _call(channel, path, methods[path], metadata=(("authorization", f"Bearer {viewer}"),))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_grpcurl_with_the_admin_key(platform: LocalPlatform, admin_key: str) -> None:
    out = subprocess.run([str(grpcurl_binary()), "-plaintext", *grpcurl_header(admin_key), "-d", "{}",
                          platform.endpoints.gateway, "comfymesh.auth.v1.AuthService/WhoAmI"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "default" in out.stdout
    refused = subprocess.run([str(grpcurl_binary()), "-plaintext", "-d", "{}", platform.endpoints.gateway,
                              "comfymesh.auth.v1.AuthService/WhoAmI"], capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr + refused.stdout


def _stored_execution(platform: LocalPlatform, tenant: str) -> str:
    now = datetime.now(UTC)
    record = ExecutionRecord(id=time_ordered_id(), tenant=tenant, state=ExecutionState.SUCCEEDED,
                             graph={"1": {"class_type": "X", "inputs": {}}}, create_time=now, update_time=now)

    async def insert() -> None:
        db = Database(platform.settings.resolved_database_url)
        try:
            await ExecutionRepository(db).add(record)
        finally:
            await db.dispose()

    asyncio.run(insert())
    return record.id


def test_another_tenant_gets_not_found(platform: LocalPlatform, admin_key: str) -> None:
    execution_id = _stored_execution(platform, "default")
    tenant = _cli(platform, "create-tenant", "--name", "e2e other", "--tier", "pro")["tenant_id"]
    other = _cli(platform, "create-key", "--tenant", tenant, "--role", "developer")["api_key"]
    with _http(platform, admin_key) as http:
        assert http.get(f"/v1/executions/{execution_id}").status_code == 200
    with _http(platform, other) as http:
        read = http.get(f"/v1/executions/{execution_id}")
        cancel = http.post(f"/v1/executions/{execution_id}:cancel", json={})
        listed = http.get("/v1/executions")
    assert (read.status_code, read.json()["details"][0]["reason"]) == (404, "EXECUTION_NOT_FOUND")
    assert (cancel.status_code, cancel.json()["details"][0]["reason"]) == (404, "EXECUTION_NOT_FOUND")
    assert execution_id not in {e["id"] for e in listed.json().get("executions", [])}


def test_a_revoked_key_fails_within_two_seconds(platform: LocalPlatform, admin_key: str) -> None:
    created = _cli(platform, "create-key", "--role", "developer", "--name", "e2e revoked")
    key = created["api_key"]
    with _http(platform, key) as http:
        assert http.get("/v1/auth:whoami").status_code == 200
    with _http(platform, admin_key) as admin:
        revoked = admin.post(f"/v1/apiKeys/{created['key_id']}:revoke", json={})
    assert revoked.status_code == 200, revoked.text
    started = time.monotonic()
    with _http(platform, key) as http:
        while (status := http.get("/v1/auth:whoami").status_code) != 401:
            assert status == 200
            assert time.monotonic() - started < 2.0, "the revoked key still works after 2 s"
            time.sleep(0.1)
    assert time.monotonic() - started < 2.0


def test_a_rate_limited_caller_gets_429_with_retry_after(platform: LocalPlatform) -> None:
    # The basic tier's bucket (COMFYMESH_AUTH_RATE_LIMITS, default basic=5:10) empties after a burst.
    tenant = _cli(platform, "create-tenant", "--name", "e2e basic", "--tier", "basic")["tenant_id"]
    key = _cli(platform, "create-key", "--tenant", tenant, "--role", "developer")["api_key"]
    with _http(platform, key) as http:
        responses = [http.get("/v1/executions") for _ in range(40)]
    limited = [r for r in responses if r.status_code == 429]
    assert limited, [r.status_code for r in responses]
    assert {r.status_code for r in responses} <= {200, 429}
    refused = limited[0]
    assert int(refused.headers["retry-after"]) >= 1
    body = refused.json()
    assert body["code"] == 8 and "RATE_LIMITED" in {d.get("reason") for d in body["details"]}


def test_the_budget_check_refuses_a_submission_over_budget(platform: LocalPlatform) -> None:
    """A basic tenant ($10 a month) runs one execution priced above it (tests/e2e/conftest.py sets the rate); its
    next submission is refused with BUDGET_EXCEEDED (HTTP 429), while another tenant is unaffected."""
    from tests.e2e.node_pack import image_graph

    tenant = _cli(platform, "create-tenant", "--name", "e2e budget", "--tier", "basic")["tenant_id"]
    key = _cli(platform, "create-key", "--tenant", tenant, "--role", "developer")["api_key"]
    with _http(platform, key) as http:
        first = http.post("/v1/executions", json={"workflow": image_graph()})
        assert first.status_code == 200, first.text
        execution_id = first.json()["id"]
        deadline = time.monotonic() + 60
        while (body := http.get(f"/v1/executions/{execution_id}").json())["state"] != "EXECUTION_STATE_SUCCEEDED":
            assert time.monotonic() < deadline, body
            time.sleep(0.5)  # the basic tier's rate limit is 5/s
        assert body["cost"]["amount_usd"] > 10, body["cost"]
        refused = http.post("/v1/executions", json={"workflow": image_graph()})
    assert refused.status_code == 429, refused.text
    assert "BUDGET_EXCEEDED" in {d.get("reason") for d in refused.json()["details"]}
