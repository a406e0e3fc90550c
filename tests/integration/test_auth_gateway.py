"""Through the real Envoy gateway: REST 401 / 403 / 429 with Retry-After, and gRPC (grpcurl too) with an API key.

Envoy is rendered from the one template with every component pointing at one in-process GrpcServer that serves
AuthService behind the auth interceptor (the rig of test_auth_service.py, on SQLite).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from comfymesh.auth.v1 import auth_service_pb2 as pb
from comfymesh.auth.v1 import auth_service_pb2_grpc
from gateway.config import GatewayConfig
from gateway.render import render_envoy_config
from service_runtime.db import Database, migrate
from service_runtime.processes import EnvoyProcess, free_port, grpcurl_binary
from service_runtime.settings import Settings
from tests.integration.test_auth_service import Rig, auth_settings, bearer, close_rig, open_rig

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Gateway:
    def __init__(self, rig: Rig, address: str) -> None:
        self.rig = rig
        self.address = address

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=f"http://{self.address}", timeout=10, trust_env=False)


@pytest.fixture
async def gateway(tmp_path: Path, redis_url: str, envoy_binary: Path) -> AsyncIterator[Gateway]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'auth.db'}"
    await migrate.upgrade_async(url)
    db = Database(url)
    rig = await open_rig(auth_settings(tmp_path, url, redis_url), db, redis_url)
    listen, admin = free_port(), free_port()
    config = GatewayConfig.from_settings(Settings(bind_host="127.0.0.1", gateway_port=listen,
                                                  gateway_admin_port=admin), upstream_override=rig.server.address)
    path = tmp_path / "envoy.yaml"
    path.write_text(render_envoy_config(config))
    envoy = EnvoyProcess(path, admin, tmp_path / "envoy.log", concurrency=1)
    await asyncio.to_thread(envoy.start)
    try:
        gateway = Gateway(rig, f"127.0.0.1:{listen}")
        async with gateway.http() as http:  # until Envoy routes to the (health-checked) upstream
            for _ in range(100):
                if (await http.get("/v1/auth:whoami")).status_code == 401:
                    break
                await asyncio.sleep(0.1)
        yield gateway
    finally:
        await asyncio.to_thread(envoy.stop)
        await close_rig(rig)
        await db.dispose()


async def test_rest_401_403_and_200(gateway: Gateway) -> None:
    rig = gateway.rig
    viewer, _, _ = await rig.new_key("default", [pb.ROLE_VIEWER])
    async with gateway.http() as http:
        anonymous = await http.get("/v1/auth:whoami")
        assert anonymous.status_code == 401
        assert anonymous.json()["details"][0]["reason"] == "UNAUTHENTICATED"
        assert (await http.get("/v1/auth:whoami", headers={"Authorization": "Bearer nonsense"})).status_code == 401
        forbidden = await http.get("/v1/tenants", headers={"Authorization": f"Bearer {viewer}"})
        assert forbidden.status_code == 403
        assert forbidden.json()["details"][0]["reason"] == "PERMISSION_DENIED"
        who = await http.get("/v1/auth:whoami", headers={"Authorization": f"Bearer {viewer}"})
        assert who.status_code == 200, who.text
        assert who.json()["tenant"]["tenant_id"] == "default"
        token = (await http.post("/v1/tokens", json={}, headers={"Authorization": f"Bearer {viewer}"})).json()
        with_token = await http.get("/v1/auth:whoami", headers={"Authorization": f"Bearer {token['token']}"})
        assert with_token.json()["credential_type"] == "token"


async def test_rate_limited_rest_caller_gets_429_with_retry_after(gateway: Gateway) -> None:
    key, _, _ = await gateway.rig.new_key("throttled", [pb.ROLE_VIEWER],
                                          limits=pb.TenantLimits(requests_per_second=0.2, burst=1))
    headers = {"Authorization": f"Bearer {key}"}
    async with gateway.http() as http:
        assert (await http.get("/v1/auth:whoami", headers=headers)).status_code == 200
        limited = await http.get("/v1/auth:whoami", headers=headers)
    assert limited.status_code == 429, limited.text
    assert limited.headers.get("retry-after") in {"4", "5"}
    body = limited.json()
    assert body["code"] == 8
    assert [d["reason"] for d in body["details"] if "reason" in d] == ["RATE_LIMITED"]
    assert any("retry_delay" in d for d in body["details"])


async def test_grpc_and_grpcurl_with_a_key_through_the_gateway(gateway: Gateway) -> None:
    rig = gateway.rig
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = auth_service_pb2_grpc.AuthServiceStub(channel)
        who = await stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(rig.admin_key))
        assert who.tenant.tenant_id == "default"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.WhoAmI(pb.WhoAmIRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
        info = error_details_pb2.ErrorInfo()
        assert status is not None and status.details[0].Unpack(info) and info.reason == "UNAUTHENTICATED"

    def grpcurl(*headers: str) -> subprocess.CompletedProcess[str]:
        args = [str(grpcurl_binary()), "-plaintext"]
        for header in headers:
            args += ["-H", header]
        return subprocess.run([*args, gateway.address, "comfymesh.auth.v1.AuthService/WhoAmI"], capture_output=True,
                              text=True, timeout=30)

    ok = await asyncio.to_thread(grpcurl, f"authorization: Bearer {rig.admin_key}")
    assert ok.returncode == 0, ok.stderr
    who_json = json.loads(ok.stdout)
    assert "api_key" in (who_json.get("credentialType"), who_json.get("credential_type")), ok.stdout
    denied = await asyncio.to_thread(grpcurl)
    assert denied.returncode != 0 and "Unauthenticated" in denied.stderr
